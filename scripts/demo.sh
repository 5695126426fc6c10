#!/usr/bin/env bash
# The README's first command: a local Matrix homeserver (Synapse), a local XMPP server
# (Prosody) and a local SIP proxy (Kamailio) with isthmus between them, and conversations
# crossing the bridge, printed as a transcript: a direct chat between Matrix and XMPP, then
# one room shared by a Matrix user, an XMPP user and a SIP user.
#
#   scripts/demo.sh        start everything (installs what is missing), run the conversation,
#                          and leave the stack running
#   scripts/demo.sh stop   stop the stack (by PID)
set -euo pipefail

ISTHMUS_STACK=${ISTHMUS_STACK:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/demo}
export ISTHMUS_STACK
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HS_PORT=${ISTHMUS_DEMO_HS_PORT:-8008}
BRIDGE_PORT=29431
XMPP_C2S_PORT=${ISTHMUS_DEMO_XMPP_PORT:-5222}
XMPP_COMPONENT_PORT=5347
SIP_PORT=${ISTHMUS_DEMO_SIP_PORT:-5060}
SIP_GATEWAY_PORT=5070
BRIDGE_PID="$STACK/isthmus.pid"
BRIDGE_LOG="$STACK/isthmus.log"

stop() {
    if [ -f "$BRIDGE_PID" ]; then
        stop_pidfile "$BRIDGE_PID"
        log "isthmus stopped"
    fi
    bash "$ROOT/scripts/synapse.sh" down
    bash "$ROOT/scripts/prosody.sh" down
    bash "$ROOT/scripts/kamailio.sh" down
}

if [ "${1:-}" = "stop" ]; then
    stop
    exit 0
fi

if [ -f "$BRIDGE_PID" ] && kill -0 "$(cat "$BRIDGE_PID")" 2>/dev/null; then
    log "the demo is already running; stop it first with: scripts/demo.sh stop"
    exit 1
fi

log "== building isthmus"
(cd "$ROOT" && cargo build --quiet --bin isthmus)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/isthmus"

log "== writing the demo configuration to $STACK/config.yaml"
rm -rf "$STACK/store"
cat >"$STACK/config.yaml" <<YAML
homeserver:
  url: http://127.0.0.1:$HS_PORT
  domain: localhost
appservice:
  id: isthmus-demo
  listen: 127.0.0.1:$BRIDGE_PORT
  url: http://127.0.0.1:$BRIDGE_PORT
  as_token: demo_as_token_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  hs_token: demo_hs_token_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
database:
  path: $STACK/store
bridge:
  # Login pages and file links are served by the bridge itself: passwords never enter Matrix.
  public_url: http://127.0.0.1:$BRIDGE_PORT
  permissions:
    "*": relay
    localhost: user
    "@alice:localhost": admin
  relay:
    enabled: true
networks:
  xmpp:
    component:
      host: 127.0.0.1
      port: $XMPP_COMPONENT_PORT
      domain: matrix.localhost
      secret: demo_component_secret
    accounts:
      # Own-account logins (`login xmpp` to the bot) reach the demo Prosody, whose
      # certificate comes from a throwaway CA.
      ca_file: $ISTHMUS_STACK/prosody/certs/ca.crt
      allow_hosts: [127.0.0.1]
  sip:
    domain: matrix.corp.localhost
    listen: 127.0.0.1:$SIP_GATEWAY_PORT
    proxy: 127.0.0.1:$SIP_PORT
YAML

# From here on, a failure stops whatever the demo started, so that running it again starts
# clean.
started=0
# shellcheck disable=SC2317
on_exit() {
    local status=$?
    if [ "$status" -ne 0 ] && [ "$started" -eq 1 ]; then
        log "the demo failed (status $status); stopping what it started"
        stop || true
        log "logs are kept in $STACK; run scripts/demo.sh again once the cause is fixed"
    fi
}
trap on_exit EXIT
started=1

# Prosody first: it makes the throwaway CA that the configuration names for own-account
# logins, and check-config reads every file the configuration names.
log "== starting Prosody on 127.0.0.1:$XMPP_C2S_PORT (component port $XMPP_COMPONENT_PORT)"
ISTHMUS_COMPONENT_SECRET=demo_component_secret bash "$ROOT/scripts/prosody.sh" up "$XMPP_C2S_PORT" "$XMPP_COMPONENT_PORT"

# The configuration holds the tokens: only its owner reads it.
chmod 600 "$STACK/config.yaml"
"$BIN" check-config -c "$STACK/config.yaml" >/dev/null
"$BIN" generate-registration -c "$STACK/config.yaml" -o "$STACK/registration.yaml" >/dev/null

log "== starting Synapse on 127.0.0.1:$HS_PORT"
bash "$ROOT/scripts/synapse.sh" up "$STACK/registration.yaml" "$HS_PORT"

log "== starting Kamailio on 127.0.0.1:$SIP_PORT (gateway domain routed to 127.0.0.1:$SIP_GATEWAY_PORT)"
bash "$ROOT/scripts/kamailio.sh" up "$SIP_PORT" "$SIP_GATEWAY_PORT"

log "== starting isthmus on 127.0.0.1:$BRIDGE_PORT"
(close_fds; exec "$BIN" -c "$STACK/config.yaml" run) >"$BRIDGE_LOG" 2>&1 </dev/null &
echo "$!" >"$BRIDGE_PID"
for _ in $(seq 1 300); do
    grep -q "isthmus is ready" "$BRIDGE_LOG" 2>/dev/null && break
    if ! kill -0 "$(cat "$BRIDGE_PID")" 2>/dev/null; then
        log "isthmus exited; last lines of $BRIDGE_LOG:"
        tail -n 30 "$BRIDGE_LOG" >&2
        exit 1
    fi
    sleep 0.1
done
grep -q "isthmus is ready" "$BRIDGE_LOG" || { tail -n 30 "$BRIDGE_LOG" >&2; exit 1; }

log "== the conversations"
"$VENV/bin/python" "$ROOT/scripts/demo_chat.py" "http://127.0.0.1:$HS_PORT" "127.0.0.1:$XMPP_C2S_PORT" "127.0.0.1:$SIP_PORT"

cat <<TEXT

The stack keeps running:
  Matrix homeserver  http://127.0.0.1:$HS_PORT   user alice / password alicepass (admin of the bridge)
                     (any Matrix client, e.g. Element: homeserver http://127.0.0.1:$HS_PORT)
  XMPP server        127.0.0.1:$XMPP_C2S_PORT, domain localhost, users alice bob carol dave erin frank
                     grace, password <name>pass (e.g. bob / bobpass); STARTTLS offered with a
                     throwaway CA ($ISTHMUS_STACK/prosody/certs/ca.crt) but not required: demo only
                     (any XMPP client, e.g. Gajim, Dino, Conversations: server 127.0.0.1 port $XMPP_C2S_PORT)
                     To bridge your own XMPP account: send "login xmpp" to the bot and answer
                     dave@localhost, password davepass (typed on the login page the bot links
                     to, never in Matrix) and server 127.0.0.1:$XMPP_C2S_PORT.
  SIP proxy          Kamailio on 127.0.0.1:$SIP_PORT (UDP/TCP; TLS on the next port), domain corp.localhost, users bob carol dave
                     erin frank, password <name>pass (any SIP client, e.g. Linphone, baresip)
  isthmus            http://127.0.0.1:$BRIDGE_PORT (metrics at /metrics), log $BRIDGE_LOG
Matrix users are reachable from XMPP at <localpart>@matrix.localhost (alice@matrix.localhost);
XMPP users appear on Matrix as @_xmpp_<user>=40<domain>:localhost (@_xmpp_bob=40localhost:localhost).
From SIP, Matrix users are sip:<localpart>@matrix.corp.localhost; SIP users appear on Matrix as
@_sip_<user>=40corp.localhost:localhost. The room "Lobby" holds alice, bob's group chat and carol.
In Element, open the direct chat with "Bob (XMPP)", or talk to @_isthmus_bot:localhost (send "help").
Stop everything with: scripts/demo.sh stop
TEXT

#!/usr/bin/env bash
# Start or stop a throwaway Prosody XMPP server for the tests and the demo.
#
#   scripts/prosody.sh up [C2S_PORT COMPONENT_PORT]    (defaults 15222 15347)
#   scripts/prosody.sh down
#   scripts/prosody.sh restart                         (same data, same ports)
#
# `up` installs the Debian package when missing, writes the config from
# tests/fixtures/prosody.cfg.lua (virtual host "localhost", component
# "matrix.localhost" with the secret ISTHMUS_COMPONENT_SECRET, default
# "component_secret_test"), registers the users alice, bob, carol, dave, erin, frank and grace with
# the password "<name>pass", makes a throwaway CA ("$STACK/prosody/certs/ca.crt") and a
# certificate for "localhost" signed by it (STARTTLS on the client port, and direct TLS on
# the client port + 1, for own-account logins), and waits until the ports accept connections.
# Everything lives under "$STACK/prosody"; the PID is in prosody.fg.pid there.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

P="$STACK/prosody"
PIDFILE="$P/prosody.fg.pid"
CFG="$P/prosody.cfg.lua"

start() {
    local c2s component
    c2s=$(cat "$P/ports" | cut -d' ' -f1)
    component=$(cat "$P/ports" | cut -d' ' -f2)
    (close_fds; exec prosody --config "$CFG" -F) >"$P/console.log" 2>&1 </dev/null &
    echo "$!" >"$PIDFILE"
    if ! wait_tcp 127.0.0.1 "$c2s" 20 || ! wait_tcp 127.0.0.1 "$((c2s + 1))" 20 \
        || ! wait_tcp 127.0.0.1 "$component" 20; then
        log "Prosody did not come up; last lines of its logs:"
        tail -n 20 "$P/console.log" "$P/prosody.log" >&2 || true
        stop_pidfile "$PIDFILE"
        exit 1
    fi
    log "Prosody is up: c2s 127.0.0.1:$c2s, component port 127.0.0.1:$component (PID $(cat "$PIDFILE"))"
}

up() {
    local c2s=${1:-15222} component=${2:-15347}
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        log "Prosody is already running (PID $(cat "$PIDFILE")); run '$0 down' first"
        exit 1
    fi
    for port in "$c2s" "$((c2s + 1))" "$component"; do
        if tcp_open 127.0.0.1 "$port"; then
            log "port 127.0.0.1:$port is already in use; stop what listens there first"
            exit 1
        fi
    done
    command -v prosody >/dev/null 2>&1 || need_apt prosody
    command -v openssl >/dev/null 2>&1 || need_apt openssl
    # prosody-modules brings mod_muc_moderation (XEP-0425) for the group chats.
    need_apt prosody-modules
    rm -rf "$P"
    mkdir -p "$P/data" "$P/certs"
    echo "$c2s $component" >"$P/ports"
    make_certs
    sed -e "s#@DIR@#$P#g" -e "s#@C2S_PORT@#$c2s#g" -e "s#@C2S_TLS_PORT@#$((c2s + 1))#g" \
        -e "s#@COMPONENT_PORT@#$component#g" \
        -e "s#@COMPONENT_DOMAIN@#matrix.localhost#g" \
        -e "s#@COMPONENT_SECRET@#${ISTHMUS_COMPONENT_SECRET:-component_secret_test}#g" \
        "$ROOT/tests/fixtures/prosody.cfg.lua" >"$CFG"
    for user in alice bob carol dave erin frank grace; do
        prosodyctl --config "$CFG" register "$user" localhost "${user}pass" >/dev/null
    done
    start
}

# A test CA and a certificate for the virtual host "localhost" signed by it.
make_certs() {
    local d="$P/certs"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj "/CN=isthmus test CA" -keyout "$d/ca.key" -out "$d/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=localhost" -keyout "$d/localhost.key" -out "$d/localhost.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$d/ext.cnf"
    openssl x509 -req -in "$d/localhost.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
        -CAcreateserial -days 30 -out "$d/localhost.crt" -extfile "$d/ext.cnf" 2>/dev/null
}

down() {
    if [ -f "$PIDFILE" ]; then
        local pid
        pid=$(cat "$PIDFILE")
        stop_pidfile "$PIDFILE"
        log "Prosody stopped (PID $pid)"
    else
        log "Prosody is not running (no $PIDFILE)"
    fi
}

case "${1:-}" in
up) shift; up "$@" ;;
down) down ;;
restart)
    down
    start
    ;;
*)
    log "usage: $0 up [C2S_PORT COMPONENT_PORT] | down | restart"
    exit 2
    ;;
esac

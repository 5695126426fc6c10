#!/usr/bin/env bash
# Start or stop a throwaway Synapse homeserver for the tests and the demo.
#
#   scripts/synapse.sh up REGISTRATION_FILE [PORT]
#   scripts/synapse.sh down
#   scripts/synapse.sh restart                (same data, same port and registration)
#
# `up` starts Synapse with server name "localhost", a client-only HTTP listener
# on 127.0.0.1:PORT (default $ISTHMUS_SYNAPSE_PORT, else 18008), a fresh SQLite
# database, open registration, high rate limits and the given appservice
# registration, then waits until it answers. With ISTHMUS_SYNAPSE_POSTGRES_PORT set, the
# database is the PostgreSQL of scripts/postgres.sh on that port instead of SQLite.
# Everything lives under "$STACK/synapse" (STACK: see lib.sh); the log is synapse.log and
# the PID is in synapse.pid there. `down` stops that process by its PID.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SYN="$STACK/synapse"
PIDFILE="$SYN/synapse.pid"
LOGFILE="$SYN/synapse.log"

usage() {
    log "usage: $0 up REGISTRATION_FILE [PORT] | $0 down | $0 restart"
    exit 2
}

up() {
    local registration=${1:-} port=${2:-${ISTHMUS_SYNAPSE_PORT:-18008}}
    [ -n "$registration" ] || usage
    if [ ! -f "$registration" ]; then
        log "registration file not found: $registration"
        exit 1
    fi
    registration=$(cd "$(dirname "$registration")" && pwd)/$(basename "$registration")
    if ! [[ "$port" =~ ^[0-9]+$ ]]; then
        log "port must be a number, got: $port"
        exit 2
    fi

    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        log "Synapse is already running (PID $(cat "$PIDFILE")); run '$0 down' first"
        exit 1
    fi
    if tcp_open 127.0.0.1 "$port"; then
        log "port 127.0.0.1:$port is already in use; stop what listens there or pick another port"
        exit 1
    fi

    need_apt curl
    ensure_venv

    # SQLite by default; PostgreSQL (scripts/postgres.sh) when ISTHMUS_SYNAPSE_POSTGRES_PORT
    # names its port.
    local database
    if [ -n "${ISTHMUS_SYNAPSE_POSTGRES_PORT:-}" ]; then
        if ! "$VENV/bin/python" -c 'import psycopg2' 2>/dev/null; then
            log "installing psycopg2-binary into $VENV"
            "$VENV/bin/python" -m pip install -q --disable-pip-version-check psycopg2-binary
        fi
        database="database:
  name: psycopg2
  args: {user: synapse_user, database: synapse, host: 127.0.0.1, port: $ISTHMUS_SYNAPSE_POSTGRES_PORT, cp_min: 5, cp_max: 10}"
    else
        database="database:
  name: sqlite3
  args:
    database: \"$SYN/data/homeserver.db\""
    fi

    rm -rf "$SYN/data"
    rm -f "$PIDFILE" "$LOGFILE"
    mkdir -p "$SYN/data"

    # Absolute paths throughout: Synapse resolves relative ones against its cwd.
    cat >"$SYN/homeserver.yaml" <<EOF
# Written by scripts/synapse.sh; rewritten on every 'up'.
server_name: "localhost"
public_baseurl: "http://127.0.0.1:$port/"
listeners:
  - port: $port
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
$database
media_store_path: "$SYN/data/media_store"
signing_key_path: "$SYN/data/localhost.signing.key"
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
registration_shared_secret: "test_shared_secret"
macaroon_secret_key: "test_macaroon_secret"
form_secret: "test_form_secret"
enable_registration: true
enable_registration_without_verification: true
app_service_config_files:
  - "$registration"
rc_message: {per_second: 1000, burst_count: 1000}
rc_registration: {per_second: 1000, burst_count: 1000}
rc_login:
  address: {per_second: 1000, burst_count: 1000}
  account: {per_second: 1000, burst_count: 1000}
  failed_attempts: {per_second: 1000, burst_count: 1000}
rc_joins:
  local: {per_second: 1000, burst_count: 1000}
  remote: {per_second: 1000, burst_count: 1000}
rc_invites:
  per_room: {per_second: 1000, burst_count: 1000}
  per_user: {per_second: 1000, burst_count: 1000}
rc_presence:
  per_user: {per_second: 1000, burst_count: 1000}
EOF

    local python="$VENV/bin/python"
    if ! "$python" -m synapse.app.homeserver -c "$SYN/homeserver.yaml" \
        --generate-keys >"$LOGFILE" 2>&1; then
        log "Synapse could not generate its signing key; last lines of $LOGFILE:"
        tail -n 30 "$LOGFILE" >&2
        exit 1
    fi

    start "$port"
    log "Synapse is up on http://127.0.0.1:$port (PID $(cat "$PIDFILE"), log $LOGFILE)"
}

# start PORT : runs Synapse on the written homeserver.yaml and waits until it answers.
start() {
    local port=$1
    # Synapse writes pid_file only when it daemonizes, so keep $! instead.
    # No log_config: Synapse logs to stderr, which goes to the log file.
    (close_fds; exec "$VENV/bin/python" -m synapse.app.homeserver -c "$SYN/homeserver.yaml") \
        >>"$LOGFILE" 2>&1 </dev/null &
    echo "$!" >"$PIDFILE"
    if ! wait_http "http://127.0.0.1:$port/_matrix/client/versions" \
        "$(cat "$PIDFILE")" "$LOGFILE" 60; then
        stop_pidfile "$PIDFILE"
        exit 1
    fi
}

# Stops Synapse and starts it again on the same homeserver.yaml and database, as an operator
# restarting it would; for the tests of what a restart does to the bridge.
restart() {
    if [ ! -f "$SYN/homeserver.yaml" ]; then
        log "Synapse was never started here (no $SYN/homeserver.yaml)"
        exit 1
    fi
    down
    local port
    port=$(sed -n 's/^  - port: \([0-9]*\)$/\1/p' "$SYN/homeserver.yaml")
    start "$port"
    log "Synapse restarted on http://127.0.0.1:$port (PID $(cat "$PIDFILE"))"
}

down() {
    if [ ! -f "$PIDFILE" ]; then
        log "Synapse is not running (no $PIDFILE)"
        return 0
    fi
    local pid
    pid=$(cat "$PIDFILE")
    stop_pidfile "$PIDFILE"
    log "Synapse stopped (PID $pid)"
}

case "${1:-}" in
up)
    shift
    if [ "$#" -lt 1 ] || [ "$#" -gt 2 ]; then
        usage
    fi
    up "$@"
    ;;
down)
    [ "$#" -eq 1 ] || usage
    down
    ;;
restart)
    [ "$#" -eq 1 ] || usage
    restart
    ;;
*)
    usage
    ;;
esac

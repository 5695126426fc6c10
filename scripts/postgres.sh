#!/usr/bin/env bash
# Start or stop a throwaway PostgreSQL cluster for Synapse (the ceiling benchmark).
#
#   scripts/postgres.sh up [PORT]     (default 15432)
#   scripts/postgres.sh down
#
# `up` creates a fresh cluster under "$STACK/postgres" (owned by the `postgres` system user,
# which the server needs: it refuses to run as root), listening on 127.0.0.1:PORT only, with
# a database `synapse` (C collation, as Synapse requires) owned by `synapse_user`. `down`
# stops it by its own PID file.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG="$STACK/postgres"

pgbin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$bin" ]; then
        need_apt postgresql
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    echo "$bin"
}

as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

up() {
    local port=${1:-15432} bin
    bin=$(pgbin)
    if tcp_open 127.0.0.1 "$port"; then
        log "port 127.0.0.1:$port is already in use; stop what listens there or pick another port"
        exit 1
    fi
    down >/dev/null 2>&1 || true
    rm -rf "$PG"
    mkdir -p "$PG"
    chmod 700 "$PG"
    [ "$(id -u)" -ne 0 ] || chown postgres: "$PG"
    as_postgres "$bin/initdb" -D "$PG/data" --locale=C --encoding=UTF8 -U postgres \
        --auth-local=trust --auth-host=trust >"$PG/initdb.log" 2>&1
    as_postgres "$bin/pg_ctl" -D "$PG/data" -l "$PG/postgres.log" \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $PG" -w start >/dev/null
    "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -q \
        -c "CREATE USER synapse_user" \
        -c "CREATE DATABASE synapse ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' TEMPLATE template0 OWNER synapse_user"
    log "PostgreSQL is up on 127.0.0.1:$port (data $PG/data, log $PG/postgres.log)"
}

down() {
    local bin
    bin=$(pgbin)
    if [ -f "$PG/data/postmaster.pid" ]; then
        as_postgres "$bin/pg_ctl" -D "$PG/data" -m fast -w stop >/dev/null
        log "PostgreSQL stopped"
    fi
}

case "${1:-}" in
up) up "${2:-}" ;;
down) down ;;
*)
    log "usage: $0 up [PORT] | $0 down"
    exit 2
    ;;
esac

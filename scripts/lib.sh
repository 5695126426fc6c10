# shellcheck shell=bash
# Helpers shared by the scripts in this folder; source it, do not run it.
#
# Sets:
#   ROOT   the repository root, found from this file's own location
#   STACK  scratch folder for the real servers (default "$ROOT/target/stack",
#          overridable with the environment variable ISTHMUS_STACK)
# Defines:
#   need_apt PKG...                 install the Debian packages that are missing
#   ensure_venv                     Python venv with Synapse, slixmpp and Playwright in "$VENV"
#   wait_http URL PID LOG SECONDS   wait until URL answers while PID lives
#   wait_tcp HOST PORT SECONDS      wait until HOST:PORT accepts connections
#   tcp_open HOST PORT              true if HOST:PORT accepts a connection now
#   stop_pidfile FILE               stop the process whose PID is in FILE

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK=${ISTHMUS_STACK:-$ROOT/target/stack}
mkdir -p "$STACK"
STACK=$(cd "$STACK" && pwd)
# The Python venv with Synapse, shared by the tests and the demo (default
# "$ROOT/target/venv", overridable with ISTHMUS_VENV).
VENV=${ISTHMUS_VENV:-$ROOT/target/venv}
export ROOT STACK VENV

# Synapse version the tests and the demo are checked against.
SYNAPSE_VERSION=1.163.2
# slixmpp plays the XMPP user in the tests and the demo.
SLIXMPP_VERSION=1.17.0
# Playwright drives Debian's chromium as the user's browser in the login page test.
PLAYWRIGHT_VERSION=1.65.2

_isthmus_apt_updated=0

# Print a message on stderr.
log() {
    printf '%s\n' "$*" >&2
}

# need_apt PKG... : install those of the Debian packages PKG that are not
# installed yet. Runs `apt-get update` at most once per shell.
need_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            log "missing Debian packages: ${missing[*]} (run as root or install them)"
            return 1
        fi
    fi
    log "installing Debian packages: ${missing[*]}"
    if [ "$_isthmus_apt_updated" -eq 0 ]; then
        "${sudo[@]}" apt-get update -qq
        _isthmus_apt_updated=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_venv : make sure "$VENV" is a Python venv with Synapse in it.
# An existing venv that already has synapse_homeserver is kept as it is.
ensure_venv() {
    local venv="$VENV"
    if [ -x "$venv/bin/synapse_homeserver" ] && "$venv/bin/python" -c 'import slixmpp, playwright' 2>/dev/null; then
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || need_apt python3
    if [ ! -x "$venv/bin/python" ]; then
        # Debian's python3 needs the python3-venv package for `-m venv`;
        # a failed attempt can leave a venv without pip behind.
        if ! python3 -m venv "$venv" >/dev/null 2>&1 || [ ! -x "$venv/bin/pip" ]; then
            rm -rf "$venv"
            need_apt python3-venv
            python3 -m venv "$venv"
        fi
    fi
    log "installing matrix-synapse==$SYNAPSE_VERSION, slixmpp==$SLIXMPP_VERSION and playwright==$PLAYWRIGHT_VERSION into $venv (about 30 s)"
    # Only Playwright's Python package: its browsers are not downloaded, the test drives
    # Debian's chromium.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        "matrix-synapse==$SYNAPSE_VERSION" "slixmpp==$SLIXMPP_VERSION" \
        "playwright==$PLAYWRIGHT_VERSION"
}

# close_fds : close every file descriptor above 2 of the current shell. Call it in
# the subshell that execs a long-running server, so the server does not keep open
# what its caller held (such as a lock file, which would then stay locked).
close_fds() {
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ] 2>/dev/null; then
            eval "exec $fd>&-" 2>/dev/null || true
        fi
    done
}

# tcp_open HOST PORT : true if a TCP connection to HOST:PORT succeeds now.
tcp_open() {
    # The inner shell expands $1 and $2, hence the single quotes.
    # shellcheck disable=SC2016
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# wait_http URL PID LOG SECONDS : wait until a GET of URL succeeds. Fails
# early if process PID exits, and after SECONDS; on failure prints the last
# lines of LOG.
wait_http() {
    local url=$1 pid=$2 logfile=$3 seconds=$4
    local deadline=$((SECONDS + seconds))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if curl -sf -o /dev/null --max-time 2 "$url"; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "process $pid exited before $url answered; last lines of $logfile:"
            tail -n 30 "$logfile" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    log "$url did not answer within ${seconds} s; last lines of $logfile:"
    tail -n 30 "$logfile" >&2 || true
    return 1
}

# wait_tcp HOST PORT SECONDS : wait until HOST:PORT accepts TCP connections.
wait_tcp() {
    local host=$1 port=$2 seconds=$3
    local deadline=$((SECONDS + seconds))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if tcp_open "$host" "$port"; then
            return 0
        fi
        sleep 0.1
    done
    log "$host:$port did not accept connections within ${seconds} s"
    return 1
}

# stop_pidfile FILE : send SIGTERM to the PID in FILE, wait up to 10 s for it
# to exit, then SIGKILL it; remove FILE. Does nothing if FILE is missing.
stop_pidfile() {
    local file=$1 pid i
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if ! [[ "$pid" =~ ^[0-9]+$ ]]; then
        log "ignoring $file: no PID in it"
        rm -f "$file"
        return 0
    fi
    if kill -TERM "$pid" 2>/dev/null; then
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "process $pid still running after 10 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}

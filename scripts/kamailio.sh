#!/usr/bin/env bash
# Start or stop a throwaway Kamailio SIP server for the tests and the demo.
#
#   scripts/kamailio.sh up [PORT GATEWAY_PORT]    (defaults 15060 15070)
#   scripts/kamailio.sh down
#   scripts/kamailio.sh restart                   (same config and ports; registrations are lost)
#
# Kamailio listens on 127.0.0.1:PORT (UDP and TCP) as registrar and stateful proxy for the SIP
# domain "corp.localhost", whose users are bob, carol, dave, erin and frank with the password
# "<name>pass" (digest realm "corp.localhost"). Requests for the gateway domain
# "matrix.corp.localhost" go to the bridge at 127.0.0.1:GATEWAY_PORT, which Kamailio trusts
# by address: requests with a From in the gateway domain are accepted only from there.
#
# `up` installs the Debian packages when missing (kamailio, and sip-tester for the SIPp
# scenarios of the tests), writes the config, starts Kamailio and waits until it listens on
# both transports. Everything lives under "$STACK/kamailio": the log is kamailio.log, the PID
# is in kamailio.fg.pid, and the control socket for `kamcmd` is run/kamailio_ctl, e.g.
#   kamcmd -s "unix:$STACK/kamailio/run/kamailio_ctl" ul.dump brief
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

K="$STACK/kamailio"
PIDFILE="$K/kamailio.fg.pid"
CFG="$K/kamailio.cfg"
LOGFILE="$K/kamailio.log"

# udp_bound PORT : true if a UDP socket is bound to 127.0.0.1:PORT (read from /proc so that
# it needs neither ss nor netstat).
udp_bound() {
    local addr
    addr=$(printf '0100007F:%04X' "$1")
    grep -q " $addr " /proc/net/udp 2>/dev/null
}

# write_config PORT GATEWAY_PORT : the Kamailio configuration.
write_config() {
    local port=$1 gateway=$2
    # Quoted here-document: Kamailio's own $variables stay as they are; @NAME@ is filled in below.
    cat >"$CFG.in" <<'EOF'
#!KAMAILIO
# Written by scripts/kamailio.sh on every `up`: registrar and stateful proxy for the SIP
# domain @DOMAIN@, and the route to the bridge for the gateway domain @GATEWAY_DOMAIN@.

debug=2
log_stderror=yes
children=2
tcp_children=2
listen=udp:127.0.0.1:@PORT@
listen=tcp:127.0.0.1:@PORT@
# Requests for these hosts (and for the listen address) are for this server.
alias="@DOMAIN@"
alias="@DOMAIN@:@PORT@"
auto_aliases=no
server_header="Server: isthmus-test-kamailio"
user_agent_header="User-Agent: isthmus-test-kamailio"

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "ctl.so"
loadmodule "kex.so"
loadmodule "corex.so"

# A contact that does not answer (a test's SIP user agent that has exited) fails the
# transaction with 408 after 5 s instead of 30 s.
modparam("tm", "fr_timer", 5000)
# Bindings live in memory only: a restart forgets every registration.
modparam("usrloc", "db_mode", 0)
# Short registrations are allowed so that tests can watch a refresh.
modparam("registrar", "min_expires", 10)
modparam("registrar", "default_expires", 3600)
modparam("registrar", "max_expires", 3600)
modparam("auth", "nonce_expire", 300)
modparam("ctl", "binrpc", "unix:@RUN@/kamailio_ctl")

request_route {
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }
    if (!sanity_check("17895", "7")) {
        xlog("L_WARN", "dropped a malformed $rm from $si:$sp\n");
        exit;
    }
    # One line per request, so the log shows what crossed the proxy.
    if (!is_method("ACK")) {
        xlog("L_INFO", "$rm $ru from $fu to $tu type $cT ($pr $si:$sp)\n");
    }

    # Inside a dialog: follow the route set, else the Request-URI.
    if (has_totag()) {
        if (loose_route()) {
            route(RELAY);
        }
        if (is_method("ACK")) {
            if (t_check_trans()) {
                t_relay();
            }
            exit;
        }
        if (uri == myself) {
            route(NOT_FOUND);
        }
        route(RELAY);
    }
    if (is_method("CANCEL")) {
        if (t_check_trans()) {
            t_relay();
        }
        exit;
    }
    # A retransmission of a request already in hand gets the last reply again.
    t_check_trans();

    # Pings addressed to the proxy itself (the bridge checks its link this way).
    if (is_method("OPTIONS") && uri == myself && $rU == $null) {
        sl_send_reply("200", "OK");
        exit;
    }

    if (is_method("REGISTER")) {
        route(REGISTRAR);
    }
    route(AUTH);

    # Stay in the path of subscriptions and calls, so that in-dialog requests pass here too.
    if (is_method("INVITE|SUBSCRIBE")) {
        record_route();
    }

    # The gateway domain belongs to the bridge; keep the transport the request came on.
    if ($rd == "@GATEWAY_DOMAIN@") {
        $du = "sip:127.0.0.1:@GATEWAY_PORT@;transport=" + $pr;
        route(RELAY);
    }

    if (!(uri == myself)) {
        xlog("L_INFO", "403 for $rm $ru: not a local domain\n");
        sl_send_reply("403", "Relaying Forbidden");
        exit;
    }
    if (!lookup("location")) {
        route(NOT_FOUND);
    }
    route(RELAY);
}

# $var(pw): the password of the user in the credentials ($au), empty for anybody else.
route[PASSWORD] {
    $var(pw) = "";
    if ($au =~ "^(bob|carol|dave|erin|frank)$") {
        $var(pw) = $au + "pass";
    }
}

# REGISTER: digest authentication (401), and a user registers only their own address.
route[REGISTRAR] {
    if ($td != "@DOMAIN@") {
        xlog("L_INFO", "403 for REGISTER $tu: not a @DOMAIN@ address\n");
        sl_send_reply("403", "Forbidden: not a @DOMAIN@ address");
        exit;
    }
    route(PASSWORD);
    if ($var(pw) == "" || !pv_www_authenticate("@DOMAIN@", "$var(pw)", "0")) {
        www_challenge("@DOMAIN@", "0");
        exit;
    }
    if ($au != $tU) {
        xlog("L_INFO", "403 for REGISTER $tu: authenticated as $au\n");
        sl_send_reply("403", "Forbidden: the credentials are for another user");
        exit;
    }
    consume_credentials();
    if (!save("location")) {
        sl_reply_error();
    }
    exit;
}

# Who may send: users of @DOMAIN@ after proxy digest authentication (407), wherever they
# send from (a user's own account that the bridge registered included); the gateway
# domain only from the bridge's address; other domains as they are.
route[AUTH] {
    if ($fd == "@DOMAIN@") {
        route(PASSWORD);
        if ($var(pw) == "" || !pv_proxy_authenticate("@DOMAIN@", "$var(pw)", "0")) {
            proxy_challenge("@DOMAIN@", "0");
            exit;
        }
        if ($au != $fU) {
            xlog("L_INFO", "403 for $rm from $fu: authenticated as $au\n");
            sl_send_reply("403", "Forbidden: the credentials are for another user");
            exit;
        }
        consume_credentials();
    } else if ($fd == "@GATEWAY_DOMAIN@") {
        # Over UDP the bridge sends from its listening port; over TCP from a new port each
        # connection, so there the address alone identifies it (a deployment would use TLS
        # or a dedicated address).
        if ($si != "127.0.0.1" || ($sp != @GATEWAY_PORT@ && $pr != "tcp")) {
            xlog("L_INFO", "403 for $rm from $fu: sent from $si:$sp, not from the bridge\n");
            sl_send_reply("403", "Forbidden: only the bridge sends for @GATEWAY_DOMAIN@");
            exit;
        }
    }
}

route[NOT_FOUND] {
    xlog("L_INFO", "404 for $rm $ru: not registered\n");
    sl_send_reply("404", "Not Found");
    exit;
}

route[RELAY] {
    if (!t_relay()) {
        sl_reply_error();
    }
    exit;
}

# One line per reply that passes the proxy.
reply_route {
    xlog("L_INFO", "reply $rs $rr to $rm ($ci) from $si:$sp\n");
}
EOF
    sed -e "s#@PORT@#$port#g" -e "s#@GATEWAY_PORT@#$gateway#g" \
        -e "s#@GATEWAY_DOMAIN@#matrix.corp.localhost#g" -e "s#@DOMAIN@#corp.localhost#g" \
        -e "s#@RUN@#$K/run#g" "$CFG.in" >"$CFG"
    rm -f "$CFG.in"
}

start() {
    local port pid i
    port=$(cut -d' ' -f1 "$K/ports")
    rm -f "$LOGFILE"
    # -DD: stay in the foreground, so $! is the main process; -E: log to stderr.
    (close_fds; exec kamailio -DD -E -f "$CFG" -Y "$K/run" -m 64 -M 8) \
        >"$LOGFILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PIDFILE"
    for ((i = 0; i < 100; i++)); do
        if udp_bound "$port" && tcp_open 127.0.0.1 "$port"; then
            log "Kamailio is up on 127.0.0.1:$port (udp, tcp; PID $pid, log $LOGFILE)"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    log "Kamailio did not come up on 127.0.0.1:$port; last lines of $LOGFILE:"
    tail -n 30 "$LOGFILE" >&2 || true
    stop_pidfile "$PIDFILE"
    exit 1
}

up() {
    local port=${1:-15060} gateway=${2:-15070}
    for p in "$port" "$gateway"; do
        if ! [[ "$p" =~ ^[0-9]+$ ]]; then
            log "ports must be numbers, got: $p"
            exit 2
        fi
    done
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        log "Kamailio is already running (PID $(cat "$PIDFILE")); run '$0 down' first"
        exit 1
    fi
    if udp_bound "$port" || tcp_open 127.0.0.1 "$port"; then
        log "port 127.0.0.1:$port is already in use; stop what listens there first"
        exit 1
    fi
    if ! command -v kamailio >/dev/null 2>&1 || ! command -v sipp >/dev/null 2>&1; then
        need_apt kamailio sip-tester
    fi
    rm -rf "$K"
    mkdir -p "$K/run"
    echo "$port $gateway" >"$K/ports"
    write_config "$port" "$gateway"
    if ! kamailio -c -f "$CFG" >"$K/check.log" 2>&1; then
        log "the Kamailio config $CFG does not parse:"
        tail -n 30 "$K/check.log" >&2
        exit 1
    fi
    start
}

down() {
    if [ -f "$PIDFILE" ]; then
        local pid
        pid=$(cat "$PIDFILE")
        stop_pidfile "$PIDFILE"
        log "Kamailio stopped (PID $pid)"
    else
        log "Kamailio is not running (no $PIDFILE)"
    fi
}

case "${1:-}" in
up)
    shift
    if [ "$#" -gt 2 ]; then
        log "usage: $0 up [PORT GATEWAY_PORT] | down | restart"
        exit 2
    fi
    up "$@"
    ;;
down) down ;;
restart)
    if [ ! -f "$K/ports" ]; then
        log "Kamailio was never started here (no $K/ports); use '$0 up'"
        exit 1
    fi
    down
    start
    ;;
*)
    log "usage: $0 up [PORT GATEWAY_PORT] | down | restart"
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Start or stop a throwaway Kamailio SIP server for the tests and the demo.
#
#   scripts/kamailio.sh up [PORT GATEWAY_PORT]    (defaults 15060 15070)
#   scripts/kamailio.sh down
#   scripts/kamailio.sh restart                   (same config and ports; registrations are lost)
#
# Kamailio listens on 127.0.0.1:PORT (UDP and TCP) and 127.0.0.1:PORT+1 (TLS) as registrar and
# stateful proxy for the SIP domain "corp.localhost", whose users are bob, carol, dave, erin and
# frank with the password "<name>pass" (digest realm "corp.localhost"). Requests for the
# gateway domain "matrix.corp.localhost" go to the bridge at 127.0.0.1:GATEWAY_PORT, which
# Kamailio trusts by address: requests with a From in the gateway domain are accepted only from
# there. Requests for "tls.matrix.corp.localhost" go over TLS to a bridge at
# 127.0.0.1:GATEWAY_PORT+1, and requests from that domain are accepted over TLS only.
# A throwaway CA ("$STACK/kamailio/certs/ca.crt") signs Kamailio's certificate and one for
# that bridge (bridge.crt, bridge.key).
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
enable_tls=yes
listen=udp:127.0.0.1:@PORT@
listen=tcp:127.0.0.1:@PORT@
listen=tls:127.0.0.1:@TLS_PORT@
# Requests for these hosts (and for the listen address) are for this server.
alias="@DOMAIN@"
alias="@DOMAIN@:@PORT@"
auto_aliases=no
server_header="Server: isthmus-test-kamailio"
user_agent_header="User-Agent: isthmus-test-kamailio"

loadmodule "tls.so"
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
modparam("tls", "config", "@TLS_CFG@")

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

    # The TLS gateway domain belongs to a bridge that speaks TLS only.
    if ($rd == "@TLS_GATEWAY_DOMAIN@") {
        $du = "sip:127.0.0.1:@TLS_GATEWAY_PORT@;transport=tls";
        route(RELAY);
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
    } else if ($fd == "@TLS_GATEWAY_DOMAIN@") {
        if ($si != "127.0.0.1" || $pr != "tls") {
            xlog("L_INFO", "403 for $rm from $fu: sent from $si:$sp over $pr, not over TLS from the bridge\n");
            sl_send_reply("403", "Forbidden: only the bridge sends for @TLS_GATEWAY_DOMAIN@, over TLS");
            exit;
        }
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
        -e "s#@TLS_PORT@#$((port + 1))#g" -e "s#@TLS_GATEWAY_PORT@#$((gateway + 1))#g" \
        -e "s#@TLS_GATEWAY_DOMAIN@#tls.matrix.corp.localhost#g" \
        -e "s#@GATEWAY_DOMAIN@#matrix.corp.localhost#g" -e "s#@DOMAIN@#corp.localhost#g" \
        -e "s#@TLS_CFG@#$K/tls.cfg#g" -e "s#@RUN@#$K/run#g" "$CFG.in" >"$CFG"
    rm -f "$CFG.in"
    # Kamailio presents its certificate to TLS clients and checks the bridge's when it
    # connects to it.
    cat >"$K/tls.cfg" <<EOF2
[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
certificate = $K/certs/kamailio.crt
private_key = $K/certs/kamailio.key
ca_list = $K/certs/ca.crt

[client:default]
method = TLSv1.2+
verify_certificate = yes
require_certificate = yes
ca_list = $K/certs/ca.crt
EOF2
}

# A test CA, and certificates signed by it for Kamailio and for a TLS bridge.
make_certs() {
    local d="$K/certs" name san
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj "/CN=isthmus SIP test CA" -keyout "$d/ca.key" -out "$d/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    for name in kamailio bridge; do
        if [ "$name" = kamailio ]; then
            san="IP:127.0.0.1,DNS:corp.localhost"
        else
            san="IP:127.0.0.1,DNS:tls.matrix.corp.localhost"
        fi
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj "/CN=$name" -keyout "$d/$name.key" -out "$d/$name.csr" 2>/dev/null
        printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n' \
            "$san" >"$d/$name.ext"
        openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
            -CAcreateserial -days 30 -out "$d/$name.crt" -extfile "$d/$name.ext" 2>/dev/null
    done
    # rsipstack reads PKCS #8 keys.
    openssl pkcs8 -topk8 -nocrypt -in "$d/bridge.key" -out "$d/bridge.pk8" 2>/dev/null
    mv "$d/bridge.pk8" "$d/bridge.key"
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
        if udp_bound "$port" && tcp_open 127.0.0.1 "$port" && tcp_open 127.0.0.1 "$((port + 1))"; then
            log "Kamailio is up on 127.0.0.1:$port (udp, tcp) and :$((port + 1)) (tls; PID $pid, log $LOGFILE)"
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
    if udp_bound "$port" || tcp_open 127.0.0.1 "$port" || tcp_open 127.0.0.1 "$((port + 1))"; then
        log "port 127.0.0.1:$port or :$((port + 1)) is already in use; stop what listens there first"
        exit 1
    fi
    if ! command -v kamailio >/dev/null 2>&1 || ! command -v sipp >/dev/null 2>&1; then
        need_apt kamailio sip-tester
    fi
    need_apt kamailio-tls-modules
    command -v openssl >/dev/null 2>&1 || need_apt openssl
    rm -rf "$K"
    mkdir -p "$K/run"
    echo "$port $gateway" >"$K/ports"
    make_certs
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

#!/usr/bin/env bash
# Run every check CI runs: rustfmt, clippy, rustdoc, build, then all tests against a
# throwaway Synapse (scripts/synapse.sh), Prosody (scripts/prosody.sh) and
# Kamailio (scripts/kamailio.sh), which are stopped again on exit.
#
#   scripts/test.sh                      everything
#   scripts/test.sh -- ARGS...           pass ARGS to `cargo test`, e.g.
#                                        scripts/test.sh -- --test matrix ping
#
# Installs what is missing first (curl, Kamailio, SIPp, chromium, the Python venv).
# Exits with the status of `cargo test`.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

extra=()
if [ "$#" -gt 0 ]; then
    if [ "$1" != "--" ]; then
        log "usage: $0 [-- CARGO_TEST_ARGS...]"
        exit 2
    fi
    shift
    extra=("$@")
fi

# `--all-targets` would override a target chosen in the extra arguments.
targets=(--all-targets)
for arg in "${extra[@]}"; do
    case "$arg" in
    --) break ;;
    --lib | --bin | --bin=* | --bins | --test | --test=* | --tests | \
        --bench | --bench=* | --benches | --example | --example=* | \
        --examples | --doc | --all-targets)
        targets=()
        break
        ;;
    esac
done

cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SYNAPSE_PORT=18008
export ISTHMUS_STACK=$STACK

section() {
    printf '\n== %s\n' "$*"
}

section "setup"
# kamailio is the SIP server of the tests; sip-tester is SIPp, which plays the SIP users;
# chromium is the browser of the login page test.
need_apt curl kamailio sip-tester chromium
ensure_venv

section "fmt"
cargo fmt --all -- --check

section "clippy"
cargo clippy --all-targets -- -D warnings

section "doc"
# Broken or private links in the public documentation fail like a lint.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --lib --quiet

section "build"
cargo build --all-targets

section "registration"
"$TARGET_DIR/debug/isthmus" generate-registration \
    -c tests/fixtures/bridge.yaml -o "$STACK/registration.yaml"

section "synapse, prosody and kamailio"
synapse_started=0
prosody_started=0
kamailio_started=0
test_status=0
# Called through the EXIT trap, which shellcheck does not follow.
# shellcheck disable=SC2317
cleanup() {
    if [ "$synapse_started" -eq 1 ]; then
        if [ "$test_status" -ne 0 ]; then
            printf '\n== synapse log (last 50 lines of %s)\n' "$STACK/synapse/synapse.log"
            tail -n 50 "$STACK/synapse/synapse.log" || true
        fi
        bash "$ROOT/scripts/synapse.sh" down || true
    fi
    if [ "$prosody_started" -eq 1 ]; then
        if [ "$test_status" -ne 0 ]; then
            printf '\n== prosody log (last 30 lines of %s)\n' "$STACK/prosody/prosody.log"
            tail -n 30 "$STACK/prosody/prosody.log" || true
        fi
        bash "$ROOT/scripts/prosody.sh" down || true
    fi
    if [ "$kamailio_started" -eq 1 ]; then
        if [ "$test_status" -ne 0 ]; then
            printf '\n== kamailio log (last 40 lines of %s)\n' "$STACK/kamailio/kamailio.log"
            tail -n 40 "$STACK/kamailio/kamailio.log" || true
        fi
        bash "$ROOT/scripts/kamailio.sh" down || true
    fi
}
trap cleanup EXIT
synapse_started=1
bash "$ROOT/scripts/synapse.sh" up "$STACK/registration.yaml" "$SYNAPSE_PORT"
prosody_started=1
bash "$ROOT/scripts/prosody.sh" up 15222 15347
# SIP domain corp.localhost on 15060; the gateway domain goes to the bridge on 15070.
kamailio_started=1
bash "$ROOT/scripts/kamailio.sh" up 15060 15070
export ISTHMUS_TEST_HOMESERVER="http://127.0.0.1:$SYNAPSE_PORT"
export ISTHMUS_TEST_PYTHON="$VENV/bin/python"

section "test"
# Integration tests serialise themselves; unit tests run in parallel.
cargo test --no-fail-fast "${targets[@]}" "${extra[@]}" || test_status=$?
if [ "$test_status" -eq 0 ]; then
    section "all checks passed"
else
    section "cargo test failed (status $test_status)"
fi
exit "$test_status"

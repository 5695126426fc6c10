#!/usr/bin/env bash
# The homeserver's ceiling for ordered sends into one room, and isthmus beside it
# (benches/ceiling.rs), on the test stack's real Synapse and Prosody.
#
#   scripts/bench-ceiling.sh               Synapse on SQLite
#   scripts/bench-ceiling.sh --postgres    Synapse on PostgreSQL (scripts/postgres.sh)
#
# Settings of the benchmark itself (CEILING_MESSAGES, CEILING_ROUNDS) pass through the
# environment. The servers are stopped again on exit.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

postgres=0
case "${1:-}" in
"") ;;
--postgres) postgres=1 ;;
*)
    log "usage: $0 [--postgres]"
    exit 2
    ;;
esac

cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SYNAPSE_PORT=18008
PG_PORT=15432
export ISTHMUS_STACK=$STACK

need_apt curl
ensure_venv
# The benchmark's build also builds the release binary it runs.
cargo bench --bench ceiling --no-run
"$TARGET_DIR/release/isthmus" generate-registration \
    -c tests/fixtures/bridge.yaml -o "$STACK/registration.yaml"

synapse_started=0
prosody_started=0
postgres_started=0
# Called through the EXIT trap, which shellcheck does not follow.
# shellcheck disable=SC2317
cleanup() {
    [ "$synapse_started" -eq 0 ] || bash "$ROOT/scripts/synapse.sh" down || true
    [ "$prosody_started" -eq 0 ] || bash "$ROOT/scripts/prosody.sh" down || true
    [ "$postgres_started" -eq 0 ] || bash "$ROOT/scripts/postgres.sh" down || true
}
trap cleanup EXIT

label="Synapse, SQLite"
if [ "$postgres" -eq 1 ]; then
    postgres_started=1
    bash "$ROOT/scripts/postgres.sh" up "$PG_PORT"
    export ISTHMUS_SYNAPSE_POSTGRES_PORT=$PG_PORT
    label="Synapse, PostgreSQL"
fi
synapse_started=1
bash "$ROOT/scripts/synapse.sh" up "$STACK/registration.yaml" "$SYNAPSE_PORT"
prosody_started=1
bash "$ROOT/scripts/prosody.sh" up 15222 15347

CEILING_HS="http://127.0.0.1:$SYNAPSE_PORT" CEILING_LABEL="$label" \
    cargo bench --bench ceiling

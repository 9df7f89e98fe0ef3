#!/usr/bin/env bash
# The automations benchmark (see BENCHMARKS.md): starts PostgreSQL when it is not running,
# builds in release mode, arms two fan_created automations, imports 100,000 new fans (90,000
# waiting a day, 10,000 whose timers come due within one minute) and prints the database's size
# per waiting enrollment, the time from a timer's due time to its send being queued (p50, p99)
# and the send route's latency while the 10,000 come due.
#
#   benches/automations.sh                    # PostgreSQL (API, worker and clock apart)
#   benches/automations.sh --backend both     # and the embedded SQLite default (`all`)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FQ_CACHE/target}"
ensure_postgres
cargo bench --quiet --bench automations -- "$@"

#!/usr/bin/env bash
# The idle benchmark (see BENCHMARKS.md): starts PostgreSQL when it is not running, builds in
# release mode, and prints an idle worker's statements per second and how soon a send stored
# after the idle spell reaches the outbound queue.
#
#   benches/idle.sh                                  # 60 s idle, then 200 sends 250 ms apart
#   benches/idle.sh --seconds 20 --sends 20 --gap-ms 1000
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FQ_CACHE/target}"
ensure_postgres
cargo bench --quiet --bench idle -- "$@"

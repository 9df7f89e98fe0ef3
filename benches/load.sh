#!/usr/bin/env bash
# The load benchmark (see BENCHMARKS.md): starts PostgreSQL when it is not running, builds in
# release mode, and prints the figures for PostgreSQL and for the embedded SQLite default.
#
#   benches/load.sh                                   # both backends, 200, 500 and 1,000 requests/s
#   benches/load.sh --backend postgres --rates 500,1000 --seconds 10
#   benches/load.sh --backend sqlite --only drain --backlog 5000
#   benches/load.sh --backend postgres --only api --routes send --rates 1000
#   benches/load.sh --backend postgres --only api --routes send --rates 1000 --db-sslmode disable
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FQ_CACHE/target}"
ensure_postgres
cargo bench --quiet --bench load -- "$@"

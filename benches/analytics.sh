#!/usr/bin/env bash
# The analytics benchmark (see BENCHMARKS.md): starts PostgreSQL when it is not running,
# builds in release mode, seeds 100,000 fans and 1,000,000 value changes, and prints the
# latency of GET /api/crm/analytics.
#
#   benches/analytics.sh                    # PostgreSQL
#   benches/analytics.sh --backend both     # and the embedded SQLite default
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FQ_CACHE/target}"
ensure_postgres
cargo bench --quiet --bench analytics -- "$@"

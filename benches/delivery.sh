#!/usr/bin/env bash
# Delivery benchmarks (see BENCHMARKS.md): starts PostgreSQL and Redis when they are not
# running and an SQS emulator of its own (a fresh moto_server, since moto slows down with
# everything it has ever held), builds in release mode, and prints the figures.
#
#   benches/delivery.sh accuracy                 # 20 creators x 60 messages at 60/min, 3 dispatchers
#   benches/delivery.sh scale                    # 1,000 creators, rising rates, embedded queue then SQS
#   benches/delivery.sh scale --queue sqs --rates 30,60 --creators 1000 --seconds 30 --dispatchers 2
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FQ_CACHE/target}"
ensure_postgres
ensure_redis
ensure_moto
port="${BENCH_MOTO_PORT:-5056}"
"$FQ_CACHE/moto-venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$FQ_CACHE/moto-bench.log" 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null || true' EXIT
export TEST_AWS_ENDPOINT_URL="http://127.0.0.1:$port"
wait_for "moto_server on $port" 60 curl -fsS -o /dev/null "$TEST_AWS_ENDPOINT_URL/moto-api/data.json"
cargo bench --quiet --bench delivery -- "$@"

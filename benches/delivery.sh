#!/usr/bin/env bash
# Delivery benchmarks (see BENCHMARKS.md): starts PostgreSQL, Redis and the SQS emulator when
# they are not running, builds in release mode, and prints the figures.
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
exec cargo bench --quiet --bench delivery -- "$@"

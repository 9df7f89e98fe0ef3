#!/usr/bin/env bash
# The web app benchmark (see BENCHMARKS.md): builds in release mode, starts the embedded
# default (`fanqueue all --platform-sim`, SQLite in a temp dir), seeds 10,000 fans through a CSV
# import, and prints how long each page of the app takes from navigation to its main content
# in headless Chromium (median and worst of 9). Prints figures; asserts nothing.
#
#   benches/app.sh            # release build
#   benches/app.sh --debug    # the debug build the tests use
#   FANS=50000 RUNS=15 benches/app.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export FANQUEUE_PROFILE=release
[ "${1:-}" = --debug ] && FANQUEUE_PROFILE=debug
# Seeding writes faster than one creator's default quota of 60 writes a minute.
export WRITE_LIMIT_PER_MINUTE="${WRITE_LIMIT_PER_MINUTE:-100000}"
exec scripts/browser-test --bench

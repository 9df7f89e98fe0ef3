#!/usr/bin/env bash
# Import benchmark: fanqueue's CSV import on PostgreSQL against plain COPY, same rows, same run.
#
#   benches/import.sh              # a 10 MB file (~150k rows) and a 1M-row file
#   ROWS="20000" benches/import.sh # other sizes
#
# Prints, per file: rows, fanqueue rows/s (job start to finish, as GET /api/jobs reports),
# COPY rows/s into an unindexed scratch table (the raw ceiling) and into a scratch table with
# a unique key like fans' (what any importer of fans pays for the key), the ratios of
# fanqueue to each, the database's own ceiling for fanqueue's semantics (one INSERT … SELECT …
# ON CONFLICT from the COPY'd rows into the real, indexed fans table, run inside PostgreSQL),
# and the worker's peak RSS (VmHWM of a worker started fresh per file).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FQ_CACHE/target}"
ensure_postgres

[ -n "${BENCH_SKIP_BUILD:-}" ] || cargo build --release --quiet --bin fanqueue
BIN="$CARGO_TARGET_DIR/release/fanqueue"
WORK=$(mktemp -d)
DB="fq_bench_$(date +%s)"
ADMIN="$TEST_POSTGRES_URL"
URL="${ADMIN%/*}/$DB"
PORT="${BENCH_PORT:-18080}"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
psql "$ADMIN" -qc "CREATE DATABASE $DB" >/dev/null

export DATABASE_URL="$URL" JWT_SECRET="bench-secret-0123456789abcdef" LISTEN_ADDR="127.0.0.1:$PORT" \
       IMPORT_MAX_BYTES=$((1024 * 1024 * 1024)) IMPORTS_PER_HOUR=1000 DATA_DIR="$WORK/data" LOG_FORMAT=json RUST_LOG=warn
"$BIN" serve 2>"$WORK/api.log" & pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

# generate FILE ROWS: the SPEC's header, distinct handles, realistic values.
generate() {
  python3 - "$1" "$2" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
tiers = ["Basic", "Premium", "VIP"]
with open(path, "w") as f:
    f.write("Username,Display Name,Email,Subscription Tier,Total Spent,Last Seen\n")
    for i in range(n):
        f.write(f'fan{i:07d},Fan Number {i},fan{i}@example.com,{tiers[i % 3]},"${(i * 37) % 100000:,}.{i % 100:02d}",2025-{1 + i % 12:02d}-{1 + i % 28:02d}\n')
PY
}

printf '\n%-8s %8s %6s %12s %12s %6s %14s %6s %14s %10s\n' file rows MB "fanqueue r/s" "COPY r/s" ratio "COPY+key r/s" ratio "SQL upsert r/s" "RSS MB"
user=0
specs="${ROWS:-10mb 1000000}"
for spec in $specs; do
  if [ "$spec" = 10mb ]; then rows=150000; else rows=$spec; fi
  file="$WORK/fans_$rows.csv"
  generate "$file" "$rows"
  if [ "$spec" = 10mb ]; then   # trim to just under 10 MB, keeping whole lines
    head -c $((10 * 1024 * 1024)) "$file" | head -n -1 > "$file.tmp" && mv "$file.tmp" "$file"
    rows=$(($(wc -l < "$file") - 1))
  fi
  mb=$(awk -v b="$(stat -c %s "$file")" 'BEGIN { printf "%.1f", b / 1048576 }')

  # COPY into an unindexed scratch table: the practical ceiling.
  psql "$URL" -qc "SET client_min_messages = warning; DROP TABLE IF EXISTS copy_scratch; CREATE TABLE copy_scratch (username text, display_name text, email text, tier text, spent text, last_seen text)" >/dev/null
  t0=$(date +%s.%N)
  psql "$URL" -qc "\\copy copy_scratch FROM '$file' WITH (FORMAT csv, HEADER true)" >/dev/null
  t1=$(date +%s.%N)
  copy_rps=$(awk -v n="$rows" -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", n / (b - a) }')
  psql "$URL" -qc "DROP TABLE IF EXISTS copy_keyed; CREATE TABLE copy_keyed (username text, display_name text, email text, tier text, spent text, last_seen text); CREATE UNIQUE INDEX ON copy_keyed (username)" >/dev/null
  t0=$(date +%s.%N)
  psql "$URL" -qc "\\copy copy_keyed FROM '$file' WITH (FORMAT csv, HEADER true)" >/dev/null
  t1=$(date +%s.%N)
  keyed_rps=$(awk -v n="$rows" -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", n / (b - a) }')
  t0=$(date +%s.%N)
  psql "$URL" -qc "INSERT INTO fans AS f (user_id, platform, handle, name, email, tags, value_cents, created_at, updated_at)
                   SELECT 0, 'onlyfans', '@' || lower(username), display_name, email, jsonb_build_array(tier), 0, now(), now()
                   FROM copy_scratch
                   ON CONFLICT (user_id, platform, handle) DO UPDATE SET name = EXCLUDED.name" >/dev/null
  t1=$(date +%s.%N)
  upsert_rps=$(awk -v n="$rows" -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", n / (b - a) }')
  psql "$URL" -qc "DELETE FROM fans WHERE user_id = 0" >/dev/null

  # fanqueue: a fresh worker process per file, so its VmHWM is this import's peak.
  "$BIN" worker 2>"$WORK/worker_$rows.log" & wpid=$!; pids+=($wpid)
  for _ in $(seq 100); do grep -q '"workers running"' "$WORK/worker_$rows.log" && break; sleep 0.1; done
  user=$((user + 1))
  token=$("$BIN" token --user-id "$user")
  job=$(curl -fsS -H "Authorization: Bearer $token" -F "file=@$file" "http://127.0.0.1:$PORT/api/onlyfans/import/csv" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobId"])')
  while :; do
    out=$(curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$PORT/api/jobs/$job")
    status=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])' <<<"$out")
    case "$status" in succeeded) break ;; failed|cancelled) echo "import $status: $out" >&2; exit 1 ;; esac
    sleep 0.2
  done
  rss_kb=$(awk '/VmHWM/ { print $2 }' "/proc/$wpid/status")
  kill "$wpid"; wait "$wpid" 2>/dev/null || true
  fq_rps=$(python3 -c '
import json, sys
from datetime import datetime
j = json.loads(sys.argv[1]); s = j["result"]["summary"]
assert s["successfulInserts"] == int(sys.argv[2]), s
t = lambda v: datetime.fromisoformat(v.replace("Z", "+00:00"))
print(int(int(sys.argv[2]) / (t(j["finishedAt"]) - t(j["startedAt"])).total_seconds()))' "$out" "$rows")
  ratio=$(awk -v a="$fq_rps" -v b="$copy_rps" 'BEGIN { printf "%.2f", a / b }')
  keyed_ratio=$(awk -v a="$fq_rps" -v b="$keyed_rps" 'BEGIN { printf "%.2f", a / b }')
  printf '%-8s %8d %6s %12d %12d %6s %14d %6s %14d %10d\n' "$spec" "$rows" "$mb" "$fq_rps" "$copy_rps" "$ratio" "$keyed_rps" "$keyed_ratio" "$upsert_rps" $((rss_kb / 1024))
done

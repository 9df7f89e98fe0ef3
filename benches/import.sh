#!/usr/bin/env bash
# Import benchmark: fanqueue's CSV import on PostgreSQL (and on the embedded SQLite default)
# against what the database itself does with the same rows, in the same run.
#
#   benches/import.sh              # a 10 MB file (~132k rows) and a 1M-row file
#   ROWS="20000" benches/import.sh # other sizes
#   RUNS=5 benches/import.sh       # timed steps repeated (default 3), medians printed
#
# Prints, per file:
#   fanqueue r/s    the import, job start to finish as GET /api/jobs reports it
#   again r/s       the same file imported again (every row unchanged), and `again x`, how
#                   many times faster than the first; `hist+` is the value-history rows the
#                   second import wrote (it must write none)
#   upsert r/s      PostgreSQL's own ceiling for the import's work: one INSERT … SELECT … ON
#                   CONFLICT from the COPY'd file into the real fans table, every trigger and
#                   index on, with the file's amounts and the page index in the same transaction
#   bare r/s        the same statement with the bookkeeping off (the value-history and revenue
#                   triggers disabled, no page index): `fq/ups` and `ups/bare` are the ratios
#   COPY r/s        COPY into an unindexed scratch table (the raw ceiling)
#   RSS MB          the worker's peak for one import of the file (VmHWM of a worker started
#                   fresh per file, after its first import; the peak over all is printed too)
#   SQLite r/s      the same file imported by `fanqueue all` on the embedded SQLite default
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

# upsert_in_db USER BOOKKEEPING: the import's statement run inside PostgreSQL on the COPY'd
# rows for a fresh creator; prints its rows/s. BOOKKEEPING=off disables fans' own triggers
# (value history, revenue, deletes) and leaves the page index out.
upsert_in_db() {
  local user=$1 on=$2 sql t0 t1
  sql="INSERT INTO fans AS f (user_id, platform, handle, name, email, tags, value_cents, value_source,
                              value_at, last_seen_at, created_at, updated_at)
       SELECT $user, 'onlyfans', '@' || lower(username), NULLIF(display_name, ''), NULLIF(email, ''),
              jsonb_build_array(tier), round(replace(replace(spent, '\$', ''), ',', '')::numeric * 100)::int8,
              'import', now(), last_seen::date::timestamptz, now(), now()
       FROM copy_scratch
       ON CONFLICT (user_id, platform, handle) DO UPDATE SET name = EXCLUDED.name, value_cents = EXCLUDED.value_cents
       RETURNING id, (xmax = 0) AS inserted"
  if [ "$on" = on ]; then
    sql="BEGIN; WITH up AS ($sql)
         INSERT INTO fan_blocks (user_id, first_id, fans)
         SELECT $user, MIN(id), COUNT(*)
         FROM (SELECT id, (ROW_NUMBER() OVER (ORDER BY id) - 1) / 1000 AS block FROM up WHERE inserted) n
         GROUP BY block; COMMIT;"
  else
    sql="BEGIN; ALTER TABLE fans DISABLE TRIGGER USER; WITH up AS ($sql) SELECT count(*) FROM up;
         ALTER TABLE fans ENABLE TRIGGER USER; COMMIT;"
  fi
  t0=$(date +%s.%N)
  psql "$URL" -v ON_ERROR_STOP=1 -qc "$sql" >/dev/null
  t1=$(date +%s.%N)
  awk -v n="$rows" -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", n / (b - a) }'
}

# import_job PORT USER FILE: uploads FILE as USER, waits for the job; prints its rows/s.
import_job() {
  local port=$1 user=$2 file=$3 token job out status
  token=$("$BIN" token --user-id "$user")
  job=$(curl -fsS -H "Authorization: Bearer $token" -F "file=@$file" "http://127.0.0.1:$port/api/onlyfans/import/csv" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobId"])')
  while :; do
    out=$(curl -fsS -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/jobs/$job")
    status=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])' <<<"$out")
    case "$status" in succeeded) break ;; failed|cancelled) echo "import $status: $out" >&2; exit 1 ;; esac
    sleep 0.2
  done
  python3 -c '
import json, sys
from datetime import datetime
j = json.loads(sys.argv[1]); s = j["result"]["summary"]
n = int(sys.argv[2])
assert s["successfulInserts"] + s["updated"] + s["unchanged"] == n and s["errorCount"] == 0, s
t = lambda v: datetime.fromisoformat(v.replace("Z", "+00:00"))
print(int(n / (t(j["finishedAt"]) - t(j["startedAt"])).total_seconds()))' "$out" "$rows"
}

# settle: no vacuum or checkpoint left over from the previous step runs during the next one.
settle() {
  psql "$URL" -q -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null
}

# median N...: the middle value (the lower of the two middle ones for an even count).
median() {
  printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

history_rows() {
  psql "$URL" -tAc "SELECT count(*) FROM fan_value_changes WHERE user_id = $1"
}

# The embedded default, for the SQLite column: `all` on a fresh data directory.
SQLITE_PORT=$((PORT + 1))
(unset DATABASE_URL; DATA_DIR="$WORK/sqlite" LISTEN_ADDR="127.0.0.1:$SQLITE_PORT" exec "$BIN" all 2>"$WORK/sqlite.log") & pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$SQLITE_PORT/healthz" >/dev/null && break; sleep 0.1; done

printf '\n%-6s %8s %5s %9s %9s %7s %5s %9s %9s %6s %8s %9s %6s %9s\n' file rows MB "fq r/s" "again r/s" "again x" hist+ \
  "upsert r/s" "bare r/s" fq/ups ups/bare "COPY r/s" "RSS MB" "SQLite r/s"
user=0
specs="${ROWS:-10mb 1000000}"
RUNS="${RUNS:-3}"
for spec in $specs; do
  if [ "$spec" = 10mb ]; then rows=150000; else rows=$spec; fi
  file="$WORK/fans_$rows.csv"
  generate "$file" "$rows"
  if [ "$spec" = 10mb ]; then   # trim to just under 10 MB, keeping whole lines
    head -c $((10 * 1024 * 1024)) "$file" | head -n -1 > "$file.tmp" && mv "$file.tmp" "$file"
    rows=$(($(wc -l < "$file") - 1))
  fi
  mb=$(awk -v b="$(stat -c %s "$file")" 'BEGIN { printf "%.1f", b / 1048576 }')

  # COPY into an unindexed scratch table: the raw ceiling, and the rows the upserts read.
  psql "$URL" -qc "SET client_min_messages = warning; DROP TABLE IF EXISTS copy_scratch; CREATE TABLE copy_scratch (username text, display_name text, email text, tier text, spent text, last_seen text)" >/dev/null
  t0=$(date +%s.%N)
  psql "$URL" -qc "\\copy copy_scratch FROM '$file' WITH (FORMAT csv, HEADER true)" >/dev/null
  t1=$(date +%s.%N)
  copy_rps=$(awk -v n="$rows" -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", n / (b - a) }')
  # Each timed step RUNS times (the median is printed): on a 2-core machine one run of the
  # 10 MB file moves by 10 % from the next.
  bare=(); ups=(); fq=(); rss_kb=
  for _ in $(seq "$RUNS"); do
    settle; user=$((user + 1)); bare+=("$(upsert_in_db "$user" off)")
    settle; user=$((user + 1)); ups+=("$(upsert_in_db "$user" on)")
    psql "$URL" -q -c "DELETE FROM fans" -c "DELETE FROM fan_blocks" >/dev/null
  done
  bare_rps=$(median "${bare[@]}"); upsert_rps=$(median "${ups[@]}")

  # fanqueue: a fresh worker process per file, so its VmHWM is this file's peak. Each run is
  # a first import for a creator of its own on an emptied table; the last one's file is then
  # imported again.
  "$BIN" worker 2>"$WORK/worker_$rows.log" & wpid=$!; pids+=($wpid)
  for _ in $(seq 100); do grep -q '"workers running"' "$WORK/worker_$rows.log" && break; sleep 0.1; done
  for _ in $(seq "$RUNS"); do
    psql "$URL" -q -c "DELETE FROM fans" -c "DELETE FROM fan_blocks" >/dev/null
    settle; user=$((user + 1)); fq+=("$(import_job "$PORT" "$user" "$file")")
    [ -n "${rss_kb:-}" ] || rss_kb=$(awk '/VmHWM/ { print $2 }' "/proc/$wpid/status")
  done
  fq_rps=$(median "${fq[@]}")
  before=$(history_rows "$user")
  settle
  again_rps=$(import_job "$PORT" "$user" "$file")
  written=$(( $(history_rows "$user") - before ))
  rss_all_kb=$(awk '/VmHWM/ { print $2 }' "/proc/$wpid/status")
  kill "$wpid"; wait "$wpid" 2>/dev/null || true
  sqlite_rps=$(import_job "$SQLITE_PORT" "$user" "$file")
  echo "runs: fanqueue ${fq[*]}; upsert ${ups[*]}; bare ${bare[*]}; worker peak over all $((RUNS + 1)) imports $((rss_all_kb / 1024)) MB" >&2

  printf '%-6s %8d %5s %9d %9d %7s %5d %9d %9d %6s %8s %9d %6d %9d\n' "$spec" "$rows" "$mb" "$fq_rps" "$again_rps" \
    "$(awk -v a="$again_rps" -v b="$fq_rps" 'BEGIN { printf "%.1f", a / b }')" "$written" "$upsert_rps" "$bare_rps" \
    "$(awk -v a="$fq_rps" -v b="$upsert_rps" 'BEGIN { printf "%.2f", a / b }')" \
    "$(awk -v a="$upsert_rps" -v b="$bare_rps" 'BEGIN { printf "%.2f", a / b }')" "$copy_rps" $((rss_kb / 1024)) "$sqlite_rps"
done

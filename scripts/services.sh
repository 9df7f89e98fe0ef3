# Sourced by scripts/test: starts the services the test suite talks to when they are not
# running, installing them from the machine's packages when absent. Fails loudly otherwise.
#   PostgreSQL 127.0.0.1:5432, Redis 127.0.0.1:6379, moto_server (SQS/S3 emulator) 127.0.0.1:5055

FQ_CACHE="${FANQUEUE_CACHE:-$HOME/.cache/fanqueue}"
MOTO_PORT="${MOTO_PORT:-5055}"
FQ_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export TEST_AWS_ENDPOINT_URL="${TEST_AWS_ENDPOINT_URL:-http://127.0.0.1:$MOTO_PORT}"
export TEST_PYTHON="$FQ_CACHE/moto-venv/bin/python"
# The emulator accepts any credentials; real ones already in the environment are kept.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}"

die() { echo "scripts/services.sh: $*" >&2; exit 1; }
say() { echo "==> $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

apt_install() {
  command -v apt-get >/dev/null || die "cannot install $* (no apt-get); install it and re-run"
  if [ -z "${FQ_APT_UPDATED:-}" ]; then as_root apt-get update -qq >&2; FQ_APT_UPDATED=1; fi
  say "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# wait_for NAME SECONDS CMD...: polls CMD until it succeeds.
wait_for() {
  local name=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$name did not come up within ${secs}s"
}

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }

ensure_postgres() {
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  if ! pg_up 2>/dev/null; then
    say "starting PostgreSQL"
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    wait_for PostgreSQL 60 pg_up
  fi
  # A fresh install wants a password over TCP: give the postgres role the one the tests use
  # (with trust auth, as on CI machines, the password is simply ignored).
  if ! psql "$TEST_POSTGRES_URL" -Atqc 'SELECT 1' >/dev/null 2>&1; then
    as_root su postgres -c "psql -qc \"ALTER ROLE postgres PASSWORD 'postgres'\"" >&2 \
      || die "cannot reach PostgreSQL at $TEST_POSTGRES_URL"
    psql "$TEST_POSTGRES_URL" -Atqc 'SELECT 1' >/dev/null || die "cannot log in to $TEST_POSTGRES_URL"
  fi
}

redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }

ensure_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  if ! redis_up; then
    say "starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >&2
    wait_for Redis 30 redis_up
  fi
}

moto_up() { curl -fsS -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/data.json"; }
moto_down() { ! moto_up; }

ensure_moto() {
  local venv="$FQ_CACHE/moto-venv"
  command -v curl >/dev/null || apt_install curl
  if [ ! -x "$venv/bin/moto_server" ]; then
    say "installing moto[server] into $venv"
    mkdir -p "$FQ_CACHE"
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]' boto3 >&2 \
      || die "pip install moto[server] failed"
  fi
  # A moto_server started without the patch (by an older checkout) is replaced once.
  if pkill -f "bin/moto_server -H 127.0.0.1 -p $MOTO_PORT"; then
    say "replacing the unpatched moto_server on 127.0.0.1:$MOTO_PORT"
    wait_for "the unpatched moto_server's exit" 30 moto_down
  fi
  if ! moto_up; then
    say "starting moto_server on 127.0.0.1:$MOTO_PORT"
    # moto's own server, with its SQS deletes made safe against a concurrent send (see there).
    nohup "$venv/bin/python" "$FQ_SCRIPTS/moto_server.py" -H 127.0.0.1 -p "$MOTO_PORT" \
      >"$FQ_CACHE/moto.log" 2>&1 &
    wait_for moto_server 60 moto_up
  fi
}

# Shared helpers of the deploy/local scripts. Sourced, not run.
# State (pid files, logs, markers) lives in .local/ at the repository root.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${VIEWPIPE_STATE:-$ROOT/.local}"
mkdir -p "$STATE"

# The machine's Postgres, and the private cluster deploy/local/up creates when that
# one does not let it in: as root under /var/lib/postgresql (the postgres user must
# reach it), otherwise in .local/.
PG_MACHINE_PORT="${VIEWPIPE_PG_MACHINE_PORT:-5432}"
PG_PRIVATE_PORT="${VIEWPIPE_PG_PORT:-5439}"
if [ "$(id -u)" -eq 0 ]; then
  PG_PRIVATE_DIR="/var/lib/postgresql/viewpipe-$(printf '%s' "$STATE" | cksum | cut -d' ' -f1)"
else
  PG_PRIVATE_DIR="$STATE/pg"
fi

# The port of the stack's Postgres, as deploy/local/up chose it.
pg_port() { cat "$STATE/postgres.port" 2>/dev/null || echo 5432; }
database_url() { echo "postgres://postgres@127.0.0.1:$(pg_port)/viewpipe"; }

say() { printf '[viewpipe] %s\n' "$*"; }
die() { printf '[viewpipe] error: %s\n' "$*" >&2; exit 1; }

# Runs a command as root (directly, or through sudo).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root (or sudo) to run: $*"; fi
}

APT_UPDATED=
apt_install() {
  if [ -z "$APT_UPDATED" ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  say "installing from Debian's packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# True when something accepts TCP connections on host:port.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() { # host port seconds what
  local i
  for ((i = 0; i < $3 * 10; i++)); do port_open "$1" "$2" && return 0; sleep 0.1; done
  die "$4 did not start listening on $1:$2 within $3 s"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

ensure_build_tools() {
  command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"
  local missing=()
  command -v cc >/dev/null || missing+=(build-essential)
  command -v make >/dev/null || missing+=(make)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  [ -e /usr/include/zlib.h ] || missing+=(zlib1g-dev)
  # librdkafka is built with OpenSSL (Kafka over TLS, SASL/SCRAM).
  [ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
  command -v curl >/dev/null || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

# The browser tests (tests/tests/e2e/browser.rs) drive a real headless Chromium.
ensure_chromium() {
  if [ -n "${CHROMIUM:-}" ]; then
    [ -x "$CHROMIUM" ] || die "CHROMIUM=$CHROMIUM is not an executable"
    return 0
  fi
  command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || apt_install chromium
}

build_bins() {
  say "building the binaries (cargo build --bins)"
  (cd "$ROOT" && cargo build --quiet --workspace --bins) || die "cargo build failed"
}

# The local stack's Postgres, for deploy/local/up (and deploy/check/local-postgres).
# Sourced after lib.sh, not run.
#
# The stack's Postgres: the machine's own on 127.0.0.1:5432 when it lets the postgres
# role in without a password, otherwise a private cluster of this checkout (its own
# data directory, 127.0.0.1:$PG_PRIVATE_PORT, trust for loopback only). The scripts
# never change the configuration of a database they did not create.
ensure_postgres() {
  command -v psql >/dev/null || apt_install postgresql-client
  if [ "${VIEWPIPE_PG:-}" != private ] && pg_lets_in "$PG_MACHINE_PORT"; then
    say "Postgres on 127.0.0.1:$PG_MACHINE_PORT lets postgres in: reusing it"
    echo "$PG_MACHINE_PORT" > "$STATE/postgres.port"
    return
  fi
  if pg_port_open "$PG_MACHINE_PORT" && [ "${VIEWPIPE_PG:-}" != private ]; then
    say "Postgres on 127.0.0.1:$PG_MACHINE_PORT asks for a password: leaving it alone, using a private cluster"
  fi
  ensure_private_postgres
  echo "$PG_PRIVATE_PORT" > "$STATE/postgres.port"
}

pg_port_open() { port_open 127.0.0.1 "$1"; }
pg_lets_in() { # port
  pg_port_open "$1" &&
    PGCONNECT_TIMEOUT=3 psql -w -h 127.0.0.1 -p "$1" -U postgres -d postgres -tAc 'select 1' \
      >/dev/null 2>&1
}

ensure_private_postgres() {
  local data="$PG_PRIVATE_DIR/data"
  if pg_lets_in "$PG_PRIVATE_PORT" && [ -f "$STATE/postgres.private" ]; then
    say "private Postgres answers on 127.0.0.1:$PG_PRIVATE_PORT: reusing it"
    return
  fi
  pg_port_open "$PG_PRIVATE_PORT" &&
    die "127.0.0.1:$PG_PRIVATE_PORT is taken by another program; choose a free port with VIEWPIPE_PG_PORT"
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
  local bin; bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  if [ ! -f "$data/PG_VERSION" ]; then
    say "creating a private Postgres cluster in $data"
    mkdir -p "$PG_PRIVATE_DIR"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$PG_PRIVATE_DIR"
    as_pg "$bin/initdb" -A trust -U postgres -D "$data" >/dev/null ||
      die "initdb failed in $data"
  fi
  say "starting the private Postgres on 127.0.0.1:$PG_PRIVATE_PORT (log in $PG_PRIVATE_DIR/log)"
  as_pg "$bin/pg_ctl" -D "$data" -l "$PG_PRIVATE_DIR/log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PRIVATE_PORT -c unix_socket_directories=$PG_PRIVATE_DIR" \
    start >/dev/null || die "the private Postgres did not start; see $PG_PRIVATE_DIR/log"
  echo "$bin $data" > "$STATE/postgres.private"
}

# initdb and pg_ctl refuse to run as root: as root they run as the postgres user.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

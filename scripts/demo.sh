#!/usr/bin/env bash
# The README's first command: a throwaway PostgreSQL primary under ./.demo/, a safekeeper as its
# synchronous standby, a short pgbench, then proof that the safekeeper's WAL is the primary's WAL
# (byte comparison and pg_waldump). Needs no cloud account. Cleans up unless --keep is given.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0; [ "${1:-}" = "--keep" ] && keep=1
root=$(pwd); demo="$root/.demo"

. scripts/lib/find_pg.sh
if ! bindir=$(find_pg_bindir); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing PostgreSQL server packages (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    bindir=$(find_pg_bindir)
  else
    echo "PostgreSQL server binaries are missing: install them (e.g. 'sudo apt-get install postgresql') or set PG_BINDIR" >&2
    exit 1
  fi
fi
echo "==> building safekeeper"
cargo build --release -p safekeeper --locked -q
sk="$root/target/release/safekeeper"

asuser=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  asuser=(runuser -u postgres --)
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
http=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
rm -rf "$demo"; mkdir -p "$demo/primary"; chmod 755 "$demo"
[ "$(id -u)" = 0 ] && chown postgres "$demo/primary"
sk_pid=""
cleanup() {
  [ -n "$sk_pid" ] && kill "$sk_pid" 2>/dev/null && wait "$sk_pid" 2>/dev/null || true
  "${asuser[@]}" "$bindir/pg_ctl" -D "$demo/primary/data" -m immediate stop >/dev/null 2>&1 || true
  if [ "$keep" = 0 ]; then rm -rf "$demo"; else echo "kept $demo"; fi
}
trap cleanup EXIT

echo "==> creating a primary on 127.0.0.1:$port"
"${asuser[@]}" "$bindir/initdb" -q --no-sync -U postgres -A trust -D "$demo/primary/data" >/dev/null
cat >> "$demo/primary/data/postgresql.auto.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$demo/primary'
wal_level = replica
CONF
"${asuser[@]}" "$bindir/pg_ctl" -D "$demo/primary/data" -l "$demo/primary/server.log" -w start >/dev/null
psql() { "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAtX "$@"; }
"$bindir/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s 1 -q postgres 2>/dev/null

echo "==> starting the safekeeper (data in .demo/safekeeper)"
"$sk" run --id 1 --data-dir "$demo/safekeeper" --http-addr "127.0.0.1:$http" \
  --primary "host=127.0.0.1 port=$port user=postgres" 2>"$demo/safekeeper.log" &
sk_pid=$!
for _ in $(seq 100); do
  [ "$(psql -c "SELECT state FROM pg_stat_replication WHERE application_name='safekeeper1'")" = streaming ] && break
  sleep 0.2
done
psql -c "ALTER SYSTEM SET synchronous_standby_names = 'safekeeper1'" -c "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
psql -c "SELECT application_name, state, sync_state FROM pg_stat_replication" | sed 's/^/    pg_stat_replication: /'

echo "==> 5 s of pgbench: every commit waits for the safekeeper's fsync"
"$bindir/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c 4 -j 2 -T 5 postgres 2>/dev/null | grep -E "^(tps|number of transactions actually)" | sed 's/^/    /'
end=$(psql -c "SELECT pg_switch_wal()")
psql -c "SELECT 'primary flushed ' || pg_current_wal_flush_lsn() || ', safekeeper flushed ' || flush_lsn FROM pg_stat_replication" | sed 's/^/    /'
sleep 1

echo "==> the safekeeper's WAL is the primary's WAL"
wal="$demo/safekeeper/main/wal"
same=0
for f in "$wal"/????????????????????????; do
  n=$(basename "$f")
  if [ -f "$demo/primary/data/pg_wal/$n" ]; then
    cmp -s "$f" "$demo/primary/data/pg_wal/$n" && same=$((same+1)) || { echo "    $n DIFFERS"; exit 1; }
  fi
done
echo "    $same completed segment(s) byte-identical to pg_wal"
first=$(ls "$wal" | grep -E '^[0-9A-F]{24}$' | head -1)
"$bindir/pg_waldump" --path "$wal" --stats=record "$first" 2>/dev/null | head -8 | sed 's/^/    pg_waldump: /'
"$sk" control-file show "$demo/safekeeper/main/safekeeper.control" | head -12 | sed 's/^/    /'
echo "==> done"

#!/usr/bin/env bash
# Restore throughput of `safekeeper restore-wal` (segments/s) against a local moto S3 server.
#   bench/restore_bench.sh [--segments 64] [--prefetch 8] [--segment-mb 16] [--object-format v1|raw]
#       synthetic segments, restore-wal with --prefetch 0 vs the given depths (bench/restore_bench.py)
#   bench/restore_bench.sh --vs-pgbackrest [--quick] [--segments 64] [--rounds 2] [--latency-ms 20] [--tools ...] [--keep]
#       real WAL, restore-wal (default, --prefetch 0, --prefetch 8) next to `pgbackrest archive-get`
#       (serial and async), direct and with added latency per request
#       (bench/restore_vs_pgbackrest.py; needs Debian's pgbackrest, installed with apt-get when
#       missing and root). Hard limit: 30 min (--quick 8), then SIGTERM, on which the Python side
#       stops every process it started by PID.
# Builds the release binary unless SAFEKEEPER_BIN names one; uses the test venv (moto, boto3, crc32c).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x test_runner/.venv/bin/python ] || { echo "test venv missing: run scripts/test.sh once" >&2; exit 1; }

vs_pgbackrest=0
if [ "${1:-}" = "--vs-pgbackrest" ]; then
  vs_pgbackrest=1
  shift
  if ! command -v pgbackrest >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "pgbackrest is missing: installing Debian's pgbackrest package with apt-get" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -qq --no-install-recommends pgbackrest >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends pgbackrest >/dev/null; } ||
        { echo "could not install pgbackrest with apt-get: install it and run again" >&2; exit 1; }
    else
      echo "pgbackrest is missing and this is not root with apt-get: install Debian's pgbackrest" \
        "package (e.g. 'sudo apt-get install pgbackrest') and run again" >&2
      exit 1
    fi
  fi
  pgbackrest version >/dev/null || { echo "'pgbackrest version' failed: pgBackRest is not usable" >&2; exit 1; }
  . scripts/lib/find_pg.sh
  PG_BINDIR=${PG_BINDIR:-$(find_pg_bindir)} ||
    { echo "PostgreSQL server binaries not found (run scripts/test.sh once)" >&2; exit 1; }
  export PG_BINDIR
fi

if [ -z "${SAFEKEEPER_BIN:-}" ]; then
  cargo build --release -p safekeeper --locked >&2
  export SAFEKEEPER_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/safekeeper"
fi
export PATH="$PWD/test_runner/.venv/bin:$PATH"

if [ "$vs_pgbackrest" = 1 ]; then
  limit=1800
  case " $* " in *" --quick "*) limit=480 ;; esac
  exec timeout --signal=TERM --kill-after=60 "$limit" test_runner/.venv/bin/python bench/restore_vs_pgbackrest.py "$@"
fi
exec test_runner/.venv/bin/python bench/restore_bench.py "$@"

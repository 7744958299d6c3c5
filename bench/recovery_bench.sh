#!/usr/bin/env bash
# A real PostgreSQL recovery of >= 1 GiB of WAL through restore-wal, binary against binary
# (see bench/recovery_bench.py). Uses the test venv (moto, boto3, zstandard, psycopg).
#   bench/recovery_bench.sh --binary before=/path/to/old --binary after=/path/to/new [--wal-gib 1]
#                           [--rounds 2] [--latency-ms 0] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x test_runner/.venv/bin/python ] || { echo "test venv missing: run scripts/test.sh once" >&2; exit 1; }
. scripts/lib/find_pg.sh
PG_BINDIR=${PG_BINDIR:-$(find_pg_bindir)}; export PG_BINDIR
export PATH="$PWD/test_runner/.venv/bin:$PATH"
exec timeout --signal=INT 3600 test_runner/.venv/bin/python bench/recovery_bench.py "$@"

#!/usr/bin/env bash
# Backup and restore throughput of `safekeeper backup` / `safekeeper restore` (MiB/s of database)
# to the local backend and to moto, next to `pg_basebackup -Ft -Z zstd` into a local directory
# (see bench/backup_bench.py). Builds the release binary unless SAFEKEEPER_BIN names one.
#   bench/backup_bench.sh [--scale 70] [--rounds 2] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SAFEKEEPER_BIN:-}" ]; then
  . bench/lib/env.sh
else
  . scripts/lib/find_pg.sh
  PG_BINDIR=${PG_BINDIR:-$(find_pg_bindir)}; export PG_BINDIR
fi
export PATH="$PWD/test_runner/.venv/bin:$PATH"
exec timeout 1800 test_runner/.venv/bin/python bench/backup_bench.py "$@"

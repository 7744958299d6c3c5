#!/usr/bin/env bash
# Sync-mode TPS of the safekeeper vs pg_receivewal --synchronous (see bench/sync_tps.py).
# Builds the release binary, uses the test venv (psycopg), needs PostgreSQL server binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/find_pg.sh
PG_BINDIR=$(find_pg_bindir) || { echo "PostgreSQL server binaries not found (run scripts/test.sh once)" >&2; exit 1; }
export PG_BINDIR
[ -x test_runner/.venv/bin/python ] || { echo "test venv missing: run scripts/test.sh once" >&2; exit 1; }
cargo build --release -p safekeeper --locked >&2
export SAFEKEEPER_BIN="$PWD/target/release/safekeeper"
exec test_runner/.venv/bin/python bench/sync_tps.py "$@"

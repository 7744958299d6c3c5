# Shared setup of the Python benchmarks: PostgreSQL binaries, the test venv, a release build.
# Sourced by bench/*.sh from the repository root; exports PG_BINDIR and SAFEKEEPER_BIN.
. scripts/lib/find_pg.sh
PG_BINDIR=$(find_pg_bindir) || { echo "PostgreSQL server binaries not found (run scripts/test.sh once)" >&2; exit 1; }
export PG_BINDIR
[ -x test_runner/.venv/bin/python ] || { echo "test venv missing: run scripts/test.sh once" >&2; exit 1; }
cargo build --release -p safekeeper --locked >&2
export SAFEKEEPER_BIN="$PWD/target/release/safekeeper"

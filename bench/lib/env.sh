# Shared setup of the Python benchmarks: PostgreSQL binaries, the test venv, a release build.
# Sourced by bench/*.sh from the repository root; exports PG_BINDIR and SAFEKEEPER_BIN (a release
# build of this tree unless SAFEKEEPER_BIN already names a binary).
. scripts/lib/find_pg.sh
PG_BINDIR=$(find_pg_bindir) || { echo "PostgreSQL server binaries not found (run scripts/test.sh once)" >&2; exit 1; }
export PG_BINDIR
[ -x test_runner/.venv/bin/python ] || { echo "test venv missing: run scripts/test.sh once" >&2; exit 1; }
if [ -z "${SAFEKEEPER_BIN:-}" ]; then
  cargo build --release -p safekeeper --locked >&2
  SAFEKEEPER_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/safekeeper"
fi
export SAFEKEEPER_BIN

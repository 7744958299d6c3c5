#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs `safekeeper demo`.
#
# - PostgreSQL server binaries: found through scripts/lib/find_pg.sh; when missing they are
#   installed with apt-get if this runs as root on Debian/Ubuntu, otherwise this says what to
#   install and stops.
# - Builds the release binary (cargo build --release --locked), then runs
#   `safekeeper demo "$@"` from the repository root, so the demo lives in ./.demo/.
#
# Usage: scripts/demo.sh [--keep] [--rows N | --seconds S]   (see: safekeeper demo --help)
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/find_pg.sh
if ! bindir=$(find_pg_bindir); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing PostgreSQL server packages (apt-get install postgresql)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    bindir=$(find_pg_bindir) || { echo "PostgreSQL was installed but initdb is still not found" >&2; exit 1; }
  else
    echo "PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) are missing: install them" >&2
    echo "(Debian/Ubuntu: sudo apt-get install postgresql; elsewhere your distribution's" >&2
    echo "PostgreSQL server package) or set PG_BINDIR to the directory holding them." >&2
    exit 1
  fi
fi
export PG_BINDIR="$bindir"
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  # initdb refuses to run as root: the demo runs PostgreSQL as this unprivileged user.
  echo "==> creating the postgres OS user (PostgreSQL refuses to run as root)" >&2
  useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi
command -v cargo >/dev/null || {
  echo "cargo is missing: install the Rust toolchain (https://rustup.rs), then run this again" >&2
  exit 1
}

echo "==> building safekeeper (release; the first build takes a few minutes)" >&2
cargo build --release -p safekeeper --locked -q
exec target/release/safekeeper demo "$@"

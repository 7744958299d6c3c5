# find_pg_bindir: prints the directory holding PostgreSQL's server binaries.
#
# The one search order of the project:
#   1. $PG_BINDIR, when set and not empty: it is the answer, or an error if it lacks a required
#      binary (an explicit choice is never silently replaced by another installation);
#   2. the directory of an `initdb` on PATH, symlinks resolved (/usr/local/bin may link only some
#      of the binaries);
#   3. `pg_config --bindir`;
#   4. Debian's /usr/lib/postgresql/<N>/bin, newest version first.
# A candidate is taken when every required binary in it is an executable file; the first such
# candidate wins. Required here: what scripts/ and test_runner/ run (FIND_PG_REQUIRED).
#
# The same order lives in two more places, keep the three in step:
#   - test_runner/fixtures/pg.py (pg_bindir) runs this very function when PG_BINDIR is not
#     exported by scripts/test.sh;
#   - safekeeper/src/cmd/demo/postgres.rs (find_bindir) for `safekeeper demo`, which requires only
#     the binaries the demo runs.
#
# Exit status: 0 found; 1 nothing found; 2 PG_BINDIR is set but incomplete (said on stderr).
FIND_PG_REQUIRED="initdb pg_ctl postgres pg_waldump pgbench pg_basebackup psql"

# _pg_missing_binary DIR: prints the first required binary DIR lacks; fails when none is missing.
_pg_missing_binary() {
  local b
  for b in $FIND_PG_REQUIRED; do
    if [ ! -f "$1/$b" ] || [ ! -x "$1/$b" ]; then echo "$b"; return 0; fi
  done
  return 1
}

find_pg_bindir() {
  local d missing initdb
  if [ -n "${PG_BINDIR:-}" ]; then
    if missing=$(_pg_missing_binary "$PG_BINDIR"); then
      echo "PG_BINDIR=$PG_BINDIR has no executable $missing: point it at the directory holding" \
           "PostgreSQL's server binaries ($FIND_PG_REQUIRED)" >&2
      return 2
    fi
    echo "$PG_BINDIR"
    return 0
  fi
  initdb=$(command -v initdb 2>/dev/null || true)
  for d in "${initdb:+$(dirname "$(readlink -f "$initdb")")}" \
           "$(pg_config --bindir 2>/dev/null || true)" \
           $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -rn); do
    [ -n "$d" ] || continue
    if ! _pg_missing_binary "$d" >/dev/null; then echo "$d"; return 0; fi
  done
  return 1
}

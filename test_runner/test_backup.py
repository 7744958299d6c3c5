"""Base backups and point-in-time restore (issue 18): `safekeeper backup`, `safekeeper restore`,
and the backups and recoverable window in `remote ls`.

What a user fears, and what each test shows does not happen:
- a restore to a time that brings back rows committed after it, or loses rows committed before it;
- a restore to the latest point that loses acknowledged commits, in particular the last ones,
  which only a partial segment holds;
- a damaged backup (flipped byte, truncated chunk) that is unpacked and started anyway;
- a target outside what the archive can reach that is noticed only once a half-written data
  directory exists.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
import time

import psycopg
import pytest

from fixtures.api import scrape
from fixtures.majors import pg_matrix
from fixtures.pg import PgCluster
from fixtures.remote import LocalRemote
from fixtures.restore import restore_wal_command
from fixtures.safekeeper import safekeeper_cli as sk
from fixtures.utils import as_pg_user, run, wait_until
from fixtures.wal import format_lsn, is_segment_name, parse_lsn, parse_partial_name, parse_segment_name


def backup(remote, primary: PgCluster, *extra: str):
    cp = sk("backup", *remote.args(), "--cluster", "main", "--primary", primary.connstr(), *extra,
            env=remote.env(), timeout=180)
    assert cp.returncode == 0, cp.stderr[-3000:]
    return cp


def ls_json(remote) -> dict:
    cp = sk("remote", "ls", *remote.args(), "--cluster", "main", "--json", env=remote.env())
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def restore(remote, target_dir: str, *target: str):
    return sk("restore", *remote.args(), "--cluster", "main", "--target-dir", target_dir, *target,
              env=remote.env(), timeout=300)


class Writer(threading.Thread):
    """Inserts single-row transactions into t until stopped; `committed` holds the ids whose
    commit returned (synchronous: the safekeeper flushed them)."""

    def __init__(self, pg: PgCluster, first: int):
        super().__init__(daemon=True)
        self.pg, self.next, self.committed = pg, first, []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.pg.connstr(), autocommit=True) as conn:
            while not self.stop_flag.is_set():
                conn.execute("INSERT INTO t VALUES (%s, repeat('x', 200))", (self.next,))
                self.committed.append(self.next)
                self.next += 1


def start_restored(workdir: str, name: str, remote, primary: PgCluster) -> PgCluster:
    """The restored data directory `name` (already written by restore) as a started server, once
    recovery has ended (it promotes)."""
    pg = PgCluster(workdir, name, install=primary.install)
    conf = (f"port = {pg.port}\nunix_socket_directories = '{pg.sockdir}'\n"
            "synchronous_standby_names = ''\n")
    if remote.env():
        # Credentials are never written by restore; the test's server gets them on its command.
        conf += f"restore_command = '{restore_wal_command(remote.args() + ['--cluster', 'main'], remote.env())}'\n"
    pg.write_conf(conf)
    run(["chown", "-R", "--reference", pg.dir, pg.datadir])
    pg.start(timeout=120)
    wait_until(f"{name} finished recovery", lambda: pg.sql_one("SELECT NOT pg_is_in_recovery()"), timeout=120)
    return pg


@pg_matrix
@pytest.mark.pg_matrix_only(remote="local")
def test_backup_then_restore_to_a_time_and_to_the_latest_commit(remote, workdir, primary, safekeeper, start_standby):
    """A backup under synchronous load; rows, then a recorded time, then DROP TABLE t, then rows in
    u that only a partial holds; the primary destroyed. `restore --time` gives exactly the rows of
    t committed before the time; `restore --latest` gives every acknowledged row of u."""
    start_standby(safekeeper, primary, remote=remote, partial_interval="1s")
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, pad text)")
    primary.sql("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
    load = Writer(primary, 20001)
    load.start()
    try:
        out = backup(remote, primary, "--chunk-size", "1MiB").stdout
    finally:
        load.stop_flag.set()
        load.join(timeout=30)
    assert load.committed, "the load committed nothing during the backup"
    print(out)
    before = set(range(1, 20001)) | set(load.committed)
    primary.sql("INSERT INTO t SELECT g, 'after' FROM generate_series(100001, 101000) g")
    before |= set(range(100001, 101001))
    time.sleep(1.2)
    target_time = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(1.2)
    primary.sql("DROP TABLE t")
    primary.sql("CREATE TABLE u (id int PRIMARY KEY)")
    u_rows = []
    for i in range(50):
        primary.sql("INSERT INTO u VALUES (%s)", (i,))
        u_rows.append(i)
    last = primary.current_lsn()
    primary.kill9()
    primary.destroy()

    wait_until("the archive holds the last commit",
               lambda: (w := ls_json(remote)["backups"]["window"]["latest"]) and parse_lsn(w["lsn"]) >= last,
               timeout=30)
    listing = ls_json(remote)["backups"]
    assert parse_lsn(listing["window"]["latest"]["lsn"]) % (16 * 2**20) != 0, \
        "the last commits must be only in a partial segment"
    assert len(listing["complete"]) == 1 and listing["complete"][0]["usable"], listing
    assert listing["complete"][0]["chunks"] > 1, "1MiB chunks: a 5+ MB database is several chunks"
    assert listing["window"]["earliest"]["backup"] == listing["complete"][0]["id"]
    text = sk("remote", "ls", *remote.args(), "--cluster", "main", env=remote.env()).stdout
    assert "Recoverable window: earliest" in text, text

    at_time = os.path.join(workdir, "at_time", "data")
    cp = restore(remote, at_time, "--time", target_time, "--pg-bindir", primary.bindir)
    assert cp.returncode == 0, cp.stderr[-3000:]
    if os.path.exists(os.path.join(primary.bindir, "pg_verifybackup")):  # the npm 16/17 lack it
        assert "pg_verifybackup" in cp.stdout, cp.stdout
    assert "by checksum) against the manifest" in cp.stdout, cp.stdout
    assert "start it with: pg_ctl -D" in cp.stdout, cp.stdout
    with open(os.path.join(at_time, "postgresql.auto.conf")) as f:
        conf = f.read()
    assert "recovery_target_time" in conf and "restore-wal" in conf, conf
    pg = start_restored(workdir, "at_time", remote, primary)
    got = {r[0] for r in pg.sql("SELECT id FROM t")}
    assert got == before, f"{len(got)} rows restored, {len(before)} committed before the target time"
    assert pg.sql_one("SELECT to_regclass('u')") is None, "u was created after the target time"
    pg.stop()

    latest = os.path.join(workdir, "latest", "data")
    cp = restore(remote, latest, "--latest")
    assert cp.returncode == 0, cp.stderr[-3000:]
    pg = start_restored(workdir, "latest", remote, primary)
    assert pg.sql_one("SELECT to_regclass('t')") is None, "t was dropped before the last commits"
    assert [r[0] for r in pg.sql("SELECT id FROM u ORDER BY id")] == u_rows
    pg.stop()


def test_damaged_backup_and_targets_outside_the_window(workdir, primary, safekeeper, start_standby):
    """A flipped byte and a truncated chunk are each reported, naming the object, before any
    server could start (the target directory is removed again); targets outside the recoverable
    window fail before anything is written."""
    remote = LocalRemote(os.path.join(workdir, "remote"))
    start_standby(safekeeper, primary, remote=remote, partial_interval="1s")
    primary.sql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS pad FROM generate_series(1, 30000) g")
    before_backup = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=2)
    backup(remote, primary, "--chunk-size", "1MiB")
    window = ls_json(remote)["backups"]["window"]

    # Outside the window: nothing is written, not even the directory.
    target = os.path.join(workdir, "restored")
    for args, words in [
        (["--time", before_backup.strftime("%Y-%m-%dT%H:%M:%SZ")], "before the earliest backup"),
        (["--time", "2999-01-01T00:00:00Z"], "after the end of the archive"),
        (["--lsn", format_lsn(parse_lsn(window["latest"]["lsn"]) + 10 * 2**20)], "after the end of the archive"),
    ]:
        cp = restore(remote, target, *args)
        assert cp.returncode == 1, cp.stdout
        assert words in cp.stderr and "recoverable window" in cp.stderr, cp.stderr
        assert len(cp.stderr.strip().splitlines()) == 1, cp.stderr
        assert not os.path.exists(target)

    chunks = [k for k in remote.keys("main/basebackups/") if ".tar." in k]
    assert len(chunks) >= 2, chunks
    victim = chunks[1]
    original = remote.get(victim)
    for name, damaged in [("flipped", original[:500] + bytes([original[500] ^ 0x01]) + original[501:]),
                          ("truncated", original[: len(original) // 2])]:
        with open(remote.path(victim), "wb") as f:
            f.write(damaged)
        cp = restore(remote, target, "--latest")
        assert cp.returncode == 1, f"{name}: {cp.stdout}"
        assert victim in cp.stderr, f"{name}: {cp.stderr}"
        assert not os.path.exists(target), f"{name}: the half-restored directory was left behind"
    with open(remote.path(victim), "wb") as f:
        f.write(original)
    cp = restore(remote, target, "--latest")
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert os.path.exists(os.path.join(target, "recovery.signal"))

    # A backup that crashes before its completion record is never restorable, is listed as
    # incomplete, and retention removes it once old enough; `backup --keep-last` runs retention.
    first = ls_json(remote)["backups"]["complete"][0]["id"]
    cp = sk("backup", *remote.args(), "--cluster", "main", "--primary", primary.connstr(),
            env={"FAILPOINTS": "backup-before-completion=return"})
    assert cp.returncode != 0 and "failpoint backup-before-completion" in cp.stderr, cp.stderr
    listing = ls_json(remote)["backups"]
    assert [b["id"] for b in listing["complete"]] == [first] and len(listing["incomplete"]) == 1, listing
    crashed = listing["incomplete"][0]
    cp = sk("remote", "retention", *remote.args(), "--cluster", "main", "--keep-last", "1", "--delete")
    assert cp.returncode == 0 and any(k.startswith(f"main/basebackups/{crashed}/") for k in remote.keys("main/")), \
        "an incomplete backup younger than --incomplete-after (24h) must stay: it may be running"
    cp = sk("remote", "retention", *remote.args(), "--cluster", "main", "--keep-last", "1", "--delete",
            "--incomplete-after", "0s")
    assert cp.returncode == 0, cp.stderr
    assert not any(k.startswith(f"main/basebackups/{crashed}/") for k in remote.keys("main/")), cp.stdout
    out = backup(remote, primary, "--keep-last", "1").stdout
    assert "retention: deleted 1 backups" in out, out
    listing = ls_json(remote)["backups"]
    assert len(listing["complete"]) == 1 and listing["complete"][0]["id"] != first, listing
    assert not any(k.startswith(f"main/basebackups/{first}/") for k in remote.keys("main/"))


def test_primary_refusals_are_one_clear_line(workdir, make_pg, safekeeper, start_standby):
    """A user without REPLICATION, and a primary whose WAL senders are all in use: one line that
    says what to do, and no backup object written."""
    remote = LocalRemote(os.path.join(workdir, "remote"))
    pg = make_pg("primary", extra_conf="max_wal_senders = 1")
    pg.sql("CREATE ROLE plain LOGIN")
    cp = sk("backup", *remote.args(), "--cluster", "main", "--primary", pg.connstr(user="plain"))
    assert cp.returncode == 1, cp.stdout
    line = cp.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the primary refused the backup") and "ALTER ROLE <user> REPLICATION" in line, cp.stderr

    start_standby(safekeeper, pg, remote=remote)  # takes the only WAL sender
    cp = sk("backup", *remote.args(), "--cluster", "main", "--primary", pg.connstr())
    assert cp.returncode == 1, cp.stdout
    line = cp.stderr.strip().splitlines()[-1]
    assert "every WAL sender of the primary is in use" in line and "max_wal_senders" in line, cp.stderr
    assert not remote.keys("main/basebackups/")


def wal_segno(key: str) -> int | None:
    """Segment number of a WAL object key (full segment or partial piece); None for others."""
    name = key.rsplit("/", 1)[-1]
    if is_segment_name(name):
        return parse_segment_name(name)[1]
    p = parse_partial_name(name)
    return parse_segment_name(p.segment)[1] if p else None


def test_retention_deletes_what_the_policy_allows_and_survives_kill9(workdir, primary, safekeeper, start_standby):
    """Three backups with WAL between them; `--keep-last 2`: the dry run deletes nothing; a pass
    killed (abort, as kill -9) between deleting the completion records and the rest leaves the
    oldest backup unrestorable and a plan that the next pass finishes; then exactly the oldest
    backup and the WAL below the second backup's start are gone, and restores to both ends of the
    reported window, and to the commit of a transaction inside it (--xid), recover the rows
    committed up to there."""
    remote = LocalRemote(os.path.join(workdir, "remote"))
    start_standby(safekeeper, primary, remote=remote, partial_interval="1s")
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, batch int)")
    xids = {}
    for batch in (1, 2, 3):
        xids[batch] = primary.sql_one(
            f"WITH i AS (INSERT INTO t SELECT g, {batch} FROM generate_series({batch * 1000}, {batch * 1000 + 999}) g "
            "RETURNING 1) SELECT pg_current_xact_id()::text FROM i LIMIT 1")
        primary.switch_wal()
        primary.switch_wal()
        backup(remote, primary, "--chunk-size", "1MiB")
    primary.sql("INSERT INTO t SELECT g, 4 FROM generate_series(4000, 4999) g")
    last = primary.current_lsn()
    wait_until("the archive holds the last commit",
               lambda: parse_lsn(ls_json(remote)["backups"]["window"]["latest"]["lsn"]) >= last, timeout=30)
    backups = [b["id"] for b in ls_json(remote)["backups"]["complete"]]
    assert len(backups) == 3
    second_start = parse_lsn(ls_json(remote)["backups"]["complete"][1]["start_lsn"])
    before = set(remote.keys("main/"))
    expected_gone = {k for k in before if k.startswith(f"main/basebackups/{backups[0]}/")}
    expected_gone |= {k for k in before if k.startswith("main/wal/") and (s := wal_segno(k)) is not None
                      and s < second_start // (16 * 2**20)}
    assert any(k.startswith("main/wal/") for k in expected_gone), "no WAL below the second backup"

    retention = ["remote", "retention", *remote.args(), "--cluster", "main", "--keep-last", "2"]
    cp = sk(*retention, "--json")
    assert cp.returncode == 0, cp.stderr
    dry = json.loads(cp.stdout)
    assert dry["delete_backups"] == [backups[0]] and not dry["deleted"], dry
    assert dry["objects"] == len(expected_gone), (dry, sorted(expected_gone))
    assert set(remote.keys("main/")) == before, "the dry run deleted something"

    cp = sk(*retention, "--delete", env={"FAILPOINTS": "retention-mid-delete=return"})
    assert cp.returncode != 0 and "failpoint retention-mid-delete" in cp.stderr, cp.stderr
    assert "main/basebackups/retention.json" in remote.keys("main/")
    assert [b["id"] for b in ls_json(remote)["backups"]["complete"]] == backups[1:], \
        "a backup being deleted must stop being restorable first"

    cp = sk(*retention, "--delete")
    assert cp.returncode == 0, cp.stderr
    assert "an interrupted retention pass: finished" in cp.stdout, cp.stdout
    assert set(remote.keys("main/")) == before - expected_gone

    window = ls_json(remote)["backups"]["window"]
    assert window["earliest"]["backup"] == backups[1]
    for name, args, batches in [("earliest", ["--lsn", window["earliest"]["lsn"]], {1, 2}),
                                ("xid", ["--xid", xids[3]], {1, 2, 3}),
                                ("latest", ["--latest"], {1, 2, 3, 4})]:
        target = os.path.join(workdir, name, "data")
        cp = restore(remote, target, *args)
        assert cp.returncode == 0, cp.stderr[-3000:]
        pg = start_restored(workdir, name, remote, primary)
        got = {r[0] for r in pg.sql("SELECT DISTINCT batch FROM t")}
        assert got == batches, f"{name}: batches {got}"
        assert pg.sql_one("SELECT count(*) FROM t") == 1000 * len(batches)
        pg.stop()


def test_run_takes_scheduled_backups_and_applies_retention(workdir, primary, safekeeper, start_standby):
    """`run --backup-interval 8s --backup-keep-last 2`: backups appear on schedule without any
    command, retention keeps exactly the newest two (and deletes the WAL below the older one), the
    counters say so, the process stops cleanly with its schedule running and resumes it, and
    `restore --latest` from what is left brings back every acknowledged commit."""
    remote = LocalRemote(os.path.join(workdir, "remote"))
    flags = ["--backup-interval", "8s", "--backup-keep-last", "2"]
    start_standby(safekeeper, primary, remote=remote, partial_interval="1s", extra=flags)
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, pad text)")
    committed: list[int] = []

    def write(n: int) -> None:
        first = len(committed) + 1
        primary.sql("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(%s::int, %s::int) g", (first, first + n - 1))
        committed.extend(range(first, first + n))
        primary.switch_wal()

    seen: set[str] = set()

    def three_taken() -> bool:
        write(500)
        seen.update(b["id"] for b in ls_json(remote)["backups"]["complete"])
        return len(seen) >= 3
    wait_until("three scheduled backups", three_taken, timeout=120, interval=2)
    wait_until("retention keeps the newest two", lambda: len(ls_json(remote)["backups"]["complete"]) == 2, timeout=60)
    listing = ls_json(remote)["backups"]
    kept = [b["id"] for b in listing["complete"]]
    assert kept == sorted(seen)[-len(kept):], (kept, sorted(seen))
    oldest_start = min(parse_lsn(b["start_lsn"]) for b in listing["complete"])
    wal_segnos = [s for s in (wal_segno(k) for k in remote.keys("main/wal/")) if s is not None]
    assert wal_segnos and min(wal_segnos) >= oldest_start // (16 << 20), \
        "WAL below the oldest kept backup's segment is deleted"
    metrics = scrape(safekeeper.api())
    assert metrics.value("safekeeper_backups_total", result="ok") >= 3
    assert metrics.value("safekeeper_last_backup_end_seconds", cluster="main") > 0

    # A clean stop with the schedule running, then a restart that resumes it.
    assert safekeeper.stop() == 0
    start_standby(safekeeper, primary, remote=remote, partial_interval="1s", extra=flags)
    wait_until("the schedule resumed", lambda: "next scheduled backup" in safekeeper.log(), timeout=30)
    write(100)
    last = primary.current_lsn()
    wait_until("the archive holds the last commit",
               lambda: (w := ls_json(remote)["backups"]["window"]["latest"]) and parse_lsn(w["lsn"]) >= last,
               timeout=30)
    assert safekeeper.stop() == 0
    primary.kill9()

    latest = os.path.join(workdir, "latest", "data")
    cp = restore(remote, latest, "--latest")
    assert cp.returncode == 0, cp.stderr[-3000:]
    pg = start_restored(workdir, "latest", remote, primary)
    try:
        got = {r[0] for r in pg.sql("SELECT id FROM t")}
    finally:
        pg.stop()
    assert got == set(committed), f"{len(set(committed) - got)} acknowledged commits missing"

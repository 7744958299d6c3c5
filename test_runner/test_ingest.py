"""Streaming WAL from a real PostgreSQL primary as its synchronous standby.

What a user fears, and what each test shows does not happen:
- commits that are acknowledged before the safekeeper has the WAL on disk (sync mode);
- local WAL that differs from the primary's, or that PostgreSQL's own tools cannot read;
- gaps or duplicates after the safekeeper is killed at a random moment;
- a safekeeper that gives up when the primary restarts, or that mixes two clusters' WAL.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from fixtures.majors import pg_matrix
from fixtures.pg import PgCluster
from fixtures.safekeeper import Safekeeper
from fixtures.utils import run, wait_until
from fixtures.wal import SEG_SIZE, format_lsn, parse_segment_name, segno_of

# XLOG_PAGE_MAGIC of each major: the safekeeper learns it from the stream and records it.
PAGE_MAGIC = {13: 0xD106, 14: 0xD10D, 15: 0xD110, 16: 0xD113, 17: 0xD116, 18: 0xD118}


def switch_and_wait_complete(sk: Safekeeper, pg: PgCluster) -> int:
    """Switches WAL and waits until the safekeeper completed the switched segment; returns its end."""
    end = pg.switch_wal()
    segno = segno_of(end - 1)
    wait_until(
        f"segment {segno:X} completed locally",
        lambda: any(parse_segment_name(n)[1] == segno for n in sk.local_segments()),
        timeout=60,
    )
    return (segno + 1) * SEG_SIZE


def compare_with_primary(sk: Safekeeper, pg: PgCluster) -> int:
    """Every completed local segment equals the primary's file of the same name; returns the count."""
    local = sk.local_segments()
    assert local, "the safekeeper completed no segment"
    compared = 0
    for name, path in sorted(local.items()):
        theirs = os.path.join(pg.pg_wal, name)
        if not os.path.exists(theirs):
            continue  # already removed or recycled by the primary
        with open(path, "rb") as a, open(theirs, "rb") as b:
            mine, primary = a.read(), b.read()
        assert len(mine) == SEG_SIZE, f"{name}: {len(mine)} bytes"
        if mine != primary:
            first = next(i for i in range(SEG_SIZE) if mine[i] != primary[i])
            raise AssertionError(f"{name} differs from the primary's at offset {first}")
        compared += 1
    assert compared > 0, "no completed segment could be compared"
    return compared


def assert_contiguous(sk: Safekeeper) -> None:
    """No gap between completed segments, and the .partial (if any) follows the last one."""
    names = sorted(sk.local_segments())
    segnos = [parse_segment_name(n)[1] for n in names]
    assert segnos == list(range(segnos[0], segnos[0] + len(segnos))), f"gap in local segments: {names}"
    partials = [n for n in os.listdir(sk.wal_dir()) if n.endswith(".partial")]
    assert len(partials) <= 1, partials
    if partials:
        assert parse_segment_name(partials[0][:24])[1] == segnos[-1] + 1, (names, partials)


def own_waldump(pg: PgCluster) -> str | None:
    """pg's major's own pg_waldump, or None (said on stdout) when that installation has none (the
    npm builds of 16 and 17). No other major's can stand in: pg_waldump refuses WAL whose page
    magic is not its own major's. Without it, the local WAL is checked by the byte comparison with
    the primary's pg_wal alone (and, in the recovery tests, by PostgreSQL replaying it)."""
    tool = pg.install.own_tool("pg_waldump")
    if tool is None:
        print(f"PostgreSQL {pg.major} ships no pg_waldump: local WAL checked by byte comparison with pg_wal only")
    return tool


def waldump(pg: PgCluster, wal_dir: str, start: str, end: str) -> str | None:
    """pg_waldump of [start, end) in wal_dir succeeds (with pg's major's own pg_waldump); None
    when there is none (see own_waldump)."""
    tool = own_waldump(pg)
    if tool is None:
        return None
    cp = run([tool, "--path", wal_dir, "--start", start, "--end", end, "--quiet"], timeout=120, check=False)
    assert cp.returncode == 0, f"pg_waldump failed: {cp.stderr[-2000:]}"
    return cp.stdout


def segment_lsn_range(sk: Safekeeper) -> tuple[str, str]:
    names = sorted(sk.local_segments())
    first = parse_segment_name(names[0])[1]
    last = parse_segment_name(names[-1])[1]
    return format_lsn(first * SEG_SIZE), format_lsn((last + 1) * SEG_SIZE)


def test_sync_standby_pgbench(primary: PgCluster, safekeeper: Safekeeper, start_standby):
    """pgbench in sync mode completes; the safekeeper is `streaming`/`sync` with flush advancing."""
    primary.pgbench("-i", "-s", "2", "-q")
    start_standby(safekeeper, primary)
    before = primary.replication(safekeeper.application_name)["flush_lsn"]
    out = primary.pgbench("-n", "-c", "4", "-j", "2", "-T", "5", timeout=120)
    assert "number of failed transactions: 0" in out.stdout, out.stdout
    tps = [l for l in out.stdout.splitlines() if l.startswith("tps")]
    print("sync pgbench:", tps)
    r = primary.replication(safekeeper.application_name)
    assert r["state"] == "streaming" and r["sync_state"] == "sync"
    assert r["flush_lsn"] > before
    # A commit returns only after the safekeeper acknowledged its WAL as flushed.
    lsn_after_commit = primary.current_lsn()
    assert primary.replication(safekeeper.application_name)["flush_lsn"] >= lsn_after_commit - 8192
    assert safekeeper.running()


@pg_matrix
def test_local_wal_is_byte_identical_and_readable(primary: PgCluster, safekeeper: Safekeeper, start_standby):
    primary.pgbench("-i", "-s", "1", "-q")
    start_standby(safekeeper, primary)
    primary.pgbench("-n", "-c", "2", "-T", "3")
    for _ in range(3):
        primary.sql("INSERT INTO pgbench_history SELECT 1, 1, 1, 1, now() FROM generate_series(1, 2000)")
        switch_and_wait_complete(safekeeper, primary)
    n = compare_with_primary(safekeeper, primary)
    assert n >= 3
    assert_contiguous(safekeeper)
    start, end_lsn = segment_lsn_range(safekeeper)
    if (tool := own_waldump(primary)) is not None:
        # The first local segment may begin inside a record: start at the first record after that.
        start_rec = run([tool, "--path", safekeeper.wal_dir(), "--start", start, "--limit", "1"], check=False).stdout
        assert "rmgr:" in start_rec, start_rec
        waldump(primary, safekeeper.wal_dir(), start, end_lsn)
    # Clean shutdown leaves a control file that records what is on disk.
    assert safekeeper.stop() == 0
    cf = safekeeper.control_file_json()
    assert cf["state"]["system_identifier"] == primary.system_identifier()
    assert cf["state"]["commit_lsn"] <= cf["state"]["flush_lsn"]
    assert cf["state"]["pg_major_version"] == primary.major
    # A restart verifies the local WAL (PostgreSQL 18's page magic 0xD118 was once refused here as
    # damaged) and follows on.
    safekeeper.start(primary.connstr())
    primary.wait_sync_state(safekeeper.application_name, timeout=60)
    primary.sql("INSERT INTO pgbench_history VALUES (1, 1, 1, 1, now())")  # a sync commit returns


@pg_matrix
def test_control_file_records_the_wal_page_magic(primary: PgCluster, safekeeper: Safekeeper, start_standby):
    """The page magic of the primary's major, learned from the stream, is in the control file."""
    start_standby(safekeeper, primary)
    switch_and_wait_complete(safekeeper, primary)
    primary.sql("CREATE TABLE t AS SELECT 1 AS x")  # a sync commit: a later round of the same session
    assert safekeeper.stop() == 0
    state = safekeeper.control_file_json()["state"]
    assert state["pg_major_version"] == primary.major
    assert state["wal_page_magic"] == PAGE_MAGIC[primary.major], \
        f"control file has wal_page_magic {state['wal_page_magic']:#06x}, the stream {PAGE_MAGIC[primary.major]:#06x}"


@pg_matrix
def test_kill9_during_pgbench_loses_nothing(primary: PgCluster, safekeeper: Safekeeper, workdir, start_standby):
    """Five kill -9s at random moments under sync load: no gap, no duplicate, commits resume."""
    primary.pgbench("-i", "-s", "1", "-q")
    start_standby(safekeeper, primary)
    rng = random.Random(int(os.environ.get("SK_TEST_SEED", "4242")))
    pauses = [(rng.uniform(0.5, 2.5), rng.uniform(0.0, 0.5)) for _ in range(5)]
    # pgbench outlasts the kills: their pauses plus up to 4 s per restart and return to sync.
    seconds = int(sum(a + b for a, b in pauses) + 4 * len(pauses) + 4)
    bench = primary.pgbench_popen("-n", "-c", "4", "-j", "2", "-T", str(seconds), log_path=os.path.join(workdir, "pgbench.log"))
    try:
        for i, (before_kill, before_start) in enumerate(pauses):
            time.sleep(before_kill)
            safekeeper.kill9()
            if i % 2 == 0:
                primary.sql("SELECT pg_switch_wal()")  # committed work is blocked; switch is not a commit
            time.sleep(before_start)
            safekeeper.start(primary.connstr())
            primary.wait_sync_state(safekeeper.application_name, timeout=60)  # back in sync
            # Commits resume: a sync commit returns.
            primary.sql("INSERT INTO pgbench_history VALUES (1, 1, 1, 1, now())")
    finally:
        rc = bench.wait(timeout=120)
    assert rc == 0, open(os.path.join(workdir, "pgbench.log")).read()[-2000:]
    switch_and_wait_complete(safekeeper, primary)
    compare_with_primary(safekeeper, primary)
    assert_contiguous(safekeeper)
    start, end_lsn = segment_lsn_range(safekeeper)
    waldump(primary, safekeeper.wal_dir(), start, end_lsn)


def test_survives_primary_restart(primary: PgCluster, safekeeper: Safekeeper, start_standby):
    primary.pgbench("-i", "-s", "1", "-q")
    start_standby(safekeeper, primary)
    for mode in ("fast", "immediate"):
        primary.restart(mode)
        primary.wait_sync_state(safekeeper.application_name, timeout=60)  # reconnected after restart
        primary.pgbench("-n", "-c", "2", "-T", "2")
    switch_and_wait_complete(safekeeper, primary)
    compare_with_primary(safekeeper, primary)
    assert_contiguous(safekeeper)
    assert "retrying" in safekeeper.log()


def test_refuses_a_different_primary(make_pg, safekeeper: Safekeeper, start_standby):
    first = make_pg("first")
    start_standby(safekeeper, first, sync=False)
    end = first.switch_wal()
    first.wait_flushed(safekeeper.application_name, end)
    assert safekeeper.stop() == 0
    wal_before = safekeeper.wal_file_sizes()
    pinned = ("system_identifier", "timeline", "term", "term_history", "flush_lsn", "commit_lsn", "wal_segment_size")
    cf_before = {k: safekeeper.control_file_json()["state"][k] for k in pinned}

    other = make_pg("other")
    assert other.system_identifier() != first.system_identifier()
    safekeeper.start(other.connstr())
    rc = safekeeper.wait_exit(timeout=60)
    assert rc != 0
    log = safekeeper.log()
    assert f"has system identifier {other.system_identifier()}" in log, log[-3000:]
    assert f"pinned to {first.system_identifier()}" in log
    # Nothing written: local WAL, the pinned identity and positions unchanged, no slot created on
    # the other server.
    assert safekeeper.wal_file_sizes() == wal_before
    assert {k: safekeeper.control_file_json()["state"][k] for k in pinned} == cf_before
    assert other.sql("SELECT slot_name FROM pg_replication_slots") == []


def test_sigterm_flushes_and_records_position(primary: PgCluster, safekeeper: Safekeeper, start_standby):
    start_standby(safekeeper, primary)
    primary.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g")
    lsn = primary.current_lsn()
    primary.wait_flushed(safekeeper.application_name, lsn)
    assert safekeeper.stop() == 0
    cf = safekeeper.control_file_json()["state"]
    # Everything acknowledged before SIGTERM is recorded as flushed and committed.
    assert cf["flush_lsn"] >= lsn
    assert cf["commit_lsn"] >= lsn
    # And the local WAL really holds it: the .partial is verified again on the next start.
    safekeeper.start(primary.connstr())
    safekeeper.wait_log("streaming", timeout=30)
    assert "shutting down" in safekeeper.log()


def test_config_file_follows_two_primaries_independently(make_pg, safekeeper: Safekeeper, workdir):
    """Two [[cluster]] entries in one process; stopping one primary does not stop the other's sync commits."""
    a, b = make_pg("a"), make_pg("b")
    cfg = os.path.join(workdir, "sk.toml")
    with open(cfg, "w") as f:
        f.write(
            'id = 1\n'
            f'[[cluster]]\nname = "alpha"\nprimary = "{a.connstr()}"\n'
            f'[[cluster]]\nname = "beta"\nprimary = "{b.connstr()}"\napplication_name = "sk_beta"\nslot = "sk_beta"\n'
        )
    safekeeper.start(None, extra=["--config", cfg])
    a.wait_streaming("safekeeper1")
    b.wait_streaming("sk_beta")
    a.set_sync_standby("safekeeper1")
    b.set_sync_standby("sk_beta")
    a.stop("immediate")
    b.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")  # sync commit on beta returns
    assert b.replication("sk_beta")["sync_state"] == "sync"
    assert os.path.exists(safekeeper.control_file("alpha")) and os.path.exists(safekeeper.control_file("beta"))
    assert safekeeper.stop() == 0


def test_silent_primary_connection_is_dropped_and_reestablished(primary: PgCluster, safekeeper: Safekeeper, start_standby):
    """A walsender that stops answering without closing the connection (SIGSTOP, like a host that
    vanished from the network) is detected by the receive timeout; streaming resumes after."""
    import signal as sig
    start_standby(safekeeper, primary, sync=False, extra=["--status-interval", "500ms", "--receive-timeout", "3s"])
    walsender = primary.sql_one("SELECT pid FROM pg_stat_replication WHERE application_name = %s", (safekeeper.application_name,))
    os.kill(walsender, sig.SIGSTOP)
    try:
        safekeeper.wait_log("receive timeout", timeout=30)
    finally:
        os.kill(walsender, sig.SIGCONT)
    primary.make_sync(safekeeper.application_name, timeout=60)  # streaming again, in sync
    primary.sql("CREATE TABLE after_timeout AS SELECT 1 AS x")  # a sync commit returns
    assert safekeeper.running()

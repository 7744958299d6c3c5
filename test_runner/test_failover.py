"""Failover, timelines, several safekeepers, many clusters in one process.

What a user fears at failover, and what each test shows does not happen:
- a safekeeper that keeps following the dead primary, or skips WAL when the standby is promoted;
- an archive that cannot be restored across the timeline switch to the newest commit;
- one dead safekeeper (of two) stopping commits, or one dead primary slowing the others.
"""

from __future__ import annotations

import os
import re
import time

import psycopg

from fixtures.majors import pg_matrix
from fixtures.pg import PgCluster
from fixtures.remote import LocalRemote
from fixtures.restore import copy_archive, recover, take_base_backup
from fixtures.safekeeper import Safekeeper
from fixtures.utils import wait_until
from fixtures.wal import SEG_SIZE, partial_versions, segment_name, segno_of


def insert_ids(pg: PgCluster, ids: range) -> list[int]:
    """Commits one row per id (autocommit); returns the ids whose COMMIT returned."""
    done = []
    with psycopg.connect(pg.connstr(), autocommit=True, connect_timeout=5) as conn:
        for i in ids:
            conn.execute("INSERT INTO ids VALUES (%s)", (i,))
            done.append(i)
    return done


@pg_matrix
def test_follows_promoted_standby_and_archive_restores_across_timelines(make_pg, safekeeper: Safekeeper, workdir, start_standby):
    primary = make_pg("primary")
    primary.sql("CREATE TABLE ids (id int PRIMARY KEY)")
    primary.pgbench("-i", "-s", "1", "-q")
    standby = make_pg("standby", standby_of=primary)
    backup = take_base_backup(primary, os.path.join(workdir, "basebackup"))
    remote = LocalRemote(os.path.join(workdir, "remote"))
    both = f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port} user=postgres dbname=postgres"
    start_standby(safekeeper, primary, connstr=both, remote=remote, partial_interval="500ms")

    before = insert_ids(primary, range(0, 300))
    primary.pgbench("-n", "-c", "2", "-T", "2")
    primary.kill9()
    standby.promote()
    # The promoted standby takes sync commits once the safekeeper found it.
    standby.make_sync("safekeeper1", timeout=90)  # following the promoted standby
    assert standby.timeline() == 2
    after = insert_ids(standby, range(100000, 100300))
    standby.pgbench("-n", "-c", "2", "-T", "2")
    end = standby.switch_wal()
    wait_until("new timeline's segment uploaded", lambda: f"main/wal/{segment_name(2, segno_of(end - 1))}" in remote.keys("main/wal/"), timeout=90)
    last = insert_ids(standby, range(200000, 200050))
    flushed = standby.current_lsn()
    # A version of the newest segment reaching the newest commit: a base, or a chain of a base and
    # increments (fixtures.wal.partial_versions, the independent chain oracle).
    wait_until("partial at the newest commit", lambda: any(
        seg.startswith("00000002") and end >= flushed
        for (seg, _sk, _term), end in partial_versions(k.rsplit("/", 1)[-1] for k in remote.keys("main/wal/")).items()),
        timeout=60)

    keys = remote.keys("main/wal/")
    assert "main/wal/00000002.history" in keys, keys
    assert any(re.match(r"main/wal/00000001[0-9A-F]{16}_[0-9A-F]{16}_0{15}1_sk1\.partial$", k) for k in keys), \
        f"the old timeline's final partial is missing: {keys}"
    assert any(re.match(r"main/wal/00000002[0-9A-F]{16}$", k) for k in keys)
    log = safekeeper.log()
    assert "switched timeline" in log
    cf = safekeeper.control_file_json()["state"]
    assert cf["timeline"] == 2 and cf["term"] == 2
    assert [(t["term"], t["timeline"]) for t in cf["term_history"]] == [(1, 1), (2, 2)]

    # Recovery from the base backup taken before the failover reaches the newest commit.
    archive = os.path.join(workdir, "archive")
    print("archive:", copy_archive(remote, archive))
    restored = recover(workdir, "restored", backup, f"cp {archive}/%f %p")
    try:
        have = {r[0] for r in restored.sql("SELECT id FROM ids")}
        assert restored.timeline() >= 2
    finally:
        restored.stop("immediate")
    assert set(after) | set(last) <= have, "commits on the new timeline are missing"
    assert set(before) <= have


def test_two_safekeepers_any_one(primary: PgCluster, make_safekeeper, workdir, start_standby):
    sk1, sk2 = make_safekeeper(1), make_safekeeper(2)
    remote = LocalRemote(os.path.join(workdir, "remote"))
    for sk in (sk1, sk2):
        start_standby(sk, primary, sync=False, remote=remote)
    primary.set_sync_standby("ANY 1 (safekeeper1, safekeeper2)")
    primary.wait_sync_state("safekeeper1", "quorum")
    primary.pgbench("-i", "-s", "1", "-q")
    log = os.path.join(workdir, "pgbench.log")
    bench = primary.pgbench_popen("-n", "-c", "2", "-T", "8", log_path=log)
    time.sleep(2)
    sk1.kill9()
    time.sleep(2)
    # Commits continue with one of two safekeepers.
    primary.sql("CREATE TABLE after_kill AS SELECT 1 AS x")
    assert bench.wait(timeout=60) == 0, open(log).read()[-2000:]
    processed = int(re.search(r"number of transactions actually processed: (\d+)", open(log).read()).group(1))
    assert processed > 100
    # Restarted, it catches up.
    sk1.start(primary.connstr(), extra=remote.args())
    primary.wait_flushed("safekeeper1", primary.current_lsn())  # sk1 caught up


def tps(pg: PgCluster, seconds: int = 4) -> float:
    out = pg.pgbench("-n", "-c", "2", "-T", str(seconds)).stdout
    return float(re.search(r"tps = ([0-9.]+)", out).group(1))


def test_one_process_three_primaries_one_stopped(make_pg, safekeeper: Safekeeper, workdir):
    pgs = [make_pg(n) for n in ("a", "b", "c")]
    cfg = os.path.join(workdir, "sk.toml")
    with open(cfg, "w") as f:
        f.write("id = 1\n")
        for pg in pgs:
            f.write(f'[[cluster]]\nname = "{pg.name}"\nprimary = "{pg.connstr()}"\n')
    safekeeper.start(None, extra=["--config", cfg])
    for pg in pgs:
        pg.wait_streaming("safekeeper1")
        pg.set_sync_standby("safekeeper1")
        pg.pgbench("-i", "-s", "1", "-q")
    with_all = [tps(pgs[0]), tps(pgs[1])]
    pgs[2].stop("immediate")
    time.sleep(1)
    without_c = [tps(pgs[0]), tps(pgs[1])]
    print(f"sync TPS of a, b with c running: {with_all}; with c stopped: {without_c}")
    # Not a speed claim: a dead cluster must not stall or starve the others.
    for w, wo in zip(with_all, without_c):
        assert wo > 0.5 * w
    assert "cluster=c" in safekeeper.log() and "retrying" in safekeeper.log()
    assert safekeeper.stop() == 0


def test_removed_upstream_wal_is_a_reported_gap_then_followed(primary: PgCluster, safekeeper: Safekeeper, workdir, start_standby):
    """The primary removed WAL the safekeeper needs (its slot was dropped while it was down): the
    gap is reported, the WAL held is kept (locally and its last partial remotely), and following
    goes on from the primary's current segment in a new term."""
    remote = LocalRemote(os.path.join(workdir, "remote"))
    start_standby(safekeeper, primary, sync=False, remote=remote, partial_interval="300ms")
    primary.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
    primary.switch_wal()
    primary.sql("INSERT INTO t SELECT g FROM generate_series(1, 1000) g")
    held_lsn = primary.current_lsn()
    held_seg = segment_name(1, segno_of(held_lsn))
    wait_until("partial of the held segment uploaded", lambda: any(
        k.startswith(f"main/wal/{held_seg}_") and int(k.split("_")[1], 16) >= held_lsn for k in remote.keys("main/wal/")), timeout=60)
    assert safekeeper.stop() == 0
    held = safekeeper.wal_file_sizes()
    primary.sql("SELECT pg_drop_replication_slot('safekeeper_1')")
    for _ in range(6):
        primary.sql("INSERT INTO t SELECT g FROM generate_series(1, 1000) g")
        primary.switch_wal()
    primary.sql("CHECKPOINT")
    primary.sql("CHECKPOINT")

    safekeeper.start(primary.connstr(), extra=remote.args() + ["--partial-interval", "300ms"])
    safekeeper.wait_log("no longer has the WAL after", timeout=60)
    primary.make_sync(safekeeper.application_name, timeout=60)  # following again, in sync
    primary.sql("INSERT INTO t VALUES (-1)")  # a sync commit returns
    end = primary.switch_wal()
    new_seg = segment_name(1, segno_of(end - 1))
    wait_until("a segment after the gap uploaded", lambda: f"main/wal/{new_seg}" in remote.keys("main/wal/"), timeout=60)

    # What was held is kept: completed segments untouched, the incomplete one set aside, and its
    # last partial still in the archive.
    now = set(os.listdir(safekeeper.wal_dir()))
    for n, size in held.items():
        kept = n if n in now else f"{n}.gap"
        assert kept in now and os.path.getsize(os.path.join(safekeeper.wal_dir(), kept)) == size, n
    assert any(k.startswith(f"main/wal/{held_seg}_") for k in remote.keys("main/wal/")), remote.keys("main/wal/")
    assert safekeeper.stop() == 0
    cf = safekeeper.control_file_json()["state"]
    assert cf["term"] == 2
    assert cf["term_history"][-1]["start_lsn"] % SEG_SIZE == 0 and cf["term_history"][-1]["start_lsn"] > held_lsn

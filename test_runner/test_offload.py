"""Offload to object storage: full segments, the partial segment, GC — on a local directory and on
a real S3-compatible server (moto).

What a user fears, and what each test shows does not happen:
- an archive whose segments differ from the primary's WAL, or that keeps stale partial versions;
- losing acknowledged commits when the primary *and* its disk are lost (RPO test, real recovery);
- a crash between the steps of the partial protocol that orphans objects or deletes the newest one;
- commits that stall while object storage is down, or uploads that never catch up afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import psycopg
import pytest

from fixtures.bookkeeping import full_implied, listed_partial_names
from fixtures.majors import pg_matrix
from fixtures.pg import PgCluster
from fixtures.remote import LocalRemote
from fixtures.restore import assemble, copy_archive, recover, restore_wal_command, take_base_backup
from fixtures.s3 import MotoServer, new_bucket
from fixtures.safekeeper import Safekeeper, safekeeper_cli
from fixtures.utils import run, wait_until
from fixtures.objects import decode
from fixtures.wal import (SEG_SIZE, is_segment_name, parse_partial_name, parse_segment_name, partial_versions, segment_name,
                          segno_of)

WAL = "main/wal/"


def partials(remote) -> list[tuple[str, int, int, int, str]]:
    """(segment, end LSN, term, sk_id, version name) of every partial version: the end its pieces
    chain to from the segment start (fixtures/wal.py `partial_versions`), named as listings name it."""
    names = [k[len(WAL):] for k in remote.keys(WAL)]
    return [(seg, end, term, sk, f"{seg}_{end:016X}_{term:016X}_sk{sk}.partial")
            for (seg, sk, term), end in sorted(partial_versions(names).items())]


def piece_names(remote) -> list[str]:
    """The names of the partial pieces (bases and increments) that exist."""
    return [n for k in remote.keys(WAL) if parse_partial_name(n := k[len(WAL):])]


def fulls(remote) -> list[str]:
    return [k[len(WAL):] for k in remote.keys(WAL) if is_segment_name(k[len(WAL):])]


def wait_partial_at(remote, lsn: int, timeout: float = 60) -> tuple:
    """Waits until exactly one partial exists and its commit LSN is >= lsn."""
    def ok():
        p = partials(remote)
        return len(p) == 1 and p[0][1] >= lsn and p[0]
    return wait_until(f"one partial at or past {lsn:X}", ok, timeout=timeout)


def wait_backed_up(remote, segments: list[str], timeout: float = 90) -> None:
    wait_until(f"full segments {segments[0]}..{segments[-1]} uploaded", lambda: set(segments) <= set(fulls(remote)), timeout=timeout)


def primary_bytes(pg: PgCluster, seg: str) -> bytes:
    with open(os.path.join(pg.pg_wal, seg), "rb") as f:
        return f.read()


@pg_matrix
@pytest.mark.pg_matrix_only(remote="local")  # the storage backend does not depend on the major
def test_full_segments_and_newest_partial_match_the_primary(primary: PgCluster, safekeeper: Safekeeper, remote, start_standby):
    primary.pgbench("-i", "-s", "1", "-q")
    start_standby(safekeeper, primary, remote=remote, partial_interval="500ms")
    switched = []
    for _ in range(2):
        primary.pgbench("-n", "-c", "2", "-T", "2")
        end = primary.switch_wal()
        switched.append(segment_name(1, segno_of(end - 1)))
    primary.pgbench("-n", "-c", "2", "-T", "1")
    wait_backed_up(remote, switched)
    ack = primary.replication(safekeeper.application_name)["flush_lsn"]
    seg, commit, term, sk_id, key = wait_partial_at(remote, ack)

    # Every full segment is exact and the archive has no gap.
    names = fulls(remote)
    segnos = [parse_segment_name(n)[1] for n in names]
    assert segnos == list(range(segnos[0], segnos[0] + len(segnos))), names
    for n in names:
        data = decode(remote.get(f"main/wal/{n}"))
        assert len(data) == SEG_SIZE
        if os.path.exists(os.path.join(primary.pg_wal, n)):
            assert data == primary_bytes(primary, n), f"{n} differs from the primary's"
        assert remote.tags(f"main/wal/{n}") == {"safekeeper-kind": "full"}

    # Exactly one partial version: the current segment, its pieces assembled = the primary's WAL up
    # to its end, every piece tagged.
    assert seg == segment_name(1, segno_of(commit)) and parse_segment_name(seg)[1] == segnos[-1] + 1
    assert (term, sk_id) == (1, 1)
    listed = [k[len(WAL):] for k in remote.keys(WAL)]
    data = assemble(remote, WAL, listed, seg, sk_id, term, commit)
    assert len(data) == commit % SEG_SIZE
    assert data == primary_bytes(primary, seg)[: len(data)]
    for n in listed:
        if (p := parse_partial_name(n)) and p.segment == seg:
            assert remote.tags(WAL + n) == {"safekeeper-kind": "partial"}, n

    # The control file lists what exists (and nothing is listed twice).
    assert safekeeper.stop() == 0

    # The safekeeper's own reader (`remote cat`) agrees with the independent decoder on the last
    # full segment and on the partial version assembled from its pieces (the archive is still now).
    (seg, commit, term, sk_id, version), = partials(remote)
    listed = [k[len(WAL):] for k in remote.keys(WAL)]
    out = os.path.join(safekeeper.dir, "cat.out")
    for name, want in ((names[-1], decode(remote.get(WAL + names[-1]))),
                       (version, assemble(remote, WAL, listed, seg, sk_id, term, commit))):
        cp = safekeeper_cli("remote", "cat", *remote.args(), "--cluster", "main", name, "--output", out, env=remote.env())
        assert cp.returncode == 0, cp.stderr
        with open(out, "rb") as f:
            assert f.read() == want, f"remote cat {name} differs from the decoded objects"
    cf = safekeeper.control_file_json()["state"]
    entries = cf["remote"]["partials"]
    assert entries and all(e["status"] == "Uploaded" for e in entries), entries
    # Every piece that exists is listed (once): the version is stored as pieces, one entry each.
    seg_start = parse_segment_name(seg)[1] * SEG_SIZE
    remote_pieces = sorted((p.start_lsn or seg_start, p.commit_lsn) for n in listed
                           if (p := parse_partial_name(n)) and p.segment == seg)
    cf_pieces = sorted((e["name"]["start_lsn"], e["name"]["commit_lsn"]) for e in entries)
    assert len(set(cf_pieces)) == len(cf_pieces) and set(remote_pieces) <= set(cf_pieces), (remote_pieces, cf_pieces)
    assert cf["backup_lsn"] == (segnos[-1] + 1) * SEG_SIZE


def committed_writer(pg: PgCluster, stop: threading.Event, committed: list[int], errors: list[str], start_id: int) -> None:
    """Inserts ids one transaction at a time; records an id only after its COMMIT returned."""
    i = start_id
    try:
        with psycopg.connect(pg.connstr(), autocommit=True, connect_timeout=5) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO rpo VALUES (%s, repeat('x', 200))", (i,))
                committed.append(i)
                i += 4
    except psycopg.Error as e:
        errors.append(str(e))


@pg_matrix
@pytest.mark.pg_matrix_only(remote="local", restore="restore-wal")
@pytest.mark.parametrize("restore", ["cp-oracle", "restore-wal"])
def test_rpo_zero_after_losing_the_primary(make_pg, safekeeper: Safekeeper, remote, workdir, restore, start_standby):
    """Sync mode, kill -9 the primary under load, delete it: the remote alone has every commit.
    Recovered once through an independent copy of the archive (`cp`) and once through
    `safekeeper restore-wal` as PostgreSQL's restore_command."""
    primary = make_pg("primary")
    primary.sql("CREATE TABLE rpo (id int PRIMARY KEY, pad text)")
    backup = take_base_backup(primary, os.path.join(workdir, "basebackup"))
    start_standby(safekeeper, primary, remote=remote, partial_interval="1s")

    stop, committed, errors = threading.Event(), [], []
    writers = [threading.Thread(target=committed_writer, args=(primary, stop, committed, errors, k)) for k in range(4)]
    for w in writers:
        w.start()
    time.sleep(6)
    primary.kill9()
    stop.set()
    for w in writers:
        w.join(timeout=30)
    assert len(committed) > 500, f"only {len(committed)} commits"
    # The partial interval (1 s) plus a margin: then the remote alone must hold every commit.
    time.sleep(4)
    archive = os.path.join(workdir, "archive")
    print("archive:", copy_archive(remote, archive))
    safekeeper.kill9()
    run(["rm", "-rf", primary.datadir])  # the primary's disk is gone

    if restore == "cp-oracle":
        restore_command = f"cp {archive}/%f %p"
    else:
        restore_command = restore_wal_command(remote.args() + ["--cluster", "main"], remote.env())
    restored = recover(workdir, "restored", backup, restore_command)
    try:
        have = {r[0] for r in restored.sql("SELECT id FROM rpo")}
    finally:
        restored.stop("immediate")
    missing = sorted(set(committed) - have)
    print(f"committed {len(committed)}, recovered {len(have)}, missing {len(missing)}")
    assert not missing, f"{len(missing)} acknowledged commits lost, e.g. {missing[:10]}"


def control_snapshot(sk: Safekeeper) -> dict:
    return sk.control_file_json()["state"]


@pytest.mark.parametrize("failpoint", ["partial-after-intent", "partial-after-put", "partial-after-uploaded", "gc-after-delete", "full-after-put",
                                       "merge-after-intent", "merge-after-put", "merge-after-uploaded"])
def test_crash_between_protocol_steps_orphans_nothing(primary: PgCluster, safekeeper: Safekeeper, workdir, failpoint, start_standby):
    """A crash at each step of the upload protocols (the third time it is reached; for a merge, the
    first merge: a piece that replaces a run of the chain's tail pieces, which needs 19 pieces in one
    segment, so that load switches no segment): the control file lists every object that exists,
    and after a restart GC converges to exactly the pieces of the newest partial."""
    remote = LocalRemote(os.path.join(workdir, "remote"))
    primary.sql("CREATE TABLE t (id serial, pad text)")
    merge = failpoint.startswith("merge-")
    spec = "return" if merge else "2*off->return"
    start_standby(safekeeper, primary, sync=False, remote=remote, partial_interval="200ms", env={"FAILPOINTS": f"{failpoint}={spec}"})

    stop = threading.Event()

    def load():
        with psycopg.connect(primary.connstr(), autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                conn.execute("INSERT INTO t (pad) SELECT repeat('y', 1000) FROM generate_series(1, 50)")
                n += 1
                if n % 40 == 0 and not merge:
                    conn.execute("SELECT pg_switch_wal()")
                time.sleep(0.05 if merge else 0.01)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        rc = safekeeper.wait_exit(timeout=90)
        assert rc != 0 and f"failpoint {failpoint}" in safekeeper.log(), f"no crash at {failpoint} (rc={rc})"

        # After the crash: the control file lists a superset of what exists remotely.
        cf = control_snapshot(safekeeper)
        listed = listed_partial_names(cf)
        for name in piece_names(remote):
            assert name in listed, f"{name} exists but the control file does not list it ({listed})"
        for seg in fulls(remote):
            assert full_implied(cf, seg), f"full segment {seg} exists but is not implied by the control file"

        # Restart without the failpoint: leftovers are finished, the newest partial is never deleted.
        safekeeper.start(primary.connstr(), extra=remote.args() + ["--partial-interval", "200ms"], env=remote.env())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            before = control_snapshot(safekeeper)
            keys = {k.split("/")[-1] for k in remote.keys("main/wal/")}
            after = control_snapshot(safekeeper)
            up_before = {n for n, s in listed_partial_names(before).items() if s == "Uploaded"}
            up_after = {n for n, s in listed_partial_names(after).items() if s == "Uploaded"}
            if up_before == up_after:
                assert up_before <= keys, f"the newest Uploaded partial {up_before} is missing from {sorted(keys)}"
            time.sleep(0.2)
    finally:
        stop.set()
        loader.join(timeout=30)

    def converged():
        cf = control_snapshot(safekeeper)
        names = listed_partial_names(cf)
        p = partials(remote)
        return len(p) == 1 and names == {n: "Uploaded" for n in piece_names(remote)}

    wait_until("GC converged to exactly the pieces of the newest partial", converged, timeout=60)
    assert safekeeper.stop() == 0


def test_storage_outage_does_not_stall_commits(primary: PgCluster, safekeeper: Safekeeper, workdir, start_standby):
    """A hung S3 server (SIGSTOP) during sync load: commits go on, uploads catch up afterwards."""
    server = MotoServer(workdir)
    try:
        remote = new_bucket(server)
        primary.pgbench("-i", "-s", "1", "-q")
        start_standby(safekeeper, primary, remote=remote, partial_interval="500ms")
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            out = primary.pgbench("-n", "-c", "2", "-T", "6", timeout=120)
            during = int(re.search(r"number of transactions actually processed: (\d+)", out.stdout).group(1))
            ends = [primary.switch_wal() for _ in range(2)]
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert during > 100, f"only {during} commits while storage was down"
        switched = [segment_name(1, segno_of(e - 1)) for e in ends]
        wait_backed_up(remote, switched, timeout=180)
        primary.sql("SELECT 1")
        ack = primary.replication(safekeeper.application_name)["flush_lsn"]
        wait_partial_at(remote, ack - SEG_SIZE if ack % SEG_SIZE == 0 else ack, timeout=120)
        names = fulls(remote)
        segnos = [parse_segment_name(n)[1] for n in names]
        assert segnos == list(range(segnos[0], segnos[0] + len(segnos)))
        for n in names:
            if os.path.exists(os.path.join(primary.pg_wal, n)):
                assert decode(remote.get(f"main/wal/{n}")) == primary_bytes(primary, n)
        assert safekeeper.stop() == 0
    finally:
        server.stop()


def test_local_wal_is_removed_only_after_upload(primary: PgCluster, safekeeper: Safekeeper, workdir, start_standby):
    remote = LocalRemote(os.path.join(workdir, "remote"))
    start_standby(safekeeper, primary, sync=False, remote=remote, partial_interval="500ms", extra=["--local-retention", "0"])
    switched = []
    for _ in range(4):
        primary.sql("SELECT pg_logical_emit_message(false, 'x', repeat('z', 100000))")
        switched.append(segment_name(1, segno_of(primary.switch_wal() - 1)))
    wait_backed_up(remote, switched)
    wait_until("old local segments removed", lambda: len(safekeeper.local_segments()) == 1, timeout=30)
    # The one kept is the newest completed segment, and every removed one is in the archive.
    assert sorted(safekeeper.local_segments()) == [switched[-1]]
    assert set(switched) <= set(fulls(remote))
    assert safekeeper.stop() == 0

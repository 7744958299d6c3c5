"""Incremental, compressed uploads (issue 16) against the real parts: PostgreSQL with 1 MiB
segments, the safekeeper as its synchronous standby, moto's S3 behind a counting proxy
(fixtures/s3_counting.py).

What a user fears, and what these tests show does not happen:
- keeping the archive current re-sends the segment's whole prefix at every upload (the cost the
  issue measured at 25x and more): here the bytes sent stay within a small multiple of the WAL
  even with hundreds of uploads into one segment;
- a segment that filled slowly needs a GET per upload to restore: here `restore-wal` fetches it
  with at most 19 GETs (and one LIST), byte-identical to the primary's WAL;
- an archive whose pieces a restore cannot put together: the end-to-end check is PostgreSQL's own
  recovery, through `restore_command`, of every acknowledged commit.
Costs are measured by `bench/upload_cost.sh`; the bounds here only catch a regression to
whole-prefix uploads or unbounded chains.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from fixtures.restore import recover, restore_wal_command, take_base_backup
from fixtures.s3_counting import CountingProxy
from fixtures.s3_faults import ProxiedBucket
from fixtures.safekeeper import Safekeeper, safekeeper_bin
from fixtures.utils import wait_until
from fixtures.wal import MIB, parse_lsn, parse_partial_name, segment_name

WAL = "main/wal/"


@pytest.fixture
def counting_proxy(moto_server):
    proxy = CountingProxy(moto_server.port)
    yield proxy
    proxy.stop()


def slow_writer(primary, stop: threading.Event, acked: list, errors: list, per_s: int = 20) -> None:
    """Small committed transactions (~250 bytes of WAL each) at `per_s` a second; the ids of the
    ones acknowledged go to `acked`."""
    import psycopg
    try:
        with psycopg.connect(primary.connstr(), autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                conn.execute("INSERT INTO acked VALUES (%s, md5(%s::text))", (i, i))
                acked.append(i)
                i += 1
                stop.wait(1.0 / per_s)
    except Exception as e:  # noqa: BLE001 - reported by the test
        errors.append(e)


def test_slow_segment_is_sent_once_and_restores_with_bounded_gets(
        make_pg, safekeeper: Safekeeper, s3_bucket, counting_proxy, workdir):
    primary = make_pg("primary", initdb_args=("--wal-segsize=1",),
                      extra_conf="checkpoint_timeout = 1h\nmax_wal_size = 1GB\nautovacuum = off\n")
    primary.sql("CREATE TABLE acked (id int PRIMARY KEY, pad text)")
    backup = take_base_backup(primary, os.path.join(workdir, "basebackup"))
    bucket = ProxiedBucket(s3_bucket, counting_proxy)
    # 100 ms: up to ten uploads a second, so 30 s put over a hundred pieces into one segment (a
    # chain of 19 fills within seconds, and merges go on from there).
    safekeeper.start(primary.connstr(), extra=bucket.args() + ["--partial-interval", "100ms"], env=bucket.env())
    primary.wait_streaming(safekeeper.application_name)
    primary.make_sync(safekeeper.application_name)
    api = safekeeper.api()

    primary.sql("SELECT pg_switch_wal()")
    start_lsn = parse_lsn(primary.sql_one("SELECT pg_current_wal_lsn()"))
    seg_start = start_lsn - start_lsn % MIB
    stop, acked, errors = threading.Event(), [], []
    w = threading.Thread(target=slow_writer, args=(primary, stop, acked, errors))
    w.start()
    try:
        time.sleep(30)
    finally:
        stop.set()
        w.join(timeout=30)
    assert not errors, errors
    end_lsn = parse_lsn(primary.sql_one("SELECT pg_current_wal_lsn()"))
    assert end_lsn // MIB == start_lsn // MIB, "the writer filled the segment: lower its rate"
    wait_until("the archive holds the WAL", lambda: parse_lsn(api.cluster()["lsn"]["remote"]) >= end_lsn, timeout=30)

    # Cost: what the PUTs carried against the WAL written. Whole-prefix uploads would send
    # about (segment offset / 2) per upload: tens of times the WAL here.
    puts = [r for r in counting_proxy.log if r.op == "PutObject" and r.key.startswith(f"{s3_bucket.prefix}/{WAL}")]
    partial_puts = [r for r in puts if r.key.endswith((".partial", ".delta"))]
    sent = sum(r.body_bytes for r in partial_puts)
    wal = end_lsn - start_lsn
    print(f"{len(partial_puts)} partial PUTs, {sent} bytes sent for {wal} bytes of WAL ({sent / wal:.2f}x)")
    # Merges happened, repeatedly: pieces that start below the end of the piece sent before them
    # (they replace a run of tail pieces; a base re-sent from the segment start counts too).
    merges, prev_end, prev_key = 0, None, None
    for r in partial_puts:
        if r.key == prev_key:
            continue  # a retried PUT of the same piece
        prev_key = r.key
        p = parse_partial_name(r.key.rsplit("/", 1)[-1])
        start = seg_start if p.start_lsn is None else p.start_lsn
        if prev_end is not None and start < prev_end:
            merges += 1
        prev_end = p.commit_lsn
    print(f"{merges} of them merges")
    assert len(partial_puts) >= 60 and merges >= 3, f"too few uploads ({len(partial_puts)}) or merges ({merges}) to exercise the chain bound"
    assert sent < 3 * wal, f"sent {sent} bytes for {wal} bytes of WAL"

    # Restore: at most 20 GETs for the segment (a version of at most 19 pieces, and the lookup of a
    # full segment that is not there) and one LIST, byte-identical to pg_wal's prefix.
    seg = segment_name(1, seg_start // MIB, MIB)
    # The archive may move on while restore-wal runs (the primary's background WAL), so what it
    # held is read before: restore-wal serves at least that much.
    held = parse_lsn(api.cluster()["lsn"]["remote"]) - seg_start
    assert held >= end_lsn - seg_start
    t0 = time.monotonic()
    out = os.path.join(workdir, seg)
    subprocess.run([safekeeper_bin(), "restore-wal", *bucket.args(), "--cluster", "main", seg, out],
                   env={**os.environ, **bucket.env()}, check=True, timeout=60)
    reqs = counting_proxy.requests_between(t0, time.monotonic() + 1)
    gets = [r for r in reqs if r.op == "GetObject"]
    print(f"restore-wal {seg}: {len(gets)} GETs, {len(reqs) - len(gets)} other requests")
    assert 1 <= len(gets) <= 20, [r.key for r in gets]
    with open(out, "rb") as f:
        restored = f.read()
    with open(os.path.join(primary.datadir, "pg_wal", seg), "rb") as f:
        local = f.read()
    # What was restored is the primary's WAL up to where the served version ends (at least
    # `held`), then zeros.
    served = max(held, len(restored.rstrip(b"\0")))
    assert restored[:served] == local[:served], f"restored bytes differ from pg_wal within the first {served}"
    assert len(restored) == MIB

    # End to end: PostgreSQL recovers every acknowledged commit through restore_command.
    safekeeper.stop()
    primary.stop("immediate")
    cmd = restore_wal_command(bucket.direct_args() + ["--cluster", "main"], bucket.env())
    restored_pg = recover(workdir, "restored", backup, cmd)
    try:
        got = restored_pg.sql_one("SELECT count(*) FROM acked WHERE id < %s" % len(acked))
        assert int(got) == len(acked), f"{got} of {len(acked)} acknowledged commits recovered"
    finally:
        restored_pg.stop("immediate")

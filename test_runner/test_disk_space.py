"""Space as a managed resource (issue 14), on real, small tmpfs filesystems (needs root).

What a user fears, and what each test shows does not happen:
- a data directory that holds only a couple of segments filling up under sync load and the
  primary's commits stalling for good (the safekeeper must free uploaded segments in time);
- a disk filled by someone else making the safekeeper acknowledge WAL it has not written, damage
  its control file, hammer the primary with reconnects, or need a restart once space is back;
- a full remote (file:// backend) stopping ingest, or the archive never catching up after.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time

import psycopg
import pytest

from fixtures.api import scrape
from fixtures.pg import PgCluster
from fixtures.remote import LocalRemote
from fixtures.objects import decode
from fixtures.restore import copy_archive, recover, take_base_backup
from fixtures.safekeeper import Safekeeper, safekeeper_bin
from fixtures.utils import is_root, run, wait_until
from fixtures.wal import SEG_SIZE, is_segment_name, parse_segment_name, segment_name, segno_of

pytestmark = pytest.mark.skipif(not is_root(), reason="mounting a tmpfs needs root")



@pytest.fixture
def tmpfs():
    """`tmpfs(path, size)` mounts a tmpfs of `size` at `path`; `before_unmount` callbacks (stopping
    the processes that use it) run first. Every mount is unmounted at teardown, even on failure."""
    mounts: list[str] = []
    before: list = []

    def mount(path: str, size: str, before_unmount=None) -> str:
        os.makedirs(path, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path])
        mounts.append(path)
        if before_unmount is not None:
            before.append(before_unmount)
        return path

    try:
        yield mount
    finally:
        for stop in before:
            stop()
        for path in reversed(mounts):
            if subprocess.run(["umount", path], capture_output=True).returncode != 0:
                run(["umount", "-l", path])


class Writers:
    """Sync-commit writers: each inserts one row with an incompressible pad of `pad_kib` KiB per
    transaction and records its id only after COMMIT returned."""

    def __init__(self, pg: PgCluster, n: int = 2, pad_kib: int = 2):
        self.pg, self.stop_event, self.md5s = pg, threading.Event(), pad_kib * 32
        self.committed: list[int] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(k, n), daemon=True) for k in range(n)]

    def _run(self, k: int, n: int) -> None:
        i = k
        try:
            with psycopg.connect(self.pg.connstr(), autocommit=True, connect_timeout=5) as conn:
                while not self.stop_event.is_set():
                    conn.execute("INSERT INTO t VALUES (%s, (SELECT string_agg(md5(random()::text), '') "
                                 "FROM generate_series(1, %s)))", (i, self.md5s))
                    self.committed.append(i)
                    i += n
        except psycopg.Error as e:
            self.errors.append(str(e))

    def start(self) -> "Writers":
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a writer is still blocked in COMMIT"
        assert not self.errors, self.errors


def watch_progress(pg: PgCluster, writers: Writers, seconds: float) -> float:
    """Samples the commit count every 0.5 s for `seconds`; returns the longest time without a
    new acknowledged commit."""
    last_count, last_change, worst = len(writers.committed), time.monotonic(), 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now, count = time.monotonic(), len(writers.committed)
        if count != last_count:
            last_count, last_change = count, now
        worst = max(worst, now - last_change)
    return worst


def local_wal_matches_primary(sk: Safekeeper, pg: PgCluster, upto: int) -> int:
    """Compares every local segment (and the .partial up to `upto`) with the primary's pg_wal;
    returns how many files were compared."""
    compared = 0
    for name in sorted(os.listdir(sk.wal_dir())):
        base = name[: -len(".partial")] if name.endswith(".partial") else name
        if not is_segment_name(base):
            continue
        theirs = os.path.join(pg.pg_wal, base)
        if not os.path.exists(theirs):
            continue
        start = parse_segment_name(base)[1] * SEG_SIZE
        length = SEG_SIZE if base == name else max(0, min(SEG_SIZE, upto - start))
        with open(os.path.join(sk.wal_dir(), name), "rb") as a, open(theirs, "rb") as b:
            mine, primary = a.read(length), b.read(length)
        assert mine == primary, f"local {name} differs from the primary's in its first {length} bytes"
        compared += 1
    return compared


def fill_once(path: str) -> None:
    """Appends to `path` until the filesystem is full."""
    chunk = os.urandom(4096)
    with open(path, "ab", buffering=0) as f:
        try:
            while f.write(chunk):
                pass
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise


def fill(path: str, stop: threading.Event) -> None:
    """Fills the filesystem of `path` again every 50 ms, until `stop`."""
    while not stop.is_set():
        fill_once(path)
        stop.wait(0.05)


def wait_archived(api, end: int, timeout: float = 60) -> None:
    """Waits until the remote alone holds WAL up to `end`: every full segment below the one
    holding it, and a partial (or full segment) reaching it."""
    def done():
        lsn = api.lsns()
        return lsn["backup"] >= (end - 1) // SEG_SIZE * SEG_SIZE and lsn["remote"] >= end
    wait_until(f"the archive holds WAL up to {end:X}", done, timeout=timeout)


def setup_primary(pg: PgCluster) -> None:
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, pad text)")


def test_small_data_dir_keeps_acknowledging(primary: PgCluster, safekeeper: Safekeeper, workdir, tmpfs, start_standby):
    """40 MiB data directory, --local-retention 0, 16 MiB segments, 60 s of sync load: commits are
    acknowledged throughout because uploaded segments are freed before the next one is needed."""
    tmpfs(safekeeper.data_dir, "40m", before_unmount=safekeeper.cleanup)
    remote = LocalRemote(os.path.join(workdir, "remote"))
    setup_primary(primary)
    start = primary.current_lsn()
    start_standby(safekeeper, primary, remote=remote, partial_interval="1s", extra=["--local-retention", "0"])
    writers = Writers(primary, pad_kib=8).start()
    try:
        worst = watch_progress(primary, writers, 60)
    finally:
        writers.stop()
    wal_bytes = primary.current_lsn() - start
    api = safekeeper.api()
    cluster = api.cluster()
    print(f"{len(writers.committed)} commits, {wal_bytes / 2**20:.0f} MiB of WAL, longest stall "
          f"{worst:.1f} s, disk_full_stalls {cluster['disk_full_stalls']}, files {safekeeper.wal_file_sizes()}")
    assert wal_bytes > 3 * SEG_SIZE, "the load must fill the 40 MiB filesystem more than once"
    assert worst < 10, f"no commit acknowledged for {worst:.1f} s"
    assert cluster["connection"] == "streaming" and cluster["reconnects"] == 0, cluster
    assert sorted(os.listdir(safekeeper.data_dir + "/main")) == ["safekeeper.control", "space.reserve", "wal"]
    assert safekeeper.stop() == 0


def test_full_disk_stalls_then_heals(make_pg, safekeeper: Safekeeper, workdir, tmpfs, start_standby):
    """Another file fills the data directory's tmpfs: commits stall with nothing acknowledged past
    what is on disk, the state says disk_full; once the filler is gone commits resume within 10 s in
    the same process, local WAL equals the primary's and the remote alone recovers every commit.
    The primary's wal_sender_timeout (5 s) is shorter than the stall: the session survives it on
    status updates alone (no reconnect)."""
    primary = make_pg("primary", extra_conf="wal_sender_timeout = 5s")
    tmpfs(safekeeper.data_dir, "40m", before_unmount=safekeeper.cleanup)
    remote = LocalRemote(os.path.join(workdir, "remote"))
    setup_primary(primary)
    backup = take_base_backup(primary, os.path.join(workdir, "basebackup"))
    start_standby(safekeeper, primary, remote=remote, partial_interval="1s",
                  extra=["--local-retention", "0", "--status-interval", "1s"])
    api = safekeeper.api()
    pid = safekeeper.pid
    writers = Writers(primary).start()
    filler, stop_filling = os.path.join(safekeeper.data_dir, "filler"), threading.Event()
    filling = threading.Thread(target=fill, args=(filler, stop_filling), daemon=True)
    try:
        time.sleep(2)
        filling.start()
        # The filler also takes whatever the safekeeper frees (uploaded segments), until nothing
        # is left to free: stalled with no completed segment left locally.
        wait_until("state disk_full with nothing left to free",
                   lambda: api.cluster()["connection"] == "disk_full" and not safekeeper.local_segments(), timeout=90)
        stalled = time.monotonic()
        stop_filling.set()
        filling.join(timeout=30)
        fill_once(filler)  # whatever was freed since the filler's last pass
        time.sleep(3)
        before = len(writers.committed)
        time.sleep(3)
        assert len(writers.committed) == before, "commits were acknowledged on a full disk"

        # Nothing acknowledged beyond what is on disk: the primary's view, the API, the files.
        acked = primary.replication(safekeeper.application_name)["flush_lsn"]
        lsn = api.lsns()
        assert acked <= lsn["flush"] and lsn["commit"] <= lsn["flush"], (acked, lsn)
        # What is acknowledged is in the local files (identical to the primary's) or, where they
        # were freed, in full remote segments.
        compared = local_wal_matches_primary(safekeeper, primary, lsn["flush"])
        ends = [parse_segment_name(n.split(".")[0])[1] for n in safekeeper.wal_file_sizes() if is_segment_name(n.split(".")[0])]
        on_disk_end = max([(e + 1) * SEG_SIZE for e in ends] + [lsn["backup"]])
        assert acked <= on_disk_end and (compared >= 1 or lsn["backup"] >= acked), (hex(acked), ends, lsn)
        assert not [n for n in os.listdir(safekeeper.wal_dir()) if n.endswith(".prealloc")], "a failed preallocation left a file"
        assert run([safekeeper_bin(), "control-file", "verify", safekeeper.control_file()]).returncode == 0
        detail = api.cluster()
        assert detail["disk_full"]["needed_bytes"] > detail["disk_full"]["available_bytes"], detail
        assert scrape(api).value("safekeeper_disk_full", cluster="main") == 1
        assert "disk full: not acknowledging WAL" in safekeeper.log()

        assert safekeeper.log().count("disk full: not acknowledging WAL") == 1, "one line a minute, not per retry"
        assert time.monotonic() - stalled > 6, "the stall must outlast the primary's wal_sender_timeout"
        os.remove(filler)
        freed = time.monotonic()
        wait_until("commits resume", lambda: len(writers.committed) > before, timeout=10)
        print(f"commits resumed {time.monotonic() - freed:.1f} s after the filler was removed")
        wait_until("state streaming", lambda: api.cluster()["connection"] == "streaming", timeout=10)
        time.sleep(3)
    finally:
        stop_filling.set()
        writers.stop()
    assert safekeeper.pid == pid and safekeeper.running(), "the same process must heal by itself"
    end = primary.current_lsn()
    primary.wait_flushed(safekeeper.application_name, end)
    detail = api.cluster()
    assert detail["reconnects"] == 0 and detail["disk_full_stalls"] >= 1, detail
    assert local_wal_matches_primary(safekeeper, primary, end) >= 1
    wait_archived(api, end)

    archive = os.path.join(workdir, "archive")
    print("archive:", copy_archive(remote, archive))
    restored = recover(workdir, "restored", backup, f"cp {archive}/%f %p")
    try:
        have = {r[0] for r in restored.sql("SELECT id FROM t")}
    finally:
        restored.stop("immediate")
    missing = sorted(set(writers.committed) - have)
    print(f"committed {len(writers.committed)}, recovered {len(have)}, missing {len(missing)}")
    assert not missing, f"{len(missing)} acknowledged commits lost, e.g. {missing[:10]}"
    assert safekeeper.stop() == 0


def test_startup_warns_when_the_data_dir_cannot_hold_two_segments(primary: PgCluster, safekeeper: Safekeeper, tmpfs, start_standby):
    """A 24 MiB filesystem cannot hold the segment being written, the next one and the reserve:
    one warning at start says so with the numbers."""
    tmpfs(safekeeper.data_dir, "24m", before_unmount=safekeeper.cleanup)
    start_standby(safekeeper, primary, sync=False)
    line = next(ln for ln in safekeeper.wait_log("less than two WAL segments").splitlines()
                if "less than two WAL segments" in ln)
    assert "WARN" in line and str(24 << 20) in line and str(2 * SEG_SIZE + (1 << 20)) in line, line
    assert safekeeper.stop() == 0


def test_full_remote_does_not_stop_ingest(primary: PgCluster, safekeeper: Safekeeper, workdir, tmpfs, start_standby):
    """A file:// remote on a tmpfs too small for one segment: sync commits go on the whole time;
    after the tmpfs grows the archive catches up and `remote verify` is clean."""
    root = tmpfs(os.path.join(workdir, "remote"), "8m", before_unmount=safekeeper.cleanup)
    remote = LocalRemote(root)
    setup_primary(primary)
    start_standby(safekeeper, primary, remote=remote, partial_interval="1s")
    api = safekeeper.api()
    writers = Writers(primary).start()
    try:
        worst = watch_progress(primary, writers, 10)
        switched = [segment_name(1, segno_of(primary.switch_wal() - 1))]
        worst = max(worst, watch_progress(primary, writers, 10))
        switched.append(segment_name(1, segno_of(primary.switch_wal() - 1)))
        worst = max(worst, watch_progress(primary, writers, 5))
    finally:
        writers.stop()
    offload = api.cluster()["offload"]
    print(f"{len(writers.committed)} commits, longest stall {worst:.1f} s, offload {offload}")
    assert worst < 5, f"no commit acknowledged for {worst:.1f} s while the remote was full"
    assert not set(switched) & set(remote.keys("main/wal/")), "a full segment cannot fit the remote"
    assert "No space left" in (offload.get("last_error") or ""), offload

    run(["mount", "-o", "remount,size=200m", root])
    end = primary.current_lsn()
    primary.wait_flushed(safekeeper.application_name, end)
    wait_archived(api, end, timeout=90)
    keys = {k[len("main/wal/"):] for k in remote.keys("main/wal/")}
    assert set(switched) <= keys, (switched, sorted(keys))
    for seg in switched:
        with open(os.path.join(primary.pg_wal, seg), "rb") as f:
            assert decode(remote.get(f"main/wal/{seg}")) == f.read()
    verify = subprocess.run([safekeeper_bin(), "remote", "verify", *remote.args()], capture_output=True, text=True,
                            timeout=120, env={**os.environ, **remote.env()})
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert safekeeper.stop() == 0

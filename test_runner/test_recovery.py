"""Recovery from the archive: restore-wal as PostgreSQL's restore_command, remote ls/verify, recover.

What a user fears, and what each test shows does not happen:
- a recovered server that lacks commits the archive holds, because restore-wal served an older
  partial, a higher-term but shorter partial of another safekeeper, or a partial where the full
  segment exists;
- recovery that silently ends early (and promotes) because the storage was unreachable, the
  archive name was wrong or an object was damaged, instead of stopping with a clear error;
- an archive that verify calls clean although a segment is missing, damaged, truncated or from
  another cluster;
- prefetching that serves the wrong bytes, prefetches partials or keeps another timeline's WAL.

The archives are written directly in the layout of DESIGN.md (fixtures/archive.py) from the WAL of
a real primary, so these tests do not depend on the safekeeper's offload.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time

import pytest

from fixtures.archive import ArchiveWriter, synthetic_segment
from fixtures.pg import PgCluster
from fixtures.restore import (prefetch_leftovers, prefetch_workers, restore_from_backup, restore_wal_command, spool_files,
                              wait_prefetch_gone)
from fixtures.s3 import s3_env
from fixtures.safekeeper import safekeeper_cli as sk
from fixtures.utils import chown_to_pg_user, wait_until
from fixtures.wal import (MIB, SEG_SIZE, format_lsn, is_segment_name, parse_lsn, parse_segment_name, partial_name,
                          segment_name, segno_of)

SYSID = 7_300_000_000_000_000_001


# --- a real primary's WAL, made once per module ----------------------------------------------------

class RealWal:
    """WAL of a real primary after a base backup: full segments, and the segment being written
    at the crash with three commit points A < B < C in it."""

    def __init__(self, base: str):
        self.base = base
        self.backup = os.path.join(base, "backup")
        self.segments: dict[str, bytes] = {}   # full segments, by name
        self.tail_name = ""                    # segment holding A, B, C
        self.tail = b""                        # its bytes up to C
        self.lsn: dict[str, int] = {}          # "A", "B", "C"
        self.ids: dict[str, list[int]] = {}    # committed ids up to and including each point
        self.system_identifier = 0

    def tail_segno(self) -> int:
        return parse_segment_name(self.tail_name)[1]

    def partial(self, point: str, term: int, sk_id: int) -> tuple[str, bytes]:
        lsn = self.lsn[point]
        start = self.tail_segno() * SEG_SIZE
        return partial_name(1, self.tail_segno(), lsn, term, sk_id), self.tail[: lsn - start]


@pytest.fixture(scope="module")
def real_wal() -> RealWal:
    base = tempfile.mkdtemp(prefix="sk-realwal-", dir=os.environ.get("SK_TEST_TMP", "/tmp"))
    os.chmod(base, 0o755)
    chown_to_pg_user(base)
    wal = RealWal(base)
    pg = PgCluster(base, "primary").initdb()
    pg.start()
    try:
        wal.system_identifier = pg.system_identifier()
        pg.sql("CREATE TABLE t (id int PRIMARY KEY, batch int NOT NULL)")
        pg.basebackup(wal.backup, timeout=120)
        committed: list[int] = []

        def batch(rows: int) -> int:
            first = len(committed) + 1
            pg.sql("INSERT INTO t SELECT g, %s FROM generate_series(%s, %s) g", (first, first, first + rows - 1))
            committed.extend(range(first, first + rows))  # the client saw the commit
            return pg.current_lsn()

        batch(250_000)  # ~20 MB of WAL: records that continue across a segment boundary
        for _ in range(2):
            batch(1000)
            pg.switch_wal()
        for point in ("A", "B", "C"):
            wal.lsn[point] = batch(100)
            wal.ids[point] = list(committed)
        tail_segno = segno_of(wal.lsn["A"])
        assert segno_of(wal.lsn["C"]) == tail_segno, "A, B and C must share a segment"
        pg.kill9()
        wal.tail_name = segment_name(1, tail_segno)
        with open(os.path.join(pg.pg_wal, wal.tail_name), "rb") as f:
            wal.tail = f.read(wal.lsn["C"] - tail_segno * SEG_SIZE)
        for name in sorted(os.listdir(pg.pg_wal)):
            if is_segment_name(name) and name.startswith("00000001") and name < wal.tail_name:
                with open(os.path.join(pg.pg_wal, name), "rb") as f:
                    wal.segments[name] = f.read()
        assert len(wal.segments) >= 3
    finally:
        pg.destroy()
    shutil.rmtree(pg.datadir, ignore_errors=True)  # the primary is gone for good
    yield wal
    shutil.rmtree(base, ignore_errors=True)


def fill_archive(w: ArchiveWriter, wal: RealWal, bogus: bool = True) -> dict:
    """The archive three safekeepers of an `ANY 1` quorum would have left: every full segment, in
    the tail segment sk1's partial at A and sk2's at B (both moved to term 2), sk3's term-1 partial
    reaching C (it acknowledged the last commits alone: terms of different safekeepers are not
    comparable), and, with `bogus`, a garbage high-term partial of a segment whose full object
    exists."""
    for name, data in wal.segments.items():
        w.put(name, data)
    names = {}
    for label, point, term, sk in (("sk1", "A", 2, 1), ("sk2", "B", 2, 2), ("sk3", "C", 1, 3)):
        name, data = wal.partial(point, term, sk)
        w.put(name, data)
        names[label] = name
    if bogus:
        first = min(wal.segments)
        segno = parse_segment_name(first)[1]
        names["bogus"] = partial_name(1, segno, segno * SEG_SIZE + 8192, 99, 9)
        w.put(names["bogus"], b"\xee" * 8192)
    return names


def local_writer(workdir: str, name: str = "remote") -> ArchiveWriter:
    root = os.path.join(workdir, name)
    os.makedirs(root)
    return ArchiveWriter(root_dir=root)


@pytest.fixture(params=["local", "s3"])
def writer(request, workdir) -> ArchiveWriter:
    if request.param == "local":
        return local_writer(workdir)
    return ArchiveWriter(bucket=request.getfixturevalue("s3_bucket"))


# --- real PostgreSQL recovery ---------------------------------------------------------------------

def test_postgres_recovers_every_commit_up_to_the_best_partial(writer, workdir, real_wal):
    """Two safekeepers' partials at A and B (term 2), a third's term-1 partial reaching C and a bogus
    partial beside a full segment: PostgreSQL replays to C exactly (the most WAL, whatever the
    terms), then ends recovery and promotes."""
    names = fill_archive(writer, real_wal)
    # The default restore_command (prefetch on).
    cmd = restore_wal_command(writer.args(), writer.env())
    pg = restore_from_backup(workdir, "restored", real_wal.backup, cmd)
    try:
        pg.start(timeout=120)
        wait_until("promoted", lambda: pg.sql_one("SELECT NOT pg_is_in_recovery()"), timeout=60)
        ids = [r[0] for r in pg.sql("SELECT id FROM t ORDER BY id")]
        assert ids == real_wal.ids["C"], f"{len(ids)} rows recovered, expected {len(real_wal.ids['C'])}"
        assert pg.timeline() == 2
        with open(pg.logfile, errors="replace") as f:
            log = f.read()
        assert names["sk3"] in log, "restore-wal logs the partial it served"
        assert names["bogus"] not in log
        for name in real_wal.segments:
            assert f"restored log file \"{name}\" from archive" in log or name < min(real_wal.segments)
        if writer.bucket:
            # S3 answers slowly enough for the worker to get ahead of replay.
            assert "restored from the prefetch spool" in log
        # Recovery over: the worker left, and took its spool with it.
        wait_prefetch_gone(pg.pg_wal)
    finally:
        pg.destroy()


# --- restore-wal selection and exit codes, without PostgreSQL ---------------------------------------

def test_restore_wal_picks_full_segment_then_best_partial(writer, workdir, real_wal):
    names = fill_archive(writer, real_wal)
    dest = os.path.join(workdir, "RECOVERYXLOG")
    for name, data in list(real_wal.segments.items())[:2]:
        cp = sk("restore-wal", *writer.args(), name, dest, env=writer.env())
        assert cp.returncode == 0, cp.stderr
        with open(dest, "rb") as f:
            assert f.read() == data, f"{name}: the full segment, not the high-term partial beside it"
    cp = sk("restore-wal", *writer.args(), real_wal.tail_name, dest, env=writer.env())
    assert cp.returncode == 0, cp.stderr
    assert names["sk3"] in cp.stderr and "agreeing with 2 other safekeepers' partials" in cp.stderr, cp.stderr
    _, best = real_wal.partial("C", 1, 3)
    with open(dest, "rb") as f:
        got = f.read()
    assert len(got) == SEG_SIZE and got[: len(best)] == best and got[len(best):].count(0) == SEG_SIZE - len(best)
    leftovers = [n for n in os.listdir(workdir) if "RECOVERYXLOG" in n and n != "RECOVERYXLOG"]
    assert not leftovers, f"temp files left behind: {leftovers}"


def test_restore_wal_exit_codes(workdir):
    """1 for a missing file (PostgreSQL carries on); 255 (recovery stops) for everything that must
    not read as 'missing': unreachable storage, empty archive, damaged object, bad command line."""
    w = local_writer(workdir)
    w.put(segment_name(1, 1, MIB), synthetic_segment(1, MIB, SYSID))
    dest = os.path.join(workdir, "out")

    cp = sk("restore-wal", *w.args(), segment_name(1, 2, MIB), dest)
    assert cp.returncode == 1, cp.stderr
    assert not os.path.exists(dest)
    assert sk("restore-wal", *w.args(), "00000002.history", dest).returncode == 1
    assert sk("restore-wal", *w.args(), segment_name(1, 1, MIB), dest).returncode == 0

    cp = sk("restore-wal", "--remote", w.url, "--cluster", "typo", segment_name(1, 1, MIB), dest)
    assert cp.returncode == 255 and "no WAL at all" in cp.stderr, cp.stderr
    cp = sk("restore-wal", "--remote", f"file://{workdir}/nowhere", segment_name(1, 1, MIB), dest)
    assert cp.returncode == 255 and "does not exist" in cp.stderr, cp.stderr
    cp = sk("restore-wal", "--remote", w.url, "--no-such-flag", "x", dest)
    assert cp.returncode == 255, cp.stderr

    w.damage(segment_name(1, 1, MIB), synthetic_segment(1, MIB, SYSID)[:-1] + b"\x01")
    cp = sk("restore-wal", *w.args(), segment_name(1, 1, MIB), dest)
    assert cp.returncode == 255 and "damaged" in cp.stderr, cp.stderr

    # Nothing listens on one port; the other accepts connections and never answers (a hung
    # storage): either way retried for --retry-for, then fatal with a clear message.
    unreachable_env = s3_env(access_key="x", secret_key="x")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    try:
        for sock in (closed, hung):
            port = sock.getsockname()[1]
            started = time.monotonic()
            cp = sk("restore-wal", "--remote", "s3://bucket/prefix", "--s3-endpoint", f"http://127.0.0.1:{port}",
                    "--s3-force-path-style", "--retry-for", "3s", segment_name(1, 1, MIB), dest, env=unreachable_env)
            assert cp.returncode == 255, cp.stderr
            assert "kept failing" in cp.stderr and "stopping recovery" in cp.stderr, cp.stderr
            assert time.monotonic() - started < 30, "--retry-for bounds the wait"
    finally:
        closed.close()
        hung.close()


# --- remote ls / verify / recover -------------------------------------------------------------------

def test_ls_shows_ranges_gaps_partials_and_history(workdir):
    w = local_writer(workdir)
    for segno in (1, 2, 3, 5):
        w.put(segment_name(1, segno, MIB), synthetic_segment(segno, MIB, SYSID))
    w.put(segment_name(2, 5, MIB), synthetic_segment(5, MIB, SYSID, timeline=2))
    w.put("00000002.history", b"1\t0/500000\tno recovery target specified\n")
    p1 = partial_name(2, 6, 6 * MIB + 4096, 2, 1, MIB)
    p2 = partial_name(2, 6, 6 * MIB + 8192, 2, 2, MIB)
    w.put(p1, synthetic_segment(6, MIB, SYSID, 2)[:4096])
    w.put(p2, synthetic_segment(6, MIB, SYSID, 2)[:8192])
    cp = sk("remote", "ls", *w.args(), "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["segment_size"] == MIB and doc["segment_size_source"] == "inferred"
    t1, t2 = doc["timelines"]
    assert t1["ranges"] == [{"first": segment_name(1, 1, MIB), "last": segment_name(1, 3, MIB), "count": 3},
                            {"first": segment_name(1, 5, MIB), "last": segment_name(1, 5, MIB), "count": 1}]
    assert t1["gaps"] == [{"first": segment_name(1, 4, MIB), "last": segment_name(1, 4, MIB), "count": 1}]
    parts = {p["key"].rsplit("/", 1)[1]: p for p in t2["partials"]}
    assert parts[p2]["best"] and not parts[p1]["best"]
    assert (parts[p2]["term"], parts[p2]["commit_lsn"], parts[p2]["sk_id"]) == (2, format_lsn(6 * MIB + 8192), 2)
    assert t2["end_of_wal"] == format_lsn(6 * MIB + 8192)
    assert doc["history_files"][0]["timeline"] == 2
    assert doc["total_size"] == 5 * MIB + 4096 + 8192 + len(b"1\t0/500000\tno recovery target specified\n")
    text = sk("remote", "ls", *w.args()).stdout
    assert "GAP" in text and "best" in text, text


def test_recover_follows_the_timeline_history_and_stops_at_a_gap(workdir):
    """Timeline 2 branched at the start of segment 5: segments 1..4 come from timeline 1, the rest
    (up to the best partial) from timeline 2; a missing segment stops the walk with exit 1."""
    w = local_writer(workdir)
    for segno in (1, 2, 3, 5, 6):
        w.put(segment_name(1, segno, MIB), synthetic_segment(segno, MIB, SYSID))
    w.put(segment_name(2, 5, MIB), synthetic_segment(5, MIB, SYSID, timeline=2))
    history = b"1\t0/500000\tno recovery target specified\n"
    w.put("00000002.history", history)
    tail = synthetic_segment(6, MIB, SYSID, 2)[:8192]
    w.put(partial_name(2, 6, 6 * MIB + 8192, 2, 1, MIB), tail)
    target = os.path.join(workdir, "pg_wal")

    cp = sk("recover", *w.args(), "--target-dir", target)
    assert cp.returncode == 1 and segment_name(1, 4, MIB) in cp.stderr, cp.stderr
    assert f"up to {format_lsn(4 * MIB)}" in cp.stdout, cp.stdout
    assert sorted(os.listdir(target)) == sorted(["00000002.history"] + [segment_name(1, s, MIB) for s in (1, 2, 3)])

    w.put(segment_name(1, 4, MIB), synthetic_segment(4, MIB, SYSID))
    cp = sk("recover", *w.args(), "--target-dir", target, "--overwrite")
    assert cp.returncode == 0, cp.stderr
    assert f"up to {format_lsn(6 * MIB + 8192)}" in cp.stdout, cp.stdout
    assert sorted(os.listdir(target)) == sorted(["00000002.history"] + [segment_name(1, s, MIB) for s in (1, 2, 3, 4)] + [
        segment_name(2, 5, MIB), segment_name(2, 6, MIB)])
    with open(os.path.join(target, segment_name(2, 6, MIB)), "rb") as f:
        assert f.read() == tail + bytes(MIB - len(tail))
    with open(os.path.join(target, "00000002.history"), "rb") as f:
        assert f.read() == history


def test_verify_names_every_kind_of_damage(writer, real_wal):
    fill_archive(writer, real_wal, bogus=False)
    clean = sk("remote", "verify", *writer.args(), env=writer.env())
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"system identifier {real_wal.system_identifier}" in clean.stdout

    names = sorted(real_wal.segments)
    middle = names[len(names) // 2]
    original = real_wal.segments[middle]
    other_system = bytearray(original)
    other_system[24:32] = (real_wal.system_identifier + 1).to_bytes(8, "little")
    flipped = bytearray(original)
    flipped[SEG_SIZE // 2] ^= 0x01
    damages = {
        "missing": lambda: writer.delete(middle),
        "flipped byte": lambda: writer.damage(middle, bytes(flipped)),
        "truncated": lambda: writer.damage(middle, original[: SEG_SIZE // 2]),
        "other system": lambda: writer.put(middle, bytes(other_system)),
    }
    for what, damage in damages.items():
        damage()
        cp = sk("remote", "verify", *writer.args(), env=writer.env())
        assert cp.returncode == 1, f"{what}: {cp.stdout}{cp.stderr}"
        errors = [line for line in cp.stdout.splitlines() if line.startswith("ERROR")]
        assert errors and all(middle in line for line in errors), f"{what}: {cp.stdout}"
        writer.put(middle, original)
        assert sk("remote", "verify", *writer.args(), env=writer.env()).returncode == 0, f"repaired after {what}"


def test_recover_rebuilds_pg_wal_up_to_the_best_partial(workdir, real_wal):
    w = local_writer(workdir)
    fill_archive(w, real_wal)
    target = os.path.join(workdir, "pg_wal")
    cp = sk("recover", *w.args(), "--target-dir", target)
    assert cp.returncode == 0, cp.stderr
    assert f"up to {format_lsn(real_wal.lsn['C'])}" in cp.stdout, cp.stdout
    written = sorted(os.listdir(target))
    assert written == sorted(real_wal.segments) + [real_wal.tail_name]
    for name, data in real_wal.segments.items():
        with open(os.path.join(target, name), "rb") as f:
            assert f.read() == data, name
    _, best = real_wal.partial("C", 1, 3)
    with open(os.path.join(target, real_wal.tail_name), "rb") as f:
        assert f.read() == best + bytes(SEG_SIZE - len(best))

    # Refuses to overwrite; --until-lsn stops after the segment holding it.
    assert sk("recover", *w.args(), "--target-dir", target).returncode == 1
    until = os.path.join(workdir, "until")
    second = sorted(real_wal.segments)[1]
    segno = parse_segment_name(second)[1]
    cp = sk("recover", *w.args(), "--target-dir", until, "--until-lsn", format_lsn(segno * SEG_SIZE + 100))
    assert cp.returncode == 0, cp.stderr
    assert sorted(os.listdir(until)) == sorted(real_wal.segments)[:2]
    assert re.search(r"up to \S+", cp.stdout)


def test_archive_written_by_a_safekeeper_lists_verifies_and_restores(primary, safekeeper, workdir, start_standby):
    """The reader and the offload agree on the layout: what `safekeeper run` uploads verifies clean,
    and restore-wal serves its newest partial."""
    remote = local_writer(workdir)
    start_standby(safekeeper, primary, sync=False, extra=["--remote", remote.url, "--partial-interval", "300ms"])
    primary.sql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100000) g")
    primary.switch_wal()
    primary.sql("INSERT INTO t SELECT g FROM generate_series(100001, 100100) g")
    end = primary.current_lsn()

    def listing():
        cp = sk("remote", "ls", *remote.args(), "--json")
        doc = json.loads(cp.stdout) if cp.returncode == 0 else None
        # The partial of the newest segment can go up before the full upload of the one before
        # it has finished (they run independently): wait for both.
        t = doc and doc["timelines"] and doc["timelines"][0]
        return t and parse_lsn(t["end_of_wal"]) >= end and t["full_segments"] >= 1 and doc
    doc = wait_until("full segment and partial at the end of WAL uploaded", listing, timeout=60)
    t1 = doc["timelines"][0]
    assert t1["gaps"] == [] and t1["full_segments"] >= 1
    best = [p for p in t1["partials"] if p["best"]]
    assert len(best) == 1 and best[0]["sk_id"] == safekeeper.id
    assert best[0]["segment"] == segment_name(1, segno_of(end))
    cp = sk("remote", "verify", *remote.args())
    assert cp.returncode == 0, cp.stdout + cp.stderr
    dest = os.path.join(workdir, "RECOVERYXLOG")
    cp = sk("restore-wal", *remote.args(), best[0]["segment"], dest)
    assert cp.returncode == 0, cp.stderr
    with open(os.path.join(primary.pg_wal, best[0]["segment"]), "rb") as f:
        want = f.read(end % SEG_SIZE)
    with open(dest, "rb") as f:
        assert f.read(end % SEG_SIZE) == want


# --- prefetch ---------------------------------------------------------------------------------------

def test_prefetch_serves_the_same_bytes_and_never_spools_partials(s3_bucket, workdir):
    w = ArchiveWriter(bucket=s3_bucket)
    segs = {segno: synthetic_segment(segno, MIB, SYSID) for segno in range(1, 7)}
    for segno, data in segs.items():
        w.put(segment_name(1, segno, MIB), data)
    tail = partial_name(1, 7, 7 * MIB + 8192, 1, 1, MIB)
    w.put(tail, synthetic_segment(7, MIB, SYSID)[:8192])
    w.put(segment_name(2, 4, MIB), synthetic_segment(4, MIB, SYSID, timeline=2))
    pg_wal = os.path.join(workdir, "pg_wal")
    os.makedirs(pg_wal)
    spool = os.path.join(pg_wal, ".safekeeper-prefetch")
    dest = os.path.join(pg_wal, "RECOVERYXLOG")

    def restore(name: str) -> bytes:
        cp = sk("restore-wal", *w.args(), "--prefetch", "3", name, dest, env=w.env())
        assert cp.returncode == 0, cp.stderr
        with open(dest, "rb") as f:
            return f.read()

    def spooled() -> set[str]:
        return {n for n in spool_files(spool) if len(n) == 24}

    assert restore(segment_name(1, 1, MIB)) == segs[1]
    want = {segment_name(1, s, MIB) for s in (2, 3, 4)}
    wait_until("segments 2..4 prefetched", lambda: spooled() == want, timeout=30)
    for segno in range(2, 7):
        assert restore(segment_name(1, segno, MIB)) == segs[segno]
    wait_until("workers done", lambda: not [n for n in spool_files(spool) if n.endswith(".claim")], timeout=30)
    assert spooled() == set(), f"nothing after segment 6 is a full segment: {spooled()}"
    padded = restore(segment_name(1, 7, MIB))
    assert padded[:8192] == synthetic_segment(7, MIB, SYSID)[:8192] and len(padded) == MIB

    # A timeline switch drops what was prefetched on the old timeline.
    restore(segment_name(1, 1, MIB))
    wait_until("refilled", lambda: len(spooled()) == 3, timeout=30)
    assert restore(segment_name(2, 4, MIB)) == synthetic_segment(4, MIB, SYSID, timeline=2)
    assert not any(n.startswith("00000001") for n in spooled()), spooled()


# --- partials of one segment that disagree ------------------------------------------------------------

def test_diverged_partials_stop_restore_unless_a_safekeeper_is_preferred(writer, workdir, real_wal):
    """sk1's partial holds the real WAL up to B; sk2's reaches C but its bytes from A on are another
    history (crafted): restore-wal exits 255 naming both and A; --prefer-safekeeper serves the chosen
    one (PostgreSQL then replays to B exactly); recover refuses too; remote verify reports it."""
    for name, data in real_wal.segments.items():
        writer.put(name, data)
    genuine, genuine_data = real_wal.partial("B", 1, 1)
    forked, real_c = real_wal.partial("C", 1, 2)
    fork_at = real_wal.lsn["A"] - real_wal.tail_segno() * SEG_SIZE
    writer.put(genuine, genuine_data)
    writer.put(forked, real_c[:fork_at] + bytes(b ^ 0x5A for b in real_c[fork_at:]))
    dest = os.path.join(workdir, "RECOVERYXLOG")

    cp = sk("restore-wal", *writer.args(), real_wal.tail_name, dest, env=writer.env())
    assert cp.returncode == 255, cp.stderr
    fatal = [line for line in cp.stderr.splitlines() if "FATAL" in line]
    assert len(fatal) == 1, cp.stderr
    assert genuine in fatal[0] and forked in fatal[0] and f"LSN {format_lsn(real_wal.lsn['A'])}" in fatal[0], fatal[0]
    assert not os.path.exists(dest), "nothing served"

    for prefer, (name, data) in (("1", (genuine, genuine_data)), ("2", (forked, None))):
        cp = sk("restore-wal", *writer.args(), "--prefer-safekeeper", prefer, real_wal.tail_name, dest, env=writer.env())
        assert cp.returncode == 0, cp.stderr
        assert name in cp.stderr, cp.stderr
        with open(dest, "rb") as f:
            got = f.read()
        want = data if data is not None else writer_bytes(writer, forked)
        assert got == want + bytes(SEG_SIZE - len(want))

    target = os.path.join(workdir, "pg_wal")
    cp = sk("recover", *writer.args(), "--target-dir", target, env=writer.env())
    assert cp.returncode == 1 and genuine in cp.stderr and forked in cp.stderr, cp.stderr
    cp = sk("recover", *writer.args(), "--target-dir", target, "--overwrite", "--prefer-safekeeper", "1", env=writer.env())
    assert cp.returncode == 0 and f"up to {format_lsn(real_wal.lsn['B'])}" in cp.stdout, cp.stdout + cp.stderr

    cp = sk("remote", "verify", *writer.args(), env=writer.env())
    assert cp.returncode == 1, cp.stdout + cp.stderr
    diverged = [line for line in cp.stdout.splitlines() if "diverges" in line]
    assert len(diverged) == 1, cp.stdout
    assert line_names(diverged[0], genuine, forked) and format_lsn(real_wal.lsn["A"]) in diverged[0], diverged[0]

    # PostgreSQL, told to trust sk1, replays sk1's history to B exactly.
    cmd = restore_wal_command(writer.args(), writer.env(), "--prefer-safekeeper", "1")
    pg = restore_from_backup(workdir, "restored", real_wal.backup, cmd)
    try:
        pg.start(timeout=120)
        wait_until("promoted", lambda: pg.sql_one("SELECT NOT pg_is_in_recovery()"), timeout=60)
        ids = [r[0] for r in pg.sql("SELECT id FROM t ORDER BY id")]
        assert ids == real_wal.ids["B"], f"{len(ids)} rows recovered, expected {len(real_wal.ids['B'])}"
    finally:
        pg.destroy()


def writer_bytes(w: ArchiveWriter, name: str) -> bytes:
    """The stored bytes of a WAL object, read past the code under test."""
    if w.bucket:
        return w.bucket.get(w.key(name))
    with open(os.path.join(w.root_dir, w.cluster, "wal", name), "rb") as f:
        return f.read()


def line_names(line: str, *names: str) -> bool:
    return all(n in line for n in names)


def test_prefetch_worker_is_shared_never_serves_damage_and_leaves_nothing(s3_bucket, workdir):
    """The default command: one worker for successive calls, which never spools an object that
    fails its checks (the call for it fails clearly, exit 255, naming the object), and which exits
    and removes its spool once nobody asks any more."""
    w = ArchiveWriter(bucket=s3_bucket)
    segs = {segno: synthetic_segment(segno, MIB, SYSID) for segno in range(1, 9)}
    for segno, data in segs.items():
        w.put(segment_name(1, segno, MIB), data)
    bad = segment_name(1, 6, MIB)
    w.damage(bad, segs[6][:-1] + bytes([segs[6][-1] ^ 0x01]))
    pg_wal = os.path.join(workdir, "pg_wal")
    os.makedirs(pg_wal)
    spool = os.path.join(pg_wal, ".safekeeper-prefetch")
    dest = os.path.join(pg_wal, "RECOVERYXLOG")
    workers: set[int] = set()

    def restore(segno: int):
        cp = sk("restore-wal", *w.args(), segment_name(1, segno, MIB), dest, env=w.env())
        workers.update(prefetch_workers(pg_wal))
        return cp

    # Calls that serve no full segment start no worker and leave nothing in pg_wal.
    assert restore(9).returncode == 1
    assert sk("restore-wal", *w.args(), "00000002.history", dest, env=w.env()).returncode == 1
    assert prefetch_leftovers(pg_wal) == [] and not workers, (prefetch_leftovers(pg_wal), workers)
    assert restore(1).returncode == 0
    ahead = {segment_name(1, s, MIB) for s in (2, 3, 4, 5)}
    wait_until("segments 2..5 spooled", lambda: ahead <= set(spool_files(spool)), timeout=30)
    for segno in range(2, 6):
        cp = restore(segno)
        assert cp.returncode == 0 and "restored from the prefetch spool" in cp.stderr, cp.stderr
        with open(dest, "rb") as f:
            assert f.read() == segs[segno]
    # The worker went on past 5: 7 and 8 arrive, the damaged 6 never does.
    wait_until("7 and 8 spooled", lambda: {segment_name(1, 7, MIB), segment_name(1, 8, MIB)} <= set(spool_files(spool)),
               timeout=30)
    assert bad not in spool_files(spool)
    cp = restore(6)
    assert cp.returncode == 255, cp.stderr
    fatal = [line for line in cp.stderr.splitlines() if "FATAL" in line]
    assert len(fatal) == 1 and bad in fatal[0], cp.stderr
    assert len(workers) == 1, f"one worker serves the whole recovery, saw {sorted(workers)}"

    # Nobody asks any more: the worker exits (5 s idle) and removes the spool.
    wait_prefetch_gone(pg_wal, timeout=30)
    assert prefetch_leftovers(pg_wal) == [] and not os.path.exists(spool)



def test_prefetch_never_serves_another_archives_segments(s3_bucket, workdir):
    """A spool filled from one archive (cluster) is never served for another one's request in the
    same pg_wal, even when the names match: the other archive's bytes are what is restored."""
    first, second = ArchiveWriter(bucket=s3_bucket, cluster="main"), ArchiveWriter(bucket=s3_bucket, cluster="other")
    for segno in range(1, 6):
        first.put(segment_name(1, segno, MIB), synthetic_segment(segno, MIB, SYSID))
        second.put(segment_name(1, segno, MIB), synthetic_segment(segno, MIB, SYSID + 1))
    pg_wal = os.path.join(workdir, "pg_wal")
    os.makedirs(pg_wal)
    spool = os.path.join(pg_wal, ".safekeeper-prefetch")
    dest = os.path.join(pg_wal, "RECOVERYXLOG")
    assert sk("restore-wal", *first.args(), segment_name(1, 1, MIB), dest, env=first.env()).returncode == 0
    wait_until("main's 2..4 spooled", lambda: {segment_name(1, s, MIB) for s in (2, 3, 4)} <= set(spool_files(spool)),
               timeout=30)
    for segno in (2, 3):
        cp = sk("restore-wal", *second.args(), segment_name(1, segno, MIB), dest, env=second.env())
        assert cp.returncode == 0, cp.stderr
        with open(dest, "rb") as f:
            assert f.read() == synthetic_segment(segno, MIB, SYSID + 1), f"segment {segno} of the wrong archive served"


def test_prefetch_never_serves_a_segment_replaced_or_removed_after_spooling(s3_bucket, workdir):
    """Segments spooled, then one replaced by another (valid) object and one removed in the
    archive: once the worker has looked again (every 2 s), the spool serves neither: the new
    object's bytes are restored and the removed one is 'not found'; what did not change is still
    served from the spool."""
    w = ArchiveWriter(bucket=s3_bucket)
    segs = {segno: synthetic_segment(segno, MIB, SYSID) for segno in range(1, 6)}
    for segno, data in segs.items():
        w.put(segment_name(1, segno, MIB), data)
    pg_wal = os.path.join(workdir, "pg_wal")
    os.makedirs(pg_wal)
    spool = os.path.join(pg_wal, ".safekeeper-prefetch")
    dest = os.path.join(pg_wal, "RECOVERYXLOG")

    def restore(segno: int):
        return sk("restore-wal", *w.args(), segment_name(1, segno, MIB), dest, env=w.env())

    def spooled_bytes(segno: int):
        path = spool_files(spool).get(segment_name(1, segno, MIB))
        try:
            with open(path, "rb") as f:
                return f.read()
        except (TypeError, OSError):
            return None

    assert restore(1).returncode == 0
    wait_until("segments 2..4 spooled", lambda: all(spooled_bytes(s) for s in (2, 3, 4)), timeout=30)
    replaced = synthetic_segment(3, MIB, SYSID + 1)
    w.put(segment_name(1, 3, MIB), replaced)
    w.delete(segment_name(1, 4, MIB))
    # Keep PostgreSQL's requests coming as a replay would (the worker exits after 5 s idle).
    cp = restore(2)
    assert cp.returncode == 0 and "restored from the prefetch spool" in cp.stderr, cp.stderr
    with open(dest, "rb") as f:
        assert f.read() == segs[2]
    wait_until("the worker dropped the changed segments",
               lambda: os.path.isdir(spool) and spooled_bytes(3) in (None, replaced) and spooled_bytes(4) is None,
               timeout=4)
    # What did not change was confirmed and stays (the same check ran for it, segments 2..5 were
    # spooled together).
    time.sleep(0.5)
    with open(spool_files(spool)["prefetch.log"]) as f:
        log = f.read()
    dropped = {line.split("file=")[-1].split()[0] for line in log.splitlines() if "spooled segment dropped" in line}
    assert dropped == {segment_name(1, 3, MIB), segment_name(1, 4, MIB)}, log
    assert spooled_bytes(5) == segs[5], log
    cp = restore(3)
    assert cp.returncode == 0, cp.stderr
    with open(dest, "rb") as f:
        assert f.read() == replaced, "the segment spooled before it was replaced was served"
    cp = restore(4)
    assert cp.returncode == 1, f"a segment removed from the archive was served: {cp.stderr}"
    # A killed worker's spooled segments are not served once they are no longer confirmed.
    assert restore(1).returncode == 0
    wait_until("2..4 spooled again", lambda: spooled_bytes(2) is not None, timeout=30)
    for pid in prefetch_workers(pg_wal):
        os.kill(pid, 9)
    wait_until("the worker gone", lambda: not prefetch_workers(pg_wal), timeout=10)
    w.put(segment_name(1, 2, MIB), synthetic_segment(2, MIB, SYSID + 1))
    time.sleep(11)   # MAX_UNCHECKED_AGE (10 s) and a margin
    cp = restore(2)
    assert cp.returncode == 0 and "restored from the prefetch spool" not in cp.stderr, cp.stderr
    with open(dest, "rb") as f:
        assert f.read() == synthetic_segment(2, MIB, SYSID + 1)
    wait_prefetch_gone(pg_wal, timeout=30)

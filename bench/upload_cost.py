#!/usr/bin/env python3
"""Upload cost of keeping the archive current (issue 16): bytes and requests sent to S3 per byte
of WAL, and how old the oldest acknowledged byte not yet remote gets, at WAL rates from ~5 KB/s to
~20 MB/s, plus the requests of an idle cluster. Not a test: prints figures, asserts nothing.

Setup (one of each, for the whole run): a PostgreSQL primary (initdb/pg_ctl on 127.0.0.1, as user
postgres when root; `pgbench -i` done before the safekeeper attaches), moto's S3 server, a counting
proxy in front of it (test_runner/fixtures/s3_counting.py), and the safekeeper (`--partial-interval`, S3
through the proxy) as the primary's synchronous standby, so every commit is acknowledged by it.

Each rate phase:
1. Mid-segment start: filler messages (or a segment switch first, when the segment is already
   past the target) bring the primary's insert position to TARGET_OFFSET (8 MiB, half of the
   segment); then wait until the safekeeper acknowledged it all and the archive holds it
   (`lag.upload.bytes == 0`). The table prints the offset each phase really started at.
2. The workload starts; after a warm-up of `--warmup` s (>= the safekeeper's 10 s grace before it
   deletes superseded partials, so the window sees steady-state GC, not the previous phase's),
   the measured window of `--duration` s: WAL bytes = `pg_current_wal_lsn()` delta; requests and
   request body bytes from the proxy; GET /v1/clusters/main every 0.1 s.
3. Workloads: `gen` is a paced generator of transactional `pg_logical_emit_message` calls (each a
   committed, synchronously replicated transaction) with distinct payloads (hex text of seeded
   random bytes, so about 2:1 compressible, never repeating within a segment); `pgbench -R`
   is tpcb-like at a fixed rate.

Lag: `lag.upload.seconds` of GET /v1/clusters/main, i.e. the age of the oldest byte below
`commit_lsn` that is not below `remote_lsn` (max of the contiguous full segments and the newest
partial's commit LSN), measured inside the safekeeper at 10 ms granularity from when that byte was
first acknowledged. The bench also computes the same from its own 0.1 s samples of `lsn.commit`
and `lsn.remote` ("own max") as a cross-check.

Idle phase: after the rate phases, CHECKPOINT, then wait until `pg_current_wal_lsn()` has not moved
for IDLE_STABLE_S (16 s: the bgwriter logs one more running-xacts record up to 15 s after the last
important record, then stops) and the archive holds it all; then count requests over `--idle` s.

Usage: bench/upload_cost.sh [--quick] [--partial-interval 1s] [--duration 40] [--idle 60]
       [--phases '2MB/s,20MB/s'] [--no-idle] [--compression none|zstd|zstd:N]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "test_runner"))
sys.path.insert(0, os.path.join(HERE, "lib"))

import psycopg  # noqa: E402
from fixtures.s3_counting import CountingProxy, Request  # noqa: E402
from fixtures.majors import pg_install  # noqa: E402
from fixtures.pg import PgCluster  # noqa: E402
from fixtures.s3 import MotoServer, new_bucket  # noqa: E402
from fixtures.s3_faults import ProxiedBucket  # noqa: E402
from fixtures.safekeeper import Safekeeper, safekeeper_bin  # noqa: E402
from fixtures.utils import chown_to_pg_user, stop_pid, wait_until  # noqa: E402
from fixtures.wal import parse_lsn  # noqa: E402

SEG = 16 << 20
TARGET_OFFSET = 8 << 20
IDLE_STABLE_S = 16
SAMPLE_S = 0.1
POOL_MSG = 256 << 10   # payload pool: 64 distinct 256 KiB texts = one segment without repeats
POOL_N = 64


@dataclass
class Phase:
    name: str
    kind: str            # "gen" or "pgbench"
    rate: float          # gen: bytes/s of message payload; pgbench: -R transactions/s
    msg: int = 0         # gen: payload bytes per message
    conns: int = 1       # gen: connections; pgbench: -c


FULL_PHASES = [
    Phase("5KB/s", "gen", 5_000, msg=500),
    Phase("pgbench -R 5", "pgbench", 5, conns=2),
    Phase("pgbench -R 200", "pgbench", 200, conns=4),
    Phase("2MB/s", "gen", 2_000_000, msg=64 << 10),
    Phase("20MB/s", "gen", 20_000_000, msg=256 << 10, conns=2),
]
QUICK_PHASES = [FULL_PHASES[0], FULL_PHASES[2], FULL_PHASES[4]]


@dataclass
class Result:
    phase: Phase
    start_offset: int    # segment offset of the insert position when the workload started
    window_offset: int   # ... when the measured window started
    seconds: float
    wal_bytes: int
    ops: dict[str, int]
    body: dict[str, int]
    lag: list[float]
    own_lag: list[float]
    load: tuple[float, float]
    requests: list[Request] = field(default_factory=list)
    sk_uploaded: int = 0
    per_segment: Optional[tuple[int, int]] = None  # (segments, bytes sent for them), see segment_cost


class Generator:
    """Paced `pg_logical_emit_message(true, ...)` transactions from `conns` threads."""

    def __init__(self, pg: PgCluster, phase: Phase, pool: list[str], seed: int):
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        per_thread = phase.rate / phase.conns
        self.threads = [threading.Thread(target=self._run, args=(pg, phase.msg, per_thread, pool, seed + i), daemon=True)
                        for i in range(phase.conns)]
        for t in self.threads:
            t.start()

    def _run(self, pg: PgCluster, msg: int, rate: float, pool: list[str], seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(pg.connstr(), autocommit=True, connect_timeout=10) as conn:
                nxt = time.monotonic()
                while not self.stop_event.is_set():
                    text = pool[rng.randrange(len(pool))]
                    start = rng.randrange(0, len(text) - msg + 1)
                    conn.execute("SELECT pg_logical_emit_message(true, 'bench', %s::text)", (text[start:start + msg],))
                    nxt += msg / rate
                    now = time.monotonic()
                    if nxt > now:
                        self.stop_event.wait(nxt - now)
                    elif now - nxt > 1.0:
                        nxt = now  # behind by more than a second: do not burst to catch up
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.errors.append(e)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)
        if self.errors:
            raise RuntimeError(f"generator failed: {self.errors[0]!r}")


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


class Bench:
    def __init__(self, args):
        self.args = args
        self.base = tempfile.mkdtemp(prefix="bench-upload-cost-")
        os.chmod(self.base, 0o755)
        chown_to_pg_user(self.base)
        self.server: Optional[MotoServer] = None
        self.proxy: Optional[CountingProxy] = None
        self.pg: Optional[PgCluster] = None
        self.sk: Optional[Safekeeper] = None
        self.pgbench: Optional[subprocess.Popen] = None
        self.gen: Optional[Generator] = None
        rng = random.Random(args.seed)
        self.pool = [rng.randbytes(POOL_MSG // 2).hex() for _ in range(POOL_N)]

    # --- setup and teardown ---------------------------------------------------------------------
    def setup(self) -> None:
        a = self.args
        self.server = MotoServer(self.base)
        self.proxy = CountingProxy(self.server.port)
        bucket = self.bucket = ProxiedBucket(new_bucket(self.server), self.proxy)
        self.pg = PgCluster(self.base, "primary")
        self.pg.initdb("shared_buffers = 512MB\nmax_wal_size = 8GB\nmin_wal_size = 1GB\ncheckpoint_timeout = 1h\n").start()
        t = time.monotonic()
        self.pg.pgbench("-i", "-s", str(a.scale), "-q", timeout=600)
        self.pg.sql("CHECKPOINT")
        print(f"# pgbench -i -s {a.scale}: {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)
        self.sk = Safekeeper(self.base, 1)
        self.sk.start(self.pg.connstr(), extra=bucket.args() + ["--partial-interval", a.partial_interval]
                      + (["--compression", a.compression] if a.compression else []),
                      env={**bucket.env(), "RUST_LOG": "warn"})
        self.api = self.sk.api(timeout=60)
        self.pg.wait_streaming(self.sk.application_name, timeout=60)
        self.pg.make_sync(self.sk.application_name, timeout=60)

    def teardown(self) -> None:
        for what, fn in (("workload", self.stop_workload), ("safekeeper", self._stop_sk),
                         ("postgres", lambda: self.pg and self.pg.stop("immediate")),
                         ("proxy", lambda: self.proxy and self.proxy.stop()),
                         ("moto", lambda: self.server and self.server.stop())):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                print(f"# cleanup of {what}: {e!r}", file=sys.stderr)
        if self.args.keep:
            print(f"# kept {self.base}", file=sys.stderr)
        else:
            shutil.rmtree(self.base, ignore_errors=True)

    def _stop_sk(self) -> None:
        if self.sk is not None:
            try:
                self.sk.stop(timeout=30)
            finally:
                self.sk.cleanup()

    def stop_workload(self) -> None:
        if self.gen is not None:
            gen, self.gen = self.gen, None
            gen.stop()
        if self.pgbench is not None:
            p, self.pgbench = self.pgbench, None
            if p.poll() is None:
                stop_pid(p.pid, signal.SIGINT, timeout=15)
            p.wait(timeout=10)

    # --- helpers --------------------------------------------------------------------------------
    def lsn(self) -> int:
        return parse_lsn(self.pg.sql_one("SELECT pg_current_wal_lsn()::text"))

    def cluster(self) -> dict:
        return self.api.cluster("main")

    def wait_archived(self, lsn: int, timeout: float = 120) -> None:
        """Until the safekeeper acknowledged `lsn` and the archive holds everything acknowledged."""
        def done() -> bool:
            c = self.cluster()
            return parse_lsn(c["lsn"]["commit"]) >= lsn and c["lag"]["upload"]["bytes"] == 0
        wait_until(f"archive at {lsn:X}", done, timeout=timeout, interval=0.1)

    def fill_to_mid_segment(self) -> int:
        off = self.lsn() % SEG
        if off > TARGET_OFFSET:
            self.pg.switch_wal()
        with psycopg.connect(self.pg.connstr(), autocommit=True, connect_timeout=10) as conn:
            for i in range(4096):
                off = self.lsn() % SEG
                if off >= TARGET_OFFSET - 1024:
                    break
                n = min(POOL_MSG, TARGET_OFFSET - off - 512)
                conn.execute("SELECT pg_logical_emit_message(true, 'fill', %s::text)", (self.pool[i % POOL_N][:max(n, 1)],))
        end = self.lsn()
        self.wait_archived(end)
        return end % SEG

    def start_workload(self, ph: Phase, total_s: float) -> None:
        if ph.kind == "gen":
            self.gen = Generator(self.pg, ph, self.pool, self.args.seed)
        else:
            self.pgbench = self.pg.pgbench_popen(
                "-n", "-R", str(int(ph.rate)), "-c", str(ph.conns), "-j", str(min(2, ph.conns)),
                "-T", str(int(total_s + 5)), log_path=os.path.join(self.base, f"pgbench-{int(ph.rate)}.log"))

    def sample_window(self, seconds: float) -> tuple[list[float], list[float]]:
        """GET the cluster every SAMPLE_S for `seconds`: the safekeeper's upload lag seconds, and
        the same computed here from (time, commit) history and the remote LSN."""
        lag, own, history = [], [], []
        deadline = time.monotonic() + seconds
        while (now := time.monotonic()) < deadline:
            c = self.cluster()
            commit, remote = parse_lsn(c["lsn"]["commit"]), parse_lsn(c["lsn"]["remote"])
            history.append((now, commit))
            lag.append(float(c["lag"]["upload"]["seconds"]))
            first = next((t for t, lsn in history if lsn > remote), None)
            own.append(now - first if first is not None else 0.0)
            if len(history) > 2000:
                history = [h for h in history if h[1] > remote] or history[-1:]
            time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - now)))
        return lag, own

    # --- phases ---------------------------------------------------------------------------------
    def rate_phase(self, ph: Phase) -> Result:
        a = self.args
        start_off = self.fill_to_mid_segment()
        print(f"# phase {ph.name}: starts at segment offset {start_off / 2**20:.2f} MiB", file=sys.stderr, flush=True)
        load0 = loadavg()
        w0, wlsn0 = time.monotonic(), self.lsn()
        self.start_workload(ph, a.warmup + a.duration)
        time.sleep(a.warmup)
        t0, lsn0, up0 = time.monotonic(), self.lsn(), self.cluster()["offload"]["bytes_uploaded"]
        window_off = lsn0 % SEG
        lag, own = self.sample_window(a.duration)
        t1, lsn1, up1 = time.monotonic(), self.lsn(), self.cluster()["offload"]["bytes_uploaded"]
        self.stop_workload()
        reqs = self.proxy.requests_between(t0, t1)
        ops, body = _tally(reqs)
        per_segment = self.segment_cost(w0, wlsn0)
        return Result(ph, start_off, window_off, t1 - t0, lsn1 - lsn0, ops, body, lag, own, (load0, loadavg()), reqs,
                      up1 - up0, per_segment)

    def segment_cost(self, w0: float, wlsn0: int) -> Optional[tuple[int, int]]:
        """What each segment the workload wrote from its first byte to its last cost, exactly: the
        body bytes of every PUT whose object belongs to it (bases, increments, merges, the full
        segment), from the workload start until the archive caught up. Unlike the window's
        figure, no object is cut at a window edge (a full segment PUT is ~0.5x of 16 MiB, so at
        2 MB/s one segment more or less in a 40 s window moves that figure by +-5%)."""
        end = self.lsn()
        self.wait_archived(end)
        first, last = -(-wlsn0 // SEG), end // SEG  # segments [first, last) were written whole
        if last <= first:
            return None
        deadline = time.monotonic() + 60
        while True:
            reqs = self.proxy.requests_between(w0, time.monotonic() + 1)
            full = {segno_of(r.key) for r in reqs if r.op == "PutObject" and partial_offset(r.key) is None}
            if all(n in full for n in range(first, last)) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        done = [n for n in range(first, last) if n in full]
        sent = sum(r.body_bytes for r in reqs if r.op == "PutObject" and segno_of(r.key) in done)
        return len(done), sent

    def slow_segment(self, minutes: float) -> None:
        """One segment written from its start at ~5 KB/s for `minutes`, then restored through the
        proxy: prints the GETs `restore-wal` needed, the bytes the partial PUTs sent per byte of
        WAL, and whether the restored bytes equal the primary's pg_wal file."""
        self.pg.switch_wal()
        lsn0 = self.lsn()
        self.wait_archived(lsn0)
        t0 = time.monotonic()
        self.gen = Generator(self.pg, Phase("slow", "gen", 5_000, msg=500), self.pool, self.args.seed)
        time.sleep(minutes * 60)
        self.stop_workload()
        lsn1 = self.lsn()
        self.wait_archived(lsn1)
        t1 = time.monotonic()
        puts = [r for r in self.proxy.requests_between(t0, t1) if r.op == "PutObject" and partial_offset(r.key) is not None]
        sent = sum(r.body_bytes for r in puts)
        seg = f"{1:08X}{(lsn0 // SEG) >> 8:08X}{(lsn0 // SEG) & 0xFF:08X}"
        out = os.path.join(self.base, "restored-" + seg)
        env = {**os.environ, **self.bucket.env()}
        r0 = time.monotonic()
        subprocess.run([safekeeper_bin(), "restore-wal", *self.bucket.args(), "--cluster", "main", seg, out], env=env, check=True, timeout=120)
        reqs = self.proxy.requests_between(r0, time.monotonic() + 0.5)
        gets = sum(1 for r in reqs if r.op == "GetObject")
        held = lsn1 - lsn0 // SEG * SEG
        with open(out, "rb") as f, open(os.path.join(self.pg.datadir, "pg_wal", seg), "rb") as g:
            same = f.read()[:held] == g.read()[:held]
        print(f"\nslow segment {seg}: {minutes:g} min at ~5 KB/s from offset {lsn0 % SEG}, {fmt_bytes(lsn1 - lsn0)} of WAL, "
              f"{len(puts)} partial PUTs sending {fmt_bytes(sent)} ({sent / max(1, lsn1 - lsn0):.2f}x the WAL); "
              f"restore-wal: {gets} GETs + {len(reqs) - gets} other requests, restored bytes identical to pg_wal: {same}")

    def idle_phase(self) -> Result:
        a = self.args
        # Nothing left for autovacuum (pgbench's tables were just updated and would be vacuumed
        # within its 1 min naptime), and autovacuum off for the idle window, so the WAL that stops
        # is all of it; then a checkpoint, whose running-xacts follow-up the wait below outlasts.
        self.pg.sql("VACUUM ANALYZE")
        self.pg.sql("ALTER SYSTEM SET autovacuum = off")
        self.pg.sql("SELECT pg_reload_conf()")
        self.pg.sql("CHECKPOINT")
        last, since, deadline = self.lsn(), time.monotonic(), time.monotonic() + 120
        while time.monotonic() - since < IDLE_STABLE_S:
            if time.monotonic() > deadline:
                print("# idle: WAL never stopped for 16 s within 120 s; measuring anyway", file=sys.stderr)
                break
            time.sleep(0.5)
            if (cur := self.lsn()) != last:
                last, since = cur, time.monotonic()
        self.wait_archived(last)
        print(f"# idle: WAL still since {time.monotonic() - since:.0f} s at {last:X}; counting {a.idle} s", file=sys.stderr, flush=True)
        load0 = loadavg()
        t0, lsn0 = time.monotonic(), self.lsn()
        lag, own = self.sample_window(a.idle)
        t1, lsn1 = time.monotonic(), self.lsn()
        reqs = self.proxy.requests_between(t0, t1)
        ops, body = _tally(reqs)
        return Result(Phase("idle", "idle", 0), lsn0 % SEG, lsn0 % SEG, t1 - t0, lsn1 - lsn0, ops, body, lag, own, (load0, loadavg()), reqs)


def _tally(reqs: list[Request]) -> tuple[dict[str, int], dict[str, int]]:
    ops: dict[str, int] = {}
    body: dict[str, int] = {}
    for r in reqs:
        ops[r.op] = ops.get(r.op, 0) + 1
        body[r.op] = body.get(r.op, 0) + r.body_bytes
    return ops, body


def fmt_bytes(n: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def segno_of(key: str) -> Optional[int]:
    """Segment number of a WAL object (full segment, base or increment), from its name."""
    name = key.rsplit("/", 1)[-1]
    if len(name) < 24:
        return None
    try:
        return int(name[8:16], 16) * (0x1_0000_0000 // SEG) + int(name[16:24], 16)
    except ValueError:
        return None


def partial_offset(key: str) -> Optional[int]:
    """Offset in its segment of the commit LSN a partial piece's name holds (a base
    `..._skN.partial` or an increment `..._skN_START.delta`)."""
    name = key.rsplit("/", 1)[-1]
    if not name.endswith((".partial", ".delta")):
        return None
    parts = name.rsplit(".", 1)[0].split("_")
    try:
        return int(parts[1], 16) % SEG
    except (IndexError, ValueError):
        return None


def print_tables(results: list[Result]) -> None:
    print("\n| phase | offset at start / window | window s | WAL bytes | WAL rate | bytes sent | amplification | req/min | PUT/min | DeleteObjects/min | other/min | upload lag p50 / p99 / max s | own max s | load1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        per_min = 60 / r.seconds
        sent = sum(r.body.values())
        put = r.ops.get("PutObject", 0) + r.ops.get("UploadPart", 0)
        dels = r.ops.get("DeleteObjects", 0) + r.ops.get("DeleteObject", 0)
        other = sum(r.ops.values()) - put - dels
        amp = f"{sent / r.wal_bytes:.2f}x" if r.wal_bytes else ("-" if not sent else "inf")
        print(f"| {r.phase.name} | {r.start_offset / 2**20:.2f} / {r.window_offset / 2**20:.2f} MiB | {r.seconds:.0f} | {fmt_bytes(r.wal_bytes)} | "
              f"{fmt_bytes(r.wal_bytes / r.seconds)}/s | {fmt_bytes(sent)} | {amp} | {sum(r.ops.values()) * per_min:.0f} | "
              f"{put * per_min:.0f} | {dels * per_min:.0f} | {other * per_min:.0f} | "
              f"{pct(r.lag, 50):.2f} / {pct(r.lag, 99):.2f} / {max(r.lag, default=float('nan')):.2f} | "
              f"{max(r.own_lag, default=float('nan')):.2f} | {r.load[0]:.2f}-{r.load[1]:.2f} |")
    print("\nwhere the bytes go (PutObject bodies in the window):")
    print("| phase | partial PUTs | mean bytes / partial PUT | mean commit offset in segment | bytes / offset | full-segment PUTs | bytes in full PUTs | other ops (count) | sk offload.bytes_uploaded | whole segments: count, bytes sent / WAL |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        partial = [(q.body_bytes, partial_offset(q.key)) for q in r.requests if q.op == "PutObject" and partial_offset(q.key) is not None]
        full = [q.body_bytes for q in r.requests if q.op == "PutObject" and partial_offset(q.key) is None]
        mb = statistics.mean(b for b, _ in partial) if partial else 0
        mo = statistics.mean(o for _, o in partial) if partial else 0
        others = ", ".join(f"{k} {v}" for k, v in sorted(r.ops.items()) if k != "PutObject") or "-"
        seg_cost = f"{r.per_segment[0]}, {r.per_segment[1] / (r.per_segment[0] * SEG):.3f}x" if r.per_segment else "-"
        print(f"| {r.phase.name} | {len(partial)} | {fmt_bytes(mb)} | {mo / 2**20:.2f} MiB | {mb / mo if mo else float('nan'):.3f} | "
              f"{len(full)} | {fmt_bytes(sum(full))} | {others} | {fmt_bytes(r.sk_uploaded)} | {seg_cost} |")


def print_config(args, phases: list[Phase]) -> None:
    def cmd(c: list[str]) -> str:
        try:
            return subprocess.run(c, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except Exception:  # noqa: BLE001 - informational only
            return "?"
    rev = cmd(["git", "-C", HERE, "describe", "--always", "--dirty"])
    install = pg_install()
    print(f"upload_cost: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, {'quick' if args.quick else 'full'} mode, host {platform.node()}, {os.cpu_count()} CPUs")
    print(f"safekeeper {safekeeper_bin()} ({cmd([safekeeper_bin(), '--version'])}, git {rev}), "
          f"--partial-interval {args.partial_interval}, --compression {args.compression or 'default'}, default --upload-parallelism, S3 = moto via counting proxy")
    print(f"PostgreSQL {install.major} ({install.bindir}), synchronous_standby_names = the safekeeper, 16 MiB segments, pgbench -s {args.scale}")
    print(f"phases: {', '.join(p.name for p in phases)}; each starts at ~{TARGET_OFFSET >> 20} MiB into a segment, "
          f"warm-up {args.warmup} s, window {args.duration} s; idle window {args.idle} s; seed {args.seed}")


def _interrupted(*_) -> None:
    """SIGTERM (e.g. from the time limit in upload_cost.sh): unwind, so every process is stopped."""
    raise KeyboardInterrupt()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 rates, 12 s windows, 30 s idle (about 2.3 minutes)")
    ap.add_argument("--partial-interval", default="1s")
    ap.add_argument("--compression", help="the safekeeper's --compression (default: its default, zstd level 1)")
    ap.add_argument("--duration", type=float, help="measured window per rate phase, s (40; quick 12)")
    ap.add_argument("--warmup", type=float, default=10.0, help="workload runs this long before the window, s")
    ap.add_argument("--idle", type=float, help="idle window, s (60; quick 30)")
    ap.add_argument("--scale", type=int, default=10, help="pgbench -i -s")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs, data)")
    ap.add_argument("--slow-segment", type=float, metavar="MINUTES",
                    help="instead of the phases: one segment written at ~5 KB/s for MINUTES, then restored (GETs counted)")
    ap.add_argument("--phases", metavar="NAMES",
                    help="comma-separated phase names to run, e.g. '2MB/s,20MB/s' (default: all, or the quick ones)")
    ap.add_argument("--no-idle", action="store_true", help="skip the idle phase")
    args = ap.parse_args()
    args.duration = args.duration or (12.0 if args.quick else 40.0)
    args.idle = args.idle or (30.0 if args.quick else 60.0)
    phases = QUICK_PHASES if args.quick else FULL_PHASES
    if args.phases:
        wanted = [n.strip() for n in args.phases.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in {p.name for p in FULL_PHASES}]
        if unknown:
            ap.error(f"unknown phase(s) {unknown}; known: {[p.name for p in FULL_PHASES]}")
        phases = [p for p in FULL_PHASES if p.name in wanted]
    signal.signal(signal.SIGTERM, _interrupted)
    print_config(args, phases)
    sys.stdout.flush()
    started = time.monotonic()
    bench = Bench(args)
    results: list[Result] = []
    try:
        bench.setup()
        if args.slow_segment:
            bench.slow_segment(args.slow_segment)
            phases = []
        for ph in phases:
            results.append(bench.rate_phase(ph))
        if phases and not args.no_idle:
            results.append(bench.idle_phase())
    finally:
        bench.teardown()
        if results:
            print_tables(results)
        print(f"\ntotal {time.monotonic() - started:.0f} s; load average at the end {open('/proc/loadavg').read().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

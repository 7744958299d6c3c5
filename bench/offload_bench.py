#!/usr/bin/env python3
"""Offload benchmark against moto's S3 server (not a test: prints figures, asserts nothing).

1. Upload lag under sustained pgbench in sync mode: every 0.5 s, the bytes the safekeeper has
   acknowledged (pg_stat_replication.flush_lsn) but that are not yet remote, where "remote" is
   read from the bucket listing alone: the end of the contiguous full segments, or the commit LSN
   in the newest partial's name. Also the age of the oldest such byte (when it was acknowledged).
2. Full-segment upload throughput at --upload-parallelism 1 and 4: the S3 server is paused
   (SIGSTOP) while N segments of WAL are written, then resumed; the time until all N are in the
   bucket gives MiB/s.

Usage: bench/offload_bench.sh [--duration 20] [--partial-interval 1s] [--segments 24]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test_runner"))

from fixtures.pg import PgCluster  # noqa: E402
from fixtures.s3 import MotoServer, new_bucket  # noqa: E402
from fixtures.safekeeper import Safekeeper  # noqa: E402
from fixtures.utils import chown_to_pg_user, wait_until  # noqa: E402

SEG = 16 << 20
PARTIAL = re.compile(r"^main/wal/([0-9A-F]{24})_([0-9A-F]{16})_[0-9A-F]{16}_sk\d+\.partial$")
FULL = re.compile(r"^main/wal/([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")


def remote_lsn(bucket) -> int:
    segs, best_partial = set(), 0
    for k in bucket.keys("main/wal/"):
        if m := FULL.match(k):
            segs.add(int(m.group(2), 16) * 256 + int(m.group(3), 16))
        elif m := PARTIAL.match(k):
            best_partial = max(best_partial, int(m.group(2), 16))
    end = 0
    if segs:
        s = min(segs)
        while s in segs:
            s += 1
        end = s * SEG
    return max(end, best_partial)


def setup(base: str, server: MotoServer, extra: list[str], sync: bool):
    pg = PgCluster(base, "primary")
    pg.initdb("shared_buffers = 512MB\nmax_wal_size = 4GB\ncheckpoint_timeout = 30min\n").start()
    bucket = new_bucket(server)
    sk = Safekeeper(base, 1)
    sk.start(pg.connstr(), extra=bucket.args() + extra, env={**bucket.env(), "RUST_LOG": "warn"})
    wait_until("streaming", lambda: (r := pg.replication(sk.application_name)) and r["state"] == "streaming", timeout=60)
    if sync:
        pg.set_sync_standby(sk.application_name)
        wait_until("sync", lambda: (r := pg.replication(sk.application_name)) and r["sync_state"] == "sync", timeout=30)
    return pg, bucket, sk


def lag_run(args, server: MotoServer) -> None:
    base = tempfile.mkdtemp(prefix="bench-offload-")
    os.chmod(base, 0o755)
    chown_to_pg_user(base)
    pg, bucket, sk = setup(base, server, ["--partial-interval", args.partial_interval], sync=True)
    try:
        pg.pgbench("-i", "-s", "10", "-q", timeout=600)
        bench = pg.pgbench_popen("-n", "-c", "4", "-j", "2", "-T", str(args.duration), log_path=os.path.join(base, "pgbench.log"))
        history: list[tuple[float, int]] = []
        samples = []
        t0 = time.monotonic()
        while bench.poll() is None:
            now = time.monotonic()
            ack = pg.replication(sk.application_name)["flush_lsn"]
            history.append((now, ack))
            remote = remote_lsn(bucket)
            lag = max(0, ack - remote)
            first_unremote = next((t for t, a in history if a > remote), now)
            samples.append((now - t0, lag, now - first_unremote if lag else 0.0))
            time.sleep(0.5)
        out = open(os.path.join(base, "pgbench.log")).read()
        tps = re.search(r"tps = ([0-9.]+)", out)
        print(f"\nupload lag, sync pgbench -c 4 for {args.duration}s, partial interval {args.partial_interval}, moto S3"
              f" (tps {tps.group(1) if tps else '?'})")
        print("| t (s) | lag bytes | lag age (s) |")
        print("|---|---|---|")
        for t, lag, age in samples[:: max(1, len(samples) // 12)]:
            print(f"| {t:5.1f} | {lag:>10} | {age:5.2f} |")
        lags = [s[1] for s in samples]
        ages = [s[2] for s in samples]
        print(f"lag bytes: mean {statistics.mean(lags):.0f}, max {max(lags)}; lag age s: mean {statistics.mean(ages):.2f}, max {max(ages):.2f}")
    finally:
        sk.stop()
        pg.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def throughput_run(args, server: MotoServer, parallelism: int) -> float:
    base = tempfile.mkdtemp(prefix="bench-offload-")
    os.chmod(base, 0o755)
    chown_to_pg_user(base)
    pg, bucket, sk = setup(base, server, ["--upload-parallelism", str(parallelism), "--partial-interval", "1h"], sync=False)
    try:
        pg.switch_wal()
        wait_until("first segment uploaded", lambda: remote_lsn(bucket) > 0, timeout=60)
        start_segs = remote_lsn(bucket) // SEG
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(args.segments):
                pg.sql("SELECT pg_logical_emit_message(false, 'bench', repeat('w', 15000000))")
                end = pg.switch_wal()
            wait_until("safekeeper flushed the backlog", lambda: pg.replication(sk.application_name)["flush_lsn"] >= end, timeout=300)
            target = ((end - 1) // SEG + 1) * SEG
        finally:
            t0 = time.monotonic()
            os.kill(server.proc.pid, signal.SIGCONT)
        wait_until("backlog uploaded", lambda: remote_lsn(bucket) >= target, timeout=600, interval=0.05)
        elapsed = time.monotonic() - t0
        n = target // SEG - start_segs
        mib_s = n * 16 / elapsed
        print(f"parallelism {parallelism}: {n} segments ({n * 16} MiB) in {elapsed:.2f} s = {mib_s:.1f} MiB/s, {n / elapsed:.2f} segments/s")
        return mib_s
    finally:
        sk.stop()
        pg.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--partial-interval", default="1s")
    ap.add_argument("--segments", type=int, default=24)
    ap.add_argument("--skip-lag", action="store_true")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="bench-moto-")
    server = MotoServer(workdir)
    try:
        if not args.skip_lag:
            lag_run(args, server)
        print("\nfull-segment upload throughput after an S3 pause (moto, 16 MiB segments)")
        for p in (1, 4):
            throughput_run(args, server, p)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

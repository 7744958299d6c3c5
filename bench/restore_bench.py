#!/usr/bin/env python3
"""Restore throughput of `safekeeper restore-wal` against moto's S3, with and without --prefetch.

Fills a fresh bucket with N full segments (valid WAL page headers, crc32c recorded as the
safekeeper records it), then asks for them one after the other exactly as PostgreSQL's
restore_command does (one process per segment, into pg_wal/RECOVERYXLOG), once without prefetch
and once per --prefetch value, each with a fresh pg_wal (empty spool). Prints segments/s and MiB/s.

Not a test: nothing is asserted beyond the bytes being right. moto on 127.0.0.1 has almost no
request latency, so this shows the floor of the gain; against a real S3 region each request
costs tens of milliseconds more and prefetch hides that.

Usage: bench/restore_bench.sh [--segments 64] [--prefetch 8] [--segment-mb 16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test_runner"))

from fixtures.archive import ArchiveWriter, synthetic_segment  # noqa: E402
from fixtures.objects import encode  # noqa: E402
from fixtures.s3 import MotoServer, new_bucket  # noqa: E402
from fixtures.wal import segment_name  # noqa: E402


def run_restores(binary: str, writer: ArchiveWriter, names: list[str], expected: dict, prefetch: int, workdir: str) -> float:
    pg_wal = tempfile.mkdtemp(prefix="pg_wal-", dir=workdir)
    dest = os.path.join(pg_wal, "RECOVERYXLOG")
    env = dict(os.environ, **writer.env(), RUST_LOG="warn")
    started = time.monotonic()
    for name in names:
        cmd = [binary, "restore-wal", *writer.args(), "--prefetch", str(prefetch), name, dest]
        cp = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        if cp.returncode != 0:
            raise RuntimeError(f"restore-wal {name} exited {cp.returncode}: {cp.stderr}")
        with open(dest, "rb") as f:
            if f.read() != expected[name]:
                raise RuntimeError(f"{name}: wrong bytes restored")
    elapsed = time.monotonic() - started
    time.sleep(0.5)  # let the last prefetch workers finish before the directory goes
    shutil.rmtree(pg_wal, ignore_errors=True)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=64)
    ap.add_argument("--prefetch", type=str, default="8", help="comma-separated prefetch depths to compare with 0")
    ap.add_argument("--segment-mb", type=int, default=16)
    ap.add_argument("--object-format", choices=["v1", "raw"], default="v1",
                    help="v1: objects as the safekeeper writes them (header + zstd level 3, fixtures/objects.py); "
                         "raw: plain bytes, as written before issue 16")
    args = ap.parse_args()
    binary = os.environ.get("SAFEKEEPER_BIN") or os.path.join(os.path.dirname(__file__), "..", "target", "release", "safekeeper")
    seg_size = args.segment_mb << 20
    workdir = tempfile.mkdtemp(prefix="sk-restore-bench-")
    server = MotoServer(workdir)
    try:
        writer = ArchiveWriter(bucket=new_bucket(server))
        names, expected = [], {}
        t0 = time.monotonic()
        for segno in range(1, args.segments + 1):
            name = segment_name(1, segno, seg_size)
            data = synthetic_segment(segno, seg_size, 7_300_000_000_000_000_001)
            writer.put(name, encode(data) if args.object_format == "v1" else data)
            names.append(name)
            expected[name] = data
        print(f"filled moto with {args.segments} segments of {args.segment_mb} MiB ({args.object_format} objects) "
              f"in {time.monotonic() - t0:.1f} s")
        print(f"binary: {os.path.realpath(binary)}")
        depths = [0] + [int(p) for p in args.prefetch.split(",") if p]
        results = []
        for depth in depths:
            elapsed = run_restores(binary, writer, names, expected, depth, workdir)
            rate = len(names) / elapsed
            results.append((depth, elapsed, rate))
            print(f"prefetch {depth:>2}: {len(names)} segments in {elapsed:6.2f} s = {rate:6.1f} segments/s "
                  f"({rate * args.segment_mb:7.1f} MiB/s)")
        base = results[0][2]
        for depth, _, rate in results[1:]:
            print(f"prefetch {depth} vs none: {rate / base:.2f}x")
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

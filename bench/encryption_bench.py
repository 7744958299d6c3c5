#!/usr/bin/env python3
"""Restore throughput of `safekeeper restore-wal` with and without encryption (issue 19).

Fills one moto bucket with the same N segments twice, as two clusters: `plain` (v1 objects, zstd
level 1, as the safekeeper writes them without a key) and `enc` (the same, encrypted with a key
file made by `safekeeper keygen`; encoded by fixtures/objects.py, the independent encoder). The
segments have valid page headers and half-compressible bodies (hex text of random bytes, like
the upload-cost bench's payloads), so there is something to decompress and decrypt. Then asks for
every segment one after the other exactly as PostgreSQL's restore_command does (one process per
segment, no prefetch), alternating plain and encrypted runs (the order flips every round, so a
drift of the machine does not favour one side), and prints segments/s per run, the medians and
their ratio. Nothing is asserted beyond the bytes being right.

Upload, end to end (`--upload-segments N`, 0 to skip): a real PostgreSQL primary followed by the
release safekeeper (asynchronous, --partial-interval 1h, so only full segments), uploading to moto;
moto is paused (SIGSTOP) while N segments of half-compressible WAL are written (one
pg_logical_emit_message of 15 MB of hex text per segment), then resumed: the time until all N are
in the bucket gives MiB/s, as in offload_bench.py. Alternates runs without and with
`--encryption-key-file`. The CPU cost of encode and decode alone is measured by the Rust side,
`encode_throughput_bench` (`bench/encryption_bench.sh` runs both).

Usage: bench/encryption_bench.sh [--segments 16] [--rounds 3] [--segment-mb 16] [--upload-segments 8]
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test_runner"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fixtures.archive import PAGE, ArchiveWriter, synthetic_segment  # noqa: E402
from fixtures.objects import encode, load_keys  # noqa: E402
from fixtures.s3 import MotoServer, new_bucket  # noqa: E402
from fixtures.wal import segment_name  # noqa: E402
from fixtures.utils import chown_to_pg_user, wait_until  # noqa: E402
from offload_bench import SEG, remote_lsn, setup  # noqa: E402
from restore_bench import run_restores  # noqa: E402

SYSID = 7_300_000_000_000_000_001


class KeyedWriter(ArchiveWriter):
    """An ArchiveWriter whose recovery-command flags carry the key file."""

    def __init__(self, bucket, cluster: str, keyfile: str | None):
        super().__init__(bucket=bucket, cluster=cluster)
        self.keyfile = keyfile

    def args(self) -> list[str]:
        return super().args() + (["--encryption-key-file", self.keyfile] if self.keyfile else [])


def segment(segno: int, seg_size: int) -> bytes:
    """Valid page headers (the first 40 bytes of every page kept), bodies of hex text."""
    buf = bytearray(synthetic_segment(segno, seg_size, SYSID))
    body = PAGE - 40
    for off in range(0, seg_size, PAGE):
        buf[off + 40:off + PAGE] = base64.b16encode(os.urandom(body // 2))
    return bytes(buf)


def upload_run(server: MotoServer, extra: list[str], segments: int, payload: str) -> float:
    """MiB/s of full-segment uploads of a backlog of `segments` segments (see the module doc)."""
    base = tempfile.mkdtemp(prefix="bench-enc-upload-")
    os.chmod(base, 0o755)
    chown_to_pg_user(base)
    pg, bucket, sk = setup(base, server, ["--partial-interval", "1h", *extra], sync=False)
    try:
        pg.switch_wal()
        wait_until("first segment uploaded", lambda: remote_lsn(bucket) > 0, timeout=60)
        start_segs = remote_lsn(bucket) // SEG
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(segments):
                pg.sql("SELECT pg_logical_emit_message(false, 'bench', %s::text)", (payload,))
                end = pg.switch_wal()
            wait_until("safekeeper flushed the backlog", lambda: pg.replication(sk.application_name)["flush_lsn"] >= end,
                       timeout=300)
            target = ((end - 1) // SEG + 1) * SEG
        finally:
            t0 = time.monotonic()
            os.kill(server.proc.pid, signal.SIGCONT)
        wait_until("backlog uploaded", lambda: remote_lsn(bucket) >= target, timeout=600, interval=0.05)
        elapsed = time.monotonic() - t0
        return (target // SEG - start_segs) * 16 / elapsed
    finally:
        sk.stop()
        pg.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def upload_phase(server: MotoServer, keyfile: str, rounds: int, segments: int) -> None:
    payload = os.urandom(15 << 19).hex()  # 15 MB of hex text: about 2:1 compressible
    rates: dict[str, list[float]] = {"plain": [], "enc": []}
    for rnd in range(rounds):
        for mode in (["plain", "enc"] if rnd % 2 == 0 else ["enc", "plain"]):
            extra = ["--encryption-key-file", keyfile] if mode == "enc" else []
            rates[mode].append(upload_run(server, extra, segments, payload))
            print(f"upload round {rnd + 1} {mode:>5}: {rates[mode][-1]:6.1f} MiB/s of WAL")
    med = {m: statistics.median(r) for m, r in rates.items()}
    print(f"upload median: plain {med['plain']:.1f} MiB/s, encrypted {med['enc']:.1f} MiB/s, "
          f"encrypted/plain {med['enc'] / med['plain']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--segment-mb", type=int, default=16)
    ap.add_argument("--upload-segments", type=int, default=8, help="segments per upload run (0: skip the upload phase)")
    args = ap.parse_args()
    binary = os.environ.get("SAFEKEEPER_BIN") or os.path.join(os.path.dirname(__file__), "..", "target", "release", "safekeeper")
    seg_size = args.segment_mb << 20
    workdir = tempfile.mkdtemp(prefix="sk-encryption-bench-")
    server = MotoServer(workdir)
    try:
        keyfile = os.path.join(workdir, "bench.keys")
        subprocess.run([binary, "keygen", keyfile, "--id", "bench"], check=True, capture_output=True)
        (kid, secret), = load_keys(keyfile).items()
        bucket = new_bucket(server)
        writers = {"plain": KeyedWriter(bucket, "plain", None), "enc": KeyedWriter(bucket, "enc", keyfile)}
        names, expected = [], {}
        for segno in range(1, args.segments + 1):
            name = segment_name(1, segno, seg_size)
            data = segment(segno, seg_size)
            writers["plain"].put(name, encode(data, level=1))
            writers["enc"].put(name, encode(data, level=1, key=writers["enc"].key(name), key_id=kid, secret=secret))
            names.append(name)
            expected[name] = data
        sizes = {m: len(bucket.get(w.key(names[0]))) for m, w in writers.items()}
        print(f"binary: {os.path.realpath(binary)}")
        print(f"{args.segments} segments of {args.segment_mb} MiB per cluster; bytes of the first object: {sizes}")
        rates: dict[str, list[float]] = {"plain": [], "enc": []}
        for rnd in range(args.rounds):
            order = ["plain", "enc"] if rnd % 2 == 0 else ["enc", "plain"]
            for mode in order:
                elapsed = run_restores(binary, writers[mode], names, expected, 0, workdir)
                rates[mode].append(len(names) / elapsed)
                print(f"round {rnd + 1} {mode:>5}: {len(names)} segments in {elapsed:6.2f} s = "
                      f"{rates[mode][-1]:6.1f} segments/s ({rates[mode][-1] * args.segment_mb:7.1f} MiB/s)")
        med = {m: statistics.median(r) for m, r in rates.items()}
        print(f"restore median: plain {med['plain']:.1f} segments/s, encrypted {med['enc']:.1f} segments/s, "
              f"encrypted/plain {med['enc'] / med['plain']:.3f}")
        if args.upload_segments:
            upload_phase(server, keyfile, args.rounds, args.upload_segments)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

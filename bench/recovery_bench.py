#!/usr/bin/env python3
"""A real PostgreSQL recovery of ≥ 1 GiB of WAL through `restore_command`, one binary against
another (issue 21: the default command of this version against the previous one's).

A primary takes a base backup, then `pgbench -i` writes at least `--wal-gib` GiB of WAL; every
complete segment goes into a safekeeper archive in moto's S3 (object format v1, zstd level 1,
fixtures/objects.py), the current one as a partial. For each binary (`--binary NAME=PATH`, in
turn; the order flips every round) a fresh copy of the base backup recovers with
`restore_command = '<binary> restore-wal --remote ... %f %p'` (the README's command, no extra
flags) through a proxy that adds `--latency-ms` to each request (0: direct), until it has
promoted. Prints the wall time from `pg_ctl start` to the end of recovery for every run, the
medians, the ratio, and whether any prefetch state or worker was left behind.

Usage: bench/recovery_bench.sh --binary before=/path/old --binary after=/path/new [--wal-gib 1]
       [--rounds 2] [--latency-ms 0] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "test_runner"))
sys.path.insert(0, os.path.join(HERE, "lib"))

from fixtures.archive import ArchiveWriter  # noqa: E402
from fixtures.objects import encode  # noqa: E402
from fixtures.pg import PgCluster  # noqa: E402
from fixtures.restore import prefetch_leftovers, prefetch_workers, restore_from_backup, take_base_backup  # noqa: E402
from fixtures.s3 import MotoServer, new_bucket, s3_env  # noqa: E402
from fixtures.utils import chown_to_pg_user, wait_until  # noqa: E402
from fixtures.wal import partial_name  # noqa: E402
from latency_proxy import LatencyProxy  # noqa: E402

SEG = 16 << 20


def fill_archive(work: str, writer: ArchiveWriter, wal_gib: float) -> tuple[str, int, int]:
    """Base backup, then WAL; returns the backup, the number of full segments archived and the end
    LSN of the WAL written."""
    pg = PgCluster(work, "primary").initdb(extra_conf="max_wal_size = 8GB\nmin_wal_size = 4GB\ncheckpoint_timeout = 1h\n")
    pg.start()
    try:
        pg.sql("CREATE TABLE marker (id int)")
        backup = take_base_backup(pg, os.path.join(work, "basebackup"))
        start = pg.current_lsn()
        scale = max(10, int(wal_gib * 1024 / 15))
        while pg.current_lsn() - start < wal_gib * (1 << 30):
            pg.pgbench("-i", "-s", str(scale), "-q", timeout=1200)
        pg.sql("INSERT INTO marker VALUES (42)")
        end = pg.current_lsn()
        names = sorted(n for n in os.listdir(pg.pg_wal) if len(n) == 24)
        current = names[-1]
        fulls = 0
        for name in names:
            with open(os.path.join(pg.pg_wal, name), "rb") as f:
                data = f.read()
            if name == current:
                # The segment being written: as the safekeeper uploads it, a partial up to `end`.
                tli, segno = int(name[:8], 16), int(name[8:16], 16) * 0x100 + int(name[16:], 16)
                held = end - segno * SEG
                writer.put(partial_name(tli, segno, end, 1, 1, SEG), encode(data[:held], level=1))
            else:
                writer.put(name, encode(data, level=1))
                fulls += 1
        return backup, fulls, end
    finally:
        pg.stop("immediate")


def recover_once(work: str, label: str, binary: str, backup: str, writer: ArchiveWriter, endpoint: str) -> tuple[float, list]:
    env = " ".join(f"{k}={v}" for k, v in s3_env().items())
    cmd = (f"{env} RUST_LOG=warn {binary} restore-wal --remote {writer.bucket.url} --s3-endpoint {endpoint} "
           f"--s3-force-path-style --cluster {writer.cluster} %f %p")
    name = f"{label}-{int(time.time() * 1000) % 10**8}"
    pg = restore_from_backup(work, name, backup, cmd)
    try:
        started = time.monotonic()
        pg.start(timeout=1800)
        wait_until("recovery ended", lambda: pg.sql_one("SELECT NOT pg_is_in_recovery()"), timeout=1800, interval=0.05)
        elapsed = time.monotonic() - started
        if pg.sql("SELECT id FROM marker") != [(42,)]:
            raise RuntimeError(f"{label}: the last commit was not recovered")
        time.sleep(6)  # longer than the prefetch worker's idle exit
        left = prefetch_leftovers(pg.pg_wal) + [f"pid {p}" for p in prefetch_workers(pg.pg_wal)]
        return elapsed, left
    finally:
        for pid in prefetch_workers(pg.dir):
            os.kill(pid, 15)
        pg.destroy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", action="append", required=True, help="NAME=PATH, twice or more")
    ap.add_argument("--wal-gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    binaries = [tuple(b.split("=", 1)) for b in args.binary]
    work = tempfile.mkdtemp(prefix="sk-recovery-bench-")
    os.chmod(work, 0o755)
    chown_to_pg_user(work)
    server = proxy = None
    try:
        server = MotoServer(work)
        proxy = LatencyProxy(server.port, args.latency_ms / 1000)
        writer = ArchiveWriter(bucket=new_bucket(server))
        t0 = time.monotonic()
        backup, fulls, end = fill_archive(work, writer, args.wal_gib)
        print(f"archive: {fulls} full segments + 1 partial ({fulls * 16 / 1024:.2f} GiB of WAL) in "
              f"{time.monotonic() - t0:.0f} s; +{args.latency_ms:g} ms per request", flush=True)
        results: dict[str, list[float]] = {}
        for r in range(args.rounds):
            for label, binary in (binaries if r % 2 == 0 else list(reversed(binaries))):
                elapsed, left = recover_once(work, label, binary, backup, writer, f"http://127.0.0.1:{proxy.port}")
                results.setdefault(label, []).append(elapsed)
                print(f"round {r + 1} {label:>10}: recovery {elapsed:6.1f} s ({fulls / elapsed:5.1f} segments/s); "
                      f"left behind: {left or 'nothing'}", flush=True)
        for label, times in results.items():
            print(f"{label:>10}: {' / '.join(f'{t:.1f}' for t in times)} s, median {statistics.median(times):.1f} s")
        first = binaries[0][0]
        for label, _ in binaries[1:]:
            print(f"{label} vs {first}: {statistics.median(results[first]) / statistics.median(results[label]):.2f}x faster")
    finally:
        if proxy is not None:
            proxy.stop()
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

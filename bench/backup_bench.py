#!/usr/bin/env python3
"""Backup and restore throughput (issue 18): `safekeeper backup` and `safekeeper restore --latest`
of a pgbench database (`--scale 70`: about 1 GiB) to the local backend and to moto's S3 on
127.0.0.1, next to `pg_basebackup -Ft -Z zstd -X none` into a local directory.

What runs: one primary (initdb, `pgbench -i -s SCALE`, CHECKPOINT), two safekeepers following it
asynchronously (one offloading to a local directory, one to moto), because a backup is complete
only once the WAL archive reaches its end. Each figure is the database size (`pg_database_size`
of every database) divided by the wall time of the command, which includes the checkpoint and,
for `backup`, the wait for the archive. Restores include the checks against the manifest and
`pg_verifybackup`. Nothing is asserted beyond each command succeeding. Everything is stopped by
PID and the run directory removed unless --keep.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test_runner"))

from fixtures.pg import PgCluster  # noqa: E402
from fixtures.remote import LocalRemote  # noqa: E402
from fixtures.s3 import MotoServer, new_bucket  # noqa: E402
from fixtures.safekeeper import Safekeeper, safekeeper_bin  # noqa: E402
from fixtures.standby import start_standby  # noqa: E402
from fixtures.utils import as_pg_user, chown_to_pg_user  # noqa: E402

MIB = 1 << 20


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    t0 = time.monotonic()
    cp = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, RUST_LOG="warn", **(env or {})),
                        timeout=1200)
    elapsed = time.monotonic() - t0
    if cp.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {cp.returncode}: {cp.stderr[-2000:]}")
    return elapsed, cp.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=70)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds of every command, interleaved (the order flips every round); every run and the median are printed")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="bench-backup-", dir=os.environ.get("SK_TEST_TMP", "/tmp"))
    os.chmod(base, 0o755)
    chown_to_pg_user(base)
    pg = PgCluster(base, "primary").initdb()
    moto = MotoServer(base)
    sks: list[Safekeeper] = []
    try:
        pg.start()
        t0 = time.monotonic()
        pg.pgbench("-i", "-s", str(args.scale), "-q", timeout=1200)
        pg.sql("CHECKPOINT")
        size = int(pg.sql_one("SELECT sum(pg_database_size(oid)) FROM pg_database"))
        print(f"pgbench -i -s {args.scale}: {size / MIB:.0f} MiB of databases in {time.monotonic() - t0:.0f} s")
        print(f"binary: {os.path.realpath(safekeeper_bin())}; PostgreSQL {pg.major}; 2-core VM, moto on 127.0.0.1")
        remotes = {"local": LocalRemote(os.path.join(base, "remote")), "moto": new_bucket(moto)}
        for i, remote in enumerate(remotes.values(), start=1):
            sk = Safekeeper(base, i)
            sks.append(sk)
            start_standby(sk, pg, sync=False, remote=remote, partial_interval="1s")
        runs: dict[str, list[tuple[float, str]]] = {}

        def safekeeper_round(name: str, remote) -> None:
            flags = [*remote.args(), "--cluster", "main"]
            secs, out = timed([safekeeper_bin(), "backup", *flags, "--primary", pg.connstr()], remote.env())
            runs.setdefault(f"safekeeper backup -> {name}", []).append((secs, out))
            target = os.path.join(base, f"restored-{name}")
            secs, out = timed([safekeeper_bin(), "restore", *flags, "--target-dir", target, "--latest"], remote.env())
            runs.setdefault(f"safekeeper restore <- {name}", []).append((secs, out.splitlines()[0]))
            shutil.rmtree(target, ignore_errors=True)

        def pg_basebackup_round() -> None:
            dest = os.path.join(base, "pg_basebackup")
            shutil.rmtree(dest, ignore_errors=True)
            os.makedirs(dest)
            chown_to_pg_user(dest)
            secs, _ = timed(as_pg_user([pg.bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                                        "-D", dest, "-Ft", "-Z", "zstd", "-X", "none", "-c", "fast", "--no-sync"]))
            stored = sum(os.path.getsize(os.path.join(dest, f)) for f in os.listdir(dest))
            runs.setdefault("pg_basebackup -Ft -Z zstd -X none", []).append((secs, f"{stored / MIB:.0f} MiB stored"))

        steps = [lambda n=n, rem=rem: safekeeper_round(n, rem) for n, rem in remotes.items()] + [pg_basebackup_round]
        for rnd in range(args.rounds):
            for step in (steps if rnd % 2 == 0 else list(reversed(steps))):
                step()
        print(f"\n{'command':<36} {'median s':>8} {'MiB/s':>8}   every run (s); last note")
        for what, rs in runs.items():
            med = statistics.median(secs for secs, _ in rs)
            each = ", ".join(f"{secs:.1f}" for secs, _ in rs)
            print(f"{what:<36} {med:>8.1f} {size / MIB / med:>8.1f}   {each}; {rs[-1][1]}")
    finally:
        for sk in sks:
            sk.cleanup()
        pg.stop("immediate")
        moto.stop()
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Footprint of one safekeeper process following N idle primaries (not a test: prints figures).

For each N: N fresh primaries (initdb), one `safekeeper run --config` listing them, wait until
every one shows the safekeeper `streaming`, let it settle, then read /proc for the process:
resident memory (VmRSS, VmHWM), threads, and CPU time used over an idle window.

Usage: bench/footprint.sh [--clusters 1,20] [--idle 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test_runner"))

from fixtures.pg import PgCluster  # noqa: E402
from fixtures.safekeeper import Safekeeper  # noqa: E402
from fixtures.utils import chown_to_pg_user, wait_until  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def measure(n: int, idle: float) -> dict:
    base = tempfile.mkdtemp(prefix=f"bench-footprint-{n}-")
    os.chmod(base, 0o755)
    chown_to_pg_user(base)
    pgs: list[PgCluster] = []
    sk = Safekeeper(base, 1)
    try:
        for i in range(n):
            pgs.append(PgCluster(base, f"pg{i}").initdb("shared_buffers = 16MB\nmax_wal_senders = 2\n").start())
        cfg = os.path.join(base, "sk.toml")
        with open(cfg, "w") as f:
            f.write("id = 1\n")
            for pg in pgs:
                f.write(f'[[cluster]]\nname = "{pg.name}"\nprimary = "{pg.connstr()}"\n')
        sk.start(None, extra=["--config", cfg], env={"RUST_LOG": "warn"})
        for pg in pgs:
            wait_until(f"{pg.name} streaming", lambda pg=pg: (r := pg.replication("safekeeper1")) and r["state"] == "streaming", timeout=120)
        time.sleep(3)
        pid = sk.pid
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(idle)
        c1, t1 = cpu_seconds(pid), time.monotonic()
        st = proc_status(pid)
        return {
            "clusters": n,
            "rss_mib": int(st["VmRSS"].split()[0]) / 1024,
            "hwm_mib": int(st["VmHWM"].split()[0]) / 1024,
            "threads": int(st["Threads"]),
            "idle_cpu_pct": 100 * (c1 - c0) / (t1 - t0),
        }
    finally:
        sk.cleanup()
        for pg in pgs:
            pg.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", default="1,20")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle measurement")
    args = ap.parse_args()
    rows = [measure(int(n), args.idle) for n in args.clusters.split(",")]
    print(f"\none safekeeper process following N idle primaries ({args.idle:.0f} s idle window)")
    print("| clusters | RSS MiB | peak RSS MiB | threads | idle CPU % of one core |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clusters']} | {r['rss_mib']:.1f} | {r['hwm_mib']:.1f} | {r['threads']} | {r['idle_cpu_pct']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

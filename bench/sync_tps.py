#!/usr/bin/env python3
"""Sync-mode TPS: pgbench against a primary whose synchronous standby is the safekeeper, and the
same against `pg_receivewal --synchronous`, interleaved in one run so both see the same machine.

Each run: fresh primary (initdb), `pgbench -i -s SCALE`, CHECKPOINT, receiver attached through a
physical slot and made the synchronous standby, then `pgbench -n -c CLIENTS -j JOBS -T DURATION`.
Prints one line per run and a summary table (mean TPS, mean latency, ratio to pg_receivewal).

Not a test: nothing is asserted. Usage: bench/sync_tps.sh [--duration 15] [--repeats 2] ...
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test_runner"))

from fixtures.pg import PgCluster  # noqa: E402
from fixtures.utils import chown_to_pg_user, free_port, stop_pid, wait_until  # noqa: E402

APP = "bench_receiver"
SLOT = "bench_slot"


def start_receiver(kind: str, pg: PgCluster, workdir: str, sk_bin: str) -> subprocess.Popen:
    out = open(os.path.join(workdir, f"{kind}.log"), "w")
    if kind == "safekeeper":
        cmd = [
            sk_bin, "run", "--id", "1", "--data-dir", os.path.join(workdir, "sk"),
            "--primary", pg.connstr(), "--slot", SLOT, "--application-name", APP,
            "--http-addr", f"127.0.0.1:{free_port()}",
        ]
    else:
        recv = os.path.join(workdir, "pgrw")
        os.makedirs(recv, exist_ok=True)
        cmd = [
            pg.bin("pg_receivewal"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
            "-S", SLOT, "-D", recv, "--synchronous", "--no-loop",
        ]
    env = dict(os.environ, PGAPPNAME=APP, RUST_LOG="warn")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def one_run(kind: str, args, sk_bin: str) -> dict:
    base = tempfile.mkdtemp(prefix=f"bench-{kind}-")
    os.chmod(base, 0o755)
    chown_to_pg_user(base)
    pg = PgCluster(base, "primary")
    proc = None
    try:
        pg.initdb("shared_buffers = 1GB\nmax_wal_size = 4GB\ncheckpoint_timeout = 30min\n").start()
        pg.pgbench("-i", "-s", str(args.scale), "-q", timeout=600)
        pg.sql("CHECKPOINT")
        pg.sql(f"SELECT pg_create_physical_replication_slot('{SLOT}', true)")
        proc = start_receiver(kind, pg, base, sk_bin)
        wait_until("receiver streaming", lambda: (r := pg.replication(APP)) and r["state"] == "streaming", timeout=60)
        pg.set_sync_standby(APP)
        wait_until("receiver is sync", lambda: (r := pg.replication(APP)) and r["sync_state"] == "sync", timeout=30)
        cp = pg.pgbench("-n", "-b", args.builtin, "-c", str(args.clients), "-j", str(args.jobs), "-T", str(args.duration), timeout=args.duration + 120)
        tps = float(re.search(r"tps = ([0-9.]+)", cp.stdout).group(1))
        lat = float(re.search(r"latency average = ([0-9.]+) ms", cp.stdout).group(1))
        assert proc.poll() is None, f"{kind} exited during the run"
        return {"receiver": kind, "tps": tps, "latency_ms": lat}
    finally:
        if proc is not None and proc.poll() is None:
            stop_pid(proc.pid, signal.SIGTERM, timeout=20)
            proc.wait(timeout=10)
        pg.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=15, help="pgbench -T seconds (default 15)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--builtin", default="tpcb-like")
    ap.add_argument("--receivers", default="safekeeper,pg_receivewal")
    ap.add_argument("--safekeeper-bin", default=os.environ.get("SAFEKEEPER_BIN", "target/release/safekeeper"))
    args = ap.parse_args()
    kinds = args.receivers.split(",")
    results = []
    for rep in range(args.repeats):
        for kind in kinds:
            r = one_run(kind, args, args.safekeeper_bin)
            r["rep"] = rep + 1
            results.append(r)
            print(f"rep {rep + 1} {kind:<13} tps {r['tps']:9.1f}  latency {r['latency_ms']:.3f} ms", flush=True)
    print()
    print(f"sync mode, pgbench -b {args.builtin} -s {args.scale} -c {args.clients} -j {args.jobs} -T {args.duration}, {args.repeats} repeat(s)")
    print("| receiver | mean TPS | min TPS | max TPS | mean latency ms | TPS vs pg_receivewal |")
    print("|---|---|---|---|---|---|")
    means = {k: statistics.mean(r["tps"] for r in results if r["receiver"] == k) for k in kinds}
    for k in kinds:
        rs = [r for r in results if r["receiver"] == k]
        ratio = f"{means[k] / means['pg_receivewal']:.3f}" if "pg_receivewal" in means else "-"
        print(f"| {k} | {means[k]:.1f} | {min(r['tps'] for r in rs):.1f} | {max(r['tps'] for r in rs):.1f} | "
              f"{statistics.mean(r['latency_ms'] for r in rs):.3f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

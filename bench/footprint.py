#!/usr/bin/env python3
"""Footprint of one safekeeper process following many clusters (issue 17): memory, threads and
idle CPU with 1 and N idle primaries, and whether a busy cluster's sync TPS suffers when the
idle ones are added.

Primaries: N fresh `initdb`s (distinct system identifiers), each small (`shared_buffers = 2MB`,
`max_connections = 10`), all on 127.0.0.1. For each cluster count: one `safekeeper run --config`
listing the first n of them, wait until every primary shows it `streaming`, let it settle, then
read /proc of the process: resident memory (VmRSS, VmHWM), threads (by name), CPU used over an
idle window. Per idle cluster = (RSS with N - RSS with 1) / (N - 1).

Busy cluster: primary 0 gets `pgbench -i -s 10` and the safekeeper as its synchronous standby;
after an untimed 5 s warm-up, and once the safekeeper has settled (its start-up work for every
cluster done: < 2% of a core over a second), `pgbench -c 4 -j 2 -T D` runs with it following only
primary 0, and following all N, interleaved over rounds (order swapped every round). Printed: TPS every run, medians, the ratio.

Not a test: nothing is asserted. Usage:
    bench/footprint.sh [--clusters 1,100] [--idle 20] [--busy-duration 15] [--rounds 3]
                       [--no-busy] [--profile DIR]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test_runner"))

from fixtures.pg import PgCluster  # noqa: E402
from fixtures.safekeeper import Safekeeper  # noqa: E402
from fixtures.utils import chown_to_pg_user, wait_until  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PRIMARY_CONF = "shared_buffers = 2MB\nmax_connections = 10\nmax_wal_senders = 3\n"


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def thread_names(pid: int) -> dict[str, int]:
    names: collections.Counter = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        # One name per kind: sk-<cluster> threads are the followers.
        names["sk-<cluster>" if name.startswith("sk-") and name != "sk-spare" else name] += 1
    return dict(names)


def make_primaries(base: str, n: int) -> list[PgCluster]:
    pgs = [PgCluster(base, f"pg{i}") for i in range(n)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda pg: pg.initdb(PRIMARY_CONF).start(), pgs))
    print(f"{n} primaries initdb'd and started in {time.monotonic() - t0:.0f} s", flush=True)
    return pgs


def start_safekeeper(base: str, tag: str, pgs: list[PgCluster]) -> Safekeeper:
    sk = Safekeeper(os.path.join(base, tag), 1)
    cfg = os.path.join(base, f"{tag}.toml")
    with open(cfg, "w") as f:
        f.write("id = 1\n")
        for pg in pgs:
            f.write(f'[[cluster]]\nname = "{pg.name}"\nprimary = "{pg.connstr()}"\n')
    sk.start(None, extra=["--config", cfg], env={"RUST_LOG": "warn"})
    for pg in pgs:
        wait_until(f"{pg.name} streaming",
                   lambda pg=pg: (r := pg.replication(sk.application_name)) and r["state"] == "streaming",
                   timeout=180)
    return sk


def stop(sk: Safekeeper) -> None:
    try:
        sk.stop()
    finally:
        sk.cleanup()


def measure_idle(base: str, pgs: list[PgCluster], idle: float, profile: str | None) -> dict:
    sk = start_safekeeper(base, f"sk-idle-{len(pgs)}", pgs)
    try:
        time.sleep(5)  # the first partial uploads and control-file saves settle
        pid = sk.pid
        perf = None
        if profile:
            os.makedirs(profile, exist_ok=True)
            perf = subprocess.Popen(["perf", "record", "-g", "-p", str(pid), "-o",
                                     os.path.join(profile, f"idle-{len(pgs)}.perf.data")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(idle)
        c1, t1 = cpu_seconds(pid), time.monotonic()
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)
        st = proc_status(pid)
        return {
            "clusters": len(pgs),
            "rss_mib": int(st["VmRSS"].split()[0]) / 1024,
            "hwm_mib": int(st["VmHWM"].split()[0]) / 1024,
            "threads": int(st["Threads"]),
            "by_name": thread_names(pid),
            "idle_cpu_pct": 100 * (c1 - c0) / (t1 - t0),
        }
    finally:
        stop(sk)


def settle(pid: int, limit_s: float = 90) -> float:
    """Waits until the process used < 2% of a core over a second (every cluster has stored and
    uploaded the WAL it found at start), at most `limit_s`; returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        c0 = cpu_seconds(pid)
        time.sleep(1)
        if cpu_seconds(pid) - c0 < 0.02:
            break
    return time.monotonic() - t0


def busy_tps(base: str, pgs: list[PgCluster], busy: PgCluster, duration: int, tag: str) -> float:
    sk = start_safekeeper(base, tag, pgs)
    try:
        settle(sk.pid)
        busy.set_sync_standby(sk.application_name)
        wait_until("safekeeper is the sync standby",
                   lambda: (r := busy.replication(sk.application_name)) and r["sync_state"] == "sync", timeout=60)
        cp = busy.pgbench("-n", "-c", "4", "-j", "2", "-T", str(duration), timeout=duration + 120)
        return float(re.search(r"tps = ([0-9.]+)", cp.stdout).group(1))
    finally:
        busy.set_sync_standby("")
        stop(sk)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", default="1,100", help="cluster counts to measure idle (1,100)")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of the idle window (20)")
    ap.add_argument("--busy-duration", type=int, default=15, help="pgbench -T of the busy runs (15)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the busy comparison (3)")
    ap.add_argument("--no-busy", action="store_true", help="skip the busy-cluster comparison")
    ap.add_argument("--profile", metavar="DIR", help="perf record -g of each idle window into DIR")
    args = ap.parse_args()
    counts = [int(n) for n in args.clusters.split(",")]
    base = tempfile.mkdtemp(prefix="bench-footprint-")
    os.chmod(base, 0o755)
    chown_to_pg_user(base)
    pgs: list[PgCluster] = []
    try:
        pgs = make_primaries(base, max(counts))
        rows = []
        for n in counts:
            rows.append(measure_idle(base, pgs[:n], args.idle, args.profile))
            r = rows[-1]
            print(f"{n} clusters: RSS {r['rss_mib']:.1f} MiB (peak {r['hwm_mib']:.1f}), {r['threads']} threads "
                  f"{r['by_name']}, idle CPU {r['idle_cpu_pct']:.2f}% of a core", flush=True)
        print(f"\none safekeeper process following N idle primaries ({args.idle:.0f} s idle window)")
        print("| clusters | RSS MiB | peak RSS MiB | threads | idle CPU % of one core |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['clusters']} | {r['rss_mib']:.1f} | {r['hwm_mib']:.1f} | {r['threads']} | {r['idle_cpu_pct']:.2f} |")
        if len(rows) >= 2 and rows[-1]["clusters"] > rows[0]["clusters"]:
            lo, hi = rows[0], rows[-1]
            per = (hi["rss_mib"] - lo["rss_mib"]) / (hi["clusters"] - lo["clusters"])
            print(f"\nper idle cluster: {per * 1024:.0f} KiB RSS "
                  f"({lo['clusters']} -> {hi['clusters']} clusters), base {lo['rss_mib'] - per * lo['clusters']:.1f} MiB")
        if args.no_busy:
            return 0
        busy, n = pgs[0], max(counts)
        busy.pgbench("-i", "-s", "10", "-q", timeout=600)
        busy.sql("CHECKPOINT")
        # Untimed: the first run after `pgbench -i` on a fresh primary is slower whoever follows.
        busy_tps(base, pgs[:1], busy, 5, "sk-busy-warmup")
        results: dict[str, list[float]] = {"alone": [], f"with {n - 1} idle": []}
        print(f"\nbusy cluster: pgbench -c 4 -j 2 -T {args.busy_duration} (sync), {args.rounds} rounds", flush=True)
        for rnd in range(args.rounds):
            order = [("alone", pgs[:1]), (f"with {n - 1} idle", pgs[:n])]
            if rnd % 2:
                order.reverse()
            for label, members in order:
                tps = busy_tps(base, members, busy, args.busy_duration, f"sk-busy-{rnd}-{len(members)}")
                results[label].append(tps)
                print(f"round {rnd + 1} {label:<14} tps {tps:.1f}", flush=True)
        alone, crowd = results["alone"], results[f"with {n - 1} idle"]
        print(f"\n| busy cluster | TPS, every run | median |\n|---|---|---|")
        for label, v in results.items():
            print(f"| {label} | {' / '.join(f'{x:.0f}' for x in v)} | {statistics.median(v):.1f} |")
        per_round = " ".join(f"{c / a:.3f}" for a, c in zip(alone, crowd))
        print(f"\nwith {n - 1} idle / alone: {statistics.median(crowd) / statistics.median(alone):.3f} "
              f"(medians); per round {per_round}")
        return 0
    finally:
        for pg in pgs:
            pg.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The commit path (issue 17): sync-mode pgbench TPS, commit latency and receiver CPU with no
standby, with `pg_receivewal --synchronous`, and with the safekeeper (its default remote, a
`file://` directory on the same disk, and a remote on another filesystem, tmpfs), interleaved.

Each run: a fresh primary (initdb, `pgbench -i -s SCALE`, CHECKPOINT), the receiver attached
through a physical slot and made the only synchronous standby (no receiver and
`synchronous_standby_names = ''` for `none`), then `pgbench -n -c CLIENTS -j JOBS -T DURATION -l`.
Measured over pgbench's run: TPS; commit latency p50/p99 from pgbench's per-transaction log;
receiver CPU (user+sys of its process, children included, from /proc) per MiB of WAL the primary
wrote; the receiver's RSS at the end and its peak; busy CPU of the whole machine. Every round
runs every receiver once, the order rotated each round, so each sees the same machine.

Not a test: nothing is asserted. Prints every run, then medians and ratios against
pg_receivewal (from the medians and per round).

Usage: bench/sync_tps.sh [--duration 15] [--rounds 2] [--receivers none,pg_receivewal,...]
       [--profile DIR]  (perf record -g of the receiver during pgbench; perf report -i DIR/KIND.perf.data)
"""

from __future__ import annotations

import argparse
import glob
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
RECEIVERS = ("none", "pg_receivewal", "safekeeper", "safekeeper-remote-tmpfs")
TICK = os.sysconf("SC_CLK_TCK")
TMPFS = "/dev/shm"
BASELINE = "@baseline"
BASELINE_BIN: list[str] = []  # set from --baseline-bin


def receiver_cmd(kind: str, pg: PgCluster, workdir: str, sk_bin: str) -> list[str]:
    if kind == "pg_receivewal":
        recv = os.path.join(workdir, "pgrw")
        os.makedirs(recv)
        return [pg.bin("pg_receivewal"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                "-S", SLOT, "-D", recv, "--synchronous", "--no-loop"]
    if kind.endswith(BASELINE):
        sk_bin, kind = BASELINE_BIN[0], kind[: -len(BASELINE)]
    cmd = [sk_bin, "run", "--id", "1", "--data-dir", os.path.join(workdir, "sk"), "--primary",
           pg.connstr(), "--slot", SLOT, "--application-name", APP, "--http-addr",
           f"127.0.0.1:{free_port()}"]
    if kind == "safekeeper-remote-tmpfs":
        cmd += ["--remote", "file://" + tempfile.mkdtemp(prefix="sk-bench-remote-", dir=TMPFS)]
    return cmd


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and of its reaped children."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


def machine_busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def rss_mib(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/status") as f:
        st = dict(line.split(":", 1) for line in f if ":" in line)
    return int(st["VmRSS"].split()[0]) / 1024, int(st["VmHWM"].split()[0]) / 1024


def latencies_ms(log_dir: str) -> list[float]:
    """Per-transaction latencies from pgbench's -l files (third field: microseconds)."""
    out = []
    for path in glob.glob(os.path.join(log_dir, "pgbench_log.*")):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    out.append(int(parts[2]) / 1000)
    return sorted(out)


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


def one_run(kind: str, args, sk_bin: str) -> dict:
    base = tempfile.mkdtemp(prefix=f"bench-sync-{kind}-")
    os.chmod(base, 0o755)
    chown_to_pg_user(base)
    pg = PgCluster(base, "primary")
    proc = None
    remote = None
    try:
        pg.initdb("shared_buffers = 1GB\nmax_wal_size = 4GB\ncheckpoint_timeout = 30min\n").start()
        pg.pgbench("-i", "-s", str(args.scale), "-q", timeout=600)
        pg.sql("CHECKPOINT")
        if kind != "none":
            pg.sql(f"SELECT pg_create_physical_replication_slot('{SLOT}', true)")
            cmd = receiver_cmd(kind, pg, base, sk_bin)
            remote = next((c[len("file://"):] for c in cmd if c.startswith("file://" + TMPFS)), None)
            log = open(os.path.join(base, "receiver.log"), "w")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    env=dict(os.environ, PGAPPNAME=APP, RUST_LOG="warn"))
            wait_until("receiver streaming",
                       lambda: (r := pg.replication(APP)) and r["state"] == "streaming", timeout=60)
            pg.set_sync_standby(APP)
            wait_until("receiver is the sync standby",
                       lambda: (r := pg.replication(APP)) and r["sync_state"] == "sync", timeout=30)
        log_dir = os.path.join(base, "pgbench-log")
        os.makedirs(log_dir)
        chown_to_pg_user(log_dir)
        lsn0 = pg.current_lsn()
        cpu0 = cpu_seconds(proc.pid) if proc else 0.0
        busy0, total0 = machine_busy()
        perf = None
        if args.profile and proc is not None:
            os.makedirs(args.profile, exist_ok=True)
            perf = subprocess.Popen(["perf", "record", "-g", "-F", "999", "-p", str(proc.pid), "-o",
                                     os.path.join(args.profile, f"{kind}.perf.data")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cp = subprocess.run(
            [pg.bin("pgbench"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", pg.user, "-n", "-b",
             args.builtin, "-c", str(args.clients), "-j", str(args.jobs), "-T", str(args.duration),
             "-l", "--log-prefix", os.path.join(log_dir, "pgbench_log"), "postgres"],
            capture_output=True, text=True, timeout=args.duration + 120)
        if cp.returncode != 0:
            raise RuntimeError(f"pgbench failed: {cp.stderr[-2000:]}")
        busy1, total1 = machine_busy()
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=60)
        cpu1 = cpu_seconds(proc.pid) if proc else 0.0
        wal_mib = (pg.current_lsn() - lsn0) / (1 << 20)
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{kind} exited during the run (see {base}/receiver.log)")
        rss, hwm = rss_mib(proc.pid) if proc else (0.0, 0.0)
        lat = latencies_ms(log_dir)
        return {
            "receiver": kind,
            "tps": float(re.search(r"tps = ([0-9.]+)", cp.stdout).group(1)),
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "wal_mib": wal_mib,
            "cpu_ms_per_mib": 1000 * (cpu1 - cpu0) / wal_mib if proc and wal_mib else float("nan"),
            "rss_mib": rss,
            "hwm_mib": hwm,
            "machine_busy_pct": 100 * (busy1 - busy0) / max(1, total1 - total0),
        }
    finally:
        if proc is not None and proc.poll() is None:
            stop_pid(proc.pid, signal.SIGTERM, timeout=20)
        pg.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
        if remote:
            shutil.rmtree(remote, ignore_errors=True)


def fmt(x: float, digits: int = 1) -> str:
    return "-" if x != x else f"{x:.{digits}f}"  # NaN


def report(results: list[dict], kinds: list[str], rounds: int) -> None:
    print("\n| receiver | TPS, every run | median TPS | vs pg_receivewal | p50 ms | p99 ms | CPU ms/MiB | vs pg_receivewal | RSS MiB (peak) |")
    print("|---|---|---|---|---|---|---|---|---|")
    med = {}
    for k in kinds:
        rs = [r for r in results if r["receiver"] == k]
        med[k] = {f: statistics.median(r[f] for r in rs) for f in ("tps", "p50_ms", "p99_ms", "cpu_ms_per_mib", "rss_mib", "hwm_mib")}
    ref = med.get("pg_receivewal")
    for k in kinds:
        m = med[k]
        rs = [r for r in results if r["receiver"] == k]
        tps_ratio = f"{m['tps'] / ref['tps']:.3f}" if ref else "-"
        cpu_ratio = f"{m['cpu_ms_per_mib'] / ref['cpu_ms_per_mib']:.2f}" if ref and k != "none" else "-"
        every = " / ".join(f"{r['tps']:.0f}" for r in rs)
        print(f"| {k} | {every} | {m['tps']:.1f} | {tps_ratio} | "
              f"{fmt(m['p50_ms'], 2)} | {fmt(m['p99_ms'], 2)} | {fmt(m['cpu_ms_per_mib'])} | {cpu_ratio} | "
              f"{fmt(m['rss_mib'])} ({fmt(m['hwm_mib'])}) |")
    if ref:
        print()
        for k in kinds:
            if k == "pg_receivewal":
                continue
            per_round = []
            for rnd in range(1, rounds + 1):
                a = [r for r in results if r["receiver"] == k and r["round"] == rnd]
                b = [r for r in results if r["receiver"] == "pg_receivewal" and r["round"] == rnd]
                if a and b:
                    per_round.append(f"{a[0]['tps'] / b[0]['tps']:.3f}")
            print(f"{k} / pg_receivewal TPS per round: {' '.join(per_round)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=15, help="pgbench -T seconds (15)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--builtin", default="tpcb-like")
    ap.add_argument("--receivers", default=",".join(RECEIVERS), help=f"subset of {','.join(RECEIVERS)}")
    ap.add_argument("--profile", metavar="DIR", help="perf record -g each receiver during pgbench into DIR/<receiver>.perf.data")
    ap.add_argument("--baseline-bin", metavar="PATH",
                    help="another safekeeper binary (e.g. the previous version): every safekeeper receiver "
                         "runs with it too, as RECEIVER@baseline, in the same rounds")
    ap.add_argument("--safekeeper-bin", default=os.environ.get("SAFEKEEPER_BIN", "target/release/safekeeper"))
    args = ap.parse_args()
    kinds = args.receivers.split(",")
    for k in kinds:
        if k not in RECEIVERS:
            raise SystemExit(f"unknown receiver {k!r}; known: {', '.join(RECEIVERS)}")
    if args.baseline_bin:
        BASELINE_BIN.append(args.baseline_bin)
        kinds += [k + BASELINE for k in kinds if k.startswith("safekeeper")]
    print(f"binary: {os.path.realpath(args.safekeeper_bin)}; load {os.getloadavg()[0]:.2f}; "
          f"pgbench -b {args.builtin} -s {args.scale} -c {args.clients} -j {args.jobs} -T {args.duration}; "
          f"remote on tmpfs: {TMPFS}; baseline: {args.baseline_bin or '-'}", flush=True)
    results = []
    for rnd in range(1, args.rounds + 1):
        shift = (rnd - 1) % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            r = one_run(kind, args, args.safekeeper_bin)
            r["round"] = rnd
            results.append(r)
            print(f"round {rnd} {kind:<24} tps {r['tps']:8.1f}  p50 {fmt(r['p50_ms'], 2)} ms  p99 {fmt(r['p99_ms'], 2)} ms  "
                  f"WAL {r['wal_mib']:.0f} MiB  CPU {fmt(r['cpu_ms_per_mib'])} ms/MiB  RSS {fmt(r['rss_mib'])} "
                  f"(peak {fmt(r['hwm_mib'])}) MiB  machine busy {r['machine_busy_pct']:.0f}%", flush=True)
    report(results, kinds, args.rounds)
    print(f"\nload at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Restore throughput of `safekeeper restore-wal` next to `pgbackrest archive-get` (issue 21).

The same real WAL (a PostgreSQL primary, `initdb --wal-segsize=16`, runs `pgbench -i` until it has
written enough segments) is put into moto's S3 twice: into a pgBackRest repository by pgBackRest's
own `archive-push` (zstd level 1), and into a safekeeper archive as the safekeeper writes objects
(current object format, zstd level 1: fixtures/archive.py + fixtures/objects.py). Then each tool
restores every segment, one process per segment, exactly as PostgreSQL runs a `restore_command`
(`/bin/sh -c`, working directory = a data directory, `%p` = `pg_wal/RECOVERYXLOG`, the file
kept under its name after each call as PostgreSQL keeps a restored file: fsync, rename, fsync of
`pg_wal`, its `durable_rename`, timed with the call since PostgreSQL's startup process waits for
it too), as the PostgreSQL OS user. Every restored file is compared
(sha256) with the source after each run, outside the timed loop; a mismatch aborts the benchmark.

Tools:
- `pgbackrest serial`: `pgbackrest --stanza=bench archive-get %f %p`;
- `pgbackrest async`: the same with `--archive-async --archive-get-queue-max=128MiB --process-max=4`
  and a fresh `--spool-path` per run;
- `safekeeper default`: `safekeeper restore-wal --remote URL --cluster NAME %f %p`, the README's
  command with no other flag (plus the S3 endpoint of moto);
- `safekeeper --prefetch 0`, `safekeeper --prefetch 8`: with that flag.
A `--prefetch` variant is skipped (and says so) when the binary's `restore-wal --help` has no
such flag.

Conditions: `direct`, and `+N ms/request` (`--latency-ms`, default 20): every request of both tools
goes through a proxy on 127.0.0.1 (bench/lib/latency_proxy.py) that adds the delay to each HTTP
request. pgBackRest's S3 client needs TLS, so its proxy also terminates TLS (self-signed,
`repo1-storage-verify-tls=n`); the safekeeper's proxy speaks plain HTTP to moto like its client.
In `direct` both proxies add nothing, so both tools pay the same one relay hop in each condition.

First every (condition, tool) restores `--warmup-segments` (4) segments untimed. Then the runs are
interleaved: each round runs every (condition, tool) pair, the order reversed every
other round. Prints every run, the medians, and safekeeper default / pgBackRest (serial, async)
for each condition, from the medians and per round.

On SIGTERM/SIGINT (bench/restore_bench.sh puts a hard timeout on the run) every process this
started is stopped by PID: the PostgreSQL primary, moto, the proxies (threads), the safekeeper's
prefetch workers and pgBackRest's async archive-get workers; the directory goes unless `--keep`.

Usage: bench/restore_bench.sh --vs-pgbackrest [--quick] [--segments 64] [--rounds 2] [--latency-ms 20] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "test_runner"))
sys.path.insert(0, os.path.join(HERE, "lib"))

import pgbackrest_repo  # noqa: E402
from fixtures.archive import ArchiveWriter  # noqa: E402
from fixtures.objects import encode  # noqa: E402
from fixtures.pg import PgCluster  # noqa: E402
from fixtures.restore import prefetch_workers  # noqa: E402
from fixtures.s3 import MotoServer, new_bucket, s3_env  # noqa: E402
from fixtures.utils import chown_to_pg_user  # noqa: E402
from latency_proxy import LatencyProxy, self_signed_cert  # noqa: E402
from procs import as_pg, loadavg, on_signal, pids_with_arg, stop_pids  # noqa: E402

TOOLS = ("pgbackrest serial", "pgbackrest async", "safekeeper default", "safekeeper --prefetch 0",
         "safekeeper --prefetch 8")
SK_DEFAULT = "safekeeper default"
REFERENCES = ("pgbackrest serial", "pgbackrest async")


class Condition:
    """One network condition: the endpoint each tool uses (and the proxies behind them)."""

    def __init__(self, name: str, server: MotoServer, cert: tuple[str, str], delay_s: float):
        self.name = name
        self.tls = LatencyProxy(server.port, delay_s, tls=cert)
        self.plain = LatencyProxy(server.port, delay_s)
        self.sk_endpoint = f"http://127.0.0.1:{self.plain.port}"
        self.pgbr_conf = ""  # written once the bucket and the primary exist

    def stop(self) -> None:
        self.tls.stop()
        self.plain.stop()


def accepted_tools(binary: str, tools: list[str]) -> list[str]:
    """`tools` without the safekeeper variants whose flags `restore-wal --help` does not list."""
    cp = subprocess.run([binary, "restore-wal", "--help"], capture_output=True, text=True, timeout=60)
    if cp.returncode != 0:
        raise RuntimeError(f"{binary} restore-wal --help exited {cp.returncode}: {cp.stderr}")
    kept = []
    for tool in tools:
        if tool not in TOOLS:
            raise SystemExit(f"unknown tool {tool!r}; known: {', '.join(TOOLS)}")
        flag = tool.split()[1] if tool.startswith("safekeeper --") else None
        if flag is not None and flag not in cp.stdout.split():
            print(f"skipping {tool!r}: this binary's restore-wal has no {flag}")
            continue
        kept.append(tool)
    return kept


def make_wal(workdir: str, segments: int) -> tuple[PgCluster, list[str]]:
    """A primary that has written at least `segments` complete 16 MiB segments, kept in pg_wal
    (no checkpoint recycles them); returns it and the names of the first `segments` of them."""
    pg = PgCluster(workdir, "primary").initdb(
        extra_conf="max_wal_size = 8GB\nmin_wal_size = 4GB\ncheckpoint_timeout = 1h\n",
        initdb_args=("--wal-segsize=16",))
    pg.start()
    for _ in range(20):
        complete = sorted(n for n in os.listdir(pg.pg_wal) if len(n) == 24)[:-1]
        if len(complete) >= segments:
            return pg, complete[:segments]
        # pgbench -i writes about 16 MiB of WAL per scale unit: aim a little past what is missing.
        scale = max(10, int((segments - len(complete)) * 1.2))
        pg.pgbench("-i", "-s", str(scale), "-q", timeout=900)
        pg.switch_wal()
    raise RuntimeError(f"the primary did not write {segments} segments in 20 pgbench -i runs")


def fill(pg: PgCluster, names: list[str], conf: str, writer: ArchiveWriter) -> dict:
    """Both archives from the same files; returns the sha256 of every segment."""
    pgbackrest_repo.run(conf, "stanza-create")
    digests = {}
    t0 = time.monotonic()
    for name in names:
        path = os.path.join(pg.pg_wal, name)
        pgbackrest_repo.run(conf, "archive-push", path)
        with open(path, "rb") as f:
            data = f.read()
        writer.put(name, encode(data, level=1))
        digests[name] = hashlib.sha256(data).hexdigest()
    print(f"filled both archives with {len(names)} segments in {time.monotonic() - t0:.1f} s", flush=True)
    return digests


def tool_command(tool: str, cond: Condition, writer: ArchiveWriter, binary: str, spool: str) -> tuple[list[str], dict]:
    """The restore_command of `tool` without `%f %p`, and its environment."""
    if tool.startswith("pgbackrest"):
        extra = []
        if tool == "pgbackrest async":
            extra = ["--archive-async", f"--spool-path={spool}", "--archive-get-queue-max=128MiB",
                     "--process-max=4"]
        return pgbackrest_repo.command(cond.pgbr_conf, *extra, "archive-get"), dict(os.environ)
    flags = tool.split()[1:] if tool.startswith("safekeeper --") else []
    base = [binary, "restore-wal", "--remote", writer.bucket.url, "--s3-endpoint", cond.sk_endpoint,
            "--s3-force-path-style", "--cluster", writer.cluster, *flags]
    return base, dict(os.environ, **s3_env(), RUST_LOG="warn")


def run_tool(tool: str, cond: Condition, names: list[str], work: str, writer: ArchiveWriter,
             digests: dict, binary: str, pg_data: str, verbose: bool = True) -> tuple[float, int]:
    """Restores every segment as PostgreSQL would; returns the wall time of the calls and the
    number of HTTP requests the tool sent (background workers included, until they were stopped)."""
    run_dir = tempfile.mkdtemp(prefix="run-", dir=work)
    pg_wal = os.path.join(run_dir, "pg_wal")
    spool = os.path.join(run_dir, "pgbackrest-spool")
    for d in (pg_wal, spool):
        os.makedirs(d)
    for d in (run_dir, pg_wal, spool):
        chown_to_pg_user(d)
    base, env = tool_command(tool, cond, writer, binary, spool)
    # pgBackRest insists on running in its pg1-path (PostgreSQL runs restore_command in the data
    # directory); it then gets %p as an absolute path into this run's pg_wal.
    cwd, dest = (pg_data, os.path.join(pg_wal, "RECOVERYXLOG")) if tool.startswith("pgbackrest") else (
        run_dir, os.path.join("pg_wal", "RECOVERYXLOG"))
    proxy = cond.tls if tool.startswith("pgbackrest") else cond.plain
    requests_before = proxy.requests
    started = time.monotonic()
    for name in names:
        # PostgreSQL runs restore_command through system(), i.e. `/bin/sh -c`.
        cp = subprocess.run(["/bin/sh", "-c", shlex.join([*base, name, dest])], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300, **as_pg())
        if cp.returncode != 0:
            raise RuntimeError(f"{tool}: {name} exited {cp.returncode}: {cp.stderr}")
        keep_restored_file(pg_wal, name)
    elapsed = time.monotonic() - started
    # Background workers left by this run: the safekeeper's prefetch worker, pgBackRest's async
    # archive-get process (both name this run's directory in their arguments or spool path).
    leftovers = prefetch_workers(run_dir) + pids_with_arg(spool)
    if leftovers and verbose:
        print(f"  ({tool}: stopped {len(leftovers)} background worker(s) still running after the last call)")
    stop_pids(leftovers)
    requests = proxy.requests - requests_before
    for name in names:
        with open(os.path.join(pg_wal, name), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != digests[name]:
                raise RuntimeError(f"{tool}: {name} restored with other bytes than the source")
    shutil.rmtree(run_dir, ignore_errors=True)
    return elapsed, requests


def keep_restored_file(pg_wal: str, name: str) -> None:
    """What PostgreSQL does with a file its restore_command wrote (KeepFileRestoredFromArchive:
    durable_rename of RECOVERYXLOG to the segment's name): fsync the file, rename, fsync pg_wal."""
    src = os.path.join(pg_wal, "RECOVERYXLOG")
    fd = os.open(src, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(src, os.path.join(pg_wal, name))
    dfd = os.open(pg_wal, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def report(results: dict, conditions: list[Condition]) -> None:
    print("\n| condition | tool | segments/s, every run | median |")
    print("|---|---|---|---|")
    for (cond, tool), rates in results.items():
        print(f"| {cond} | {tool} | {' / '.join(f'{x:.2f}' for x in rates)} | {statistics.median(rates):.2f} |")
    print()
    for cond in conditions:
        sk = results.get((cond.name, SK_DEFAULT))
        for ref in REFERENCES:
            theirs = results.get((cond.name, ref))
            if not sk or not theirs:
                continue
            per_round = " / ".join(f"{a / b:.2f}x" for a, b in zip(sk, theirs))
            print(f"{cond.name}: {SK_DEFAULT} / {ref} = {statistics.median(sk) / statistics.median(theirs):.2f}x "
                  f"(medians); per round {per_round}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 segments, 1 round, unless given")
    ap.add_argument("--segments", type=int, default=None, help="16 MiB segments restored per run (64)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (2)")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="delay added per request (20)")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of the tools")
    ap.add_argument("--warmup-segments", type=int, default=4,
                    help="segments each (condition, tool) restores untimed before round 1 (4; 0: none)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    args = ap.parse_args()
    if args.segments is None:
        args.segments = 8 if args.quick else 64
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    return args


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    if shutil.which("pgbackrest") is None:
        sys.exit("pgbackrest not found: install Debian's pgbackrest package (apt-get install pgbackrest)")
    binary = os.environ.get("SAFEKEEPER_BIN") or os.path.join(HERE, "..", "target", "release", "safekeeper")
    tools = accepted_tools(binary, [t.strip() for t in args.tools.split(",") if t.strip()])
    work = tempfile.mkdtemp(prefix="sk-restore-vs-pgbackrest-")
    os.chmod(work, 0o755)
    chown_to_pg_user(work)
    server, pg, conditions = None, None, []
    try:
        server = MotoServer(work)
        cert = self_signed_cert(work)
        conditions = [Condition("direct", server, cert, 0.0)]
        if args.latency_ms > 0:
            conditions.append(Condition(f"+{args.latency_ms:g} ms/request", server, cert, args.latency_ms / 1000))
        pg, names = make_wal(work, args.segments)
        writer = ArchiveWriter(bucket=new_bucket(server))
        for i, cond in enumerate(conditions):
            cond.pgbr_conf = pgbackrest_repo.write_conf(os.path.join(work, f"pgbackrest-{i}.conf"), work,
                                                        writer.bucket.bucket, cond.tls.port, pg)
        digests = fill(pg, names, conditions[0].pgbr_conf, writer)
        pg.stop()
        # The primary's data files and WAL (~2 GiB) are still being written back: flush them now
        # rather than under the first runs.
        t0 = time.monotonic()
        os.sync()
        print(f"sync after filling: {time.monotonic() - t0:.1f} s")
        print(f"binary: {os.path.realpath(binary)}; {pgbackrest_repo.version()}; load {loadavg()}")
        print(f"{len(names)} segments of 16 MiB, {args.rounds} rounds, one process per segment\n", flush=True)
        pairs = [(cond, tool) for cond in conditions for tool in tools]
        results: dict[tuple[str, str], list[float]] = {(c.name, t): [] for c, t in pairs}
        # Untimed warm-up: the first timed run of the bench was ~25% slower than later runs of the
        # same tool (cold moto code paths, binaries, page cache), whichever tool came first.
        warm = names[:args.warmup_segments]
        if warm:
            t0 = time.monotonic()
            for cond, tool in pairs:
                run_tool(tool, cond, warm, work, writer, digests, binary, pg.datadir, verbose=False)
            print(f"warm-up: every (condition, tool) restored {len(warm)} segments, untimed "
                  f"({time.monotonic() - t0:.1f} s)\n", flush=True)
        for r in range(args.rounds):
            for cond, tool in (pairs if r % 2 == 0 else reversed(pairs)):
                elapsed, requests = run_tool(tool, cond, names, work, writer, digests, binary, pg.datadir)
                rate = len(names) / elapsed
                results[(cond.name, tool)].append(rate)
                print(f"round {r + 1} {cond.name:>18} {tool:>24}: {elapsed:6.2f} s = {rate:6.2f} segments/s"
                      f" ({requests / len(names):.1f} requests/segment)", flush=True)
        report(results, conditions)
        print(f"\nload at the end: {loadavg()}")
    finally:
        for cond in conditions:
            cond.stop()
        if pg is not None:
            pg.stop("immediate")
        if server is not None:
            server.stop()
        # Whatever is left that names this run's directory (prefetch or archive-get workers of an
        # interrupted run).
        stop_pids(pids_with_arg(work))
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as e:
        sys.exit(f"interrupted ({e or 'SIGINT'}): every process it started was stopped")

#!/usr/bin/env python3
"""Restore throughput of `safekeeper restore-wal` next to `pgbackrest archive-get` (issue 21).

The same real WAL (a PostgreSQL primary runs `pgbench -i` until it has written enough segments) is
put into moto's S3 twice: into a pgBackRest repository by pgBackRest's own `archive-push`
(zstd level 1), and into a safekeeper archive as the safekeeper writes objects (object format v1,
zstd level 1, fixtures/objects.py). Then each tool restores every segment, one process per
segment, exactly as PostgreSQL runs a `restore_command` (working directory = a data directory,
`%p` = `pg_wal/RECOVERYXLOG`, the file renamed to its name after each call, as PostgreSQL does),
as the PostgreSQL OS user. Every restored file is compared (sha256) with the source afterwards,
outside the timed loop; a mismatch aborts the benchmark.

Tools:
- `pgbackrest serial`: `pgbackrest --stanza=bench archive-get %f %p`;
- `pgbackrest async`: the same with `--archive-async --archive-get-queue-max=128MiB --process-max=4`;
- `safekeeper default`: `safekeeper restore-wal ... %f %p`, the README's command (prefetch on);
- `safekeeper --prefetch 0`: no prefetch;
- `safekeeper --prefetch 8`: a fixed look-ahead of 8 segments.
The `--prefetch` variants are skipped (and say so) when the binary's `restore-wal --help` has no
such flag.

Conditions: `direct`, and `+N ms/request` (`--latency-ms`, default 20): every request of both tools
goes through a proxy on 127.0.0.1 (bench/lib/latency_proxy.py) that adds the delay to each HTTP
request. pgBackRest's S3 client needs TLS, so its proxy also terminates TLS (self-signed,
`repo1-storage-verify-tls=n`); the safekeeper's proxy speaks plain HTTP to moto like its client.

Runs are interleaved: each round runs every (condition, tool) pair, the tool order flipping every
round. Prints every run, the medians, and safekeeper default / pgBackRest for each condition.

On SIGTERM/SIGINT (bench/restore_bench.sh puts a hard timeout on the run) every process this
started is stopped by PID: the PostgreSQL primary, moto, the proxies (threads), the safekeeper's
prefetch workers and pgBackRest's async archive-get workers; the directory goes unless `--keep`.

Usage: bench/restore_bench.sh --vs-pgbackrest [--quick] [--segments 64] [--rounds 2] [--latency-ms 20] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import os
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

from fixtures.archive import ArchiveWriter  # noqa: E402
from fixtures.objects import encode  # noqa: E402
from fixtures.pg import PgCluster  # noqa: E402
from fixtures.restore import prefetch_workers  # noqa: E402
from fixtures.s3 import ACCESS_KEY, REGION, SECRET_KEY, MotoServer, new_bucket, s3_env  # noqa: E402
from fixtures.utils import chown_to_pg_user, pg_os_user  # noqa: E402
from latency_proxy import LatencyProxy, self_signed_cert  # noqa: E402

STANZA = "bench"
TOOLS = ("pgbackrest serial", "pgbackrest async", "safekeeper default", "safekeeper --prefetch 0",
         "safekeeper --prefetch 8")


def on_signal(signum, _frame) -> None:
    """SIGTERM (the .sh's timeout) unwinds like Ctrl-C, so every `finally` stops what it started."""
    raise KeyboardInterrupt(f"signal {signum}")


def pids_with_arg(needle: str) -> list[int]:
    """PIDs of processes one of whose arguments contains `needle` (a path unique to this run)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if any(needle.encode() in a for a in args):
            found.append(int(entry))
    return found


def stop_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if os.path.exists(f"/proc/{p}") and not zombie(p)]
        time.sleep(0.05)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def accepted_tools(binary: str, tools: list[str]) -> list[str]:
    """`tools` without the safekeeper variants whose flags `restore-wal --help` does not list."""
    cp = subprocess.run([binary, "restore-wal", "--help"], capture_output=True, text=True, timeout=60)
    kept = []
    for tool in tools:
        flag = tool.split()[1] if tool.startswith("safekeeper --") else None
        if flag is not None and flag not in cp.stdout:
            print(f"skipping {tool!r}: this binary's restore-wal has no {flag}")
            continue
        kept.append(tool)
    return kept


def as_pg(**kw) -> dict:
    """subprocess arguments that run a command as the PostgreSQL OS user when we are root."""
    user = pg_os_user()
    return dict(kw, user=user.pw_uid, group=user.pw_gid) if user is not None else kw


def make_wal(workdir: str, segments: int) -> tuple[PgCluster, list[str]]:
    """A primary that has written at least `segments` complete 16 MiB segments, kept in pg_wal
    (no checkpoint recycles them); returns it and the names of the first `segments` of them."""
    pg = PgCluster(workdir, "primary").initdb(
        extra_conf="max_wal_size = 8GB\nmin_wal_size = 4GB\ncheckpoint_timeout = 1h\n")
    pg.start()
    scale = 10
    while True:
        complete = sorted(n for n in os.listdir(pg.pg_wal) if len(n) == 24)[:-1]
        if len(complete) >= segments:
            break
        missing = segments - len(complete)
        # pgbench -i writes about 16 MiB of WAL per scale unit: aim a little past what is missing.
        scale = max(10, int(missing * 1.2))
        pg.pgbench("-i", "-s", str(scale), "-q", timeout=900)
        pg.switch_wal()
    return pg, complete[:segments]


def pgbackrest_conf(work: str, bucket: str, tls_port: int, pg: PgCluster) -> str:
    path = os.path.join(work, "pgbackrest.conf")
    with open(path, "w") as f:
        f.write(f"""[global]
repo1-type=s3
repo1-path=/pgbackrest
repo1-s3-bucket={bucket}
repo1-s3-endpoint=127.0.0.1
repo1-storage-port={tls_port}
repo1-s3-region={REGION}
repo1-s3-key={ACCESS_KEY}
repo1-s3-key-secret={SECRET_KEY}
repo1-s3-uri-style=path
repo1-storage-verify-tls=n
compress-type=zst
compress-level=1
log-level-console=warn
log-level-stderr=warn
log-level-file=off
lock-path={work}/pgbackrest-lock

[{STANZA}]
pg1-path={pg.datadir}
pg1-port={pg.port}
pg1-socket-path={pg.sockdir}
""")
    chown_to_pg_user(path)
    return path


def pgbackrest(conf: str, *args: str, cwd: str | None = None, timeout: float = 120) -> None:
    cp = subprocess.run(["pgbackrest", f"--config={conf}", f"--stanza={STANZA}", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=timeout, **as_pg())
    if cp.returncode != 0:
        raise RuntimeError(f"pgbackrest {' '.join(args)} exited {cp.returncode}: {cp.stderr}{cp.stdout}")


def fill(work: str, pg: PgCluster, names: list[str], server: MotoServer, tls_port: int) -> tuple[str, ArchiveWriter, dict]:
    """Both archives from the same files; returns the pgBackRest config, the safekeeper archive
    and the sha256 of every segment."""
    bucket = new_bucket(server)
    conf = pgbackrest_conf(work, bucket.bucket, tls_port, pg)
    for d in ("pgbackrest-lock",):
        os.makedirs(os.path.join(work, d), exist_ok=True)
        chown_to_pg_user(os.path.join(work, d))
    pgbackrest(conf, "stanza-create")
    writer = ArchiveWriter(bucket=bucket)
    digests = {}
    t0 = time.monotonic()
    for name in names:
        path = os.path.join(pg.pg_wal, name)
        pgbackrest(conf, "archive-push", path)
        with open(path, "rb") as f:
            data = f.read()
        writer.put(name, encode(data, level=1))
        digests[name] = hashlib.sha256(data).hexdigest()
    print(f"filled both archives with {len(names)} segments in {time.monotonic() - t0:.1f} s", flush=True)
    return conf, writer, digests


def run_tool(tool: str, names: list[str], work: str, conf: str, writer: ArchiveWriter, sk_endpoint: str,
             digests: dict, binary: str, pg_data: str) -> float:
    """Restores every segment as PostgreSQL would; returns the wall time of the calls."""
    run_dir = tempfile.mkdtemp(prefix="run-", dir=work)
    pg_wal = os.path.join(run_dir, "pg_wal")
    spool = os.path.join(run_dir, "pgbackrest-spool")
    for d in (pg_wal, spool):
        os.makedirs(d)
    for d in (run_dir, pg_wal, spool):
        chown_to_pg_user(d)
    if tool.startswith("pgbackrest"):
        base = ["pgbackrest", f"--config={conf}", f"--stanza={STANZA}"]
        if tool == "pgbackrest async":
            base += ["--archive-async", f"--spool-path={spool}", "--archive-get-queue-max=128MiB", "--process-max=4"]
        base.append("archive-get")
        env = dict(os.environ)
    else:
        sk_args = ["--remote", writer.bucket.url, "--s3-endpoint", sk_endpoint, "--s3-force-path-style",
                   "--cluster", writer.cluster]
        base = [binary, "restore-wal", *sk_args]
        if tool.startswith("safekeeper --"):
            base += tool.split()[1:]
        env = dict(os.environ, **s3_env(), RUST_LOG="warn")
    # pgBackRest insists on running in its pg1-path (PostgreSQL runs restore_command in the data
    # directory); it then gets %p as an absolute path into this run's pg_wal.
    cwd, dest = (pg_data, os.path.join(pg_wal, "RECOVERYXLOG")) if tool.startswith("pgbackrest") else (
        run_dir, os.path.join("pg_wal", "RECOVERYXLOG"))
    started = time.monotonic()
    for name in names:
        cp = subprocess.run([*base, name, dest], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300, **as_pg())
        if cp.returncode != 0:
            raise RuntimeError(f"{tool}: {name} exited {cp.returncode}: {cp.stderr}")
        os.rename(os.path.join(pg_wal, "RECOVERYXLOG"), os.path.join(pg_wal, name))
    elapsed = time.monotonic() - started
    # Background workers left by this run: the safekeeper's prefetch worker, pgBackRest's async
    # archive-get process (both name this run's directory in their arguments or spool path).
    leftovers = prefetch_workers(run_dir) + pids_with_arg(spool)
    if leftovers:
        print(f"  ({tool}: stopped {len(leftovers)} background worker(s) still running after the last call)")
    stop_pids(leftovers)
    for name in names:
        with open(os.path.join(pg_wal, name), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != digests[name]:
                raise RuntimeError(f"{tool}: {name} restored with other bytes than the source")
    shutil.rmtree(run_dir, ignore_errors=True)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 segments, 1 round, unless given")
    ap.add_argument("--segments", type=int, default=None, help="16 MiB segments restored per run (64)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (2)")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.segments is None:
        args.segments = 8 if args.quick else 64
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    signal.signal(signal.SIGTERM, on_signal)
    if shutil.which("pgbackrest") is None:
        sys.exit("pgbackrest not found: install Debian's pgbackrest package (apt-get install pgbackrest)")
    binary = os.environ.get("SAFEKEEPER_BIN") or os.path.join(HERE, "..", "target", "release", "safekeeper")
    tools = accepted_tools(binary, [t.strip() for t in args.tools.split(",") if t.strip()])
    work = tempfile.mkdtemp(prefix="sk-restore-vs-pgbackrest-")
    os.chmod(work, 0o755)
    chown_to_pg_user(work)
    server, pg, proxies = None, None, []
    try:
        server = MotoServer(work)
        cert = self_signed_cert(work)
        conditions = [("direct", 0.0), (f"+{args.latency_ms:g} ms/request", args.latency_ms / 1000)]
        for _, delay in conditions:
            proxies.append((LatencyProxy(server.port, delay, tls=cert), LatencyProxy(server.port, delay)))
        pg, names = make_wal(work, args.segments)
        conf, writer, digests = fill(work, pg, names, server, proxies[0][0].port)
        pg.stop()
        print(f"binary: {os.path.realpath(binary)}; pgbackrest: "
              f"{subprocess.run(['pgbackrest', 'version'], capture_output=True, text=True).stdout.strip()}")
        print(f"{len(names)} segments of 16 MiB, {args.rounds} rounds, one process per segment\n")
        results: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            order = tools if r % 2 == 0 else list(reversed(tools))
            for (cond, _), (tls_proxy, plain_proxy) in zip(conditions, proxies):
                # pgBackRest reads its repository through this condition's TLS proxy.
                conf_c = conf + f".{tls_proxy.port}"
                with open(conf) as src, open(conf_c, "w") as dst:
                    dst.write(src.read().replace(f"repo1-storage-port={proxies[0][0].port}",
                                                 f"repo1-storage-port={tls_proxy.port}"))
                chown_to_pg_user(conf_c)
                for tool in order:
                    elapsed = run_tool(tool, names, work, conf_c, writer,
                                       f"http://127.0.0.1:{plain_proxy.port}", digests, binary, pg.datadir)
                    rate = len(names) / elapsed
                    results.setdefault((cond, tool), []).append(rate)
                    print(f"round {r + 1} {cond:>18} {tool:>24}: {elapsed:6.2f} s = {rate:6.2f} segments/s", flush=True)
        print("\n| condition | tool | segments/s, every run | median |")
        print("|---|---|---|---|")
        for (cond, tool), rates in results.items():
            print(f"| {cond} | {tool} | {' / '.join(f'{x:.2f}' for x in rates)} | {statistics.median(rates):.2f} |")
        print()
        for cond, _ in conditions:
            sk = results.get((cond, "safekeeper default"))
            for ref in ("pgbackrest serial", "pgbackrest async"):
                theirs = results.get((cond, ref))
                if sk and theirs:
                    print(f"{cond}: safekeeper default / {ref} = "
                          f"{statistics.median(sk) / statistics.median(theirs):.2f}x")
    finally:
        for pair in proxies:
            for p in pair:
                p.stop()
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

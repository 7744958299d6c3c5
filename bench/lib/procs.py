"""Process helpers of the restore benchmarks: run a command as the PostgreSQL OS user, find the
background processes a tool left behind (they name this run's unique directory in their
arguments), and stop processes by PID (SIGTERM, then SIGKILL after 10 s).

Every PID stopped here belongs to a process this benchmark started or that a tool it started
forked (pgBackRest's async archive-get worker, the safekeeper's prefetch worker); the directory
that identifies them is a fresh `tempfile.mkdtemp` of this run.
"""

from __future__ import annotations

import os
import signal
import time

from fixtures.utils import pg_os_user


def on_signal(signum, _frame) -> None:
    """SIGTERM (the .sh's timeout) unwinds like Ctrl-C, so every `finally` stops what it started."""
    raise KeyboardInterrupt(f"signal {signum}")


def as_pg(**kw) -> dict:
    """subprocess arguments that run a command as the PostgreSQL OS user when we are root."""
    user = pg_os_user()
    return dict(kw, user=user.pw_uid, group=user.pw_gid) if user is not None else kw


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


def zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def stop_pids(pids: list[int]) -> None:
    """SIGTERM each PID, wait up to 10 s for all of them, SIGKILL those still alive."""
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


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])

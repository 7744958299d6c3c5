"""`safekeeper demo`: the newcomer's first command.

What a newcomer (and the README) relies on:
- it succeeds end to end and the recovered row count equals the committed count;
- it writes nothing outside its directory (./.demo) and leaves no process running;
- --keep leaves an archive that the recovery tooling verifies clean, and a later run reuses the
  directory;
- without PostgreSQL binaries it says in one line what to do, and it never deletes a directory it
  did not make.
"""

from __future__ import annotations

import os
import re
import subprocess

from fixtures.safekeeper import safekeeper_bin

COUNTS = re.compile(r"^committed (\d+), recovered (\d+): every committed row came back", re.M)


def run_demo(cwd: str, *args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [safekeeper_bin(), "demo", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def listing(root: str) -> dict[str, tuple]:
    """Every path under root with its mode, and size and mtime for files (a directory's mtime
    changes when ./.demo comes and goes inside it)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            is_dir = os.path.isdir(path) and not os.path.islink(path)
            out[os.path.relpath(path, root)] = (st.st_mode,) if is_dir else (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain `text` (e.g. a demo directory)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def make_cwd(workdir: str) -> tuple[str, str]:
    """outer/ holds a bystander file and the demo's working directory cwd/."""
    outer = os.path.join(workdir, "outer")
    cwd = os.path.join(outer, "cwd")
    os.makedirs(cwd)
    for d in (outer, cwd):
        os.chmod(d, 0o755)
    with open(os.path.join(outer, "bystander.txt"), "w") as f:
        f.write("not the demo's\n")
    return outer, cwd


def test_demo_recovers_every_committed_row_and_touches_nothing_else(workdir):
    outer, cwd = make_cwd(workdir)
    before = listing(outer)
    cp = run_demo(cwd, "--seconds", "2")
    assert cp.returncode == 0, f"stdout:\n{cp.stdout}\nstderr:\n{cp.stderr}"
    m = COUNTS.search(cp.stdout)
    assert m, cp.stdout
    committed, recovered = int(m.group(1)), int(m.group(2))
    assert committed == recovered and committed > 0, cp.stdout
    # What a newcomer reads: the steps, the LSNs, the partial that holds the last commit.
    for needle in ("[1/7]", "sync_state = sync", "primary flushed WAL up to",
                   ".partial  partial", "<- holds the last commit", "kill -9", "restore_command = '"):
        assert needle in cp.stdout, f"{needle!r} missing from:\n{cp.stdout}"
    # Cleaned up, nothing written outside ./.demo, nothing left running.
    assert listing(outer) == before
    assert processes_mentioning(os.path.join(cwd, ".demo")) == []


def test_demo_keep_leaves_a_verifiable_archive_and_the_next_run_reuses_it(workdir):
    _, cwd = make_cwd(workdir)
    demo = os.path.join(cwd, ".demo")
    cp = run_demo(cwd, "--keep", "--rows", "300")
    assert cp.returncode == 0, f"stdout:\n{cp.stdout}\nstderr:\n{cp.stderr}"
    assert "committed 300, recovered 300" in cp.stdout, cp.stdout
    assert "Remove it with: rm -rf .demo" in cp.stdout, cp.stdout
    assert sorted(os.listdir(cwd)) == [".demo"]

    wal = sorted(os.listdir(os.path.join(demo, "remote", "main", "wal")))
    assert any(re.fullmatch(r"[0-9A-F]{24}", n) for n in wal), wal
    assert any(n.endswith(".partial") for n in wal), wal
    assert os.path.exists(os.path.join(demo, "safekeeper", "main", "safekeeper.control"))
    assert os.path.exists(os.path.join(demo, "new-primary", "data", "PG_VERSION"))
    assert not os.path.exists(os.path.join(demo, "primary", "data")), "the destroyed primary is back"
    assert processes_mentioning(demo) == []
    remote = f"file://{demo}/remote"
    v = subprocess.run([safekeeper_bin(), "remote", "verify", "--remote", remote], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stdout + v.stderr

    # A later run replaces the directory an earlier demo made, and removes it at the end.
    cp = run_demo(cwd, "--rows", "50")
    assert cp.returncode == 0, f"stdout:\n{cp.stdout}\nstderr:\n{cp.stderr}"
    assert "committed 50, recovered 50" in cp.stdout, cp.stdout
    assert os.listdir(cwd) == []


def test_demo_says_what_is_missing_and_spares_foreign_directories(workdir):
    _, cwd = make_cwd(workdir)
    cp = run_demo(cwd, env={"PG_BINDIR": "/nonexistent/bin"}, timeout=30)
    assert cp.returncode != 0
    lines = [line for line in cp.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "PG_BINDIR=/nonexistent/bin" in lines[0] and "initdb" in lines[0], cp.stderr
    assert os.listdir(cwd) == []

    # A non-empty directory the demo did not make is never deleted.
    mine = os.path.join(cwd, "mine")
    os.makedirs(mine)
    with open(os.path.join(mine, "notes.txt"), "w") as f:
        f.write("precious\n")
    cp = run_demo(cwd, "--dir", "mine", timeout=60)
    assert cp.returncode != 0
    assert "was not made by `safekeeper demo`" in cp.stderr, cp.stderr
    assert os.listdir(mine) == ["notes.txt"]

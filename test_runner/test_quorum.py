"""Several safekeepers in an `ANY n` quorum, then everything but the archive is lost.

What a user fears, and what each test shows does not happen:
- recovery that takes the partial of a safekeeper which started a new term and died, and drops the
  commits another safekeeper acknowledged afterwards in the same segment (a term is local to one
  safekeeper; restore must choose by the WAL held);
- safekeepers killed and restarted at arbitrary moments under load leaving an archive from which
  some acknowledged commit cannot be recovered;
- an operator who cannot see which safekeeper holds how much of the newest segments.

Both run once per remote backend (file:// and S3 on moto): the choice happens in what the listing
and the GETs return, which the backends implement separately.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time

import psycopg

from fixtures.pg import PgCluster
from fixtures.restore import recover, restore_wal_command, take_base_backup
from fixtures.safekeeper import Safekeeper, safekeeper_cli
from fixtures.utils import wait_until
from fixtures.wal import format_lsn, parse_lsn, parse_partial_name, segment_name, segno_of

PARTIAL_INTERVAL = "200ms"


class Writer:
    """Commits one row per id on its own connection (autocommit), in a thread, until stopped;
    `acked` holds the ids whose COMMIT returned: the commits a user was told are durable."""

    def __init__(self, pg: PgCluster, first_id: int = 0):
        self.pg = pg
        self.next_id = first_id
        self.acked: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.pg.connstr(), autocommit=True, connect_timeout=10) as conn:
                while not self._stop.is_set():
                    conn.execute("INSERT INTO ids VALUES (%s)", (self.next_id,))
                    self.acked.append(self.next_id)
                    self.next_id += 1
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def start(self) -> "Writer":
        self._thread.start()
        return self

    def wait_for(self, n: int, timeout: float = 60) -> None:
        """Waits until `n` more commits were acknowledged."""
        target = len(self.acked) + n
        wait_until(f"{n} more acknowledged commits", lambda: self.error is None and len(self.acked) >= target or self.error,
                   timeout=timeout)
        assert self.error is None, f"the writer failed: {self.error!r}"

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the writer did not stop (a commit hangs?)"
        assert self.error is None, f"the writer failed: {self.error!r}"
        return self.acked


def insert_ids(pg: PgCluster, ids: range) -> list[int]:
    """Commits one row per id, in the foreground; returns the acknowledged ids."""
    acked = []
    with psycopg.connect(pg.connstr(), autocommit=True, connect_timeout=10) as conn:
        for i in ids:
            conn.execute("INSERT INTO ids VALUES (%s)", (i,))
            acked.append(i)
    return acked


def ls_json(remote) -> dict:
    cp = safekeeper_cli("remote", "ls", *remote.args(), "--cluster", "main", "--json", env=remote.env())
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def quorum_row(doc: dict, segment: str) -> dict | None:
    for t in doc["timelines"]:
        for row in t["quorum"]:
            if row["segment"] == segment:
                return row
    return None


def upload_partial_reaching(sk: Safekeeper, lsn: int, timeout: float = 60) -> str:
    """Asks `sk` for a partial upload until the one it answers with reaches `lsn` (an answer may
    name an upload that was already in flight, or the safekeeper may not have committed that far
    yet); returns its name."""
    api = sk.api()

    def upload():
        name = api.ok("POST", "/v1/clusters/main/partial_upload")["object_name"]
        return name and parse_partial_name(name).commit_lsn >= lsn and name
    return wait_until(f"{sk.name}'s partial reaching {format_lsn(lsn)}", upload, timeout=timeout, interval=0.3)


def lose_everything(primary: PgCluster, sks: list[Safekeeper]) -> None:
    """The primary and every safekeeper die and their disks are gone: only the remote is left."""
    primary.kill9()
    for sk in sks:
        if sk.running():
            sk.kill9()
        shutil.rmtree(sk.data_dir, ignore_errors=True)
    shutil.rmtree(primary.datadir, ignore_errors=True)


def recovered_ids(workdir: str, backup: str, remote) -> tuple[set[int], str]:
    """Recovers a server from the base backup through restore-wal on `remote`; its ids and log."""
    cmd = restore_wal_command(remote.args() + ["--cluster", "main"], remote.env())
    restored = recover(workdir, "restored", backup, cmd)
    try:
        have = {r[0] for r in restored.sql("SELECT id FROM ids")}
    finally:
        restored.stop("immediate")
    with open(restored.logfile, errors="replace") as f:
        return have, f.read()


def start_quorum(primary: PgCluster, sks: list[Safekeeper], remote, start_standby, n: int) -> None:
    for sk in sks:
        start_standby(sk, primary, sync=False, remote=remote, partial_interval=PARTIAL_INTERVAL)
    names = ", ".join(sk.application_name for sk in sks)
    primary.set_sync_standby(f"ANY {n} ({names})")
    for sk in sks:
        primary.wait_sync_state(sk.application_name, "quorum")


def test_any1_term_bumped_safekeeper_does_not_hide_later_commits(primary, make_safekeeper, workdir, start_standby, remote):
    """The failure of issue 15: sk5 starts term 2, uploads a partial of the current segment and is
    killed; sk6 acknowledges on in term 1 in the same segment. Primary and both safekeepers lost:
    the base backup plus the remote hold every acknowledged commit."""
    sk5, sk6 = make_safekeeper(5), make_safekeeper(6)
    primary.sql("CREATE TABLE ids (id int PRIMARY KEY)")
    backup = take_base_backup(primary, os.path.join(workdir, "basebackup"))
    start_quorum(primary, [sk5, sk6], remote, start_standby, 1)
    acked = insert_ids(primary, range(0, 300))
    # A fresh segment, so that everything from here on is versions of one segment.
    primary.switch_wal()
    acked += insert_ids(primary, range(300, 600))
    tail = segment_name(1, segno_of(primary.current_lsn()))

    api5 = sk5.api()
    bumped = api5.ok("POST", "/v1/clusters/main/term_bump")
    assert bumped["term"] == 2, bumped
    acked += insert_ids(primary, range(600, 800))
    sk5_partial = upload_partial_reaching(sk5, parse_lsn(bumped["start_lsn"]) + 1)
    p5 = parse_partial_name(sk5_partial)
    assert (p5.segment, p5.term, p5.sk_id) == (tail, 2, 5), sk5_partial
    sk5.kill9()

    # sk6 alone acknowledges from here on, still in term 1, in the same segment.
    acked += insert_ids(primary, range(800, 3000))
    end = primary.current_lsn()
    assert segment_name(1, segno_of(end)) == tail, "the commits after the kill stay in sk5's segment"
    sk6_partial = upload_partial_reaching(sk6, end)
    p6 = parse_partial_name(sk6_partial)
    assert (p6.segment, p6.term, p6.sk_id) == (tail, 1, 6) and p6.commit_lsn >= end > p5.commit_lsn, sk6_partial
    lose_everything(primary, [sk5, sk6])

    # The quorum view shows both, the most WAL first; sk5's higher term does not make it best.
    row = quorum_row(ls_json(remote), tail)
    assert row is not None and not row["full_segment"], row
    assert [(s["sk_id"], s["term"], s["best"]) for s in row["safekeepers"]] == [(6, 1, True), (5, 2, False)], row
    cp = safekeeper_cli("remote", "verify", *remote.args(), "--cluster", "main", env=remote.env())
    assert cp.returncode == 0, cp.stdout + cp.stderr  # the two partials agree on their common bytes

    have, log = recovered_ids(workdir, backup, remote)
    missing = sorted(set(acked) - have)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged commits lost, e.g. {missing[:5]}"
    assert sk6_partial in log, "restore-wal served sk6's partial"


def test_any2_seeded_kills_restarts_and_a_term_bump_lose_no_commit(primary, make_safekeeper, workdir, start_standby, remote):
    """Three safekeepers, `ANY 2`, a continuous writer; each safekeeper is killed (SIGKILL or
    SIGTERM) and restarted at a seeded moment, one bumps its term, one WAL switch: after losing
    the primary and all three, every acknowledged commit is recovered from the remote alone, and
    `remote ls` shows each safekeeper's share of the newest segment."""
    seed = int(os.environ.get("SK_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (rerun with SK_TEST_SEED={seed})")
    rng = random.Random(seed)
    sks = [make_safekeeper(i) for i in (1, 2, 3)]
    primary.sql("CREATE TABLE ids (id int PRIMARY KEY)")
    backup = take_base_backup(primary, os.path.join(workdir, "basebackup"))
    start_quorum(primary, sks, remote, start_standby, 2)

    order = rng.sample(sks, len(sks))
    bump_sk, bump_step = rng.choice(sks), rng.randrange(len(sks))
    switch_step = rng.randrange(len(sks))
    writer = Writer(primary).start()
    try:
        for step, victim in enumerate(order):
            writer.wait_for(rng.randrange(50, 400))
            if step == bump_step:
                bumped = bump_sk.api().ok("POST", "/v1/clusters/main/term_bump")
                print(f"step {step}: {bump_sk.name} started term {bumped['term']} at {bumped['start_lsn']}")
            if step == switch_step:
                primary.switch_wal()
            how = rng.choice(["kill9", "stop"])
            print(f"step {step}: {how} {victim.name}")
            if how == "kill9":
                victim.kill9()
            else:
                victim.stop()
            writer.wait_for(rng.randrange(100, 600))  # acknowledged by the other two
            time.sleep(rng.uniform(0, 0.5))
            start_standby(victim, primary, sync=False, remote=remote, partial_interval=PARTIAL_INTERVAL)
            primary.wait_sync_state(victim.application_name, "quorum", timeout=60)
        writer.wait_for(200)
    finally:
        acked = writer.stop()
    end = primary.current_lsn()
    tail = segment_name(1, segno_of(end))

    # The newest segment: the best partial reaches the last commit, and every safekeeper (each one
    # restarted since) has uploaded its own partial of it.
    def quorum_complete():
        row = quorum_row(ls_json(remote), tail)
        complete = row and parse_lsn(row["safekeepers"][0]["commit_lsn"]) >= end
        return complete and {s["sk_id"] for s in row["safekeepers"]} == {1, 2, 3} and row
    row = wait_until("the quorum view of the newest segment", quorum_complete, timeout=60)
    print("quorum view:", [(s["sk_id"], s["term"], s["commit_lsn"]) for s in row["safekeepers"]])
    terms = {s["sk_id"]: s["term"] for s in row["safekeepers"]}
    assert terms[bump_sk.id] >= 2, f"{bump_sk.name} bumped its term: {row}"
    cp = safekeeper_cli("remote", "ls", *remote.args(), "--cluster", "main", env=remote.env())
    assert cp.returncode == 0, cp.stderr
    line = next((x for x in cp.stdout.splitlines() if x.strip().startswith(tail + "  sk")), None)
    assert line is not None and all(f"sk{i} up to" in line for i in (1, 2, 3)), cp.stdout
    lose_everything(primary, sks)

    have, _log = recovered_ids(workdir, backup, remote)
    missing = sorted(set(acked) - have)
    assert len(acked) > 1000
    assert not missing, f"seed {seed}: {len(missing)} of {len(acked)} acknowledged commits lost, e.g. {missing[:5]}"


"""The misconfigurations a newcomer hits each give one clear line saying what to do.

Every case runs the real `safekeeper run` against a real server (or storage) that is set up
wrong, and asserts the one line of advice in its output.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from fixtures.pg import PgCluster
from fixtures.s3 import S3Bucket
from fixtures.safekeeper import Safekeeper, safekeeper_bin
from fixtures.utils import free_port, is_root, pg_os_user


def advice_line(sk: Safekeeper, needle: str, timeout: float = 30) -> str:
    sk.wait_log(needle, timeout=timeout)
    line = next(l for l in sk.log().splitlines() if needle in l)
    print(line)
    return line


def test_unreachable_primary(safekeeper: Safekeeper):
    safekeeper.start(f"host=127.0.0.1 port={free_port()} user=postgres")
    advice_line(safekeeper, "nothing listens at the primary's address: is PostgreSQL running there")
    assert safekeeper.running()  # it keeps retrying: the primary may come up later


def test_wrong_password(primary: PgCluster, safekeeper: Safekeeper):
    primary.sql("SET password_encryption = 'scram-sha-256'")
    primary.sql("CREATE ROLE rep LOGIN REPLICATION PASSWORD 'right'")
    with open(os.path.join(primary.datadir, "pg_hba.conf"), "w") as f:
        f.write("local all all trust\nhost replication rep 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n")
    primary.sql("SELECT pg_reload_conf()")
    safekeeper.start(f"host=127.0.0.1 port={primary.port} user=rep password=wrong")
    assert safekeeper.wait_exit(timeout=30) != 0
    line = advice_line(safekeeper, "error: cluster main: wrong password for the primary")
    assert "28P01" in line and "PGPASSWORD" in line


def test_primary_without_replication(make_pg, safekeeper: Safekeeper):
    pg = make_pg("minimal", extra_conf="wal_level = minimal\nmax_wal_senders = 0\n")
    safekeeper.start(pg.connstr())
    advice_line(safekeeper, "set wal_level = replica and max_wal_senders > 0")


def test_replication_slots_exhausted(make_pg, safekeeper: Safekeeper):
    pg = make_pg("fewslots", extra_conf="max_replication_slots = 1\n")
    pg.sql("SELECT pg_create_physical_replication_slot('someone_else')")
    safekeeper.start(pg.connstr())
    advice_line(safekeeper, "all replication slots of the primary are in use: raise max_replication_slots")


def test_missing_bucket(primary: PgCluster, safekeeper: Safekeeper, moto_server):
    missing = S3Bucket(moto_server, "no-such-bucket")  # never created on the server
    safekeeper.start(primary.connstr(), extra=missing.args(), env=missing.env())
    assert safekeeper.wait_exit(timeout=60) != 0
    advice_line(safekeeper, "error: the bucket in --remote does not exist: create it or fix --remote")


def test_data_dir_not_writable(primary: PgCluster, workdir):
    data_dir = os.path.join(workdir, "readonly")
    os.makedirs(data_dir)
    os.chmod(data_dir, 0o555)
    cmd = [safekeeper_bin(), "run", "--data-dir", data_dir, "--http-addr", f"127.0.0.1:{free_port()}", "--primary", primary.connstr()]
    if is_root():
        # root may write anywhere: run as the unprivileged user, for whom the directory is read-only.
        user = pg_os_user()
        if not os.access(safekeeper_bin(), os.X_OK):
            pytest.skip("binary not executable by the unprivileged user")
        cmd = ["runuser", "-u", user.pw_name, "--"] + cmd
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert cp.returncode != 0
    line = next(l for l in cp.stderr.splitlines() if l.startswith("error:"))
    print(line)
    assert "no permission: run as a user that may write the data directory, or pass another --data-dir" in line

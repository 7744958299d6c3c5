"""pytest fixtures: a scratch directory PostgreSQL can use, primaries, safekeepers, and
`start_standby` (fixtures/standby.py) to make a safekeeper the synchronous standby of a primary.

Everything a test starts is registered here and stopped by PID at teardown, even on failure; the
logs of failed tests are printed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fixtures.pg import PgCluster  # noqa: E402
from fixtures.remote import LocalRemote  # noqa: E402
from fixtures.s3 import MotoServer, S3Bucket, new_bucket  # noqa: E402
from fixtures.safekeeper import Safekeeper  # noqa: E402
from fixtures.standby import start_standby_fixture  # noqa: E402,F401 - the `start_standby` fixture
from fixtures.utils import chown_to_pg_user  # noqa: E402


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def workdir(request):
    """A scratch directory readable by the PostgreSQL OS user; removed unless the test failed."""
    d = tempfile.mkdtemp(prefix=f"sk-{request.node.name[:40]}-", dir=os.environ.get("SK_TEST_TMP", "/tmp"))
    os.chmod(d, 0o755)
    chown_to_pg_user(d)
    yield d
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.passed and not os.environ.get("SK_KEEP"):
        shutil.rmtree(d, ignore_errors=True)
    else:
        print(f"\n[kept test directory {d}]")


@pytest.fixture
def make_pg(workdir, request):
    """Factory for real PostgreSQL clusters; all are stopped at teardown."""
    clusters: list[PgCluster] = []

    def make(name: str = "primary", extra_conf: str = "", start: bool = True, standby_of: PgCluster | None = None) -> PgCluster:
        if standby_of is not None:
            pg = standby_of.make_standby(workdir, name)
            clusters.append(pg)
            return pg
        pg = PgCluster(workdir, name).initdb(extra_conf)
        clusters.append(pg)
        if start:
            pg.start()
        return pg

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for pg in clusters:
        if failed:
            try:
                with open(pg.logfile, errors="replace") as f:
                    print(f"\n----- {pg.name} server log (tail) -----\n{f.read()[-4000:]}")
            except FileNotFoundError:
                pass
        pg.destroy()


@pytest.fixture
def primary(make_pg) -> PgCluster:
    return make_pg("primary")


@pytest.fixture
def make_safekeeper(workdir, request):
    """Factory for safekeeper processes; all are killed at teardown, logs printed on failure."""
    sks: list[Safekeeper] = []

    def make(sk_id: int = 1) -> Safekeeper:
        sk = Safekeeper(workdir, sk_id)
        sks.append(sk)
        return sk

    yield make
    failed = getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed
    for sk in sks:
        sk.cleanup()
        if failed:
            print(f"\n----- {sk.name} log (tail) -----\n{sk.log()[-6000:]}")


@pytest.fixture
def safekeeper(make_safekeeper) -> Safekeeper:
    return make_safekeeper(1)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """One moto S3 server for the whole session, stopped by PID at the end."""
    server = MotoServer(str(tmp_path_factory.mktemp("moto")))
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(moto_server) -> S3Bucket:
    """A fresh bucket for one test."""
    return new_bucket(moto_server)


@pytest.fixture(params=["local", "s3"])
def remote(request, workdir):
    """The remote storage of a test, once as a local directory and once as a moto S3 bucket."""
    if request.param == "local":
        return LocalRemote(os.path.join(workdir, "remote"))
    return new_bucket(request.getfixturevalue("moto_server"))

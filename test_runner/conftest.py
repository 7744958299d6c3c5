"""pytest fixtures: a scratch directory PostgreSQL can use, primaries, safekeepers, and
`start_standby` (fixtures/standby.py) to make a safekeeper the synchronous standby of a primary.

Primaries run the test's PostgreSQL major (`pg_major`): the default installation (PG_BINDIR), or
once per major for tests marked `@pg_matrix` (fixtures/majors.py).

Everything a test starts is registered here and stopped by PID at teardown, even on failure; the
logs of failed tests are printed.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fixtures.majors import DEFAULT_MAJOR, require_install  # noqa: E402
from fixtures.pg import PgCluster  # noqa: E402
from fixtures.remote import LocalRemote  # noqa: E402
from fixtures.restore import prefetch_workers  # noqa: E402
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
    """A scratch directory readable by the PostgreSQL OS user; removed unless the test failed
    (an expected failure, xfail, counts as not failed)."""
    d = tempfile.mkdtemp(prefix=f"sk-{request.node.name[:40]}-", dir=os.environ.get("SK_TEST_TMP", "/tmp"))
    os.chmod(d, 0o755)
    chown_to_pg_user(d)
    yield d
    # restore-wal's prefetch workers exit on their own within seconds of the last call; a test's
    # are stopped with it, by PID.
    for pid in prefetch_workers(d):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and (rep.passed or hasattr(rep, "wasxfail")) and not os.environ.get("SK_KEEP"):
        shutil.rmtree(d, ignore_errors=True)
    else:
        print(f"\n[kept test directory {d}]")


def pytest_collection_modifyitems(config, items):
    """`pg_matrix_only(**params)`: on majors other than the default, only the combination of the
    test's other parameters that the marker names runs (the rest are deselected)."""
    keep, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("pg_matrix_only")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if marker is not None and params.get("pg_major", DEFAULT_MAJOR) != DEFAULT_MAJOR and any(
                params.get(k) != v for k, v in marker.kwargs.items()):
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def pg_major():
    """The PostgreSQL major of the test's servers; None: the default installation (PG_BINDIR).
    Parametrized by `pg_matrix` (fixtures/majors.py)."""
    return None


@pytest.fixture
def pg_install(pg_major):
    """The installation of `pg_major`; skips the test (fails it under CI=true) when it is missing."""
    return require_install(pg_major)


@pytest.fixture
def make_pg(workdir, request, pg_install):
    """Factory for real PostgreSQL clusters of the test's major; all are stopped at teardown."""
    clusters: list[PgCluster] = []

    def make(name: str = "primary", extra_conf: str = "", start: bool = True, standby_of: PgCluster | None = None,
             initdb_args: tuple[str, ...] = ()) -> PgCluster:
        if standby_of is not None:
            pg = standby_of.make_standby(workdir, name)
            clusters.append(pg)
            return pg
        pg = PgCluster(workdir, name, install=pg_install).initdb(extra_conf, initdb_args)
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

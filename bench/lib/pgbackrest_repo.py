"""A pgBackRest repository in moto's S3 for the restore benchmark: its configuration file (S3
through a TLS-terminating proxy on 127.0.0.1, certificate not verified, path-style URIs, zstd
level 1 like the safekeeper objects it is compared with) and running `pgbackrest` as the
PostgreSQL OS user.

The stanza's `pg1-path` is a real data directory whose system identifier matches the WAL
(pgBackRest checks it on `stanza-create`, `archive-push` and `archive-get`).
"""

from __future__ import annotations

import os
import subprocess

from fixtures.pg import PgCluster
from fixtures.s3 import ACCESS_KEY, REGION, SECRET_KEY
from fixtures.utils import chown_to_pg_user
from procs import as_pg

STANZA = "bench"


def version() -> str:
    cp = subprocess.run(["pgbackrest", "version"], capture_output=True, text=True, timeout=60)
    if cp.returncode != 0:
        raise RuntimeError(f"pgbackrest version exited {cp.returncode}: {cp.stderr}")
    return cp.stdout.strip()


def write_conf(path: str, work: str, bucket: str, tls_port: int, pg: PgCluster) -> str:
    """Writes the configuration for a repository reached through the TLS proxy on `tls_port`."""
    lock = os.path.join(work, "pgbackrest-lock")
    os.makedirs(lock, exist_ok=True)
    chown_to_pg_user(lock)
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
lock-path={lock}

[{STANZA}]
pg1-path={pg.datadir}
pg1-port={pg.port}
pg1-socket-path={pg.sockdir}
""")
    chown_to_pg_user(path)
    return path


def command(conf: str, *args: str) -> list[str]:
    return ["pgbackrest", f"--config={conf}", f"--stanza={STANZA}", *args]


def run(conf: str, *args: str, cwd: str | None = None, timeout: float = 120) -> None:
    cp = subprocess.run(command(conf, *args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                        **as_pg())
    if cp.returncode != 0:
        raise RuntimeError(f"pgbackrest {' '.join(args)} exited {cp.returncode}: {cp.stderr}{cp.stdout}")

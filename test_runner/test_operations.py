"""What the people on call get: alert rules and a dashboard that query real metrics, JSON log lines
that say when the state changed, and no secret anywhere in the logs or the API.

What an operator fears:
- an alert or a dashboard panel built on a metric name the binary does not export (it never
  fires, the panel stays empty, and nobody notices until the incident);
- logs a shipper cannot parse, or that repeat every retry but never say "storage is back";
- the replication password or the S3 secret key in a log line or an API response.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid

from fixtures.api import Api, scrape
from fixtures.pg import PgCluster
from fixtures.s3 import MotoServer, S3Bucket, s3_env
from fixtures.safekeeper import REPO_ROOT, Safekeeper, safekeeper_bin
from fixtures.utils import free_port, wait_until
from fixtures.wal import parse_lsn

DEPLOY = os.path.join(REPO_ROOT, "deploy")
# Metrics the rules or the dashboard query that another issue adds, with that issue. The check
# fails when one of them is exported after all: then it belongs in the normal check (delete it
# here).
PENDING: dict[str, str] = {}


def queried_metric_names() -> set[str]:
    """Every `safekeeper_*` name in the alert rules and the dashboard."""
    names: set[str] = set()
    for path in (os.path.join(DEPLOY, "prometheus", "alerts.yml"), os.path.join(DEPLOY, "grafana", "safekeeper.json")):
        with open(path) as f:
            text = f.read()
        if path.endswith(".json"):
            dashboard = json.loads(text)
            assert dashboard["panels"] and all(t["expr"] for p in dashboard["panels"] for t in p["targets"]), path
        names |= set(re.findall(r"\bsafekeeper_[a-z0-9_]*[a-z0-9]\b", text))
    return names


def json_lines(sk: Safekeeper) -> list[dict]:
    """The process's log lines, each of which must be a JSON object (the fixture's own
    `===== start` markers aside)."""
    out = []
    for line in sk.log().splitlines():
        if not line.strip() or line.startswith("===== start"):
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}")
    return out


def emit_wal(pg: PgCluster, n: int = 20) -> None:
    for _ in range(n):
        pg.sql("SELECT pg_logical_emit_message(true, 'sk-ops', repeat('x', 4000))")


def test_rules_and_dashboard_query_exported_metrics_and_json_logs_track_state(
        primary: PgCluster, safekeeper: Safekeeper, start_standby, workdir: str):
    # Our own S3 server, so that this test can stop it and start it again on the same port.
    port = free_port()
    server = MotoServer(workdir, port=port)
    bucket = S3Bucket(server, f"sk-{uuid.uuid4().hex[:12]}")
    server.client().create_bucket(Bucket=bucket.bucket)
    try:
        start_standby(safekeeper, primary, partial_interval="300ms", remote=bucket, extra=["--log-format", "json"])
        api = safekeeper.api()
        emit_wal(primary)
        wait_until("a partial uploaded", lambda: scrape(api).sum("safekeeper_uploads_total", kind="partial") > 0, timeout=60)

        # Object storage goes away: uploads are retried, then fail; the log says so once.
        server.stop()
        emit_wal(primary)
        wait_until("an upload failed after retries", lambda: (m := scrape(api)).sum("safekeeper_upload_failures_total") > 0
                   and m.sum("safekeeper_upload_retries_total") > 0, timeout=90)
        wait_until("'remote storage failing' logged",
                   lambda: any(l.get("message", "").startswith("remote storage failing") for l in json_lines(safekeeper)),
                   timeout=30)

        # Storage back (an empty bucket again: moto keeps nothing): uploads succeed, logged once.
        server = MotoServer(workdir, port=port)
        server.client().create_bucket(Bucket=bucket.bucket)
        wait_until("'remote storage recovered' logged",
                   lambda: any(l.get("message", "").startswith("remote storage recovered") for l in json_lines(safekeeper)),
                   timeout=90)
        primary.switch_wal()
        emit_wal(primary, 5)
        wait_until("a full segment uploaded", lambda: scrape(api).sum("safekeeper_uploads_total", kind="full") > 0, timeout=60)
        wait_until("the sync probe answered", lambda: scrape(api).get("safekeeper_sync_standby", cluster="main") == 1, timeout=40)

        # Every metric the rules and the dashboard query is in a real scrape.
        text = api.get("/metrics").text
        metrics = scrape(api)
        exported = {name for name, _, _ in metrics.samples}
        queried = queried_metric_names()
        missing = sorted(n for n in queried - exported if n not in PENDING)
        assert not missing, f"the rules or the dashboard query metrics the binary does not export: {missing}"
        for name, issue in PENDING.items():
            assert name in queried and name not in exported, \
                f"{name} is exported now ({issue} landed): remove it from PENDING"
        assert len(queried) >= 25, sorted(queried)
        promtool = shutil.which("promtool")
        if promtool:
            lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
            assert lint.returncode == 0, f"promtool check metrics: {lint.stdout}{lint.stderr}"
        stop_primary_and_check_the_log(primary, safekeeper, api)
    finally:
        server.stop()


def stop_primary_and_check_the_log(primary: PgCluster, safekeeper: Safekeeper, api: Api) -> None:
    """The primary goes away (and comes back no longer naming this safekeeper a synchronous standby):
    one `lost` line with the cluster, the LSNs and the error; one `back` line; one `not a synchronous
    standby` line; and the log lines of the whole run parse as JSON."""
    flush = api.cluster()["lsn"]["flush"]
    primary.set_sync_standby("")
    primary.stop("immediate")
    lost = wait_until("'lost the primary' logged", lambda: [l for l in json_lines(safekeeper)
                                                           if l.get("message", "").startswith("lost the primary")], timeout=60)
    assert len(lost) == 1, lost
    line = lost[0]
    assert line["level"] == "WARN" and line["cluster"] == "main" and line["from"] in ("streaming", "connecting"), line
    # The positions when it was lost: at least what was flushed before, nothing acknowledged beyond.
    assert parse_lsn(line["flush_lsn"]) >= parse_lsn(flush), (line, flush)
    assert parse_lsn(line["commit_lsn"]) <= parse_lsn(line["flush_lsn"]), line
    assert line["error"], line
    # Back, but no longer named in synchronous_standby_names: the new session's probe says so.
    primary.start()
    wait_until("primary back", lambda: any(l.get("message", "").startswith("primary back") for l in json_lines(safekeeper)),
               timeout=60)
    # However many retries it took: one line when lost, one when back.
    assert len([l for l in json_lines(safekeeper) if l.get("message", "").startswith("lost the primary")]) == 1
    assert len([l for l in json_lines(safekeeper) if l.get("message", "").startswith("primary back")]) == 1
    wait_until("not listed any more", lambda: scrape(api).get("safekeeper_sync_standby", cluster="main") == 0, timeout=30)
    assert safekeeper.stop() == 0
    lines = json_lines(safekeeper)
    # The follower's own lines carry the cluster from its span, at the top level.
    streaming = [l for l in lines if l.get("message") == "streaming"]
    assert streaming and all(l["cluster"] == "main" and "start_lsn" in l for l in streaming), streaming
    failing = [l for l in lines if l.get("message", "").startswith("remote storage failing")]
    assert len(failing) == 1 and failing[0]["level"] == "WARN" and failing[0]["error"], failing
    recovered = [l for l in lines if l.get("message", "").startswith("remote storage recovered")]
    assert len(recovered) == 1 and recovered[0]["level"] == "INFO" and recovered[0]["failures"] >= 1, recovered
    not_sync = [l for l in lines if l.get("message", "").startswith("not a synchronous standby")]
    assert len(not_sync) == 1 and not_sync[0]["level"] == "WARN" and not_sync[0]["cluster"] == "main", not_sync
    assert all({"timestamp", "level", "message"} <= set(l) for l in lines)


def test_no_password_or_s3_secret_in_any_log_line_or_api_response(
        primary: PgCluster, make_safekeeper, start_standby, moto_server, workdir: str):
    password = "pw-" + uuid.uuid4().hex
    wrong_password = "wrong-" + uuid.uuid4().hex
    s3_secret = "s3secret-" + uuid.uuid4().hex
    # A replication user that needs its password (SCRAM), ahead of the fixture's trust lines.
    primary.sql(f"CREATE ROLE replicator LOGIN REPLICATION PASSWORD '{password}'")
    hba = os.path.join(primary.datadir, "pg_hba.conf")
    with open(hba) as f:
        rest = f.read()
    with open(hba, "w") as f:
        f.write("host replication replicator 127.0.0.1/32 scram-sha-256\n"
                "host all replicator 127.0.0.1/32 scram-sha-256\n" + rest)
    primary.sql("SELECT pg_reload_conf()")
    bucket_name = f"sk-{uuid.uuid4().hex[:12]}"
    moto_server.client().create_bucket(Bucket=bucket_name)
    bucket = S3Bucket(moto_server, bucket_name)
    connstr = f"host=127.0.0.1 port={primary.port} user=replicator password={password} dbname=postgres"
    bad_uri = f"postgresql://replicator:{wrong_password}@127.0.0.1:{primary.port}/postgres"
    secrets = [password, wrong_password, s3_secret]

    for log_format in ("json", "text"):
        sk = make_safekeeper(1 if log_format == "json" else 2)
        start_standby(sk, primary, sync=False, connstr=connstr, remote=bucket, partial_interval="300ms",
                      env={**s3_env(secret_key=s3_secret), "RUST_LOG": "debug"}, extra=["--log-format", log_format])
        api = sk.api()
        # A second cluster whose password is wrong: errors, retries, last_error.
        api.ok("POST", "/v1/clusters", {"name": "wrong", "primary": bad_uri}, status=201)
        emit_wal(primary, 10)
        wait_until("a partial uploaded", lambda: api.cluster()["newest_partial"], timeout=30)
        wait_until("the wrong password refused", lambda: (api.cluster("wrong")["last_error"] or "").find("password") >= 0,
                   timeout=30)
        responses = {path: api.get(path).text for path in (
            "/", "/v1/status", "/v1/clusters", "/v1/clusters/main", "/v1/clusters/wrong", "/v1/clusters/main/remote",
            "/v1/clusters/main/control_file", "/v1/clusters/main/lag_history", "/v1/clusters/wrong/lag_history",
            "/metrics", "/v1/openapi.json")}
        assert '"replicator"' in responses["/v1/clusters/main"], "the API shows the user, not the password"
        assert sk.stop() == 0
        log = sk.log()
        assert "password authentication failed" in log, "the test must exercise the failing login"
        for secret in secrets:
            assert secret not in log, f"a secret is in the {log_format} log"
            for path, body in responses.items():
                assert secret not in body, f"a secret is in the response of {path}"
        if log_format == "json":
            json_lines(sk)


def test_systemd_unit_is_sandboxed_and_outlasts_the_final_upload(workdir: str):
    path = os.path.join(DEPLOY, "systemd", "safekeeper.service")
    with open(path) as f:
        text = f.read()
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    exec_start = settings["ExecStart"][0].split()
    data_dir = exec_start[exec_start.index("--data-dir") + 1]
    assert settings["ProtectSystem"] == ["strict"] and settings["NoNewPrivileges"] == ["true"], settings
    assert settings["ReadWritePaths"] == [data_dir], "the data directory must be the only writable path"
    assert settings["StateDirectory"] == [os.path.basename(data_dir)] and data_dir.startswith("/var/lib/"), settings
    assert "--log-format" in exec_start and settings["KillSignal"] == ["SIGTERM"], settings
    # SIGTERM makes the manager upload the final partial, bounded by FINAL_UPLOAD_TIMEOUT: systemd
    # must not SIGKILL it before then (plus the flush and the control file before it).
    with open(os.path.join(REPO_ROOT, "safekeeper", "src", "cluster", "manager", "mod.rs")) as f:
        bound = int(re.search(r"FINAL_UPLOAD_TIMEOUT: Duration = Duration::from_secs\((\d+)\)", f.read()).group(1))
    stop = int(settings["TimeoutStopSec"][0].rstrip("s"))
    assert stop >= bound + 15, f"TimeoutStopSec={stop} leaves too little after the {bound} s final upload"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    # verify also checks that ExecStart exists: point it at the binary under test.
    unit = os.path.join(workdir, "safekeeper.service")
    with open(unit, "w") as f:
        f.write(text.replace("/usr/local/bin/safekeeper", safekeeper_bin()))
    check = subprocess.run([analyze, "verify", unit], capture_output=True, text=True, timeout=60, cwd=workdir)
    assert check.returncode == 0 and not check.stderr.strip(), f"systemd-analyze verify: {check.stdout}{check.stderr}"

"""The HTTP admin API and /metrics, against a safekeeper following a real primary.

What an operator fears, and what each test shows does not happen:
- figures that lie: LSNs, lag or archive contents in the API or /metrics that disagree with the
  primary, the remote storage or the control file;
- a routine action (upload now, GC now, bump the term) that breaks the archive or the follower;
- an API that answers without its token, or that a typo or a fuzzer can crash (5xx) or push out
  of its documented shape;
- a cluster added at run time that a restart forgets, or a removed one that keeps streaming.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import tomllib

from fixtures.api import Api, scrape
from fixtures.pg import PgCluster
from fixtures.remote import LocalRemote
from fixtures.s3 import MotoServer, new_bucket
from fixtures.safekeeper import Safekeeper
from fixtures.utils import free_port, wait_until
from fixtures.wal import PARTIAL_RE, SEG_SIZE, parse_lsn, segment_name, segno_of
CLUSTER_ROUTES = [
    ("GET", ""), ("GET", "/remote"), ("GET", "/control_file"),
    ("POST", "/partial_upload"), ("POST", "/gc"), ("POST", "/term_bump"), ("DELETE", ""),
]


def remote_of(sk: Safekeeper) -> LocalRemote:
    """The default remote storage, file://<data-dir>/remote."""
    return LocalRemote(os.path.join(sk.data_dir, "remote"))


def wait_committed(api: Api, pg: PgCluster, name: str = "main") -> int:
    end = pg.current_lsn()
    wait_until(f"{name}: commit_lsn at the primary's {end:X}", lambda: api.lsns(name)["commit"] >= end, timeout=30)
    return end


def emit_wal(pg: PgCluster, n: int = 20) -> None:
    for i in range(n):
        pg.sql("SELECT pg_logical_emit_message(true, 'sk-api', repeat('x', 2000))")


def assert_error(r, status: int, code: str) -> None:
    assert r.status == status, f"expected {status} {code}, got {r!r}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error", "code"} and body["code"] == code and body["error"], body


def test_cluster_routes_report_what_the_primary_and_the_archive_hold(primary: PgCluster, safekeeper: Safekeeper, start_standby):
    # A long interval: the only partial uploads are the ones this test asks for.
    start_standby(safekeeper, primary, partial_interval="1h")
    api = safekeeper.api()
    remote = remote_of(safekeeper)
    primary.pgbench("-i", "-s", "1", "-q")
    primary.pgbench("-n", "-c", "2", "-T", "2")

    status = api.ok("GET", "/v1/status")
    assert status["id"] == 1 and status["clusters"] == 1 and status["version"] and status["uptime_seconds"] > 0
    [summary] = api.ok("GET", "/v1/clusters")["clusters"]
    assert (summary["name"], summary["origin"], summary["state"], summary["connection"]) == ("main", "config", "running", "streaming")

    # LSNs agree with the primary's view of this standby.
    end = wait_committed(api, primary)
    d = api.cluster()
    lsn = {k: parse_lsn(v) for k, v in d["lsn"].items()}
    assert lsn["received"] >= lsn["flush"] >= lsn["commit"] >= end
    assert primary.replication(safekeeper.application_name)["flush_lsn"] <= lsn["commit"]
    assert d["system_identifier"] == primary.system_identifier()
    assert (d["timeline"], d["term"], d["wal_segment_size"]) == (1, 1, SEG_SIZE)
    assert [(t["term"], t["timeline"]) for t in d["term_history"]] == [(1, 1)]
    assert d["primary"] == {"hosts": [f"127.0.0.1:{primary.port}"], "user": "postgres",
                            "slot": "safekeeper_1", "application_name": "safekeeper1"}
    assert (d["connection"], d["state"], d["last_error"], d["reconnects"]) == ("streaming", "running", None, 0)
    assert (d["gaps"], d["last_gap"]) == (0, None)
    assert d["lag"]["flush"]["bytes"] == lsn["received"] - lsn["flush"]
    assert d["lag"]["upload"]["bytes"] == lsn["commit"] - lsn["remote"] > 0

    # Upload now: the object exists, ends at the commit LSN, and the lag drops to zero.
    first = api.ok("POST", "/v1/clusters/main/partial_upload")["object_name"]
    seg, commit, term, sk_id = PARTIAL_RE.match(first).groups()[:4]
    assert (int(term, 16), sk_id) == (1, "1") and int(commit, 16) >= end
    assert f"main/wal/{first}" in remote.keys("main/wal/")
    d = api.cluster()
    assert d["newest_partial"] == first and parse_lsn(d["lsn"]["remote"]) == int(commit, 16)
    assert d["lag"]["upload"]["bytes"] == parse_lsn(d["lsn"]["commit"]) - int(commit, 16)
    listing = api.ok("GET", "/v1/clusters/main/remote")
    assert [(p["name"], p["status"]) for p in listing["partials"]] == [(first, "uploaded")]
    assert listing["partials"][0]["size"] == int(commit, 16) % SEG_SIZE

    # A full segment: listed once uploaded, and backup_lsn moves past it.
    switched = primary.switch_wal()
    full = segment_name(1, segno_of(switched - 1))
    wait_until(f"{full} listed as uploaded", lambda: any(r["last_segment"] == full for r in api.ok("GET", "/v1/clusters/main/remote")["full_segments"]))
    assert parse_lsn(api.cluster()["lsn"]["backup"]) >= switched
    assert f"main/wal/{full}" in remote.keys("main/wal/")

    # The next partial supersedes the first; GC (now or already done) removes only superseded ones.
    emit_wal(primary)
    wait_committed(api, primary)
    second = api.ok("POST", "/v1/clusters/main/partial_upload")["object_name"]
    assert second != first and PARTIAL_RE.match(second).group(1) != seg
    deleted = api.ok("POST", "/v1/clusters/main/gc")["deleted"]
    assert second not in deleted
    wait_until("first partial gone", lambda: f"main/wal/{first}" not in remote.keys("main/wal/"))
    keys = remote.keys("main/wal/")
    assert f"main/wal/{second}" in keys and not any(f"main/wal/{n}" in keys for n in deleted)

    # The decoded control file is the same document as the CLI's.
    doc = api.ok("GET", "/v1/clusters/main/control_file")
    cli = safekeeper.control_file_json()
    assert set(doc) == set(cli) and set(doc["state"]) == set(cli["state"])
    assert doc["path"] == safekeeper.control_file() and doc["format_version"] == doc["current_format_version"]
    for k in ("sk_id", "cluster_name", "system_identifier", "wal_segment_size", "term_history"):
        assert doc["state"][k] == cli["state"][k], k
    assert doc["state"]["system_identifier"] == primary.system_identifier()

    # Term bump: durable, in the history, and the next partial carries the new term.
    flush_before = api.lsns()["flush"]
    bumped = api.ok("POST", "/v1/clusters/main/term_bump")
    assert bumped["term"] == 2 and bumped["timeline"] == 1 and parse_lsn(bumped["start_lsn"]) >= flush_before
    d = api.cluster()
    assert d["term"] == 2 and [t["term"] for t in d["term_history"]] == [1, 2]
    assert api.ok("GET", "/v1/clusters/main/control_file")["state"]["term"] == 2
    emit_wal(primary)  # synchronous commits: ingest carries on after the bump
    wait_committed(api, primary)
    third = api.ok("POST", "/v1/clusters/main/partial_upload")["object_name"]
    assert int(PARTIAL_RE.match(third).group(3), 16) == 2, third
    assert api.cluster()["connection"] == "streaming"
    assert safekeeper.stop() == 0


METRIC_FAMILIES = {
    "safekeeper_build_info": "gauge", "safekeeper_uptime_seconds": "gauge", "safekeeper_clusters": "gauge",
    "safekeeper_received_lsn_bytes": "gauge", "safekeeper_flush_lsn_bytes": "gauge",
    "safekeeper_commit_lsn_bytes": "gauge", "safekeeper_backup_lsn_bytes": "gauge",
    "safekeeper_remote_lsn_bytes": "gauge",
    "safekeeper_flush_lag_bytes": "gauge", "safekeeper_flush_lag_seconds": "gauge",
    "safekeeper_upload_lag_bytes": "gauge", "safekeeper_upload_lag_seconds": "gauge",
    "safekeeper_backup_lag_bytes": "gauge", "safekeeper_backup_lag_seconds": "gauge",
    "safekeeper_uploads_in_flight": "gauge", "safekeeper_term": "gauge", "safekeeper_timeline": "gauge",
    "safekeeper_connection_state": "gauge", "safekeeper_reconnects_total": "counter",
    "safekeeper_gc_deleted_objects_total": "counter", "safekeeper_gaps_total": "counter",
    "safekeeper_wal_fsync_seconds": "histogram", "safekeeper_wal_flush_batch_bytes": "histogram",
    "safekeeper_uploads_total": "counter", "safekeeper_upload_bytes_total": "counter",
    "safekeeper_upload_seconds": "histogram",
}
LSN_METRICS = {"received": "safekeeper_received_lsn_bytes", "flush": "safekeeper_flush_lsn_bytes",
               "commit": "safekeeper_commit_lsn_bytes", "backup": "safekeeper_backup_lsn_bytes",
               "remote": "safekeeper_remote_lsn_bytes"}


def test_metrics_move_during_pgbench_and_track_the_api(primary: PgCluster, safekeeper: Safekeeper, workdir: str, start_standby):
    start_standby(safekeeper, primary, partial_interval="1s")
    api = safekeeper.api()
    primary.pgbench("-i", "-s", "1", "-q")
    bench = primary.pgbench_popen("-n", "-c", "2", "-T", "8", log_path=os.path.join(workdir, "pgbench.log"))
    samples = []
    try:
        for _ in range(5):
            time.sleep(1.2)
            before = api.lsns()
            m = scrape(api)
            after = api.lsns()
            samples.append((before, m, after))
    finally:
        bench.wait(timeout=60)
    assert bench.returncode == 0, open(os.path.join(workdir, "pgbench.log")).read()[-2000:]

    for before, m, after in samples:
        for k, name in LSN_METRICS.items():
            assert before[k] <= m.value(name, cluster="main") <= after[k], (k, before[k], m.value(name, cluster="main"), after[k])
        v = {k: m.value(name, cluster="main") for k, name in LSN_METRICS.items()}
        assert m.value("safekeeper_flush_lag_bytes", cluster="main") == v["received"] - v["flush"]
        assert m.value("safekeeper_upload_lag_bytes", cluster="main") == max(0, v["commit"] - v["remote"])
        assert m.value("safekeeper_backup_lag_bytes", cluster="main") == max(0, v["commit"] - v["backup"])
        assert 0 <= m.value("safekeeper_upload_lag_seconds", cluster="main") < 30
        assert m.value("safekeeper_connection_state", cluster="main", state="streaming") == 1
        assert m.sum("safekeeper_connection_state", cluster="main") == 1
    first, last = samples[0][1], samples[-1][1]
    for name in ("safekeeper_commit_lsn_bytes", "safekeeper_remote_lsn_bytes", "safekeeper_wal_fsync_seconds_count"):
        assert last.value(name, cluster="main") > first.value(name, cluster="main"), name
    commits = [m.value("safekeeper_commit_lsn_bytes", cluster="main") for _, m, _ in samples]
    assert commits == sorted(commits)
    # Under load the upload lag is real, in bytes and in seconds.
    assert max(m.value("safekeeper_upload_lag_bytes", cluster="main") for _, m, _ in samples) > 0
    assert max(m.value("safekeeper_upload_lag_seconds", cluster="main") for _, m, _ in samples) > 0

    for name, kind in METRIC_FAMILIES.items():
        assert last.types.get(name) == kind, f"{name}: {last.types.get(name)}"
    assert last.value("safekeeper_build_info", id="1") == 1
    assert last.value("safekeeper_term", cluster="main") == 1
    assert last.value("safekeeper_reconnects_total", cluster="main") == 0
    assert last.value("safekeeper_uploads_total", cluster="main", kind="partial") > 0
    assert last.value("safekeeper_upload_seconds_count", cluster="main", kind="partial") > 0
    assert last.get("safekeeper_upload_seconds_bucket", cluster="main", kind="partial", le="+Inf") is not None
    assert last.value("safekeeper_wal_flush_batch_bytes_sum", cluster="main") > 0

    # Load over: after an upload nothing acknowledged waits any more.
    api.ok("POST", "/v1/clusters/main/partial_upload")

    def caught_up():
        m = scrape(api)
        return m.value("safekeeper_upload_lag_bytes", cluster="main") == 0 and m.value("safekeeper_upload_lag_seconds", cluster="main") == 0

    wait_until("upload lag back to zero", caught_up, timeout=30)
    assert safekeeper.stop() == 0


def test_upload_failures_and_retries_are_counted_and_reported(primary: PgCluster, safekeeper: Safekeeper, workdir: str):
    server = MotoServer(workdir)
    try:
        bucket = new_bucket(server)
        safekeeper.start(primary.connstr(), extra=bucket.args() + ["--partial-interval", "1h"], env=bucket.env())
        api = safekeeper.api()
        emit_wal(primary)
        wait_committed(api, primary)
        name = api.ok("POST", "/v1/clusters/main/partial_upload")["object_name"]
        assert f"main/wal/{name}" in bucket.keys("main/wal/")
        m = scrape(api)
        assert m.value("safekeeper_uploads_total", cluster="main", kind="partial") >= 1
        assert m.get("safekeeper_upload_failures_total", cluster="main", kind="partial") is None

        server.stop()  # connection refused: a retryable error, retried by the storage layer
        emit_wal(primary)
        wait_committed(api, primary)
        assert_error(api.post("/v1/clusters/main/partial_upload"), 503, "operation_failed")
        m = scrape(api)
        assert m.value("safekeeper_upload_failures_total", cluster="main", kind="partial") == 1
        assert m.value("safekeeper_upload_retries_total", cluster="main", kind="partial") >= 1
        d = api.cluster()
        assert d["offload"]["upload_failures"] >= 1 and "partial" in d["offload"]["last_error"]
        assert d["lag"]["upload"]["bytes"] > 0 and d["connection"] == "streaming"
    finally:
        server.stop()
    safekeeper.kill9()  # a graceful stop would retry the final upload for its full timeout


def test_a_token_guards_every_route_but_the_public_ones(primary: PgCluster, safekeeper: Safekeeper, workdir: str, start_standby):
    token = "sk-" + secrets.token_hex(16)
    token_file = os.path.join(workdir, "token")
    with open(token_file, "w") as f:
        f.write(token + "\n")
    start_standby(safekeeper, primary, sync=False, partial_interval="500ms", extra=["--http-auth-token-file", token_file])
    api = safekeeper.api(token)
    port = safekeeper.http_port
    strangers = [Api(port), Api(port, token[:-1]), Api(port, token + "x"), Api(port, "")]
    routes = [("GET", "/v1/clusters"), ("POST", "/v1/clusters"), ("GET", "/v1/openapi.json"), ("GET", "/v1/nope")]
    routes += [(m, f"/v1/clusters/main{sub}") for m, sub in CLUSTER_ROUTES]
    for method, path in routes:
        for who in strangers:
            r = who.request(method, path, body={} if method == "POST" else None)
            assert_error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"].startswith("Bearer"), r.headers
        assert api.request(method, path, body={} if method == "POST" else None).status != 401, (method, path)
    r = Api(port).request("GET", "/v1/clusters", headers={"Authorization": f"Basic {token}"}, token=None)
    assert_error(r, 401, "unauthorized")
    for path in ("/metrics", "/v1/status", "/"):
        assert Api(port).get(path).status == 200, path
    assert api.cluster()["connection"] == "streaming"

    # The document says so: security and a 401 on exactly the protected operations.
    doc = api.ok("GET", "/v1/openapi.json")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            protected = path not in ("/metrics", "/v1/status", "/")
            assert ("security" in op) == protected and ("401" in op["responses"]) == protected, (method, path)

    # Configurable: nothing public.
    assert safekeeper.stop() == 0
    safekeeper.start(primary.connstr(), extra=["--http-auth-token-file", token_file, "--http-auth-public-routes", "none"])
    api = safekeeper.api(token)
    for path in ("/metrics", "/v1/status"):
        assert_error(Api(port).get(path), 401, "unauthorized")
        assert api.get(path).status == 200
    assert "security" in api.ok("GET", "/v1/openapi.json")["paths"]["/metrics"]["get"]
    assert safekeeper.stop() == 0
    assert token not in safekeeper.log()


def test_bad_input_gets_a_json_error_never_a_5xx(primary: PgCluster, make_safekeeper, start_standby):
    safekeeper = make_safekeeper(1)
    start_standby(safekeeper, primary, sync=False, partial_interval="500ms")
    api = safekeeper.api()
    for method, sub in CLUSTER_ROUTES:
        assert_error(api.request(method, f"/v1/clusters/nope{sub}"), 404, "not_found")
    assert_error(api.get("/v1/nothing/here"), 404, "not_found")
    assert_error(api.get("/v1/clusters/%FF"), 400, "bad_request")

    # Malformed bodies.
    add = "/v1/clusters"
    assert_error(api.post(add, raw=b"{"), 400, "invalid_json")
    assert_error(api.post(add, raw=b"[1, 2]"), 400, "invalid_json")
    assert_error(api.post(add, body={"name": "x"}), 400, "invalid_json")
    assert_error(api.post(add, body={"name": 5, "primary": "host=h"}), 400, "invalid_json")
    assert_error(api.post(add, body={"name": "x", "primary": "host=h", "colour": "red"}), 400, "invalid_json")
    assert_error(api.post(add, raw=b'{"name": "x", "primary": "host=h"}', content_type="text/plain"), 415, "unsupported_media_type")
    assert_error(api.post(add, raw=b'{"name": "x", "primary": "host=h"}', content_type=None), 415, "unsupported_media_type")
    assert_error(api.post(add, raw=b"[" + b"0," * (1 << 20) + b"0]"), 413, "payload_too_large")
    # Bad values.
    for body in ({"name": "../etc", "primary": "host=h"}, {"name": "x", "primary": "no equals sign"},
                 {"name": "x", "primary": "  "}, {"name": "x", "primary": "host=h", "slot": "Bad-Slot"},
                 {"name": "x", "primary": "host=h", "application_name": "tab\there"},
                 {"name": "remote", "primary": "host=h"}):  # would be the default remote directory
        assert_error(api.post(add, body=body), 400, "bad_request")
    assert_error(api.delete("/v1/clusters/main?purge_local=perhaps"), 400, "bad_request")
    # Conflicts.
    assert_error(api.post(add, body={"name": "main", "primary": primary.connstr()}), 409, "cluster_exists")
    r = api.delete("/v1/clusters/main")
    assert_error(r, 409, "configured_cluster")
    assert "config" in r.json()["error"]
    # Wrong methods: 405 with the methods that exist.
    for method, path, allow in [("PUT", "/v1/clusters", "GET,HEAD,POST"), ("GET", "/v1/clusters/main/gc", "POST"),
                                ("DELETE", "/v1/status", "GET,HEAD"), ("POST", "/metrics", "GET,HEAD"),
                                ("PATCH", "/v1/clusters/main", "GET,HEAD,DELETE")]:
        r = api.request(method, path)
        assert_error(r, 405, "method_not_allowed")
        assert r.headers["allow"] == allow, (method, path, r.headers)
    # Auth is off: a token is simply not looked at.
    assert Api(safekeeper.http_port, "anything").get("/v1/clusters").status == 200

    # A cluster that never reached its primary has no control file: its actions conflict.
    dead = f"host=127.0.0.1 port={free_port()} user=nobody connect_timeout=2"
    created = api.ok("POST", add, {"name": "unreachable", "primary": dead}, status=201)
    assert created["origin"] == "api" and created["term"] is None
    for method, sub in CLUSTER_ROUTES[1:-1]:
        assert_error(api.request(method, f"/v1/clusters/unreachable{sub}"), 409, "not_initialized")
    wait_until("retrying", lambda: api.cluster("unreachable")["connection"] == "retrying")
    assert api.cluster("unreachable")["last_error"]
    assert api.ok("DELETE", "/v1/clusters/unreachable?purge_local=true") == {"name": "unreachable", "state": "stopped", "purged_local": True}
    assert not os.path.exists(os.path.join(safekeeper.data_dir, "unreachable"))

    assert api.cluster()["connection"] == "streaming" and safekeeper.running()
    assert "panicked" not in safekeeper.log()

    # A busy --http-addr is a one-line error before anything starts.
    other = make_safekeeper(2)
    other.http_port = safekeeper.http_port
    other.start(primary.connstr())
    assert other.wait_exit(timeout=30) != 0
    assert f"error: cannot listen on --http-addr 127.0.0.1:{safekeeper.http_port}" in other.log(), other.log()[-2000:]
    assert not os.path.exists(other.wal_dir())
    assert safekeeper.stop() == 0


def test_clusters_added_at_run_time_survive_restarts_and_removal_keeps_data(primary: PgCluster, make_pg, safekeeper: Safekeeper, start_standby):
    second = make_pg("second")
    start_standby(safekeeper, primary, sync=False, partial_interval="500ms")
    api = safekeeper.api()
    runtime_file = os.path.join(safekeeper.data_dir, "clusters.toml")
    body = {"name": "second", "primary": second.connstr(), "application_name": "sk_second"}
    added = api.ok("POST", "/v1/clusters", body, status=201)
    assert (added["name"], added["origin"], added["primary"]["slot"]) == ("second", "api", "safekeeper_1")
    second.wait_streaming("sk_second")
    second.set_sync_standby("sk_second")
    second.pgbench("-i", "-s", "1", "-q")  # synchronous: only returns once the safekeeper has it
    flushed = wait_committed(api, second, "second")
    assert api.cluster("second")["system_identifier"] == second.system_identifier()
    assert os.stat(runtime_file).st_mode & 0o777 == 0o600
    assert [c["name"] for c in tomllib.load(open(runtime_file, "rb"))["cluster"]] == ["second"]

    # A restart keeps it; the configuration wins over a clusters.toml entry of the same name.
    assert safekeeper.stop() == 0
    with open(runtime_file, "a") as f:
        f.write('\n[[cluster]]\nname = "main"\nprimary = "host=127.0.0.1 port=1"\nslot = "safekeeper_1"\napplication_name = "x"\n')
    start_standby(safekeeper, primary, sync=False, partial_interval="500ms")
    safekeeper.api()
    names = {c["name"]: c["origin"] for c in api.ok("GET", "/v1/clusters")["clusters"]}
    assert names == {"main": "config", "second": "api"}
    assert api.cluster()["primary"]["hosts"] == [f"127.0.0.1:{primary.port}"]
    assert [c["name"] for c in tomllib.load(open(runtime_file, "rb"))["cluster"]] == ["second"]
    assert "both configured and in clusters.toml" in safekeeper.log()
    wait_until("second streams again", lambda: api.cluster("second")["connection"] == "streaming", timeout=60)
    assert api.lsns("second")["flush"] >= flushed
    second.sql("CREATE TABLE after_restart (x int)")  # still a working synchronous standby

    # DELETE stops it and forgets it, but keeps local and remote data.
    second.set_sync_standby("")
    assert api.ok("DELETE", "/v1/clusters/second") == {"name": "second", "state": "stopped", "purged_local": False}
    assert_error(api.get("/v1/clusters/second"), 404, "not_found")
    wait_until("second's walsender gone", lambda: second.replication("sk_second") is None, timeout=30)
    assert os.path.exists(safekeeper.control_file("second"))
    assert tomllib.load(open(runtime_file, "rb")).get("cluster", []) == []
    archived = remote_of(safekeeper).keys("second/wal/")
    assert archived, "the final partial upload of the removed cluster"
    assert safekeeper.stop() == 0
    start_standby(safekeeper, primary, sync=False, partial_interval="500ms")
    safekeeper.api()
    assert [c["name"] for c in api.ok("GET", "/v1/clusters")["clusters"]] == ["main"]

    # Added again, it resumes from its local data; purged, the local directory goes, the archive stays.
    api.ok("POST", "/v1/clusters", body, status=201)
    wait_until("second resumes", lambda: api.lsns("second")["flush"] >= flushed)
    wait_until("second streams again", lambda: api.cluster("second")["connection"] == "streaming", timeout=60)
    api.ok("DELETE", "/v1/clusters/second?purge_local=true")
    assert not os.path.exists(os.path.join(safekeeper.data_dir, "second"))
    assert remote_of(safekeeper).keys("second/wal/"), "purge_local must not touch the archive"
    assert api.cluster()["connection"] == "streaming"
    assert safekeeper.stop() == 0


FUZZ_CONFIG = """
[dictionaries.clusters]
values = ["main"]

[dictionaries.primaries]
values = ["{dead}"]

[parameters]
# Half the cluster operations hit the live cluster, the rest get generated names.
"path.name" = {{ dictionary = "clusters", probability = 0.5 }}
# Some clusters added by the fuzzer get a connection string that parses (to a closed port).
"body.primary" = {{ dictionary = "primaries", probability = 0.3 }}

[[operations]]
include-operation-id = "add_cluster"
# A JSON schema cannot express libpq's connection-string grammar: a schema-valid string may
# still be refused (400), and a valid name may be taken (409).
checks.positive_data_acceptance.expected-statuses = [201, 400, 409]
"""


def schemathesis_bin() -> str:
    found = shutil.which("schemathesis") or os.path.join(os.path.dirname(sys.executable), "schemathesis")
    assert os.path.exists(found), "schemathesis is not installed: pip install -r test_runner/requirements.txt"
    return found


def test_openapi_fuzzing_finds_no_server_error_and_no_schema_violation(primary: PgCluster, safekeeper: Safekeeper, workdir: str, start_standby):
    token = secrets.token_hex(16)
    token_file = os.path.join(workdir, "token")
    with open(token_file, "w") as f:
        f.write(token)
    start_standby(safekeeper, primary, partial_interval="500ms", extra=["--http-auth-token-file", token_file])
    api = safekeeper.api(token)
    primary.pgbench("-i", "-s", "1", "-q")
    wait_committed(api, primary)

    doc = api.ok("GET", "/v1/openapi.json")
    from openapi_spec_validator import validate
    validate(doc)

    config = os.path.join(workdir, "schemathesis.toml")
    with open(config, "w") as f:
        f.write(FUZZ_CONFIG.format(dead=f"host=127.0.0.1 port={free_port()} user=fuzz connect_timeout=1"))
    seed = int(os.environ.get("SK_FUZZ_SEED", secrets.randbelow(1 << 30)))
    cmd = [schemathesis_bin(), "--config-file", config, "--no-color", "run",
           f"http://127.0.0.1:{safekeeper.http_port}/v1/openapi.json",
           "--checks", "all", "--max-examples", "20", "--seed", str(seed), "--workers", "1",
           "--header", f"Authorization: Bearer {token}", "--max-time", "50", "--request-timeout", "150"]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=workdir)
    out = cp.stdout + cp.stderr
    print(out[-6000:])
    assert cp.returncode == 0, f"schemathesis found problems (SK_FUZZ_SEED={seed}):\n{out[-8000:]}"
    m = re.search(r"(\d+) generated", out)
    assert m and int(m.group(1)) >= 100, out[-3000:]
    print(f"schemathesis: {m.group(1)} test cases, seed {seed}")

    # Afterwards the live cluster still works as a synchronous standby.
    assert "panicked" not in safekeeper.log()
    primary.sql("CREATE TABLE after_fuzzing (x int)")
    d = api.cluster()
    assert d["connection"] == "streaming" and d["state"] == "running"
    for c in api.ok("GET", "/v1/clusters")["clusters"]:
        if c["origin"] == "api":
            api.ok("DELETE", f"/v1/clusters/{c['name']}?purge_local=true")
    assert [c["name"] for c in api.ok("GET", "/v1/clusters")["clusters"]] == ["main"]
    assert safekeeper.stop() == 0

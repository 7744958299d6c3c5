"""The status page at `/`, in a real headless browser (Debian's chromium), against a safekeeper
following a real primary.

What an on-call operator fears from a status page:
- a page that says "safe" while the primary is gone (a stopped primary must show as an error);
- figures on the page that disagree with the API (LSNs, the archive's end);
- a page that shows data without the API's token, or loads anything from elsewhere.

Screenshots are saved under the test's tmp directory (printed; kept by pytest).
"""

from __future__ import annotations

import os
import time

from fixtures.api import Api
from fixtures.browser import Chromium, StatusPage
from fixtures.pg import PgCluster
from fixtures.safekeeper import Safekeeper
from fixtures.utils import wait_until
from fixtures.wal import parse_lsn


def emit_wal(pg: PgCluster, n: int = 30) -> None:
    for _ in range(n):
        pg.sql("SELECT pg_logical_emit_message(true, 'sk-page', repeat('x', 4000))")


def test_status_page_shows_the_live_cluster_and_a_stopped_primary_as_an_error(
        primary: PgCluster, safekeeper: Safekeeper, start_standby, workdir: str, tmp_path):
    browser = Chromium(workdir)
    start_standby(safekeeper, primary, partial_interval="3s")
    api = safekeeper.api()
    url = f"http://127.0.0.1:{safekeeper.http_port}/"
    # A few seconds of commits, so that the chart has a shape: the upload lag grows between
    # partial uploads and drops at each.
    for _ in range(8):
        emit_wal(primary, 5)
        time.sleep(1)
    end = primary.current_lsn()
    wait_until("WAL archived", lambda: parse_lsn(api.cluster()["lsn"]["remote"]) >= end, timeout=30)
    assert max(s["seconds"] for s in api.ok("GET", "/v1/clusters/main/lag_history")["samples"]) > 0
    history = wait_until("3 lag samples and the sync probe's answer",
                         lambda: (h := api.ok("GET", "/v1/clusters/main/lag_history"))
                         and len(h["samples"]) >= 3 and h["sync_standby"] is not None and h, timeout=40)
    assert history["sync_standby"] is True, history
    assert not history["storage_failing"], history

    before = api.cluster()
    page = StatusPage(browser.dom(url))
    after = api.cluster()
    card = page.cards["main"]
    assert card["attrs"]["data-health"] == "ok", card
    assert card["badge"] == "streaming", card
    f = card["fields"]
    assert f["connection"] == "streaming"
    assert f["sync"].startswith("yes"), f
    # What the API said while the page refreshed (idle after the load, but PostgreSQL may log a
    # background record meanwhile): the same figures, never beyond what the API reported.
    for field, lsn in (("commit", "commit"), ("flush", "flush"), ("remote", "remote")):
        shown = parse_lsn(f[field])
        assert parse_lsn(before["lsn"][lsn]) <= shown <= parse_lsn(after["lsn"][lsn]) and shown >= end, (field, f, before, after)
    assert f["partial"] in (before["newest_partial"], after["newest_partial"]), (f, before, after)
    assert f["gaps"] == "none" and f["error"] == "", f
    assert int(card["attrs"]["data-samples"]) >= 3, card
    assert len(card["points"].split()) == int(card["attrs"]["data-samples"]), card
    assert page.summary["attrs"]["data-health"] == "ok", page.summary
    assert page.summary["text"] == "all 1 cluster(s) safe", page.summary
    assert page.login_hidden
    healthy_png = browser.screenshot(url, str(tmp_path / "status-streaming.png"))

    # The primary stops: the page must say so, in red, with the reason.
    primary.stop("immediate")
    # After the first retry the error is the steady one: nothing listens at the primary's address.
    wait_until("the safekeeper retrying, twice", lambda: (c := api.cluster())["connection"] == "retrying"
               and c["reconnects"] >= 2, timeout=60)
    page = StatusPage(browser.dom(url))
    last_error = api.cluster()["last_error"]
    assert last_error, api.cluster()
    card = page.cards["main"]
    assert card["attrs"]["data-health"] == "error", card
    assert card["badge"] == "primary unreachable", card
    assert card["fields"]["connection"] == "retrying", card
    # The reason, as the API gives it.
    assert card["fields"]["error"] == last_error, (card, last_error)
    assert page.summary["attrs"]["data-health"] == "error", page.summary
    assert page.summary["text"] == "1 of 1 cluster(s) not safe", page.summary
    stopped_png = browser.screenshot(url, str(tmp_path / "status-primary-stopped.png"))
    phone_png = browser.screenshot(url, str(tmp_path / "status-primary-stopped-phone.png"), size="390,844")
    print(f"\n[status page screenshots: {healthy_png} {stopped_png} {phone_png}]")


def test_status_page_shows_no_data_without_the_token(primary: PgCluster, safekeeper: Safekeeper, start_standby,
                                                     workdir: str):
    browser = Chromium(workdir)
    token = "page-" + os.urandom(8).hex()
    token_file = os.path.join(workdir, "token")
    with open(token_file, "w") as f:
        f.write(token)
    start_standby(safekeeper, primary, sync=False, extra=["--http-auth-token-file", token_file])
    api = safekeeper.api(token)
    port = safekeeper.http_port
    # The document is public by default (it holds no data) and forbids any other origin.
    r = Api(port).get("/")
    assert r.status == 200 and r.headers["content-type"].startswith("text/html"), r
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp, csp
    assert "http://" not in r.text and "https://" not in r.text, "the page must not reference another origin"
    # Its data is not.
    assert Api(port).get("/v1/clusters/main/lag_history").status == 401
    assert api.get("/v1/clusters/main/lag_history").status == 200

    page = StatusPage(browser.dom(f"http://127.0.0.1:{port}/"))
    assert page.cards == {}, page.cards
    assert not page.login_hidden, "the page must ask for the token"
    assert page.summary["attrs"]["data-health"] == "error"
    assert "token" in page.summary["text"], page.summary

    # `--http-auth-public-routes none`: the document needs the token too.
    assert safekeeper.stop() == 0
    safekeeper.start(primary.connstr(), extra=["--http-auth-token-file", token_file, "--http-auth-public-routes", "none"])
    api = safekeeper.api(token)
    assert Api(port).get("/").status == 401
    assert api.get("/").status == 200
    assert safekeeper.stop() == 0
    assert token not in safekeeper.log()

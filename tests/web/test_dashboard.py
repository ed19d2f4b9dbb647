"""The dashboard in a real browser (Debian's chromium, headless, driven by playwright) against a real
`cohort demo` server holding the synthetic learning world: an educator sees its scope only, every chart
draws the figures the metric API gives its key, lineage shows the SQL, the CSV download holds the series,
another tenant's educator sees none of the first tenant's data, every report the catalog lists is a table
of the API's rows (an at-risk learner revealed and audited), a tenant admin narrows to one school, an admin
reads the reconciled ledger, the keys (never a secret) and drills into failed events, an OIDC token signs
in as a key does, the first view is measured from navigation start, and the page fits a phone.
Screenshots go to tests/web/artifacts/."""

from __future__ import annotations

import csv
import io
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from cohort.demo import demo_world
from support import free_port

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                 "(scripts/setup.sh installs it: apt-get install chromium)")]
ARTIFACTS = Path(__file__).parent / "artifacts"
# a small world, loaded whole: both states, every day with data (COHORT_WEB_DEMO_DAYS=90: the demo's own size,
# to measure the first view on it; minutes of loading)
DAYS = int(os.environ.get("COHORT_WEB_DEMO_DAYS", "20"))
# Generous: right after the demo's load the server is still busy with it (metric calls of 1-1.5 s instead of
# 0.1-0.4 s, measured), and the machine may run other tests; the figures measured are printed (-s)
FIRST_VIEW_BOUND_MS = 10000
FIRST_VIEW_TARGET_MS = 1000  # navigation start → first chart drawn, on a machine not saturated by other work
ISSUER, AUDIENCE = "https://id.example.test/realms/cohort", "cohort-dashboard"
SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Demo:
    def __init__(self, url: str, data_dir: Path, output: str):
        self.url, self.data_dir, self.output = url, data_dir, output
        self.http = httpx.Client(base_url=url, timeout=60)  # one connection kept: a new client per call costs ~0.1 s
        self.world = demo_world(DAYS)
        self.keys = {role: key for role, key in re.findall(r"^  (\w+) +\S+(?: tenant)? +(ck_\S+)", output, re.M)
                     if role != "educator"}
        educators = re.findall(r"^  educator +\S+ +(ck_\S+)\n +scope (\S+)", output, re.M)
        assert len(educators) == 2, output
        self.educator, self.educator_scope = educators[0]
        self.tenant = self.world.tenants[0].channel
        self.other_tenant = self.world.tenants[1].channel

    def get_health(self) -> dict:
        return self.http.get("/health", timeout=30).json()

    def token(self, role: str, tenant: str, scope: str | None, subject: str = "teacher-7") -> str:
        """An OIDC token as the identity provider would sign it (the server holds its public key)."""
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 600,
                  "cohort_role": role, "cohort_tenant": tenant, **({"cohort_scope": scope} if scope else {})}
        return jwt.encode(claims, SIGNING_KEY, algorithm="RS256", headers={"kid": "dashboard-test"})

    def get(self, path: str, key: str, **params) -> dict:
        response = self.http.get(path, params=params, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        return response.json()["result"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[Demo]:
    tmp = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    log_path = tmp / "demo.log"
    jwks = tmp / "jwks.json"  # the identity provider's public key: the server verifies tokens signed with it
    public = jwt.algorithms.RSAAlgorithm.to_jwk(SIGNING_KEY.public_key(), as_dict=True)
    jwks.write_bytes(orjson.dumps({"keys": [{**public, "kid": "dashboard-test", "use": "sig"}]}))
    env = {**os.environ, "COHORT_OIDC_JWKS": str(jwks), "COHORT_OIDC_ISSUER": ISSUER,
           "COHORT_OIDC_AUDIENCE": AUDIENCE}
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "cohort.cli", "demo", "--port", str(port), "--events", "0",
                                 "--days", str(DAYS), "--batch-size", "100", "--data-dir", str(tmp / "data")],
                                stdout=log_file, stderr=subprocess.STDOUT, env=env)
    demo = None
    try:
        deadline = time.monotonic() + 240
        while "Ctrl-C to stop" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.3)
        demo = Demo(f"http://127.0.0.1:{port}", tmp / "data", log_path.read_text())
        while demo.get_health()["pipeline"]["backlog_events"] > 0:  # every event processed before the first view
            assert time.monotonic() < deadline, demo.get_health()
            time.sleep(0.3)
        yield demo
    finally:
        if demo is not None:
            demo.http.close()
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # a 401 is the API's answer to a wrong key, which the page shows as such (test_sign_out_forgets_the_key); a
    # 429 is the server's admission (two queries of a key at once) while a reloaded page's predecessor still
    # holds its slots: the page waits and retries it, and the figures compared below show that it did
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "status of 401" not in msg.text
            and "status of 429" not in msg.text else None)
    yield page
    context.close()
    assert not errors, errors  # no script error, no CSP violation


def sign_in(page, demo: Demo, key: str) -> int:
    """Sign in with `key` and wait for the first view (the first chart drawn); its time from the sign-in in ms,
    as the page measured it."""
    if page.url.startswith(demo.url):  # signed in already in this tab: a fresh page without the key
        page.evaluate("sessionStorage.removeItem('cohort.key')")
    page.goto(demo.url + "/")
    page.get_by_label("API key or token").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("body[data-first-view-ms]", state="attached", timeout=30000)
    return int(page.evaluate("document.body.dataset.firstViewMs"))


def shown_range(page) -> dict[str, str]:
    end = date.fromisoformat(page.input_value("#range-to")) + timedelta(days=1)
    return {"from": page.input_value("#range-from"), "to": end.isoformat(),
            "granularity": page.input_value("#range-granularity")}


def cell_texts(rows) -> list[tuple[str, ...]]:
    """The text of each row's cells, read from the page in one call (a call per row took seconds a table)."""
    return [tuple(cells) for cells in rows.evaluate_all(
        "(rows) => rows.map((row) => Array.from(row.querySelectorAll('td'), (td) => td.textContent))")]


def figure_table(page, name: str) -> list[tuple[str, str]]:
    return cell_texts(page.locator(f'article[data-metric="{name}"] details table tbody tr'))  # type: ignore[return-value]


def as_table(series: list[dict], k: int) -> list[tuple[str, str]]:
    return [(c["bucket"][:10], f"suppressed (fewer than {k} learners)" if c["suppressed"] else _number(c["value"]))
            for c in series]


def _number(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def drawn_pixels(page, name: str) -> int:
    """Non-blank pixels of a figure's chart canvas: > 0 once a series is drawn."""
    return page.evaluate("""(name) => {
      const canvas = document.querySelector(`article[data-metric="${name}"] canvas`);
      if (!canvas || !canvas.width || !canvas.height) return 0;
      const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      let n = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
      return n;
    }""", name)


def test_an_educator_sees_its_scope_every_chart_lineage_and_a_csv_of_each_figure(page, demo, tmp_path):
    registry = [m["name"] for m in demo.get("/v1/metrics", demo.educator)["metrics"]]
    first_view = sign_in(page, demo, demo.educator)
    page.get_by_role("button", name="Sign out").click()
    again = sign_in(page, demo, demo.educator)
    print(f"\nfirst view after sign-in: {first_view} ms, signed in again: {again} ms ({len(registry)} figures)")
    assert first_view < FIRST_VIEW_BOUND_MS and again < FIRST_VIEW_BOUND_MS
    assert page.inner_text("#who-tenant") == demo.tenant and page.inner_text("#who-role") == "educator"
    assert page.inner_text("#who-scope") == demo.educator_scope
    assert page.locator("#tab-admin").is_hidden()  # no administrator view for an educator
    page.wait_for_selector('body[data-ready="1"]', state="attached")
    page.screenshot(path=str(ARTIFACTS / "educator.png"), full_page=True)

    params = shown_range(page)
    assert page.locator("#figures article.figure").count() == len(registry)
    differs = 0
    for name in registry:
        mine = demo.get(f"/v1/metrics/{name}", demo.educator, **params)
        assert mine["scope"] == demo.educator_scope
        shown = figure_table(page, name)
        assert shown == as_table(mine["series"], mine["suppression"]["k"]), name
        card = page.locator(f'article[data-metric="{name}"]')
        if mine["series"]:
            assert drawn_pixels(page, name) > 0, name
        else:  # e.g. no QR scan is tied to a course batch: said so, no empty chart
            assert "No events in this range and scope." in card.inner_text()
        assert "data received up to" in card.locator(".freshness").inner_text()
        assert "window" in card.locator(".completeness").inner_text()
        tenant_wide = demo.get(f"/v1/metrics/{name}", demo.keys["tenant_admin"], **params)
        differs += tenant_wide["series"] != mine["series"]
    assert differs > 0  # the educator's figures are its batch's, not the tenant's

    name = registry[0]
    page.locator(f'article[data-metric="{name}"] button.lineage').click()
    dialog = page.locator("#lineage-dialog")
    dialog.wait_for(state="visible")
    dialog.locator("pre.sql").wait_for()
    sql = dialog.locator("pre.sql").inner_text()
    assert "SELECT" in sql.upper() and demo.get(f"/v1/lineage/metric/{name}", demo.educator, **params)["query"]["sql"] == sql
    assert "telemetry" in dialog.inner_text()
    page.screenshot(path=str(ARTIFACTS / "lineage.png"))
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")

    with page.expect_download() as download_info:
        page.locator(f'article[data-metric="{name}"] button.csv').click()
    saved = tmp_path / "figure.csv"
    download_info.value.save_as(saved)
    rows = list(csv.DictReader(io.StringIO(saved.read_text())))
    series = demo.get(f"/v1/metrics/{name}", demo.educator, **params)["series"]
    assert len(rows) == len(series) > 0
    for row, cell in zip(rows, series, strict=True):
        assert row["bucket"] == cell["bucket"] and row["suppressed"] == str(cell["suppressed"]).lower()
        assert row["value"] == ("" if cell["value"] is None else _number(cell["value"]))



def test_the_events_behind_a_figure_export_as_parquet_when_the_server_exports(page, demo, tmp_path):
    import pyarrow.parquet as pq

    sign_in(page, demo, demo.educator)
    page.wait_for_selector('body[data-ready="1"]', state="attached")
    params = shown_range(page)
    probe = httpx.get(f"{demo.url}/v1/exhaust/telemetry", params={"from": params["from"], "to": params["to"],
                      "format": "parquet"}, headers={"Authorization": f"Bearer {demo.educator}"}, timeout=60)
    if probe.status_code != 200:
        pytest.skip(f"/v1/exhaust does not answer yet ({probe.status_code}): {probe.text[:200]}")
    with page.expect_download() as download_info:
        page.locator("article.figure button.events").first.click()
    saved = tmp_path / "events.parquet"
    download_info.value.save_as(saved)
    assert pq.read_table(saved).num_rows == pq.read_table(io.BytesIO(probe.content)).num_rows > 0


def test_another_tenants_educator_sees_none_of_the_first_tenants_data(page, demo):
    batch = demo.world.batches_of(demo.other_tenant)[0].id
    made = subprocess.run([sys.executable, "-m", "cohort.cli", "keys", "create", "--data-dir", str(demo.data_dir),
                           "--tenant", demo.other_tenant, "--role", "educator", "--scope", f"batch:{batch}"],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    other = made.stdout.strip().splitlines()[-1].split()[-1]
    sign_in(page, demo, other)
    page.wait_for_selector('body[data-ready="1"]', state="attached")
    page.screenshot(path=str(ARTIFACTS / "other-tenant-educator.png"), full_page=True)
    assert page.inner_text("#who-tenant") == demo.other_tenant
    params = shown_range(page)
    text = page.inner_text("body")
    assert demo.tenant not in text
    seen = 0
    for name in [m["name"] for m in demo.get("/v1/metrics", other)["metrics"]]:
        theirs = demo.get(f"/v1/metrics/{name}", other, **params)
        assert theirs["tenant"] == demo.other_tenant
        assert figure_table(page, name) == as_table(theirs["series"], theirs["suppression"]["k"])
        first = demo.get(f"/v1/metrics/{name}", demo.educator, **params)
        seen += bool(theirs["series"]) and theirs["series"] != first["series"]
    assert seen > 0  # it sees its own figures, which are not the first tenant's


def test_an_admin_drills_into_failed_events_and_reads_the_audit_log(page, demo):
    bad = [{"eid": "START", "mid": f"dashboard-bad-{i}", "ets": "not a time", "context": {"channel": demo.tenant}}
           for i in range(3)]
    sent = httpx.post(demo.url + "/v1/telemetry", headers={"Authorization": f"Bearer {demo.keys['admin']}",
                      "Content-Type": "application/json", "X-Channel-Id": demo.tenant}, timeout=30,
                      content=orjson.dumps({"id": "api.sunbird.telemetry", "ver": "3.0",
                                            "params": {"msgid": "dashboard-bad"}, "events": bad}))
    assert sent.status_code == 200, sent.text
    failed_sql = {"sql": "SELECT error_code FROM failed_events WHERE mid LIKE 'dashboard-bad-%'"}
    deadline = time.monotonic() + 60
    while True:
        codes = httpx.post(demo.url + "/v1/query", json=failed_sql, timeout=30,
                           headers={"Authorization": f"Bearer {demo.keys['admin']}"}).json()["result"]
        if len(codes) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(codes) == 3, codes
    code = codes[0]["error_code"]

    sign_in(page, demo, demo.keys["admin"])
    page.get_by_role("button", name="Administration").click()
    assert page.inner_text("#who-tenant") == "all tenants"
    page.locator(f'#failed button.drill[data-code="{code}"]').click()
    rows = page.locator("#failed-rows tbody tr")
    rows.first.wait_for()
    assert rows.count() >= 3 and all(code in row for row in rows.all_inner_texts())
    assert "dashboard-bad-0" in page.inner_text("#failed-rows")
    page.locator('#health dd[data-key="unaccounted (always 0)"]').wait_for()
    assert page.inner_text('#health dd[data-key="unaccounted (always 0)"]') == "0"
    assert int(page.inner_text('#health dd[data-key="events failed"]')) >= 3
    page.locator("#audit tbody tr").first.wait_for()
    assert "metric" in page.inner_text("#audit")  # the figures just read are in the audit log
    page.locator("#tables tbody tr").first.wait_for()
    assert "telemetry" in page.inner_text("#tables") and "failed_events" in page.inner_text("#tables")
    page.screenshot(path=str(ARTIFACTS / "admin.png"), full_page=True)


def test_phone_width_has_no_horizontal_scroll_and_keyboard_reaches_the_controls(browser, demo):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  accept_downloads=True)
    page = context.new_page()
    try:
        page.goto(demo.url + "/")
        page.keyboard.press("Tab")  # skip link first, then the key field
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "api-key"
        page.keyboard.type(demo.keys["tenant_admin"])
        page.keyboard.press("Enter")
        page.wait_for_selector('body[data-ready="1"]', state="attached", timeout=30000)
        for name in [m["name"] for m in demo.get("/v1/metrics", demo.keys["tenant_admin"])["metrics"]]:
            assert len(figure_table(page, name)) > 0 and drawn_pixels(page, name) > 0, name  # every chart has data
        wide = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        page.screenshot(path=str(ARTIFACTS / "phone-educator.png"), full_page=True)
        assert wide <= 0, f"{wide} px of horizontal scroll at 390 px"
        unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, .chart, .table-wrap')]
          .filter((n) => n.offsetParent !== null)
          .filter((n) => !(n.labels && n.labels.length) && !n.getAttribute('aria-label'))
          .map((n) => n.id || n.className)""")
        assert unlabelled == [], unlabelled  # every control and chart has a name a screen reader says
        reached = set()
        page.focus("#pick-kind")
        for _ in range(12):  # the keyboard reaches every control of the scope and range form
            reached.add(page.evaluate("document.activeElement.id || document.activeElement.textContent"))
            page.keyboard.press("Tab")
        assert {"pick-kind", "range-preset", "range-granularity", "Show"} <= reached, reached
        page.get_by_role("button", name="Administration").click()
        page.locator("#audit tbody tr").first.wait_for()
        page.locator("#keys tbody tr").first.wait_for()
        wide = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        page.screenshot(path=str(ARTIFACTS / "phone-admin.png"), full_page=True)
        assert wide <= 0, f"{wide} px of horizontal scroll at 390 px (admin view)"
    finally:
        context.close()


def test_sign_out_forgets_the_key(page, demo):
    sign_in(page, demo, demo.educator)
    assert page.evaluate("sessionStorage.getItem('cohort.key')") == demo.educator
    page.get_by_role("button", name="Sign out").click()
    assert page.evaluate("sessionStorage.getItem('cohort.key')") is None
    assert page.locator("#sign-in").is_visible() and page.locator("article.figure").count() == 0
    page.reload()
    assert page.locator("#sign-in").is_visible()
    page.get_by_label("API key or token").fill("ck_nosuchkey123_" + "x" * 43)
    page.get_by_role("button", name="Sign in").click()
    from playwright.sync_api import expect

    expect(page.locator("#sign-in-error")).to_have_text("That key or token was not accepted.")
    assert page.evaluate("sessionStorage.getItem('cohort.key')") is None


def report_rows(page, name: str) -> list[tuple[str, ...]]:
    return cell_texts(page.locator(f'article[data-metric="{name}"] table tbody tr'))


def report_cell(value, unit: str) -> str:
    """A report value as the page writes it (lists joined, records as `key value`, percents with %)."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "; ".join(report_cell(v, unit) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k.replace('_', ' ')} {report_cell(v, unit)}" for k, v in value.items())
    if unit == "percent" and isinstance(value, (int, float)):
        return f"{_number(round(value * 1000) / 1000)} %"
    return _number(value)


def test_every_report_is_a_table_of_the_apis_rows_and_an_at_risk_learner_is_revealed_and_audited(page, demo, tmp_path):
    reports = demo.get("/v1/metrics", demo.educator)["reports"]
    assert {"at_risk_learners", "course_progress"} <= {r["name"] for r in reports}, reports
    sign_in(page, demo, demo.educator)
    page.wait_for_selector('body[data-ready="1"]', state="attached")
    params = shown_range(page)
    for report in reports:
        answer = demo.get(f"/v1/metrics/{report['name']}", demo.educator, **{k: params[k] for k in ("from", "to")})
        card = page.locator(f'article[data-metric="{report["name"]}"]')
        assert "data received up to" in card.locator(".freshness").inner_text() or not answer["freshness"]["as_of"]
        assert "window" in card.locator(".completeness").inner_text()
        units = [c["unit"] for c in answer["columns"]]
        expected = [tuple(report_cell(v, u) for v, u in zip(row, units, strict=True)) for row in answer["rows"]]
        shown = [row[:len(units)] for row in report_rows(page, report["name"])]
        assert shown == expected, report["name"]
        assert card.locator("button.lineage").count() == 1 and card.locator("button.csv").count() == 1
    at_risk = demo.get("/v1/metrics/at_risk_learners", demo.educator, **{k: params[k] for k in ("from", "to")})
    assert at_risk["rows"], "the demo world has learners at risk in the educator's batch"
    card = page.locator('article[data-metric="at_risk_learners"]')
    first = at_risk["rows"][0]
    assert first[0] in card.inner_text() and report_cell(first[1], "list") in card.inner_text()  # reasons shown

    with page.expect_download() as download_info:  # the report's CSV holds its rows
        card.locator("button.csv").click()
    saved = tmp_path / "at_risk.csv"
    download_info.value.save_as(saved)
    rows = list(csv.reader(io.StringIO(saved.read_text())))
    assert rows[0] == [c["name"] for c in at_risk["columns"]] and len(rows) == len(at_risk["rows"]) + 1
    assert [r[0] for r in rows[1:]] == [r[0] for r in at_risk["rows"]]

    card.locator("button.reveal").first.click()
    revealed = card.locator(".identity .revealed").first
    revealed.wait_for()
    clear = revealed.inner_text()
    assert clear and not clear.startswith("u:") and clear != first[0]
    page.screenshot(path=str(ARTIFACTS / "at-risk-revealed.png"), full_page=True)

    sign_in(page, demo, demo.keys["tenant_admin"])  # the audit log, as a tenant admin reads it in the page
    page.get_by_role("button", name="Administration").click()
    page.locator("#audit tbody tr").first.wait_for()
    audit = page.inner_text("#audit")
    subject = demo.get("/v1/whoami", demo.educator)["subject"]
    assert "reidentify" in audit and subject in audit
    entries = demo.get("/v1/audit", demo.keys["tenant_admin"], limit="500")["entries"]
    while len(entries) == 500:  # follow the log to its end
        more = demo.get("/v1/audit", demo.keys["tenant_admin"], limit="500", since=str(entries[-1]["seq"]))["entries"]
        if not more:
            break
        entries = more
    assert any(e["action"] == "reidentify" and e["outcome"] == "ok" and e["actor_subject"] == subject for e in entries)


def test_a_tenant_admin_narrows_to_one_school_and_every_figure_follows(page, demo, tmp_path):
    school = demo.world.tenants[0].schools[0][0]
    key = demo.keys["tenant_admin"]
    sign_in(page, demo, key)
    page.wait_for_selector('body[data-ready="1"]', state="attached")
    assert page.inner_text("#who-scope") == "whole tenant"
    page.select_option("#pick-kind", "rollup.l3")
    page.fill("#pick-value", school)
    page.select_option("#range-preset", "90")
    page.get_by_role("button", name="Show").click()
    page.wait_for_selector('body[data-ready="1"]', state="attached")
    assert f"rollup.l3:{school}" in page.inner_text("#educator-status")
    params = shown_range(page)
    assert date.fromisoformat(params["to"]) - date.fromisoformat(params["from"]) == timedelta(days=90)
    narrower = 0
    for name in [m["name"] for m in demo.get("/v1/metrics", key)["metrics"]]:
        mine = demo.get(f"/v1/metrics/{name}", key, scope=f"rollup.l3:{school}", **params)
        assert mine["scope"] == f"rollup.l3:{school}"
        assert figure_table(page, name) == as_table(mine["series"], mine["suppression"]["k"]), name
        narrower += mine["series"] != demo.get(f"/v1/metrics/{name}", key, **params)["series"]
    assert narrower > 0  # the school's figures, not the tenant's
    page.screenshot(path=str(ARTIFACTS / "tenant-admin-one-school.png"), full_page=True)
    # the events behind a figure are the school's events too
    import pyarrow.parquet as pq

    with page.expect_download() as download_info:
        page.locator("article.figure button.events").first.click()
    saved = tmp_path / "school-events.parquet"
    download_info.value.save_as(saved)
    exported = {"from": params["from"], "to": params["to"], "format": "parquet"}
    auth = {"Authorization": f"Bearer {key}"}
    school_only = httpx.get(f"{demo.url}/v1/exhaust/telemetry", params={**exported, "scope": f"rollup.l3:{school}"},
                            headers=auth, timeout=60)
    whole = httpx.get(f"{demo.url}/v1/exhaust/telemetry", params=exported, headers=auth, timeout=60)
    rows = pq.read_table(saved).num_rows
    assert rows == pq.read_table(io.BytesIO(school_only.content)).num_rows > 0
    assert rows < pq.read_table(io.BytesIO(whole.content)).num_rows
    # an educator's own scope is named, and it cannot be widened from the page or the API
    refused = httpx.get(f"{demo.url}/v1/metrics/active_learners", params={"scope": f"rollup.l3:{school}"},
                        headers={"Authorization": f"Bearer {demo.educator}"}, timeout=30)
    assert refused.status_code == 403 and refused.json()["params"]["err"] == "ERR_AUTH_FORBIDDEN"


def test_an_admin_reads_the_reconciled_ledger_and_the_keys_without_secrets(page, demo):
    sign_in(page, demo, demo.keys["admin"])
    page.get_by_role("button", name="Administration").click()
    check = page.locator("#ledger-check")
    check.locator("span").wait_for()
    assert "reconciled" in check.inner_text()
    received = int(page.inner_text('#health dd[data-key="events received"]'))
    parts = [int(page.inner_text(f'#health dd[data-key="{k}"]'))
             for k in ("events stored", "events failed", "events duplicate", "events in flight")]
    assert received == sum(parts) > 0
    rate = page.locator('#health dd[data-key="events/s received"]')
    deadline = time.monotonic() + 15  # a second reading of the ledger gives the rates (the page's CSP forbids eval)
    while rate.inner_text().startswith("measuring") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert float(rate.inner_text()) >= 0
    page.locator("#keys tbody tr").first.wait_for()
    listed = page.inner_text("#keys")
    for key in [demo.educator, *demo.keys.values()]:
        key_id, secret = key.split("_")[1], key.split("_", 2)[2]
        assert key_id in listed and secret not in page.content()  # ids shown, secrets never
    page.screenshot(path=str(ARTIFACTS / "admin-ledger-keys.png"), full_page=True)

    sign_in(page, demo, demo.keys["tenant_admin"])  # a tenant admin: its tenant's keys only
    page.get_by_role("button", name="Administration").click()
    page.locator("#keys tbody tr").first.wait_for()
    tenants = page.locator("#keys tbody tr td:nth-child(2)").all_inner_texts()
    assert tenants and set(tenants) == {demo.tenant}
    assert demo.keys["admin"].split("_")[1] not in page.inner_text("#keys")


def test_an_oidc_token_signs_in_as_a_key_does(page, demo):
    batch = demo.world.batches_of(demo.tenant)[0].id
    token = demo.token("educator", demo.tenant, f"batch:{batch}")
    sign_in(page, demo, token)
    page.wait_for_selector('body[data-ready="1"]', state="attached")
    assert page.inner_text("#who-via") == "OIDC token (teacher-7)"
    assert page.inner_text("#who-role") == "educator" and page.inner_text("#who-scope") == f"batch:{batch}"
    params = shown_range(page)
    for name in [m["name"] for m in demo.get("/v1/metrics", token)["metrics"]]:
        theirs = demo.get(f"/v1/metrics/{name}", token, **params)
        assert theirs["scope"] == f"batch:{batch}"
        assert figure_table(page, name) == as_table(theirs["series"], theirs["suppression"]["k"]), name
    page.get_by_role("button", name="Sign out").click()
    wrong = demo.token("educator", demo.tenant, f"batch:{batch}").rsplit(".", 1)[0] + ".AAAA"  # a forged signature
    page.get_by_label("API key or token").fill(wrong)
    page.get_by_role("button", name="Sign in").click()
    from playwright.sync_api import expect

    expect(page.locator("#sign-in-error")).to_have_text("That key or token was not accepted.")


def test_the_first_view_from_navigation_start_is_measured(page, demo):
    """Navigation start → the first chart drawn, on a page opened with a key of this tab (a reload), as a
    person opening the dashboard waits for it; the median of three."""
    sign_in(page, demo, demo.educator)
    page.wait_for_selector('body[data-ready="1"]', state="attached")
    times, calls = [], []
    for _ in range(3):
        page.reload()
        page.wait_for_selector("body[data-first-chart-ms]", state="attached", timeout=30000)
        times.append(int(page.evaluate("document.body.dataset.firstChartMs")))
        calls.append(page.evaluate("""() => performance.getEntriesByType('resource').filter((e) =>
          new URL(e.name).pathname.startsWith('/v1/') && e.startTime < Number(document.body.dataset.firstChartMs))
          .length"""))
        assert page.locator("#figures article.figure canvas").count() >= 1  # a chart is drawn, not a placeholder
        page.wait_for_selector('body[data-ready="1"]', state="attached")
    median = statistics.median(times)
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    print(f"\nfirst view from navigation start: {times} ms, median {median} ms, API calls started before it "
          f"{calls} (load {load:.2f} per core, {DAYS} days)")
    # the target holds on a machine with cores to spare; a saturated one (other test runs) gets the bound
    assert median < (FIRST_VIEW_TARGET_MS if load < 0.5 else FIRST_VIEW_BOUND_MS), (times, load)

"""The live dashboard in a real browser: Debian's headless Chromium driven by Playwright, against a real proxy (the
demo policy plus key and tag caps, two weeks of earlier spend in its ledger) with traffic through the openai SDK.
The numbers every panel shows must be the finance API's, to the nano-dollar (``data-usd``) and, as printed, to the
precision shown: spend, forecast and burn rate, budget bars of every scope, experiments, alerts and refusals,
untagged share, savings per team against its ceiling tier, cost per accepted output, upstream latency. The team
filter and the date range change what every call asks for; the CSV export downloads the report's own CSV.
Screenshots the page to a temporary file (``scripts/screenshot.sh`` sets ``TIERGATE_SCREENSHOT`` to regenerate
``docs/dashboard.png``): a test run rewrites no tracked file.

Also the insights endpoints the page reads (percentiles, requests by cost, hours) against the same ledger.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI, RateLimitError

from metering.budgets.policy import BudgetLimits, BudgetPolicy
from metering.finops.caps import cap_spend
from metering.ledger import open_ledger
from metering.outcomes import Outcome
from tests.conftest import (
    DEMO_KEYS,
    ROOT,
    Server,
    demo_config,
    free_port,
    mock_config,
    require_service,
    start_server,
)
from tests.metering_fixtures import PG_URL, T0, make_record, pg_schema  # noqa: F401  (pg_schema is a fixture)
from tests.waiting import eventually
from upstream.health import LATENCY_WINDOW, RECENT_FAILURES, HealthBook

CHROMIUM = Path(os.environ.get("TIERGATE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The page's refresh period, read from its script: a wait for the next refresh fast-forwards the page's clock by it.
REFRESH_MS = int(re.search(r"const REFRESH_MS = (\d+);", (ROOT / "proxy/static/dashboard.js").read_text())[1])
SCREENSHOT = os.environ.get("TIERGATE_SCREENSHOT")  # unset: the test's temp dir, so a run rewrites no tracked file
ADMIN = {"authorization": f"Bearer {DEMO_KEYS['admin']}"}
PROMPTS = [
    "What is the capital of France?",
    "Summarise the plot of Hamlet in two sentences.",
    "Derive the closed form of the sum of the first n squares and prove it by induction, step by step.",
    "Design a distributed rate limiter for a global API: trade-offs, failure modes, and a reference implementation.",
]


def _client(proxy: Server, team: str) -> OpenAI:
    return OpenAI(base_url=f"{proxy.url}/v1", api_key=DEMO_KEYS[team], max_retries=0, timeout=60)


def _chat(proxy: Server, team: str, prompt: str, model: str = "auto", stream: bool = False,
          feature: str | None = "search", max_tokens: int | None = None, tags: dict[str, str] | None = None) -> str:
    """One request through the openai SDK; its request id (the x-request-id header)."""
    headers = {f"x-tiergate-tag-{k}": v for k, v in {"feature": feature, **(tags or {})}.items() if v is not None}
    extra: dict[str, Any] = {"max_tokens": max_tokens} if max_tokens else {}
    raw = _client(proxy, team).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], stream=stream, extra_headers=headers, **extra)
    answer = raw.parse()
    if stream:
        assert "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
    else:
        assert answer.choices[0].message.content
    return raw.headers["x-request-id"]


def _traffic(proxy: Server, rounds: int) -> None:
    for i in range(rounds):
        _chat(proxy, "research", PROMPTS[i % len(PROMPTS)], feature="search")
        _chat(proxy, "research", PROMPTS[(i + 2) % len(PROMPTS)], model=("mid", "frontier")[i % 2], feature="agent")
        _chat(proxy, "support", PROMPTS[i % 2], stream=i % 2 == 0, feature="helpdesk")


def _get(proxy: Server, path: str, key: str = "admin", **params: Any) -> dict[str, Any]:
    response = httpx.get(proxy.url + path, params=params, headers={"authorization": f"Bearer {DEMO_KEYS[key]}"},
                         timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _report(proxy: Server, **params: str) -> dict[str, Any]:
    return _get(proxy, "/v1/spend/report", **params)


def _shown_matches(text: str, exact: str) -> bool:
    """The printed amount is the exact one rounded to the decimals it shows."""
    shown = text.strip().replace("$", "").replace(",", "")
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return abs(Decimal(shown) - Decimal(exact)) <= Decimal(5) / Decimal(10) ** (decimals + 1)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    require_service("playwright (python package)", sync_playwright is not None, "pip install playwright")
    require_service("chromium", CHROMIUM.exists(), f"{CHROMIUM} missing: apt-get install -y chromium")
    assert sync_playwright is not None
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def _open(browser: Any, proxy: Server, key: str, external: list[str] | None = None) -> Any:
    """A 1280x800 page logged in with ``key`` after its first refresh; URLs outside the proxy go to ``external``.

    The page's timers run on Playwright's clock, installed before the page loads and paused: a test that waits for
    the next refresh fires the page's own interval at once instead of waiting it out, and the page never refreshes
    on its own in between (in real time it would every few seconds, ~0.3 s of CPU each in Chromium and the proxy,
    while a test is busy elsewhere)."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    now = datetime.now(UTC)
    page.clock.install(time=now)
    page.clock.pause_at(now + timedelta(seconds=1))
    if external is not None:
        page.on("request", lambda r: None if r.url.startswith(proxy.url) else external.append(r.url))
    page.goto(proxy.url + "/dashboard")
    page.get_by_test_id("key-input").fill(key)
    before = _refreshes(page)
    page.get_by_test_id("key-submit").click()
    _wait_for_refreshes(page, 1, since=before)  # logging in starts the first refresh
    return page


def _refreshes(page: Any) -> int:
    return int(page.get_attribute("body", "data-refreshes") or 0)


def _status(page: Any) -> str:
    """The page's status line: "Updated <time> UTC", or "Update failed: <why>" until a refresh succeeds."""
    return page.get_by_test_id("updated-at").inner_text()


def _wait_for_refreshes(page: Any, more: int, since: int | None = None) -> None:
    """Until ``more`` more refreshes have been drawn than now, or than ``since``: the count before an action that
    starts one itself (logging in, loading the page), which may be drawn already or still under way. Each other is
    started by the page's interval timer, fast-forwarded by one period whenever the last one asked for has been
    drawn, or has failed: the page then tries again at its next tick, as in real time. A tick during a refresh
    queues one more (the page's ``again``), so a refresh begun after this call is always among them. Polled from
    here: the page's CSP (no eval) rules out Playwright's in-page ``wait_for_function``."""
    start = _refreshes(page) if since is None else since
    target = start + more
    asked = [-1 if since is None else since]

    def drawn() -> bool:
        now = _refreshes(page)
        if now >= target:
            return True
        if now != asked[0] or _status(page).startswith("Update failed"):
            page.clock.fast_forward(REFRESH_MS)  # the interval's next tick, now
            asked[0] = now
        return False

    try:
        eventually(drawn, f"{more} more dashboard refresh(es)")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the page says {_status(page)!r}") from None


def _usd(page: Any, testid: str) -> tuple[str, str]:
    el = page.get_by_test_id(testid)
    return el.get_attribute("data-usd"), el.inner_text()


def _assert_usd(page: Any, testid: str, exact: str) -> None:
    """The element carries the API's exact string and prints it rounded to the digits it shows."""
    shown_exact, text = _usd(page, testid)
    assert shown_exact == exact, (testid, shown_exact, exact)
    assert _shown_matches(text, exact), (testid, text, exact)


def _wait_for_view(page: Any, start: str, end: str, team: str = "") -> None:
    """Until a refresh that began after the change (range, team) has been drawn. A refresh that failed (an API call
    slow or refused on a loaded machine) is tried again at the page's next tick, as in real time: fast-forwarded."""
    want = f"{start}/{end}/{team}"
    retried_at = [0.0]

    def shown() -> bool:
        if page.get_attribute("body", "data-view") == want:
            return True
        if _status(page).startswith("Update failed") and time.monotonic() - retried_at[0] > 0.5:
            page.clock.fast_forward(REFRESH_MS)
            retried_at[0] = time.monotonic()
        return False

    try:
        eventually(shown, f"the dashboard showing {want}")
    except AssertionError as exc:
        view = page.get_attribute("body", "data-view")
        raise AssertionError(f"{exc}; the page shows {view!r} and says {_status(page)!r}") from None
    _wait_for_refreshes(page, 1)  # and one more, begun after the last traffic, so no refresh is stale


# ---- a proxy with history, key and tag caps, an experiment and feedback --------------------------------------------

TEAM_CAPS = '      team: {daily_usd: "25", monthly_usd: "500"}\n'
# A key cap every research key has, and two tag caps some 15 short frontier answers cross at 50% and 80% before one is
# refused (a request reserves its worst case, ~7% of the cap): 'nightly' for the screenshot's test, 'batch' for the
# crossing test (each crosses once a month).
MORE_CAPS = ('      per_key: {daily_usd: "5", monthly_usd: "50"}\n'
             '      per_tag: {"feature=nightly": {monthly_usd: "0.02"}, "feature=batch": {monthly_usd: "0.02"}}\n')
HISTORY_DAYS = 14


def _seed_history(url: str) -> None:
    """Two weeks of earlier spend (a weekly cycle) for the forecast's burn rate and the date range to move over."""
    today = datetime.now(UTC).date()
    records = []
    for back in range(1, HISTORY_DAYS + 1):
        day = today - timedelta(days=back)
        noon = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
        weekly = 3 if day.weekday() < 5 else 1
        for n in range(weekly):
            for team, key, tier, cost in (("research", "research-demo", "mid", 2_345_678),
                                          ("support", "support-demo", "small", 123_457)):
                records.append(make_record(len(records), request_id=f"hist-{back}-{n}-{team}", team=team, key_id=key,
                                           tier=tier, model="gpt-4o", deployment=f"{tier}-sim", cost_nanos=cost + back,
                                           counterfactual_cost_nanos=cost * 6, started_at=noon + timedelta(minutes=n),
                                           ended_at=noon + timedelta(minutes=n, seconds=1),
                                           tags={"feature": "history"} if n else {}))

    async def write() -> None:
        ledger = open_ledger(url, spool_dir=None)
        await ledger.start()
        try:
            for record in records:
                await ledger.write(record)
            for outcome in _judged_history(today):
                await ledger.add_outcome(outcome)
        finally:
            await ledger.close()

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API may hold this thread's event loop
        pool.submit(asyncio.run, write()).result()


def _judged_history(today: date) -> list[Outcome]:
    """Judged samples of research on the history days (its routing-evidence panel; tests/test_dashboard_evidence
    produces them through shadow calls and the judge): small against the ceiling, some mid against the floor."""
    grades = [(1.0, 1.0), (0.5, 0.5), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
    out = []
    for back in range(1, HISTORY_DAYS + 1):
        noon = datetime.combine(today - timedelta(days=back), datetime.min.time(), tzinfo=UTC)
        noon += timedelta(hours=12)
        for n, (weak, strong) in enumerate(grades[: 2 + back % 4]):
            weak_tier, strong_tier = ("small", "mid") if n == 3 else ("small", "frontier")
            out.append(Outcome(request_id=f"hist-judged-{back}-{n}", team="research", created_at=noon, features=(),
                               feature_names=(), prior_score=0.2, model_id="default", weak_tier=weak_tier,
                               strong_tier=strong_tier, routed_tier=strong_tier if n == 3 else "small",
                               ceiling_tier="frontier", weak_score=weak, strong_score=strong, judge="frontier-sim"))
    return out


@pytest.fixture(scope="module")
def finops_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("finops")
    config = demo_config(tmp)
    text = config.read_text()
    assert text.count(TEAM_CAPS) == 1, "configs/demo.yaml's research caps moved: update TEAM_CAPS"
    config.write_text(text.replace(TEAM_CAPS, TEAM_CAPS + MORE_CAPS))
    _seed_history(f"sqlite:///{tmp}/ledger.db")
    port = free_port()
    process = start_server(["serve", "--config", str(config), "--port", str(port)], port, tmp / "proxy.log", "/readyz")
    yield process
    process.stop()


@dataclass
class AdminTab:
    """The admin page of the finance proxy, every URL outside the proxy it has asked for, and how often a test has
    visited it."""

    page: Any
    external: list[str]
    visits: int = 0

    def visit(self) -> Any:
        """The page as a login leaves it: every team, this month, its first refresh drawn, nothing else under way.
        The first test gets it as opened; the next ones reload it (the key stays in the tab's session, as on any
        reload), which is a fresh page's state without a new tab and login."""
        if self.visits:
            self.page.reload()
            _wait_for_refreshes(self.page, 1, since=0)  # a page loaded with a key starts its first refresh
        self.visits += 1
        return self.page


@pytest.fixture(scope="module")
def admin_page(finops_proxy: Server, browser: Any) -> Iterator[AdminTab]:
    """One admin page for the tests that look at the finance proxy as an admin: opening a page costs ~2 s of CPU (a
    tab, the page, the login and its first refresh, in Chromium and the proxy), a reload less than half that."""
    external: list[str] = []
    tab = AdminTab(_open(browser, finops_proxy, DEMO_KEYS["admin"], external), external)
    yield tab
    tab.page.close()


def _cross(proxy: Server, feature: str, most: int = 80) -> int:
    """Short frontier answers tagged ``feature`` until its cap refuses one (429); how many were served."""
    for served in range(most):
        try:
            _chat(proxy, "research", f"{PROMPTS[3]} Variant {served}.", model="frontier", feature=feature,
                  max_tokens=16)
        except RateLimitError as exc:
            assert "budget" in str(exc).lower(), exc
            return served
    raise AssertionError(f"{most} requests tagged {feature} were all served: the cap never refused one")


def _finance_traffic(proxy: Server) -> None:
    """Every panel gets something: both teams, tags and untagged requests, the experiment, feedback, a crossing."""
    _traffic(proxy, 2)
    _chat(proxy, "support", PROMPTS[0], feature=None)  # untagged
    accepted = [_chat(proxy, "research", PROMPTS[1], feature=None, tags={"prompt": "summarizer-v2"}) for _ in range(2)]
    rejected = _chat(proxy, "research", PROMPTS[0], feature="search")
    for request_id, label in ((accepted[0], "accepted"), (accepted[1], "accepted"), (rejected, "rejected")):
        response = httpx.post(proxy.url + "/v1/feedback", json={"request_id": request_id, "label": label},
                              headers={"authorization": f"Bearer {DEMO_KEYS['research']}"}, timeout=30)
        assert response.status_code == 200, response.text
    _cross(proxy, "nightly")


def _assert_finance_panels(page: Any, proxy: Server, team: str | None = None) -> None:
    """Every finance panel shows the API's numbers (``team``: the filter in use)."""
    scope = {"team": team} if team else {}
    forecast = _get(proxy, "/v1/spend/forecast", group_by="team", **scope)
    _assert_usd(page, "forecast-total", forecast["total"]["projected_usd"])
    _assert_usd(page, "forecast-burn", forecast["total"]["burn_rate_usd_per_day"])
    for row in forecast["rows"]:
        _assert_usd(page, f"forecast-projected-{row['team']}", row["projected_usd"])
        _assert_usd(page, f"forecast-burn-{row['team']}", row["burn_rate_usd_per_day"])
        runout = page.get_by_test_id(f"forecast-runout-{row['team']}").inner_text()
        for budget in row["budgets"]:
            assert (budget["runs_out_on"] or "holds") in runout, (runout, budget)

    caps = _get(proxy, "/v1/spend/budgets", **scope)["caps"]
    assert {c["scope"] for c in caps} == ({"team", "key", "tag"} if team != "support" else {"team"})
    for cap in caps:
        testid = (f"team-{cap['period']}-{cap['team']}" if cap["scope"] == "team"
                  else f"cap-{cap['scope']}-{cap['period']}-{cap['team']}-{cap['name']}")
        _assert_usd(page, testid, cap["spent_usd"])

    experiments = _get(proxy, "/v1/spend/experiments", **scope)["experiments"]
    assert [e["name"] for e in experiments] == ([] if team == "support" else ["summarizer-v2"])
    for e in experiments:
        _assert_usd(page, f"cap-experiment-{e['team']}-{e['name']}", e["spent_usd"])
        _assert_usd(page, f"experiment-spent-{e['name']}", e["spent_usd"])
        _assert_usd(page, f"experiment-projected-{e['name']}", e["projected_usd"])
        assert page.get_by_test_id(f"experiment-owner-{e['name']}").inner_text() == e["owner"]
        assert page.get_by_test_id(f"experiment-status-{e['name']}").inner_text() == e["status"]

    teams = {t["team"]: t for t in _get(proxy, "/v1/spend/teams", **scope)["teams"]}
    month = _report(proxy, group_by="team", **scope)
    for row in month["rows"]:
        _assert_usd(page, f"savings-{row['team']}", row["savings_usd"])
        ceiling = teams[row['team']]['ceiling_tier']
        assert page.get_by_test_id(f"baseline-{row['team']}").inner_text() == f"always-{ceiling}"
    ceilings = {teams[r["team"]]["ceiling_tier"] for r in month["rows"]}
    label = page.get_by_test_id("savings-label").inner_text()
    assert label == (f"Saved vs always-{ceilings.pop()}" if len(ceilings) == 1 else "Saved vs each team's ceiling")
    assert "frontier" not in label or team == "research"  # the old "all-frontier" claim is gone

    tags = _report(proxy, group_by="tag", **scope)
    total = Decimal(tags["totals"]["cost_usd"])
    untagged = [r for r in tags["rows"] if r["tag_value"] is None]
    assert untagged, "the traffic has untagged requests"
    for row in untagged:
        name = row["tag_key"] or "(no tags at all)"
        _assert_usd(page, f"untagged-{name}", row["cost_usd"])
        share = page.get_by_test_id(f"untagged-share-{name}").inner_text().rstrip("%")
        assert _shown_matches(share, str(Decimal(row["cost_usd"]) * 100 / total)), (name, share)

    value = _get(proxy, "/v1/spend/value", group_by="team", **scope)
    for row in value["rows"]:
        if row["cost_per_accepted_usd"] is None:
            assert page.get_by_test_id(f"value-{row['team']}").inner_text() == "no accepted"
        else:
            _assert_usd(page, f"value-{row['team']}", row["cost_per_accepted_usd"])

    alerts = _get(proxy, "/v1/alerts", since=month["start"], until=month["end"], limit=1000, **scope)["alerts"]
    counts = page.get_by_test_id("alert-counts")
    assert counts.get_by_test_id("alert-thresholds").inner_text() == str(sum(a["kind"] == "threshold" for a in alerts))
    assert counts.get_by_test_id("alert-refusals").inner_text() == str(sum(a["kind"] == "refusal" for a in alerts))
    shown = [page.get_by_test_id(f"alert-{a['id']}").count() for a in alerts[:8]]
    assert shown == [1] * len(alerts[:8])  # the newest, in the API's order


def test_dashboard_shows_the_spend_report(finops_proxy: Server, admin_page: AdminTab, tmp_path: Path) -> None:
    """Also the test ``scripts/screenshot.sh`` runs for ``docs/dashboard.png``: it makes every panel show something."""
    proxy = finops_proxy
    _finance_traffic(proxy)
    page, external = admin_page.visit(), admin_page.external
    assert page.get_by_test_id("scope").inner_text() == "All teams · admin"

    _traffic(proxy, 2)  # more traffic after the page loaded: a later refresh must show it
    _wait_for_refreshes(page, 2)  # the second one started after the traffic had been settled
    month = _report(proxy)
    today = datetime.now(UTC).date().isoformat()
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()  # the API's end is exclusive
    day = _report(proxy, start=today, end=tomorrow)
    assert day["totals"]["requests"] >= 24 and month["totals"]["requests"] > day["totals"]["requests"]

    _assert_usd(page, "month-spend", month["totals"]["cost_usd"])
    _assert_usd(page, "range-spend", month["totals"]["cost_usd"])  # the default range is this month
    _assert_usd(page, "day-spend", day["totals"]["cost_usd"])
    assert page.get_by_test_id("month-requests").inner_text().replace(",", "") == str(month["totals"]["requests"])
    assert page.get_by_test_id("day-requests").inner_text().replace(",", "") == str(day["totals"]["requests"])
    _assert_usd(page, "savings", month["totals"]["savings_usd"])
    for row in month["rows"]:
        _assert_usd(page, f"team-month-{row['team']}", row["cost_usd"])
    keys = _report(proxy, group_by="key")["rows"]
    top_key = max(keys, key=lambda r: Decimal(r["cost_usd"]))
    assert _usd(page, f"key-{top_key['key_id']}")[0] == top_key["cost_usd"]
    requests = int(month["totals"]["requests"])
    per1k = (Decimal(month["totals"]["cost_usd"]) * 1000 / requests).quantize(Decimal("0.000000001"), ROUND_HALF_UP)
    assert Decimal(_usd(page, "per1k-month")[0]) == Decimal(_usd(page, "per1k-range")[0]) == per1k
    assert "Updated" in page.get_by_test_id("updated-at").inner_text()
    _assert_finance_panels(page, proxy)

    upstreams = _get(proxy, "/v1/upstreams")["upstreams"]
    assert sum(u["successes"] for u in upstreams) > 0
    for u in upstreams:
        p50 = u["latency_ms"]["p50"]
        shown = page.get_by_test_id(f"upstream-p50-{u['id']}").inner_text().replace(",", "")
        assert shown == "–" if p50 is None else abs(Decimal(shown) - Decimal(str(p50))) <= Decimal("0.5"), (u, shown)
        assert page.get_by_test_id(f"upstream-counts-{u['id']}").inner_text() == f"{u['successes']} / {u['failures']}"
        assert page.get_by_test_id(f"upstream-status-{u['id']}").inner_text() == u["status"]

    for team in ("research", "support"):  # the routing-evidence panel (tests/test_dashboard_evidence checks it all)
        evidence = _get(proxy, "/v1/routing/evidence", team=team, start=month["start"], end=month["end"])
        assert page.get_by_test_id(f"evidence-summary-{team}").inner_text() == evidence["summary"]
        assert page.get_by_test_id(f"evidence-empty-{team}").count() == (evidence["judged"] == 0)

    screenshot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "dashboard.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes().startswith(b"\x89PNG")

    page.get_by_role("tab", name="Today").click()
    _wait_for_view(page, today, tomorrow)
    assert _usd(page, "savings")[0] == _report(proxy, start=today, end=tomorrow)["totals"]["savings_usd"]
    assert external == []  # nothing outside the proxy was asked for


def test_team_filter_date_range_and_csv(finops_proxy: Server, admin_page: AdminTab, tmp_path: Path) -> None:
    proxy = finops_proxy
    _traffic(proxy, 1)
    page, external = admin_page.visit(), admin_page.external
    asked: list[str] = []

    def ask(request: Any) -> None:
        if "/v1/" in request.url:
            asked.append(request.url)

    page.on("request", ask)
    today = datetime.now(UTC).date()
    month_start, tomorrow = today.replace(day=1).isoformat(), (today + timedelta(days=1)).isoformat()

    page.get_by_test_id("team-filter").select_option("support")
    _wait_for_view(page, month_start, tomorrow, "support")
    assert page.get_by_test_id("scope").inner_text() == "Team support · admin"
    support = _report(proxy, team="support")
    _assert_usd(page, "range-spend", support["totals"]["cost_usd"])
    assert support["totals"]["cost_usd"] != _report(proxy)["totals"]["cost_usd"]
    assert page.get_by_test_id("team-month-research").count() == 0
    assert page.get_by_test_id("forecast-projected-research").count() == 0
    _assert_finance_panels(page, proxy, "support")
    models = [u for u in asked if "/v1/routing/models/" in u]  # the team is in the path
    assert models and all(u.endswith("/v1/routing/models/support") for u in models), models
    data_calls = [u for u in asked if "/v1/upstreams" not in u and u not in models]
    assert data_calls and all("team=support" in u for u in data_calls), \
        [u for u in data_calls if "team=support" not in u]

    # a range of past days only: every number moves to that range's, still for the chosen team
    start, end = (today - timedelta(days=10)).isoformat(), (today - timedelta(days=3)).isoformat()
    page.get_by_test_id("range-start").fill(start)
    page.get_by_test_id("range-end").fill(end)
    page.get_by_test_id("range-apply").click()
    _wait_for_view(page, start, end, "support")
    past = _report(proxy, start=start, end=end, team="support")
    assert past["totals"]["requests"] > 0 and past["totals"]["cost_usd"] != support["totals"]["cost_usd"]
    _assert_usd(page, "range-spend", past["totals"]["cost_usd"])
    _assert_usd(page, "savings", past["totals"]["savings_usd"])
    _assert_usd(page, "month-spend", support["totals"]["cost_usd"])  # "this month" stays this month
    assert page.get_by_test_id("range-requests").inner_text().replace(",", "") == str(past["totals"]["requests"])

    page.get_by_test_id("range-end").fill(start)  # end not after start: refused on the page, view unchanged
    page.get_by_test_id("range-apply").click()
    assert "after the start" in page.get_by_test_id("range-error").inner_text()
    assert page.get_attribute("body", "data-view") == f"{start}/{end}/support"

    for group in ("day", "team,model"):
        page.get_by_test_id("export-group").select_option(group)
        with page.expect_download() as download:
            page.get_by_test_id("export-csv").click()
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        assert saved.name == f"spend-{group.replace(',', '-')}-{start}-{end}-support.csv"
        api = httpx.get(proxy.url + "/v1/spend/report", headers=ADMIN, timeout=30,
                        params={"start": start, "end": end, "team": "support", "group_by": group, "format": "csv"})
        assert saved.read_text() == api.text and len(api.text.splitlines()) > 1
    page.remove_listener("request", ask)
    assert external == []


def test_alerts_appear_after_a_crossing(finops_proxy: Server, admin_page: AdminTab) -> None:
    proxy = finops_proxy
    page, external = admin_page.visit(), admin_page.external
    name = "feature=batch"
    before = _get(proxy, "/v1/alerts", team="research", limit=1000)["alerts"]
    assert not [a for a in before if a["scope_name"] == name]
    served = _cross(proxy, "batch")
    _wait_for_refreshes(page, 2)
    fired = [a for a in _get(proxy, "/v1/alerts", team="research", limit=1000)["alerts"] if a["scope_name"] == name]
    thresholds = sorted(a["threshold_pct"] for a in fired if a["kind"] == "threshold")
    assert thresholds == [50, 80], (served, fired)
    assert [a["kind"] for a in fired].count("refusal") == 1
    for a in fired:
        row = page.get_by_test_id(f"alert-{a['id']}")
        assert row.count() == 1 and "tag feature=batch" in row.inner_text()
        assert row.get_attribute("data-kind") == a["kind"]
    for a in fired:
        if a["kind"] == "threshold":  # fired at the crossing: spend before it below the line, after it at or above
            limit, line = Decimal(a["limit_usd"]), Decimal(a["limit_usd"]) * a["threshold_pct"] / 100
            assert Decimal(a["previous_spent_usd"]) < line <= Decimal(a["spent_usd"]) < limit
    month = _report(proxy)
    alerts = _get(proxy, "/v1/alerts", since=month["start"], until=month["end"], limit=1000)["alerts"]
    assert page.get_by_test_id("alert-refusals").inner_text() == str(sum(a["kind"] == "refusal" for a in alerts))
    assert "tag feature=batch" in page.get_by_test_id("alerts").inner_text()
    assert external == []


def test_team_key_sees_only_its_team(finops_proxy: Server, browser: Any) -> None:
    _traffic(finops_proxy, 1)
    page = _open(browser, finops_proxy, DEMO_KEYS["support"])
    assert page.get_by_test_id("scope").inner_text() == "Team support"
    own = _report(finops_proxy, team="support")
    assert _usd(page, "month-spend")[0] == own["totals"]["cost_usd"]
    assert page.get_by_test_id("team-month-support").count() == 1
    assert page.get_by_test_id("team-month-research").count() == 0
    assert page.get_by_test_id("team-filter").is_hidden()  # an admin's tool
    assert page.locator("#upstreams-card").is_hidden()  # admin only (GET /v1/upstreams is a 403 for this key)
    assert page.get_by_test_id("savings-label").inner_text() == "Saved vs always-mid"  # support's ceiling tier
    _assert_finance_panels(page, finops_proxy, "support")
    page.close()


def test_budgets_and_upstreams_endpoints(finops_proxy: Server) -> None:
    proxy = finops_proxy
    _traffic(proxy, 1)
    caps = _get(proxy, "/v1/spend/budgets")["caps"]
    today = datetime.now(UTC).date()
    tomorrow = today + timedelta(days=1)
    by_key = {r["key_id"]: r for r in _report(proxy, group_by="team,key", team="research")["rows"]}
    key_today = {r["key_id"]: r for r in _report(proxy, group_by="team,key", team="research", start=today.isoformat(),
                                                   end=tomorrow.isoformat())["rows"]}
    key_caps = {c["period"]: c for c in caps if c["scope"] == "key"}
    assert set(key_caps) == {"day", "month"} and key_caps["month"]["name"] == "research-demo"
    assert key_caps["month"]["spent_usd"] == by_key["research-demo"]["cost_usd"]
    assert key_caps["day"]["spent_usd"] == key_today["research-demo"]["cost_usd"]
    assert key_caps["day"]["limit_usd"] == "5.000000000" and key_caps["month"]["limit_usd"] == "50.000000000"
    tag_rows = {f"{r['tag_key']}={r['tag_value']}": r for r in _report(proxy, group_by="tag", team="research")["rows"]}
    for cap in (c for c in caps if c["scope"] == "tag"):
        assert cap["period"] == "month" and cap["limit_usd"] == "0.020000000"
        assert cap["spent_usd"] == tag_rows.get(cap["name"], {"cost_usd": "0.000000000"})["cost_usd"]
    teams = {t["team"]: t for t in _get(proxy, "/v1/spend/teams")["teams"]}
    for cap in (c for c in caps if c["scope"] == "team"):
        assert cap["spent_usd"] == teams[cap["team"]][f"{cap['period']}_usd"]

    support = {"authorization": f"Bearer {DEMO_KEYS['support']}"}
    own = httpx.get(proxy.url + "/v1/spend/budgets", headers=support, timeout=30).json()["caps"]
    assert own and {c["team"] for c in own} == {"support"}
    assert httpx.get(proxy.url + "/v1/spend/budgets", params={"team": "research"}, headers=support,
                     timeout=30).status_code == 403
    unknown = httpx.get(proxy.url + "/v1/spend/budgets", params={"team": "nosuch"}, headers=ADMIN, timeout=30)
    assert unknown.status_code == 404 and "research" in unknown.json()["error"]["message"]

    refused = httpx.get(proxy.url + "/v1/upstreams", headers=support, timeout=30)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_key_required"
    found = _get(proxy, "/v1/upstreams")
    assert [u["id"] for u in found["upstreams"]] == ["small-sim", "mid-sim", "frontier-sim", "embed-small-sim"]
    mid = next(u for u in found["upstreams"] if u["id"] == "mid-sim")
    assert mid["successes"] > 0 and mid["latency_ms"]["samples"] == min(mid["successes"], found["latency_window"])
    assert 0 < mid["latency_ms"]["p50"] <= mid["latency_ms"]["p95"] and mid["status"] == "healthy"


def test_health_book_window() -> None:
    """What GET /v1/upstreams reads: a bounded latency window, failures by kind newest first, cooldown left."""
    now = [100.0]
    book = HealthBook(failures_to_cooldown=2, cooldown_s=30.0, clock=lambda: now[0])
    for ms in range(LATENCY_WINDOW + 10):
        book.success("a", float(ms))
    view = book.view("a")
    assert view.successes == LATENCY_WINDOW + 10 and len(view.latencies_ms) == LATENCY_WINDOW
    assert view.latencies_ms[0] == 10.0 and view.latencies_ms[-1] == float(LATENCY_WINDOW + 9)  # the newest kept
    book.failure("a", kind="timeout")
    now[0] += 5
    book.failure("a", kind="server")  # the second in a row: cooldown
    now[0] += 10
    view = book.view("a")
    assert view.failures == 2 and view.consecutive_failures == 0 and view.cooldown_s == 20.0
    assert view.recent_failures == ((10.0, "server"), (15.0, "timeout"))
    book.success("a")  # no elapsed time: counted, not a latency sample
    assert book.view("a").latencies_ms == view.latencies_ms and book.view("a").successes == LATENCY_WINDOW + 11
    for _ in range(RECENT_FAILURES + 5):
        book.failure("b", kind="connection")
    assert len(book.view("b").recent_failures) == RECENT_FAILURES
    assert book.view("never-called") == book.view("never-called") and book.view("never-called").latencies_ms == ()
    from proxy.upstreams_api import nearest_rank

    assert nearest_rank([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0 and nearest_rank([5.0, 1.0], 95) == 5.0
    assert nearest_rank([], 50) is None


def test_bad_key_returns_to_the_prompt(demo_proxy: Server, browser: Any) -> None:
    page = browser.new_page()
    page.goto(demo_proxy.url + "/dashboard")
    page.get_by_test_id("key-input").fill("sk-not-a-key")
    page.get_by_test_id("key-submit").click()
    page.wait_for_selector("#login-error:has-text('invalid API key')", timeout=10_000)
    assert page.evaluate("sessionStorage.length") == 0
    page.close()


def test_page_is_static_and_self_contained(demo_proxy: Server) -> None:
    page = httpx.get(demo_proxy.url + "/dashboard", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text
    assert httpx.get(demo_proxy.url + "/dashboard/dashboard.js", timeout=10).status_code == 200
    assert httpx.get(demo_proxy.url + "/dashboard/..%2Fapp.py", timeout=10).status_code == 404


def test_insights_endpoints(demo_proxy: Server) -> None:
    _traffic(demo_proxy, 2)
    today = datetime.now(UTC).date().isoformat()
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()  # the API's end is exclusive
    support = {"authorization": f"Bearer {DEMO_KEYS['support']}"}

    def get(path: str, headers: dict[str, str] = ADMIN, **params: Any) -> httpx.Response:
        return httpx.get(demo_proxy.url + path, params=params, headers=headers, timeout=30)

    hours = get("/v1/spend/timeseries", bucket="hour").json()
    day = _report(demo_proxy, start=today, end=tomorrow)
    assert len(hours["points"]) == 24
    assert sum(p["requests"] for p in hours["points"]) == day["totals"]["requests"]
    assert sum(Decimal(p["cost_usd"]) for p in hours["points"]) == Decimal(day["totals"]["cost_usd"])

    top = get("/v1/spend/requests", limit=5, order="cost").json()["requests"]
    costs = [Decimal(r["cost_usd"]) for r in top]
    assert len(top) == 5 and costs == sorted(costs, reverse=True)
    assert costs[0] == max(Decimal(r["cost_usd"]) for r in get("/v1/spend/requests", limit=200).json()["requests"])

    own = get("/v1/spend/requests", support, limit=50).json()["requests"]
    assert own and {r["team"] for r in own} == {"support"}
    assert get("/v1/spend/percentiles", support, team="research").status_code == 403
    assert get("/v1/spend/timeseries", bucket="day").status_code == 400
    assert get("/v1/spend/requests", limit=0).status_code == 400

    pct = get("/v1/spend/percentiles", start=today, end=tomorrow).json()["rows"]
    assert {r["team"] for r in pct} == {"research", "support"}
    assert all(0 < r["p50_output_tokens"] <= r["p95_output_tokens"] for r in pct)
    assert sum(r["requests"] for r in pct) == day["totals"]["requests"]  # every demo request succeeded


# ---- the dashboard's queries on both ledger backends -----------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """``(url, schema)`` of an empty ledger: a SQLite file, or a fresh schema on the test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}", "public"
    return PG_URL, request.getfixturevalue("pg_schema")


def _nearest_rank(values: list[int], p: int) -> int:
    ordered = sorted(values)
    return ordered[-(-p * len(ordered) // 100) - 1]


def test_insights_queries(ledger_url: tuple[str, str], tmp_path: Path) -> None:
    day = T0.date()
    midnight = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    records = [make_record(i, completion_tokens=i + 1, cost_nanos=1_000 * (i + 1),
                           started_at=midnight + timedelta(minutes=7 * i)) for i in range(100)]
    records += [make_record(100 + i, team="team-b", model="gpt-4o", completion_tokens=v, cost_nanos=10,
                            started_at=midnight + timedelta(hours=20)) for i, v in enumerate((20, 5, 10))]
    records.append(make_record(200, status=502, completion_tokens=0, cost_nanos=0,  # failed: no percentile
                               started_at=midnight + timedelta(hours=3)))
    records.append(make_record(201, cost_nanos=9_999_999, started_at=midnight - timedelta(microseconds=1)))
    records.append(make_record(202, cost_nanos=9_999_999, started_at=midnight + timedelta(days=1)))
    url, schema = ledger_url

    async def scenario() -> None:
        ledger = open_ledger(url, spool_dir=None, schema=schema)
        await ledger.start()
        try:
            for record in records:
                await ledger.write(record)
            pct = {(r.team, r.model): r for r in await ledger.output_percentiles(day, day + timedelta(days=1))}
            assert set(pct) == {("team-a", "gpt-4o-mini"), ("team-b", "gpt-4o")}
            a, b = pct[("team-a", "gpt-4o-mini")], pct[("team-b", "gpt-4o")]
            assert (a.requests, a.p50, a.p95) == (100, 50, 95)
            assert (b.requests, b.p50, b.p95) == (3, _nearest_rank([20, 5, 10], 50), _nearest_rank([20, 5, 10], 95))
            assert [r.team for r in await ledger.output_percentiles(day, day + timedelta(days=1), "team-b")] == [
                "team-b"]

            hours = await ledger.hourly_spend(day)
            report = await ledger.report(day, day + timedelta(days=1), group_by=())
            assert len(hours) == 24 and hours[0].hour == midnight
            assert sum(h.requests for h in hours) == report.totals.requests == 104  # the day's bounds are exact
            assert sum(h.cost_nanos for h in hours) == report.totals.cost_nanos
            assert hours[20].requests == 3 + sum(1 for i in range(100) if 7 * i // 60 == 20)

            top = await ledger.request_costs(midnight, 3)
            assert [r.request_id for r in top] == ["req-202", "req-99", "req-98"]
            assert top[1].cost_nanos == 100_000 and top[1].to_dict()["cost_usd"] == "0.000100000"
            assert top[1].started_at.startswith(f"{day.isoformat()}T11:33:00")
            recent = await ledger.request_costs(midnight + timedelta(hours=20), 2, team="team-b", order="recent")
            assert [r.team for r in recent] == ["team-b", "team-b"]
        finally:
            await ledger.close()

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API may hold this thread's event loop
        pool.submit(asyncio.run, scenario()).result()
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url[len("sqlite:///"):])
        indexes = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")]
        conn.close()
    else:
        import psycopg

        with psycopg.connect(url) as conn:
            indexes = [row[0] for row in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s",
                                                      (schema,))]
    assert "records_started_at" in indexes


def test_cap_spend_queries(ledger_url: tuple[str, str]) -> None:
    """``/v1/spend/budgets``' sums on both backends: each cap's day and month spend, untagged and other teams apart."""
    today = datetime.now(UTC).date()
    noon = datetime.combine(today, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    earlier = noon - timedelta(days=today.day - 1)  # the first of the month (today itself on the 1st)
    records = [
        make_record(0, key_id="k1", tags={"feature": "a"}, cost_nanos=1_000, started_at=noon),
        make_record(1, key_id="k1", tags={"feature": "b"}, cost_nanos=20_000, started_at=noon),
        make_record(2, key_id="k2", cost_nanos=300_000, started_at=noon),  # untagged
        make_record(3, key_id="k1", tags={"feature": "a"}, cost_nanos=4_000_000, started_at=earlier),
        make_record(4, key_id="k1", team="team-b", tags={"feature": "a"}, cost_nanos=50_000_000, started_at=noon),
        make_record(5, key_id="k1", tags={"feature": "a"}, cost_nanos=600_000_000,
                    started_at=noon - timedelta(days=40)),
    ]
    limits = BudgetLimits(daily_usd=Decimal("1"), monthly_usd=Decimal("10"))
    policies = {"team-a": BudgetPolicy(team=limits, keys={"k1": limits, "k2": BudgetLimits(monthly_usd=Decimal("2"))},
                                       tags={"feature=a": BudgetLimits(monthly_usd=Decimal("3"))},
                                       redis_failure="open"),
                "team-b": BudgetPolicy(redis_failure="open")}  # no caps: no rows
    url, schema = ledger_url

    async def scenario() -> list[tuple[str, str, str, int, int]]:
        ledger = open_ledger(url, spool_dir=None, schema=schema)
        await ledger.start()
        try:
            for record in records:
                await ledger.write(record)
            await ledger.flush()
            caps = await cap_spend(ledger, policies, today)
            assert caps == await cap_spend(ledger, policies, today, team="team-a")
            assert await cap_spend(ledger, policies, today, team="team-b") == []
            return [(c.scope, c.name, c.period, c.limit_nanos, c.spent_nanos) for c in caps]
        finally:
            await ledger.close()

    with ThreadPoolExecutor(1) as pool:
        found = pool.submit(asyncio.run, scenario()).result()
    same_day = today == earlier.date()  # on the 1st the "earlier" record is today's too
    day_k1 = 21_000 + 4_000_000 * same_day
    assert found == [  # policy order: the team, its keys, its tags; a cap's day before its month
        ("team", "team-a", "day", 10**9, 321_000 + 4_000_000 * same_day),
        ("team", "team-a", "month", 10 * 10**9, 4_321_000),
        ("key", "k1", "day", 10**9, day_k1),
        ("key", "k1", "month", 10 * 10**9, 4_021_000),
        ("key", "k2", "month", 2 * 10**9, 300_000),
        ("tag", "feature=a", "month", 3 * 10**9, 4_001_000),
    ]


def test_upstream_failures_and_cooldown_on_the_page(start_mock: Any, start_proxy: Any, browser: Any,
                                                    tmp_path: Path) -> None:
    """A deployment that answers 500 is cooled down after its failure, the fallback serves: /v1/upstreams says so
    (kind, counts, cooldown left) and so does the page."""
    broken = start_mock("--fail-rate", "1", "--fail-kind", "500")
    good = start_mock()
    config = mock_config(tmp_path, {"small": [broken.url, good.url]}, server_extra="  cooldown_after_failures: 1")
    admin_sha = hashlib.sha256(DEMO_KEYS["admin"].encode()).hexdigest()
    config.write_text(config.read_text() + f"admin_keys:\n  - id: admin\n    sha256: {admin_sha}\n")
    proxy = start_proxy(config)
    client = OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test", max_retries=0, timeout=60)
    sent = 0
    while sent < 8 or not _get(proxy, "/v1/upstreams")["upstreams"][0]["failures"]:
        # prompts vary: each is placed by its own prefix, so the broken one is tried first sooner or later
        assert sent < 40, "the broken deployment was never tried"
        answer = client.chat.completions.create(model="auto",
                                                messages=[{"role": "user", "content": f"{PROMPTS[0]} {sent}"}])
        assert answer.choices[0].message.content
        sent += 1

    found = {u["id"]: u for u in _get(proxy, "/v1/upstreams")["upstreams"]}
    assert set(found) == {"small-0", "small-1"}
    bad, ok = found["small-0"], found["small-1"]
    assert bad["failures"] >= 1 and bad["successes"] == 0
    assert bad["latency_ms"] == {"samples": 0, "p50": None, "p95": None}
    assert bad["status"] == "cooldown" and 0 < bad["cooldown_remaining_s"] <= 30
    assert {f["kind"] for f in bad["recent_failures"]} == {"server"} and len(bad["recent_failures"]) == bad["failures"]
    assert ok["successes"] == sent and ok["failures"] == 0 and ok["latency_ms"]["samples"] == sent
    assert 0 < ok["latency_ms"]["p50"] <= ok["latency_ms"]["p95"]

    page = _open(browser, proxy, DEMO_KEYS["admin"])
    assert page.get_by_test_id("upstream-status-small-0").inner_text().startswith("cooldown ")
    assert page.get_by_test_id("upstream-status-small-1").inner_text() == "healthy"
    assert page.get_by_test_id("upstream-counts-small-0").inner_text() == f"0 / {bad['failures']}"
    assert page.get_by_test_id("upstream-counts-small-1").inner_text() == f"{sent} / 0"
    assert "server" in page.get_by_test_id("upstreams").inner_text()  # the last failure's kind
    page.close()

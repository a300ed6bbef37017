"""The live dashboard in a real browser: Debian's headless Chromium driven by Playwright, against a demo proxy with
traffic. The numbers the page shows must be the spend report's, to the nano-dollar (``data-usd``) and, as printed,
to the precision shown. Screenshots the page to a temporary file (``scripts/screenshot.sh`` sets
``TIERGATE_SCREENSHOT`` to regenerate ``docs/dashboard.png``).

Also the insights endpoints the page reads (percentiles, requests by cost, hours) against the same ledger.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from conftest import DEMO_KEYS, Process, require_service
from metering.ledger import open_ledger
from metering.ledger.insights import Insights
from metering_fixtures import PG_URL, T0, make_record, pg_schema  # noqa: F401  (pg_schema is a fixture)

CHROMIUM = Path(os.environ.get("TIERGATE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = os.environ.get("TIERGATE_SCREENSHOT")  # unset: the test's temp dir, so a run rewrites no tracked file
ADMIN = {"authorization": f"Bearer {DEMO_KEYS['admin']}"}
PROMPTS = [
    "What is the capital of France?",
    "Summarise the plot of Hamlet in two sentences.",
    "Derive the closed form of the sum of the first n squares and prove it by induction, step by step.",
    "Design a distributed rate limiter for a global API: trade-offs, failure modes, and a reference implementation.",
]


def _chat(proxy: Process, team: str, prompt: str, model: str = "auto", stream: bool = False,
          feature: str = "search") -> None:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    headers = {"authorization": f"Bearer {DEMO_KEYS[team]}", "x-tiergate-tag-feature": feature}
    response = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text


def _traffic(proxy: Process, rounds: int) -> None:
    for i in range(rounds):
        _chat(proxy, "research", PROMPTS[i % len(PROMPTS)], feature="search")
        _chat(proxy, "research", PROMPTS[(i + 2) % len(PROMPTS)], model=("mid", "frontier")[i % 2], feature="agent")
        _chat(proxy, "support", PROMPTS[i % 2], stream=i % 2 == 0, feature="helpdesk")


def _report(proxy: Process, **params: str) -> dict[str, Any]:
    response = httpx.get(proxy.url + "/v1/spend/report", params=params, headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


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


def _open(browser: Any, proxy: Process, key: str, external: list[str] | None = None) -> Any:
    """A 1280x800 page logged in with ``key`` after its first refresh; URLs outside the proxy go to ``external``."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    if external is not None:
        page.on("request", lambda r: None if r.url.startswith(proxy.url) else external.append(r.url))
    page.goto(proxy.url + "/dashboard")
    page.get_by_test_id("key-input").fill(key)
    page.get_by_test_id("key-submit").click()
    _wait_for_refreshes(page, 1)
    return page


def _refreshes(page: Any) -> int:
    return int(page.get_attribute("body", "data-refreshes") or 0)


def _wait_for_refreshes(page: Any, more: int, timeout_s: float = 20.0) -> None:
    """Polled from here: the page's CSP (no eval) rules out Playwright's in-page ``wait_for_function``."""
    target = _refreshes(page) + more
    deadline = time.monotonic() + timeout_s
    while _refreshes(page) < target:
        assert time.monotonic() < deadline, f"the dashboard did not refresh {more} more time(s) in {timeout_s}s"
        page.wait_for_timeout(100)


def _usd(page: Any, testid: str) -> tuple[str, str]:
    el = page.get_by_test_id(testid)
    return el.get_attribute("data-usd"), el.inner_text()


def test_dashboard_shows_the_spend_report(demo_proxy: Process, browser: Any, tmp_path: Path) -> None:
    _traffic(demo_proxy, 4)
    external: list[str] = []
    page = _open(browser, demo_proxy, DEMO_KEYS["admin"], external)
    assert page.get_by_test_id("scope").inner_text() == "All teams · admin"

    _traffic(demo_proxy, 4)  # more traffic after the page loaded: a later refresh must show it
    _wait_for_refreshes(page, 2)  # the second one started after the traffic had been settled
    month = _report(demo_proxy)
    today = datetime.now(timezone.utc).date().isoformat()
    tomorrow = (datetime.now(timezone.utc).date() + timedelta(days=1)).isoformat()  # the API's end is exclusive
    day = _report(demo_proxy, start=today, end=tomorrow)
    assert month["totals"]["requests"] >= 24

    exact, shown = _usd(page, "month-spend")
    assert exact == month["totals"]["cost_usd"] and _shown_matches(shown, exact)
    exact, shown = _usd(page, "day-spend")
    assert exact == day["totals"]["cost_usd"] and _shown_matches(shown, exact)
    assert page.get_by_test_id("month-requests").inner_text().replace(",", "") == str(month["totals"]["requests"])
    assert page.get_by_test_id("day-requests").inner_text().replace(",", "") == str(day["totals"]["requests"])
    exact, shown = _usd(page, "savings")
    assert exact == month["totals"]["savings_usd"] and _shown_matches(shown, exact)
    for row in month["rows"]:
        exact, shown = _usd(page, f"team-month-{row['team']}")
        assert exact == row["cost_usd"] and _shown_matches(shown, exact), row["team"]
    keys = _report(demo_proxy, group_by="key")["rows"]
    top_key = max(keys, key=lambda r: Decimal(r["cost_usd"]))
    assert _usd(page, f"key-{top_key['key_id']}")[0] == top_key["cost_usd"]
    requests = int(month["totals"]["requests"])
    per1k = (Decimal(month["totals"]["cost_usd"]) * 1000 / requests).quantize(Decimal("0.000000001"), ROUND_HALF_UP)
    assert Decimal(_usd(page, "per1k-month")[0]) == per1k
    assert "Updated" in page.get_by_test_id("updated-at").inner_text()

    screenshot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "dashboard.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes().startswith(b"\x89PNG")

    page.get_by_role("tab", name="Today").click()
    _wait_for_refreshes(page, 1)
    assert _usd(page, "savings")[0] == _report(demo_proxy, start=today, end=tomorrow)["totals"]["savings_usd"]
    assert external == []  # nothing outside the proxy was asked for
    page.close()


def test_team_key_sees_only_its_team(demo_proxy: Process, browser: Any) -> None:
    _traffic(demo_proxy, 1)
    page = _open(browser, demo_proxy, DEMO_KEYS["support"])
    assert page.get_by_test_id("scope").inner_text() == "Team support"
    own = _report(demo_proxy, team="support")
    assert _usd(page, "month-spend")[0] == own["totals"]["cost_usd"]
    assert page.get_by_test_id("team-month-support").count() == 1
    assert page.get_by_test_id("team-month-research").count() == 0
    page.close()


def test_bad_key_returns_to_the_prompt(demo_proxy: Process, browser: Any) -> None:
    page = browser.new_page()
    page.goto(demo_proxy.url + "/dashboard")
    page.get_by_test_id("key-input").fill("sk-not-a-key")
    page.get_by_test_id("key-submit").click()
    page.wait_for_selector("#login-error:has-text('invalid API key')", timeout=10_000)
    assert page.evaluate("sessionStorage.length") == 0
    page.close()


def test_page_is_static_and_self_contained(demo_proxy: Process) -> None:
    page = httpx.get(demo_proxy.url + "/dashboard", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text
    assert httpx.get(demo_proxy.url + "/dashboard/dashboard.js", timeout=10).status_code == 200
    assert httpx.get(demo_proxy.url + "/dashboard/..%2Fapp.py", timeout=10).status_code == 404


def test_insights_endpoints(demo_proxy: Process) -> None:
    _traffic(demo_proxy, 2)
    today = datetime.now(timezone.utc).date().isoformat()
    tomorrow = (datetime.now(timezone.utc).date() + timedelta(days=1)).isoformat()  # the API's end is exclusive
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
    midnight = datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc)
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
            insights = Insights(ledger)
            pct = {(r.team, r.model): r for r in await insights.output_percentiles(day, day + timedelta(days=1))}
            assert set(pct) == {("team-a", "gpt-4o-mini"), ("team-b", "gpt-4o")}
            a, b = pct[("team-a", "gpt-4o-mini")], pct[("team-b", "gpt-4o")]
            assert (a.requests, a.p50, a.p95) == (100, 50, 95)
            assert (b.requests, b.p50, b.p95) == (3, _nearest_rank([20, 5, 10], 50), _nearest_rank([20, 5, 10], 95))
            assert [r.team for r in await insights.output_percentiles(day, day + timedelta(days=1), "team-b")] == [
                "team-b"]

            hours = await insights.hourly(day)
            report = await ledger.report(day, day + timedelta(days=1), group_by=())
            assert len(hours) == 24 and hours[0].hour == midnight
            assert sum(h.requests for h in hours) == report.totals.requests == 104  # the day's bounds are exact
            assert sum(h.cost_nanos for h in hours) == report.totals.cost_nanos
            assert hours[20].requests == 3 + sum(1 for i in range(100) if 7 * i // 60 == 20)

            top = await insights.requests(midnight, 3)
            assert [r.request_id for r in top] == ["req-202", "req-99", "req-98"]
            assert top[1].cost_nanos == 100_000 and top[1].to_dict()["cost_usd"] == "0.000100000"
            assert top[1].started_at.startswith(f"{day.isoformat()}T11:33:00")
            recent = await insights.requests(midnight + timedelta(hours=20), 2, team="team-b", order="recent")
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

"""Spend anomalies: detection on hand-built traffic (pure), alert bodies, delivery through the real webhook sender
to a real HTTP server, and ``tiergate anomalies`` over a real SQLite ledger.

Traffic is deterministic: a key sends a steady number of requests each hour for eight days, each costing the same,
so every baseline is known and an injected burst is the only thing out of bounds.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from metering.finops.anomaly import Episode, Rules, detect
from metering.finops.hourly import RequestRow
from metering.finops.notify import (
    deliver,
    generic_payload,
    pagerduty_payload,
    slack_payload,
)
from metering.finops.scan import scan
from metering.finops.scopes import Scope
from metering.ledger.sqlite import SqliteLedger
from metering.record import UsageRecord
from tests.finops_helpers import policy_file, tiergate

T0 = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday; the scan covers day 8 (after a week of baseline)
SCAN = T0 + timedelta(days=8)
FRONTIER = frozenset({"frontier"})


def _row(n: int, at: datetime, key: str = "k1", tier: str = "small", model: str = "gpt-4o-mini",
         cost: int = 2_000_000, output: int = 200, tags: dict[str, str] | None = None, team: str = "t") -> RequestRow:
    return RequestRow(at, f"r{n}", team, key, tags if tags is not None else {"project": "p"}, model, tier, output,
                      cost, 200)


def steady(days: int = 9, per_hour: int = 12, **kw: object) -> list[RequestRow]:
    """``per_hour`` identical requests in every hour of ``days`` days from T0 (one in ten on the frontier tier)."""
    rows = []
    for h in range(days * 24):
        for i in range(per_hour):
            frontier = i == 0 and h % 2 == 0
            rows.append(_row(len(rows), T0 + timedelta(hours=h, minutes=i * 4),
                             tier="frontier" if frontier else "small", **kw))  # type: ignore[arg-type]
    return rows


def burst(rows: list[RequestRow], start: datetime, hours: int, extra: int, **kw: object) -> list[RequestRow]:
    out = list(rows)
    for h in range(hours):
        for i in range(extra):
            out.append(_row(len(out), start + timedelta(hours=h, seconds=30 * i + 1), **kw))  # type: ignore[arg-type]
    return out


def episodes(rows: list[RequestRow], **where: str) -> list[Episode]:
    found = detect(rows, SCAN, SCAN + timedelta(days=1), FRONTIER)
    return [e for e in found if all(getattr(e.scope, k, None) == v or getattr(e, k, None) == v
                                    for k, v in where.items())]


def test_steady_traffic_raises_nothing() -> None:
    assert detect(steady(), SCAN, SCAN + timedelta(days=1), FRONTIER) == []


def test_a_key_at_ten_times_its_spend_is_one_episode_with_its_evidence() -> None:
    at = SCAN + timedelta(hours=14)
    # 108 extra requests in one hour (10x the key's 12), five of them dearer than the rest.
    rows = burst(steady(), at, 1, 103)
    rows += [_row(90_000 + i, at + timedelta(minutes=59), cost=9_000_000 + i) for i in range(5)]
    found = episodes(rows, dimension="key", metric="spend")
    assert len(found) == 1
    e = found[0]
    assert (e.scope, e.started_at, e.ended_at) == (Scope("key", "t", "k1"), at, at + timedelta(hours=1))
    assert e.value == 115 * 2_000_000 + 5 * 9_000_000 + 10 and e.baseline == 12 * 2_000_000
    assert e.factor == e.value / e.baseline
    assert e.top_request_ids == ("r90004", "r90003", "r90002", "r90001", "r90000")  # request ids only
    assert e.requests == 120
    # The team, its tag and the model moved too (the same requests), and so did the request count.
    assert {(x.scope.dimension, x.metric) for x in episodes(rows)} == {
        (d, m) for d in ("team", "key", "tag", "model") for m in ("spend", "requests")}


def test_an_episode_fires_once_until_quiet_for_three_hours() -> None:
    at = SCAN + timedelta(hours=6)
    # Out of bounds at 6, 7 and 9 (one calm hour between): one episode; calm 10-12 ends it; 14 starts another.
    rows = steady()
    for h in (0, 1, 3, 8):
        rows = burst(rows, at + timedelta(hours=h), 1, 100)
    found = episodes(rows, dimension="key", metric="requests")
    assert [(e.started_at - at, e.ended_at and e.ended_at - at) for e in found] == [
        (timedelta(0), timedelta(hours=4)), (timedelta(hours=8), timedelta(hours=9))]
    assert found[0].peak_at == at  # the first hour was the biggest (all equal: the first is kept)
    assert len({e.ident for e in found}) == 2


def test_an_episode_still_open_at_the_end_has_no_end() -> None:
    end = SCAN + timedelta(days=1)
    rows = burst(steady(), end - timedelta(hours=1), 1, 100)
    found = episodes(rows, dimension="team", metric="spend")
    assert len(found) == 1 and found[0].ended_at is None


def test_a_tag_sent_to_the_frontier_tier() -> None:
    at = SCAN + timedelta(hours=10)
    rows = [r for r in steady() if not (at <= r.started_at < at + timedelta(hours=2) and r.tags)]
    rows += [_row(80_000 + i, at + timedelta(minutes=5 * i), tier="frontier", model="o1", cost=2_000_000,
                  tags={"project": "p"}) for i in range(12)]
    found = episodes(rows, dimension="tag", metric="frontier_share")
    assert len(found) == 1 and found[0].value == 1.0 and found[0].baseline == pytest.approx(1 / 24, abs=0.01)
    # The key's requests went the same way; the spend did not move (same cost): no spend episode.
    assert episodes(rows, metric="spend") == []


def test_few_requests_are_not_a_share_anomaly() -> None:
    at = SCAN + timedelta(hours=3)
    rows = [r for r in steady() if not (at <= r.started_at < at + timedelta(hours=1))]
    rows += [_row(70_000 + i, at + timedelta(minutes=i), tier="frontier") for i in range(5)]  # 5 < min 10
    assert episodes(rows, metric="frontier_share") == []


def test_a_model_whose_outputs_double() -> None:
    at = SCAN + timedelta(hours=15)
    rows = [r for r in steady() if not (at <= r.started_at < at + timedelta(hours=1))]
    rows += [_row(60_000 + i, at + timedelta(minutes=2 * i), output=500 + i) for i in range(24)]
    found = episodes(rows, dimension="model", metric="p95_output_tokens")
    assert len(found) == 1 and found[0].baseline == 200 and found[0].value == 522  # nearest rank: 23rd of 24


def test_one_dear_request_in_a_quiet_hour_is_not_an_anomaly() -> None:
    at = SCAN + timedelta(hours=3)
    rows = steady(per_hour=2)
    week = [_row(50_000 + d, T0 + timedelta(days=d, hours=12), cost=60_000_000) for d in range(8)]  # one a day
    rows = rows + week + [_row(59_999, at, cost=70_000_000)]
    assert episodes(rows, metric="spend") == []


def test_alert_bodies() -> None:
    at = SCAN + timedelta(hours=14)
    e = episodes(burst(steady(), at, 1, 108), dimension="key", metric="spend")[0]
    slack = slack_payload(e)
    assert slack["text"].startswith(":rotating_light: tiergate anomaly: key k1 of team t: spend $0.2400")
    assert "10.0x its baseline $0.0240" in slack["text"] and "costliest requests: r" in slack["text"]
    assert slack["anomaly"] == generic_payload(e)
    generic = generic_payload(e)
    assert generic["kind"] == "spend_anomaly" and generic["id"] == e.ident == "key:t:k1:spend:2026-11-10T14"
    assert (generic["team"], generic["key"], generic["value"], generic["baseline"], generic["factor"]) == (
        "t", "k1", "0.2400", "0.0240", 10.0)
    pd = pagerduty_payload(e, "R0UTING")
    assert {k: pd[k] for k in ("routing_key", "event_action", "dedup_key")} == {
        "routing_key": "R0UTING", "event_action": "trigger", "dedup_key": e.ident}
    assert pd["payload"]["severity"] in {"critical", "error", "warning", "info"}
    assert pd["payload"]["source"] == "tiergate" and pd["payload"]["timestamp"] == at.isoformat()
    assert len(pd["payload"]["summary"]) <= 1024 and pd["payload"]["custom_details"]["metric"] == "spend"
    # An episode that ended resolves the incident it opened.
    assert pagerduty_payload(e, "R0UTING", "resolve") == {"routing_key": "R0UTING", "event_action": "resolve",
                                                          "dedup_key": e.ident}


class _Webhook:
    """A real HTTP server on loopback recording JSON bodies; answers 500 to the first ``fail_first`` posts."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict] = []
        self.fail_first = fail_first
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if hook.fail_first > 0:
                    hook.fail_first -= 1
                    self.send_response(500)
                else:
                    hook.bodies.append(body)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[_Webhook]:
    hook = _Webhook(fail_first=1)
    yield hook
    hook.close()


def test_delivery_goes_through_the_alert_sender_with_its_retries(webhook: _Webhook) -> None:
    at = SCAN + timedelta(hours=14)
    found = episodes(burst(steady(), at, 1, 108), dimension="key")
    sent = asyncio.run(deliver(webhook.url, found, "json", base_delay_s=0.01))
    assert sent == len(found) == 2
    assert [b["metric"] for b in webhook.bodies] == [e.metric for e in found]  # the first 500 was retried
    # PagerDuty: an episode already over when found opens and resolves its incident.
    assert asyncio.run(deliver(webhook.url, found[:1], "pagerduty", routing_key="R", base_delay_s=0.01)) == 1
    assert [(b["event_action"], b["dedup_key"]) for b in webhook.bodies[2:]] == [
        ("trigger", found[0].ident), ("resolve", found[0].ident)]


def _record(r: RequestRow) -> UsageRecord:
    return UsageRecord(request_id=r.request_id, started_at=r.started_at, ended_at=r.started_at + timedelta(seconds=1),
                       team=r.team, key_id=r.key_id, requested_model="auto", model=r.model, status=r.status,
                       tags=r.tags, tier=r.tier, prompt_tokens=100, completion_tokens=r.completion_tokens,
                       cost_nanos=r.cost_nanos)


def _seed(db: Path, rows: list[RequestRow]) -> None:
    async def go() -> None:
        ledger = SqliteLedger(db, spool_dir=None)
        await ledger.start()
        for i in range(0, len(rows), 2000):
            await asyncio.gather(*(ledger.write(_record(r)) for r in rows[i:i + 2000]))
        await ledger.close()

    asyncio.run(go())


def test_hourly_scans_report_each_episode_once(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    at = SCAN + timedelta(hours=9)
    _seed(db, burst(burst(steady(per_hour=4), at, 3, 60), at + timedelta(hours=8), 1, 60))

    async def go() -> list[str]:
        ledger = SqliteLedger(db, spool_dir=None)
        await ledger.start()
        try:
            seen = []
            for h in range(24):  # a scan every hour, each over the hour before (at :20 past)
                until = SCAN + timedelta(hours=h + 1, minutes=20)
                seen += [e.ident for e in await scan(ledger, until - timedelta(hours=1), until, FRONTIER,
                                                     rules=Rules())]
            return seen
        finally:
            await ledger.close()

    seen = asyncio.run(go())
    keyed = sorted(i for i in seen if i.startswith("key:"))
    assert keyed == ["key:t:k1:requests:2026-11-10T09", "key:t:k1:requests:2026-11-10T17",
                     "key:t:k1:spend:2026-11-10T09", "key:t:k1:spend:2026-11-10T17"]
    assert len(seen) == len(set(seen))


def test_cli_reports_and_notifies(tmp_path: Path, webhook: _Webhook) -> None:
    db = tmp_path / "ledger.db"
    at = SCAN + timedelta(hours=14)
    _seed(db, burst(steady(per_hour=4), at, 2, 60))
    config = policy_file(tmp_path / "policy.yaml", db, f'  t:\n    keys: [{{id: k1, sha256: "{"0" * 64}"}}]\n',
                         f"  alert_webhook: {webhook.url}\n")
    base = ["anomalies", "--config", str(config), "--until", (SCAN + timedelta(days=1)).isoformat()]
    out = tiergate(*base, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert {(e["dimension"], e["metric"], e["started_at"]) for e in doc["episodes"]} == {
        (d, m, at.isoformat()) for d in ("team", "key", "tag", "model") for m in ("spend", "requests")}
    text = tiergate(*base, "--notify", "--team", "t")
    assert text.returncode == 0 and "key k1 of team t: requests 64" in text.stdout and "sent 8 of 8" in text.stderr
    assert len(webhook.bodies) == 8 and all(b["text"].startswith(":rotating_light:") for b in webhook.bodies)
    unknown = tiergate(*base, "--team", "nosuch")
    assert unknown.returncode == 2 and "unknown team 'nosuch'; known teams: t" in unknown.stderr

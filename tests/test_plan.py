"""What-if plans (``pipeline.plan``, ``pipeline.plan_report``) on hand-built records: a raised threshold moves
requests to the cheaper tier and the cost falls by exactly the nano-dollars the prices say; a max_tokens cap cuts
output cost; pins, cache hits, summaries, shadow/judge calls, failures and refusals are treated as documented;
judged outcomes give the quality change; ``Ledger.records`` pages the same records back from SQLite and
PostgreSQL; a bad candidate file is an error naming its line and field."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from metering.ledger import group_commit, open_ledger
from metering.outcomes import Outcome
from metering.record import UsageRecord
from pipeline.plan import Repriced, parse_window, reprice
from pipeline.plan_report import build_plan, plan
from router.config_loader import ConfigError, parse_policy
from tests.metering_fixtures import PG_URL, pg_schema  # noqa: F401  (pg_schema is a fixture)

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SINCE, UNTIL = T0 - timedelta(days=1), T0 + timedelta(days=1)
# $ per 1M tokens -> nano-dollars per token: small 1000 in / 2000 out, mid 5000 / 10000, frontier 20000 / 40000
NANOS = {"small": (1000, 2000), "mid": (5000, 10000), "frontier": (20000, 40000)}
DEPLOYMENT = {"small": "small-a", "mid": "mid-a", "frontier": "frontier-a"}


def policy_text(thresholds: str = "{mid: 0.5, frontier: 0.8}", max_tokens: str = "", team_extra: str = "",
                floor: str = "small") -> str:
    return f"""\
metering: {{ledger: "sqlite:///unused.db"}}
tiers:
  - name: small
    deployments:
      - {{id: small-a, model: simulated/gpt-4o-mini, price: {{input: 1, output: 2, cached_input: 0.5}}}}
      - {{id: small-b, model: simulated/gpt-4o-mini, price: {{input: 1, output: 2, cached_input: 0.5}}}}
  - name: mid
    deployments:
      - {{id: mid-a, model: simulated/gpt-4o, price: {{input: 5, output: 10}}}}
  - name: frontier
    deployments:
      - {{id: frontier-a, model: simulated/o1, price: {{input: 20, output: 40}}}}
teams:
  t:
    keys: [{{id: t-key, sha256: {"a" * 64}}}]
    tiers: {{floor: {floor}, ceiling: frontier}}
    routing: {{thresholds: {thresholds}, allow_pinning: true}}
{max_tokens}{team_extra}"""


def cost(tier: str, prompt: int, completion: int) -> int:
    inp, out = NANOS[tier]
    return prompt * inp + completion * out


def rec(i: int, tier: str, score: float | None = 0.1, prompt: int = 100, completion: int = 50,
        **fields: Any) -> UsageRecord:
    values: dict[str, Any] = dict(
        request_id=f"r{i}", started_at=T0 + timedelta(seconds=i), ended_at=T0 + timedelta(seconds=i, milliseconds=5),
        team="t", key_id="t-key", requested_model="auto", model="m", status=200, tier=tier,
        deployment=DEPLOYMENT[tier], score=score, prompt_tokens=prompt, completion_tokens=completion,
        cost_nanos=cost(tier, prompt, completion), counterfactual_cost_nanos=cost("frontier", prompt, completion))
    values.update(fields)
    return UsageRecord(**values)


# Routed by the old thresholds (mid 0.5, frontier 0.8).
SCORED = [rec(0, "small", 0.1), rec(1, "mid", 0.6), rec(2, "frontier", 0.9), rec(3, "mid", 0.7, completion=80)]


def test_a_raised_threshold_moves_requests_down_and_the_cost_falls_exactly() -> None:
    old = parse_policy(policy_text())
    # The same policy routes every record where it went: nothing moves, nothing changes.
    same = build_plan(old, SCORED, [], SINCE, UNTIL)
    assert same.total.before_nanos == same.total.after_nanos == sum(r.cost_nanos for r in SCORED)
    assert same.total.moved == 0

    new = parse_policy(policy_text("{mid: 0.65, frontier: 0.95}"))
    result = build_plan(new, SCORED, [], SINCE, UNTIL)
    # 0.6 -> small, 0.9 -> mid, 0.7 stays on mid
    assert [reprice(r, new).tier_after for r in SCORED] == ["small", "small", "mid", "mid"]
    expected = cost("small", 100, 50) * 2 + cost("mid", 100, 50) + cost("mid", 100, 80)
    assert result.total.after_nanos == expected
    before = sum(r.cost_nanos for r in SCORED)
    assert before - expected == (cost("mid", 100, 50) - cost("small", 100, 50)) + (
        cost("frontier", 100, 50) - cost("mid", 100, 50))
    doc = result.to_dict()
    assert doc["total"]["change_usd"] == "-0.003800000" and doc["total"]["after_nanos"] == expected
    assert doc["teams"][0]["tiers_before"] == {"frontier": 1, "mid": 2, "small": 1}
    assert doc["teams"][0]["tiers_after"] == {"mid": 2, "small": 2}
    assert doc["tier_share"]["after"]["small"] == {"requests": 2, "percent": "50.00"}
    assert doc["total"]["moved"] == 2 and doc["treatments"]["scored"] == 4
    assert any("Output length cannot be known" in a for a in doc["assumptions"])
    assert "observed completion tokens" in result.render_text()


def test_a_max_tokens_cap_cuts_output_cost() -> None:
    new = parse_policy(policy_text(max_tokens="    max_tokens: {cap: 30}\n"))
    result = build_plan(new, SCORED, [], SINCE, UNTIL)
    # every record keeps its tier; each completion is cut to 30 tokens at its tier's output price
    cut = sum((r.completion_tokens - 30) * NANOS[r.tier][1] for r in SCORED)
    assert result.total.before_nanos - result.total.after_nanos == cut
    assert (result.total.output_capped, result.total.output_tokens_cut) == (4, 20 * 3 + 50)
    reasoning = rec(9, "small", completion=50, reasoning_tokens=45)
    assert reprice(reasoning, new).cost_after == cost("small", 100, 30)  # reasoning is cut with the output


def test_each_kind_of_record_is_treated_as_documented() -> None:
    new = parse_policy(policy_text("{mid: 0.65, frontier: 0.95}", floor="mid", team_extra=(
        "    learning: {shadow_share: 0.5, judge: frontier}\n")))
    pinned = rec(10, "frontier", None, requested_model="frontier-a")
    forced = rec(11, "frontier", None)  # unscored auto: x-tiergate-tier frontier
    by_name = rec(12, "small", None, requested_model="small")  # model: small, now below the floor -> refused
    hit = rec(13, "small", 0.1, deployment="response-cache", cost_nanos=0)
    summary = rec(14, "small", None, purpose="summarization", requested_model="small")
    shadow = rec(15, "frontier", None, purpose="shadow", requested_model="frontier")
    failed = rec(16, "mid", 0.6, model="", status=502, error="upstream failed", cost_nanos=0, prompt_tokens=0,
                 completion_tokens=0)
    other_team = rec(17, "small", 0.1, team="gone")
    embedding = rec(18, "small", None, purpose="embedding", completion=0)
    legacy = rec(19, "small", None, api="completions")  # /v1/completions, auto: never scored, the floor serves it
    assert reprice(legacy, new) == Repriced("unscored", "mid", "mid-a", cost("mid", 100, 50))
    assert reprice(embedding, new) == Repriced("embedding", "small", "small-a", embedding.cost_nanos)
    out = {r.request_id: reprice(r, new) for r in (pinned, forced, by_name, hit, summary, shadow, failed, other_team)}
    assert reprice(replace(failed, model="m", prompt_tokens=100), new).treatment == "failed"  # nothing billed
    hung_up = rec(20, "mid", 0.6, status=499)  # the provider's usage came back: billed, so re-priced
    assert reprice(hung_up, new) == Repriced("scored", "mid", "mid-a", cost("mid", 100, 50))
    assert out["r10"] == Repriced("pinned", "frontier", "frontier-a", cost("frontier", 100, 50))
    assert out["r11"] == Repriced("client_tier", "frontier", "frontier-a", cost("frontier", 100, 50))
    assert out["r12"] == Repriced("client_tier", None, None, 0, refused="tier_forbidden")
    assert out["r13"] == Repriced("cache_hit", "mid", "mid-a", 0)  # the new floor; still a hit
    assert out["r14"] == Repriced("summary", "mid", "mid-a", cost("mid", 100, 50))  # the new floor writes summaries
    assert out["r15"] == Repriced("measuring", "frontier", "frontier-a", shadow.cost_nanos)  # learning kept
    assert out["r16"] == Repriced("failed", None, None, 0)
    assert out["r17"] == Repriced("scored", None, None, 0, refused="team_missing")
    without_learning = parse_policy(policy_text())
    assert reprice(shadow, without_learning).cost_after == 0
    forbid = parse_policy(policy_text().replace("allow_pinning: true", "allow_pinning: false"))
    assert reprice(pinned, forbid).refused == "pin_forbidden"

    result = build_plan(new, [pinned, forced, by_name, hit, summary, shadow, failed, other_team], [], SINCE, UNTIL)
    doc = result.to_dict()
    assert doc["treatments"] == {"scored": 1, "client_tier": 2, "unscored": 0, "pinned": 1, "embedding": 0,
                                 "cache_hit": 1, "summary": 1, "measuring": 1, "failed": 1}
    assert doc["refusals"] == {"team_missing": 1, "tier_forbidden": 1}
    team_t = next(t for t in doc["teams"] if t["team"] == "t")
    # client requests only: the summary and the shadow call are costs, the failure is left out
    assert team_t["requests"] == 4 and team_t["failed_not_billed"] == 1
    assert team_t["tiers_after"] == {"(refused)": 1, "frontier": 2, "mid": 1}
    assert team_t["refused_before_usd"] == "0.000200000"
    assert doc["total"]["before_nanos"] == sum(r.cost_nanos for r in (pinned, forced, by_name, hit, summary, shadow,
                                                                      other_team))


def _outcome(request_id: str, weak: float, strong: float, weak_tier: str = "small",
             strong_tier: str = "mid") -> Outcome:
    return Outcome(request_id=request_id, team="t", created_at=T0, features=(0.0,), feature_names=("x",),
                   prior_score=0.6, model_id="default", weak_tier=weak_tier, strong_tier=strong_tier,
                   routed_tier=strong_tier, ceiling_tier="frontier", weak_score=weak, strong_score=strong,
                   judge="frontier-a")


def test_judged_outcomes_give_the_expected_quality_change() -> None:
    records = [rec(i, "mid", 0.6) for i in range(4)] + [rec(9, "frontier", 0.9), rec(10, "small", 0.1)]
    outcomes = [_outcome("r0", 0.0, 1.0), _outcome("r1", 0.5, 0.5),  # mid -> small: grade -1.0 and 0.0
                _outcome("r9", 0.2, 0.8, "small", "frontier")]  # frontier -> mid: mid was not judged
    new = parse_policy(policy_text("{mid: 0.65, frontier: 0.95}"))
    quality = build_plan(new, records, outcomes, SINCE, UNTIL).quality
    assert quality is not None
    assert (quality.judged, quality.comparable) == (3, 2)
    assert quality.mean_before == 0.75 and quality.mean_after == 0.25
    [move] = quality.moves
    assert (move.before, move.after, move.judged, move.mean_change, move.requests) == ("mid", "small", 2, -0.5, 4)
    # four of six requests take the -0.5 move; the frontier -> mid move (one request) has no judged sample
    assert quality.expected_change == pytest.approx(4 * -0.5 / 6)
    assert quality.covered_share == pytest.approx(4 / 5)
    assert build_plan(new, records, [], SINCE, UNTIL).quality is None


def test_a_bad_candidate_names_its_line_and_field() -> None:
    text = policy_text().replace("routing: {thresholds:", "routing: {treshold: 1, thresholds:")
    with pytest.raises(ConfigError) as err:
        parse_policy(text, "candidate.yaml")
    line = text.splitlines().index(next(s for s in text.splitlines() if "treshold" in s)) + 1
    assert f"candidate.yaml:{line}: teams.t.routing.treshold" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_policy(policy_text().replace("name: mid", "name: [mid"), "candidate.yaml")
    assert "candidate.yaml:" in str(err.value) and "invalid YAML" in str(err.value)


def test_window_parsing() -> None:
    assert parse_window("7d", None, T0) == (T0 - timedelta(days=7), T0)
    assert parse_window("36h", "2026-11-20T12:00:00Z", T0) == (T0 - timedelta(hours=36), T0)
    assert parse_window("2026-11-19", "2026-11-20T12:00:00", T0) == (T0 - timedelta(hours=36), T0)
    for since, until in (("7x", None), ("2026-11-21", "2026-11-20"), ("1d", "noon"), ("999999d", None),
                         ("1d", "0001-01-01T00:00:00+01:00"), ("9999-12-31T23:00:00-05:00", None)):
        with pytest.raises(ValueError):
            parse_window(since, until, T0)


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db", "public"
    return PG_URL, request.getfixturevalue("pg_schema")


def test_records_page_back_through_the_ledger_and_plan_reads_them(ledger_url: tuple[str, str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_commit, "_RECORDS_PAGE", 3)  # several pages, and ties on started_at across pages
    records = SCORED + [rec(4, "small", tags={"owner": "x"}, usage_estimated=True, ttft_ms=7),
                        replace(rec(5, "mid", 0.6), started_at=SCORED[0].started_at),
                        replace(rec(6, "mid", 0.6), started_at=SCORED[0].started_at),
                        rec(7, "small", team="u"), replace(rec(8, "small"), started_at=UNTIL)]
    new = parse_policy(policy_text("{mid: 0.65, frontier: 0.95}"))

    async def go() -> tuple[list[UsageRecord], list[UsageRecord], Any]:
        ledger = open_ledger(ledger_url[0], spool_dir=None, schema=ledger_url[1])
        await ledger.start()
        try:
            for r in records:
                await ledger.write(r)
            await ledger.add_outcome(_outcome("r1", 0.0, 1.0))
            every = [r async for r in ledger.records(SINCE, UNTIL)]
            team_t = [r async for r in ledger.records(SINCE, UNTIL, team="t")]
            return every, team_t, await plan(ledger, new, SINCE, UNTIL, team="t")
        finally:
            await ledger.close()

    every, team_t, found = asyncio.run(go())
    inside = [r for r in records if r.started_at < UNTIL]
    key = lambda r: (r.started_at, r.request_id)  # noqa: E731
    assert sorted(every, key=key) == sorted(inside, key=key)  # every field round-trips, nothing twice
    assert [r.started_at for r in every] == sorted(r.started_at for r in every)
    assert sorted(team_t, key=key) == sorted((r for r in inside if r.team == "t"), key=key)
    assert found.to_dict() == build_plan(new, team_t, [_outcome("r1", 0.0, 1.0)], SINCE, UNTIL, team="t").to_dict()
    assert found.quality is not None and found.quality.judged == 1

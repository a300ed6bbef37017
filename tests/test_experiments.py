"""Experiment manifests without processes: config errors name file, line and field; attribution is a few dict
lookups compiled at load (key, explicit tag, tag set; first match wins); the window refuses with 403's code; the
experiment's lifetime cap joins a request's caps and alerts like any scope; the report groups by experiment and
projects spend at expiry. The served path (Redis, two workers, SQLite and PostgreSQL) is
``tests/experiments_scenario.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from metering.alerts import crossings, payload
from metering.budgets.base import BudgetExceeded, CapState
from metering.budgets.memory_store import MemoryBudgetStore
from metering.budgets.policy import caps_for
from metering.finops.experiments import experiment_report, experiment_rows, project
from metering.ledger import open_ledger
from metering.service import ledger_seeder
from pipeline.budget import budget_policy
from pipeline.errors import TiergateError
from pipeline.experiments import experiment_tags
from proxy.errors import ERRORS
from router.config_loader import ConfigError, parse_policy
from router.experiments import Experiments
from router.policy import Policy, Principal
from tests.metering_fixtures import make_record

NOW = datetime.now(UTC).replace(microsecond=0)
BASE = """\
tiers:
  - name: small
    deployments:
      - model: openai/gpt-4o-mini
teams:
  lab:
    keys:
      - {id: lab-a, sha256: "0000000000000000000000000000000000000000000000000000000000000000"}
      - {id: lab-b, sha256: "1111111111111111111111111111111111111111111111111111111111111111"}
  ops:
    keys:
      - {id: ops-a, sha256: "2222222222222222222222222222222222222222222222222222222222222222"}
"""


def _policy(experiments: str) -> Policy:
    return parse_policy(BASE + "experiments:\n" + experiments, "p.yaml")


def _issue(experiments: str) -> str:
    with pytest.raises(ConfigError) as exc:
        _policy(experiments)
    return str(exc.value)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


STARTED = _iso(NOW - timedelta(hours=1))
MANIFESTS = f"""\
  - {{name: by-key, owner: ana, purpose: prompts v2, team: lab, starts_at: {STARTED}, keys: [lab-b]}}
  - {{name: by-tags, owner: bo, purpose: eval, team: lab, starts_at: {STARTED}, ttl: 7d, budget_usd: "5",
      tags: {{project: churn, env: dev}}}}
  - {{name: broad, owner: cy, purpose: any churn, team: lab, starts_at: {STARTED}, tags: {{project: churn}}}}
  - {{name: prod, owner: di, purpose: forever, team: ops, production: true}}
  - {{name: old, owner: ed, purpose: done, team: ops, expires_at: {_iso(NOW - timedelta(minutes=1))}}}
  - {{name: later, owner: fa, purpose: next week, team: ops, starts_at: {_iso(NOW + timedelta(days=7))}}}
"""


# ---- config ----------------------------------------------------------------------------------------------------------

def test_defaults_follow_the_seed_governance() -> None:
    policy = _policy(MANIFESTS)
    by = {m.name: m for m in policy.experiments.manifests}
    assert by["by-key"].budget.limit_nanos == 1_000 * 10**9  # $1,000 by default
    assert by["by-key"].expires_at == NOW - timedelta(hours=1) + timedelta(hours=24)  # 24 h TTL by default
    assert by["by-tags"].expires_at == NOW - timedelta(hours=1) + timedelta(days=7)
    assert by["by-tags"].budget.limit_nanos == 5 * 10**9
    assert by["prod"].expires_at is None and by["prod"].starts_at is None  # production: no TTL
    assert by["old"].expires_at == NOW - timedelta(minutes=1)


@pytest.mark.parametrize("entry, where, words", [
    ("{name: a, owner: o, purpose: p, team: lab, ttl: 24h}", "p.yaml:14: experiments.0:",
     "'ttl' needs 'starts_at'"),
    ("{name: a, owner: o, purpose: p, team: lab}", "p.yaml:14: experiments.0:", "non-production experiment expires"),
    ("{name: a, owner: o, purpose: p, team: lab, expires_at: 2030-01-01, ttl: 1d, starts_at: 2029-01-01}",
     "p.yaml:14: experiments.0:", "not both"),
    ("{name: a, owner: o, purpose: p, team: nope, production: true}", "p.yaml:14: experiments.0.team:",
     "unknown team 'nope'"),
    ("{name: a, owner: o, purpose: p, team: lab, production: true, keys: [ops-a]}",
     "p.yaml:14: experiments.0.keys.0:", "not a key of team 'lab'"),
    ("{name: a, owner: o, purpose: p, team: lab, production: true, budget_usd: 0}",
     "p.yaml:14: experiments.0.budget_usd:", "greater than 0"),
    ("{name: a, owner: o, purpose: p, team: lab, production: true, ttl: 3w}", "p.yaml:14: experiments.0.ttl:",
     "pattern"),
    ("{name: a, owner: o, purpose: p, team: lab, production: true, tags: {experiment: b}}",
     "p.yaml:14: experiments.0:", "may not name 'experiment'"),
    ("{name: a, owner: o, purpose: p, team: lab, production: true, color: red}", "p.yaml:14: experiments.0.color:",
     "Extra inputs"),
    ("{name: a, owner: o, purpose: p, team: lab, starts_at: 2030-01-02, expires_at: 2030-01-01}",
     "p.yaml:14: experiments.0.expires_at:", "before it starts"),
])
def test_manifest_errors_name_file_line_and_field(entry: str, where: str, words: str) -> None:
    text = _issue(f"  - {entry}\n")
    assert text.startswith(where) and words in text, text


def test_manifests_that_would_be_ambiguous_are_refused() -> None:
    twice = "  - {name: a, owner: o, purpose: p, team: lab, production: true}\n" * 2
    assert "p.yaml:15: experiments.1.name: experiment name 'a' is used twice" in _issue(twice)
    keys = ("  - {name: a, owner: o, purpose: p, team: lab, production: true, keys: [lab-a]}\n"
            "  - {name: b, owner: o, purpose: p, team: lab, production: true, keys: [lab-a]}\n")
    assert "experiments.1.keys.0: key 'lab-a' already belongs to experiment 'a'" in _issue(keys)
    tags = ("  - {name: a, owner: o, purpose: p, team: lab, production: true, tags: {x: '1', y: '2'}}\n"
            "  - {name: b, owner: o, purpose: p, team: lab, production: true, tags: {y: '2', x: '1'}}\n")
    assert "experiments.1.tags: experiment 'a' has the same tags" in _issue(tags)


def test_demo_config_experiments_stay_valid() -> None:
    from router.config_loader import load_policy
    from tests.conftest import ROOT

    policy = load_policy(ROOT / "configs" / "demo.yaml")
    assert [m.name for m in policy.experiments.manifests] == ["summarizer-v2"]
    # a production experiment joined by tag: the demo keys' untagged requests stay outside it, and it never expires
    far = datetime(2099, 1, 1, tzinfo=UTC)
    assert _tags(policy, "research-demo", {"prompt": "summarizer-v2"}, team="research", at=far) == {
        "prompt": "summarizer-v2", "experiment": "summarizer-v2"}
    assert _tags(policy, "research-demo", {}, team="research", at=far) == {}


# ---- attribution -----------------------------------------------------------------------------------------------------

def _who(policy: Policy, key: str) -> Principal:
    return next(p for p in policy.keys.values() if p.key_id == key)


def _tags(policy: Policy, key: str, tags: dict[str, str], team: str = "lab", at: datetime = NOW) -> dict[str, str]:
    return experiment_tags(policy, team, _who(policy, key), tags, at)


def test_attribution_by_key_then_named_tag_then_tag_set() -> None:
    policy = _policy(MANIFESTS)
    assert _tags(policy, "lab-b", {}) == {"experiment": "by-key"}
    assert _tags(policy, "lab-b", {"project": "churn", "env": "dev"})["experiment"] == "by-key"  # the key first
    assert _tags(policy, "lab-a", {"experiment": "broad", "project": "churn", "env": "dev"})["experiment"] == "broad"
    # every tag of the set must match; of two matching sets, the first in the policy wins
    assert _tags(policy, "lab-a", {"env": "dev", "project": "churn", "x": "y"}) == {
        "env": "dev", "project": "churn", "x": "y", "experiment": "by-tags"}
    assert _tags(policy, "lab-a", {"project": "churn", "env": "prod"})["experiment"] == "broad"
    assert _tags(policy, "lab-a", {"project": "other", "env": "dev"}) == {"project": "other", "env": "dev"}
    # a name of no experiment of the team stays a plain tag (another team's experiment included)
    assert _tags(policy, "lab-a", {"experiment": "prod"}) == {"experiment": "prod"}
    assert _tags(policy, "ops-a", {}, team="ops") == {}


def test_a_key_and_a_tag_naming_different_experiments_is_a_400() -> None:
    policy = _policy(MANIFESTS)
    with pytest.raises(TiergateError) as exc:
        _tags(policy, "lab-b", {"experiment": "broad"})
    assert exc.value.code == "invalid_request.invalid_tag" and "belongs to experiment 'by-key'" in exc.value.message
    assert ERRORS[exc.value.code].status == 400


def test_outside_its_window_an_experiment_refuses_with_a_403_that_says_why() -> None:
    policy = _policy(MANIFESTS)
    with pytest.raises(TiergateError) as exc:
        _tags(policy, "ops-a", {"experiment": "old"}, team="ops")
    assert exc.value.code == "experiment_expired" and ERRORS["experiment_expired"].status == 403
    assert "experiment 'old' of team 'ops' (owner ed) expired at" in exc.value.message
    with pytest.raises(TiergateError) as exc:
        _tags(policy, "ops-a", {"experiment": "later"}, team="ops")
    assert "has not started" in exc.value.message
    # by-key expires 24 h after its start: its key is refused from then on
    with pytest.raises(TiergateError):
        _tags(policy, "lab-b", {}, at=NOW + timedelta(hours=23))
    assert _tags(policy, "lab-b", {}, at=NOW + timedelta(hours=22, minutes=59))["experiment"] == "by-key"


class _Counting(dict):  # type: ignore[type-arg]
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls = 0

    def get(self, *args: Any) -> Any:
        self.calls += 1
        return super().get(*args)


def test_attribution_is_a_lookup_per_request_tag_not_a_scan_of_the_manifests() -> None:
    many = "".join(f"  - {{name: e{i}, owner: o, purpose: p, team: lab, production: true, tags: {{run: r{i}}}}}\n"
                   for i in range(2_000))
    experiments = _policy(many).experiments
    counted = replace(experiments, by_tag=_Counting(experiments.by_tag))
    tags = {"run": "r1999", "env": "dev", "user": "u"}
    assert counted.attribute("lab", "lab-a", tags).name == "e1999"  # type: ignore[union-attr]
    assert counted.by_tag.calls == len(tags)  # type: ignore[attr-defined]
    assert counted.attribute("ops", "ops-a", tags) is None and counted.by_tag.calls == len(tags)  # no experiments
    assert Experiments().attribute("lab", "lab-a", tags) is None


# ---- budgets and alerts ----------------------------------------------------------------------------------------------

def test_the_experiment_cap_joins_the_request_caps_over_its_whole_life() -> None:
    policy = _policy(MANIFESTS)
    lab = budget_policy(policy.teams["lab"], policy.experiments)
    caps = caps_for(lab, "lab", "lab-a", {"experiment": "by-tags"}, NOW.date())
    assert [(c.kind, c.name, c.period, c.limit_nanos) for c in caps] == [("experiment", "by-tags", "life", 5 * 10**9)]
    cap = caps[0]
    started = NOW - timedelta(hours=1)
    assert cap.start == started.date() and cap.end == (started + timedelta(days=7)).date() + timedelta(1)
    assert cap.counter_id == f"experiment:lab:by-tags:{cap.start.isoformat()}"
    assert cap.describe() == "lifetime budget of experiment by-tags of team lab"
    # the same cap whatever day the request runs (a daily cap would move)
    assert caps_for(lab, "lab", "lab-a", {"experiment": "by-tags"}, NOW.date() + timedelta(days=3)) == caps
    assert caps_for(lab, "lab", "lab-a", {"experiment": "elsewhere"}, NOW.date()) == ()
    assert caps_for(budget_policy(policy.teams["lab"]), "lab", "lab-a", {"experiment": "by-tags"}, NOW.date()) == ()


def test_over_its_budget_an_experiment_refuses_and_alerts_name_it() -> None:
    policy = _policy(MANIFESTS.replace('budget_usd: "5"', 'budget_usd: "0.000001"'))
    lab = budget_policy(policy.teams["lab"], policy.experiments)
    caps = caps_for(lab, "lab", "lab-a", {"experiment": "by-tags"}, NOW.date())

    async def go() -> None:
        store = MemoryBudgetStore()
        hold = await store.reserve("r1", caps, 900, 60)
        states = await store.settle(hold, 900)
        found, _ = crossings(states[0], [("r1", 900)], (50, 80, 100))
        assert [e.threshold_pct for e in found] == [50, 80]
        assert payload(found[0])["text"].startswith(
            ":warning: tiergate: lifetime budget of experiment by-tags of team lab")
        assert found[0].once_key == f"experiment:lab:by-tags:life:{caps[0].start.isoformat()}:50"
        with pytest.raises(BudgetExceeded) as exc:
            await store.reserve("r2", caps, 200, 60)
        assert "lifetime budget of experiment by-tags of team lab exceeded" in str(exc.value)

    asyncio.run(go())
    assert isinstance(CapState(caps[0], 0, 0).cap.until, date)


# ---- ledger: seed, report, projection -----------------------------------------------------------------------------

@pytest.fixture()
def ledger_path(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'ledger.db'}"


def test_seed_report_and_status_read_the_experiment_tag(ledger_path: str) -> None:
    policy = _policy(MANIFESTS)
    manifests = policy.experiments.of_team("lab")
    at = NOW - timedelta(minutes=30)
    rows = [({"experiment": "by-key"}, "lab-b", 400), ({"experiment": "by-key"}, "lab-b", 600),
            ({"experiment": "by-tags", "project": "churn", "env": "dev"}, "lab-a", 50), ({}, "lab-a", 7)]

    async def go() -> None:
        ledger = open_ledger(ledger_path, spool_dir=None)
        await ledger.start()
        try:
            for i, (tags, key, cost) in enumerate(rows):
                await ledger.write(make_record(i, team="lab", key_id=key, tags=tags, cost_nanos=cost, started_at=at,
                                               ended_at=at + timedelta(seconds=1)))
            await ledger.flush()
            seed = ledger_seeder(ledger)
            lab = budget_policy(policy.teams["lab"], policy.experiments)
            assert await seed(lab.experiments["by-key"].cap) == 1_000
            assert await seed(lab.experiments["by-tags"].cap) == 50
            report = await experiment_report(ledger, at.date(), at.date() + timedelta(days=1), "lab",
                                             ["team", "experiment"])
            assert report.key_columns == ("team", "experiment")
            assert [(r.keys, r.totals.cost_nanos, r.totals.requests) for r in report.rows] == [
                ({"team": "lab", "experiment": "by-key"}, 1_000, 2),
                ({"team": "lab", "experiment": "by-tags"}, 50, 1),
                ({"team": "lab", "experiment": None}, 7, 1)]
            assert sum(r.totals.cost_nanos for r in report.rows) == report.totals.cost_nanos == 1_057
            assert report.to_csv().splitlines()[0].startswith("team,experiment,requests,")
            with pytest.raises(ValueError):
                await experiment_report(ledger, at.date(), at.date() + timedelta(days=1), None, ["tag", "experiment"])
            found = {r.manifest.name: r for r in await experiment_rows(ledger, manifests, NOW)}
            assert found["by-key"].spent_nanos == 1_000 and found["by-key"].requests == 2
            d = found["by-key"].to_dict()
            assert (d["owner"], d["purpose"], d["status"], d["spent_usd"], d["budget_usd"]) == (
                "ana", "prompts v2", "active", "0.000001000", "1000.000000000")
            assert d["forecast_basis"] == "run rate" and not d["projected_over_budget"]
            # $0.000001 in the first hour of a 24 h experiment: 24x at expiry
            assert Decimal(d["projected_usd"]) == Decimal("0.0000")  # shown to 4 decimals
            assert found["by-key"].projection.nanos == pytest.approx(24_000, rel=1e-6)
            assert found["broad"].to_dict()["status"] == "active" and found["broad"].spent_nanos == 0
        finally:
            await ledger.close()

    asyncio.run(go())


def test_a_manifest_without_spend_is_projected_from_the_traffic_it_will_attribute(ledger_path: str) -> None:
    """What a CI gate on a new manifest needs: its keys' and tags' recent spend, over its window."""
    start = _iso(NOW + timedelta(days=1))
    policy = _policy(f"""\
  - {{name: new-key, owner: o, purpose: p, team: lab, starts_at: {start}, ttl: 2d, keys: [lab-a],
     budget_usd: "0.000001"}}
  - {{name: new-tags, owner: o, purpose: p, team: lab, starts_at: {start}, ttl: 3d, tags: {{project: churn, env: dev}}}}
  - {{name: opt-in, owner: o, purpose: p, team: lab, starts_at: {start}}}
""")
    day = lambda n: NOW - timedelta(days=n)  # noqa: E731
    rows = [("lab-a", {}, 14_000, day(2)), ("lab-b", {"project": "churn", "env": "dev"}, 700, day(3)),
            ("lab-b", {"project": "churn"}, 7_000, day(3)), ("lab-a", {}, 99_999, day(20))]  # too old to count

    async def go() -> None:
        ledger = open_ledger(ledger_path, spool_dir=None)
        await ledger.start()
        try:
            for i, (key, tags, cost, at) in enumerate(rows):
                await ledger.write(make_record(i, team="lab", key_id=key, tags=tags, cost_nanos=cost, started_at=at,
                                               ended_at=at + timedelta(seconds=1)))
            await ledger.flush()
            found = {r.manifest.name: r for r in await experiment_rows(ledger, policy.experiments.manifests, NOW)}
        finally:
            await ledger.close()
        # 14 000 over 14 days, for its 2 days; the tag set at most its least spent pair's 700 / 14 a day, for 3 days
        assert found["new-key"].projection.nanos == pytest.approx(2_000)
        assert found["new-tags"].projection.nanos == pytest.approx(150)
        assert found["new-key"].projection.basis == "its keys' and tags' last 14 days"
        assert found["new-key"].status == "scheduled" and found["new-key"].projected_over_budget
        assert found["opt-in"].projection.nanos == 0 and found["opt-in"].projection.basis == "no spend yet"

    asyncio.run(go())


def test_projection_at_expiry() -> None:
    start = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
    now = start + timedelta(hours=6)
    # run rate from the experiment's start: 6 h spent 600, 18 h left
    assert project({start.date(): 600}, 600, start, start + timedelta(hours=24), now).nanos == pytest.approx(2_400)
    # the first hour counts as an hour at least
    assert project({start.date(): 10}, 10, now - timedelta(seconds=1), now + timedelta(hours=2), now).nanos == \
        pytest.approx(30)
    assert project({}, 0, start, start + timedelta(days=1), now).basis == "no spend yet"
    assert project({start.date(): 5}, 5, start, now, now).nanos == 5  # expired: what it spent
    # four steady weeks: the forecast model, about 100 a day for the 9.75 days left
    history = {start.date() + timedelta(days=i): 100 for i in range(28)}
    later = start + timedelta(days=28, hours=6)
    spent = sum(history.values())
    p = project(history, spent, start, start + timedelta(days=38), later)
    assert p.basis == "forecast" and p.nanos == pytest.approx(spent + 975, rel=0.01)

"""A what-if plan: a window of the ledger re-priced under another policy, summed per team, per tier and in quality.

``build_plan`` is pure (records and judged outcomes in, a ``Plan`` out) so tests can hand it a ledger they built;
``plan`` reads the records and outcomes through the ``Ledger`` interface (pages, never the whole window at once).
The CLI (``tiergate plan``) and the admin API (``POST /v1/spend/plan``) both print ``Plan.to_dict()``.

Costs: *before* is what the ledger billed (exact), *after* is ``pipeline.plan.reprice``'s, both integer nano-dollars,
shown as exact decimal strings. Tier shares compare the requests clients made (tiergate's own summaries and
shadow/judge calls are costs, not requests). Quality comes only from judged requests (the ``outcomes`` table): a
judged request has a grade for two tiers, so when the plan moves it between those two the change in its grade is
known; moved anywhere else it is not, and the plan says how many are like that.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from statistics import fmean
from typing import Any

from metering.evidence import percent
from metering.ledger.base import Ledger
from metering.money import format_usd
from metering.outcomes import Outcome
from metering.record import UsageRecord
from pipeline.plan import ASSUMPTIONS, CLIENT_TREATMENTS, TREATMENTS, Repriced, reprice
from router.policy import Policy

REFUSED = "(refused)"  # the tier column of requests the new policy refuses
# Records re-priced per hop to a worker thread (~0.1 ms each, decide() being most of it): while an admin's plan
# runs in a serving worker, its event loop keeps serving instead of stalling for the seconds a week of records takes.
_BATCH = 1000


@dataclass(slots=True)
class TeamPlan:
    team: str
    requests: int = 0  # client requests (failed ones left out)
    before_nanos: int = 0  # every billed record: requests, summaries, shadow and judge calls
    after_nanos: int = 0
    tiers_before: Counter[str] = field(default_factory=Counter)
    tiers_after: Counter[str] = field(default_factory=Counter)
    moved: int = 0  # client requests whose tier changes
    refused: int = 0
    refused_before_nanos: int = 0
    output_capped: int = 0
    output_tokens_cut: int = 0
    failed: int = 0

    def add(self, other: TeamPlan) -> None:
        for name in ("requests", "before_nanos", "after_nanos", "moved", "refused", "refused_before_nanos",
                     "output_capped", "output_tokens_cut", "failed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.tiers_before.update(other.tiers_before)
        self.tiers_after.update(other.tiers_after)

    def to_dict(self) -> dict[str, Any]:
        change = self.after_nanos - self.before_nanos
        pct = percent(change, self.before_nanos)
        return {
            "team": self.team, "requests": self.requests,
            "before_usd": format_usd(self.before_nanos), "after_usd": format_usd(self.after_nanos),
            "change_usd": format_usd(change), "change_percent": str(pct) if pct is not None else None,
            "before_nanos": self.before_nanos, "after_nanos": self.after_nanos,
            "tiers_before": dict(sorted(self.tiers_before.items())),
            "tiers_after": dict(sorted(self.tiers_after.items())),
            "moved": self.moved, "refused": self.refused, "refused_before_usd": format_usd(self.refused_before_nanos),
            "output_capped": self.output_capped, "output_tokens_cut": self.output_tokens_cut,
            "failed_not_billed": self.failed,
        }


@dataclass(frozen=True, slots=True)
class Move:
    """Judged requests moved from one tier to another of their judged pair, and every request making that move."""

    before: str
    after: str
    judged: int
    mean_change: float  # mean grade after minus before, over the judged ones
    requests: int  # client requests (judged or not) the plan moves this way

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.before, "to": self.after, "judged": self.judged,
                "mean_grade_change": round(self.mean_change, 4), "requests": self.requests}


@dataclass(frozen=True, slots=True)
class Quality:
    judged: int  # judged requests in the window that the plan places (not refused)
    comparable: int  # whose tier after is one of their two judged tiers
    mean_before: float | None
    mean_after: float | None
    moves: tuple[Move, ...]
    expected_change: float | None  # per client request, over every request the plan places
    covered_share: float | None  # share of moved requests whose move has judged samples

    def to_dict(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)
        return {"judged": self.judged, "comparable": self.comparable, "not_comparable": self.judged - self.comparable,
                "mean_grade_before": r(self.mean_before), "mean_grade_after": r(self.mean_after),
                "change": r(None if self.mean_before is None or self.mean_after is None
                            else self.mean_after - self.mean_before),
                "moves": [m.to_dict() for m in self.moves],
                "expected_change_per_request": r(self.expected_change), "moved_share_with_judged_samples":
                r(self.covered_share),
                "note": "grades are the judge's pairwise grades in [0, 1] (relative to the other tier of the pair); "
                        "a request moved to a tier it was not judged on has no estimate"}


@dataclass(frozen=True, slots=True)
class Plan:
    since: datetime
    until: datetime
    team: str | None
    policy_sha256: str
    teams: tuple[TeamPlan, ...]
    total: TeamPlan
    treatments: dict[str, int]
    refusals: dict[str, int]
    quality: Quality | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(), "until": self.until.isoformat(), "team": self.team,
            "policy_sha256": self.policy_sha256,
            "teams": [t.to_dict() for t in self.teams], "total": self.total.to_dict(),
            "tier_share": {"before": _shares(self.total.tiers_before), "after": _shares(self.total.tiers_after)},
            "treatments": self.treatments, "refusals": self.refusals,
            "quality": self.quality.to_dict() if self.quality else None,
            "assumptions": list(ASSUMPTIONS),
        }

    def render_text(self) -> str:
        t = self.total
        lines = [f"What-if: the ledger's records of [{self.since:%Y-%m-%d %H:%M}, {self.until:%Y-%m-%d %H:%M}) UTC"
                 f"{f' (team {self.team})' if self.team else ''} re-priced under policy {self.policy_sha256[:12]}", ""]
        width = max([len(p.team) for p in self.teams] + [5])
        lines.append(f"{'team':{width}}  {'requests':>8}  {'before $':>14}  {'after $':>14}  {'change $':>15}  "
                     f"{'change':>8}  moved  refused")
        for p in (*self.teams, t):
            d = p.to_dict()
            pct = f"{d['change_percent']}%" if d["change_percent"] is not None else "-"
            lines.append(f"{p.team:{width}}  {p.requests:>8}  {d['before_usd']:>14}  {d['after_usd']:>14}  "
                         f"{d['change_usd']:>15}  {pct:>8}  {p.moved:>5}  {p.refused:>7}")
        lines += ["", "Share of requests per tier (before -> after):"]
        before, after = _shares(t.tiers_before), _shares(t.tiers_after)
        for tier in sorted(set(before) | set(after)):
            none = {"requests": 0, "percent": "0.00"}
            b, a = before.get(tier, none), after.get(tier, none)
            lines.append(f"  {tier:<14} {b['requests']:>7} ({b['percent']:>6}%) -> "
                         f"{a['requests']:>7} ({a['percent']:>6}%)")
        if t.output_capped:
            lines.append(f"\nThe new max_tokens cap cuts {t.output_tokens_cut} completion tokens from "
                         f"{t.output_capped} requests.")
        if self.refusals:
            lines.append(f"Refused under the new policy: {', '.join(f'{k} {v}' for k, v in self.refusals.items())} "
                         f"(billed ${format_usd(t.refused_before_nanos)} before; $0 after).")
        lines.append("Records by treatment: " + ", ".join(f"{k} {v}" for k, v in self.treatments.items() if v))
        q = self.quality
        if q is None:
            lines.append("\nQuality: no judged requests in the window (teams with a learning block have them).")
        else:
            d = q.to_dict()
            lines.append(f"\nQuality (judged requests: {q.judged}, comparable: {q.comparable}): mean grade "
                         f"{d['mean_grade_before']} -> {d['mean_grade_after']} (change {d['change']}); expected "
                         f"change per request {d['expected_change_per_request']} ("
                         + (f"{q.covered_share:.0%}" if q.covered_share is not None else "none")
                         + " of moved requests make a move with judged samples)")
            for m in q.moves:
                lines.append(f"  {m.before} -> {m.after}: {m.requests} requests, judged {m.judged}, mean grade change "
                             f"{m.mean_change:+.4f}")
        lines += ["", "What the ledger cannot tell (assumed):"] + [f"- {a}" for a in ASSUMPTIONS]
        return "\n".join(lines) + "\n"


def _shares(counts: Counter[str]) -> dict[str, dict[str, Any]]:
    whole = sum(counts.values())
    return {tier: {"requests": n, "percent": str(percent(n, whole))} for tier, n in sorted(counts.items())}


class _Builder:
    def __init__(self, policy: Policy, judged: dict[str, Outcome]) -> None:
        self._policy = policy
        self._judged = judged
        self.teams: dict[str, TeamPlan] = {}
        self.treatments: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.moves: Counter[tuple[str, str]] = Counter()  # every client request's (before, after) tier
        self.grades: list[tuple[str, str, float, float | None]] = []  # judged: before, after, grade before, after

    def add(self, record: UsageRecord) -> Repriced:
        result = reprice(record, self._policy)
        plan = self.teams.setdefault(record.team, TeamPlan(record.team))
        self.treatments[result.treatment] += 1
        if result.treatment == "failed":
            plan.failed += 1
            return result
        plan.before_nanos += record.cost_nanos
        plan.after_nanos += result.cost_after
        if result.refused is not None:
            self.refusals[result.refused] += 1
            plan.refused += 1
            plan.refused_before_nanos += record.cost_nanos
        if result.output_cut:
            plan.output_capped += 1
            plan.output_tokens_cut += result.output_cut
        if result.treatment in CLIENT_TREATMENTS:
            after = result.tier_after or REFUSED
            plan.requests += 1
            plan.tiers_before[record.tier] += 1
            plan.tiers_after[after] += 1
            plan.moved += after != record.tier
            if result.tier_after is not None:
                self.moves[(record.tier, after)] += 1
                outcome = self._judged.get(record.request_id)
                if outcome is not None:
                    before_grade = _grade(outcome, record.tier)
                    if before_grade is not None:
                        self.grades.append((record.tier, after, before_grade, _grade(outcome, after)))
        return result

    def add_all(self, records: Iterable[UsageRecord]) -> None:
        for record in records:
            self.add(record)

    def quality(self) -> Quality | None:
        if not self.grades:
            return None
        comparable = [g for g in self.grades if g[3] is not None]
        by_move: dict[tuple[str, str], list[float]] = {}
        for before, after, g0, g1 in comparable:
            if before != after:
                assert g1 is not None
                by_move.setdefault((before, after), []).append(g1 - g0)
        moves = tuple(Move(b, a, len(v), fmean(v), self.moves[(b, a)]) for (b, a), v in sorted(by_move.items()))
        placed = sum(self.moves.values())
        moved = sum(n for (b, a), n in self.moves.items() if b != a)
        covered = sum(m.requests for m in moves)
        return Quality(
            judged=len(self.grades), comparable=len(comparable),
            mean_before=fmean(g[2] for g in comparable) if comparable else None,
            mean_after=fmean(g[3] for g in comparable if g[3] is not None) if comparable else None,
            moves=moves,
            expected_change=sum(m.requests * m.mean_change for m in moves) / placed if placed else None,
            covered_share=covered / moved if moved else None,
        )


def _grade(outcome: Outcome, tier: str) -> float | None:
    if tier == outcome.weak_tier:
        return outcome.weak_score
    if tier == outcome.strong_tier:
        return outcome.strong_score
    return None


def build_plan(policy: Policy, records: Iterable[UsageRecord], outcomes: Sequence[Outcome], since: datetime,
               until: datetime, team: str | None = None, policy_sha256: str = "") -> Plan:
    """The plan of ``records`` (those of ``[since, until)``) under ``policy``; pure."""
    builder = _Builder(policy, {o.request_id: o for o in outcomes})
    builder.add_all(records)
    return _finish(builder, policy, since, until, team, policy_sha256)


def _finish(builder: _Builder, policy: Policy, since: datetime, until: datetime, team: str | None,
            policy_sha256: str) -> Plan:
    teams = tuple(builder.teams[name] for name in sorted(builder.teams))
    total = TeamPlan("total")
    for p in teams:
        total.add(p)
    return Plan(since, until, team, policy_sha256 or policy.sha256, teams, total,
                {t: builder.treatments[t] for t in TREATMENTS}, dict(sorted(builder.refusals.items())),
                builder.quality())


async def plan(ledger: Ledger, policy: Policy, since: datetime, until: datetime, team: str | None = None,
               policy_sha256: str = "") -> Plan:
    """The plan of the ledger's records that started in ``[since, until)`` (of ``team``, or every team)."""
    outcomes = await ledger.outcomes(since, team)  # judged after their request started: never before ``since``
    builder = _Builder(policy, {o.request_id: o for o in outcomes})
    batch: list[UsageRecord] = []
    async for record in ledger.records(since, until, team):
        batch.append(record)
        if len(batch) == _BATCH:
            await asyncio.to_thread(builder.add_all, batch)
            batch = []
    builder.add_all(batch)
    return _finish(builder, policy, since, until, team, policy_sha256)

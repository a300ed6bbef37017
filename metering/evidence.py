"""Evidence for a team: what routing saved and what it cost in judged quality, with confidence intervals.

Why a pure function over rows the ledger already serves (a spend report grouped by purpose and tier, and the
outcome store's rows): the API, the CLI and the tests compute the same numbers from the same inputs, and the numbers
can be checked against the ledger by hand.

- **Savings (X)**: the ``chat`` records' cost against their counterfactual (the same usage priced at the team's
  ceiling tier, ``pipeline.records``), exact nano-dollars; the percent is rounded half-even to 2 decimals only at
  the end. Shadow and judge calls are the cost of measuring: shown apart, and in a second percent net of them.
- **Quality (Y)**: over judged requests, the sum of the routed tier's grades over the sum of the ceiling tier's.
  A request routed to a middle tier is judged against the floor, not the ceiling (``pipeline.shadow``): it says
  nothing about the ceiling, so it is left out of Y and counted in ``not_vs_ceiling``. A request routed to the
  ceiling contributes its grade to both sums (there, routing was always-ceiling).
  Its 95% interval is a percentile bootstrap (nearest-rank 2.5th and 97.5th, ``metering.percentile``) over judged
  requests with a fixed seed (the same rows give the same interval). Resampling rows is drawing a multinomial over
  the distinct (routed, ceiling) grade pairs, of which a pairwise judge yields a handful, so it costs
  O(resamples x distinct pairs), not O(resamples x rows).
- **Quality per tier**: a tier's mean grade in the comparisons it took part in, with a 95% Wilson interval
  (grades in [0, 1], a tie counting as half a win). Pairwise grades are relative to the opponent: a floor tier's
  mean says how often it held its own against a stronger tier, not an absolute score.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

import numpy as np

from metering.ledger.base import Ledger
from metering.ledger.report import ReportRow, midnight
from metering.money import format_usd
from metering.outcomes import Outcome
from metering.percentile import nearest_rank

Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20261127
MEASURING = ("shadow", "judge")


@dataclass(frozen=True, slots=True)
class Interval:
    value: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class TierQuality:
    tier: str
    n: int  # judged comparisons the tier took part in
    mean: Interval


@dataclass(frozen=True, slots=True)
class Spend:
    purpose: str
    tier: str
    requests: int
    cost_nanos: int
    counterfactual_cost_nanos: int

    def to_dict(self) -> dict[str, Any]:
        return {"purpose": self.purpose, "tier": self.tier, "requests": self.requests,
                "cost_usd": format_usd(self.cost_nanos),
                "counterfactual_cost_usd": format_usd(self.counterfactual_cost_nanos)}


@dataclass(frozen=True, slots=True)
class Evidence:
    team: str
    start: date
    end: date  # exclusive
    ceiling: str | None
    quality: list[TierQuality]
    chat: list[Spend]  # per tier
    measuring: list[Spend]  # shadow and judge, per tier
    cost_nanos: int  # chat
    counterfactual_cost_nanos: int  # chat, at the ceiling's prices
    measuring_nanos: int
    saved_percent: Decimal | None  # None when nothing was spent
    saved_net_percent: Decimal | None  # after the cost of measuring
    judged: int  # outcome rows in range
    vs_ceiling: int  # those whose pair held the ceiling: Y's sample
    not_vs_ceiling: dict[str, int]  # routed tier -> judged requests left out of Y
    quality_ratio: Interval | None  # None without a judged request vs the ceiling, or when the ceiling scored 0

    @property
    def ceiling_name(self) -> str:
        return self.ceiling or "ceiling"

    def sentence(self) -> str:
        saved = "no chat spend to compare" if self.saved_percent is None else \
            f"routing saved {self.saved_percent}% against always-{self.ceiling_name}"
        if self.quality_ratio is None:
            quality = (f"judged quality unknown ({self.vs_ceiling} judged samples against {self.ceiling_name}"
                       + (", where it never scored" if self.vs_ceiling else "") + ")")
        else:
            q = self.quality_ratio
            quality = (f"at {100 * q.value:.1f}% of its judged quality ({self.vs_ceiling} judged samples; "
                       f"95% CI {100 * q.low:.1f}-{100 * q.high:.1f}%)")
        left_out = ""
        if self.not_vs_ceiling:
            counts = ", ".join(f"{n} routed to {tier}" for tier, n in sorted(self.not_vs_ceiling.items()))
            left_out = (f"; {counts} were judged against the floor, not {self.ceiling_name}, and are left out of "
                        "the quality ratio")
        return f"{saved} {quality}{left_out}"

    def to_dict(self) -> dict[str, Any]:
        def interval(i: Interval | None) -> dict[str, float] | None:
            return None if i is None else {"value": i.value, "low": i.low, "high": i.high}

        return {
            "team": self.team, "start": self.start.isoformat(), "end": self.end.isoformat(),
            "ceiling": self.ceiling, "summary": self.sentence(),
            "saved_percent": None if self.saved_percent is None else str(self.saved_percent),
            "saved_net_of_measuring_percent": None if self.saved_net_percent is None else str(self.saved_net_percent),
            "cost_usd": format_usd(self.cost_nanos),
            "counterfactual_cost_usd": format_usd(self.counterfactual_cost_nanos),
            "measuring_cost_usd": format_usd(self.measuring_nanos),
            "quality_ratio": interval(self.quality_ratio),
            "quality_ratio_ci": f"percentile bootstrap, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}",
            "judged": self.judged, "judged_vs_ceiling": self.vs_ceiling, "judged_not_vs_ceiling": self.not_vs_ceiling,
            "quality_per_tier": [{"tier": q.tier, "n": q.n, "mean_grade": q.mean.value, "wilson_low": q.mean.low,
                                  "wilson_high": q.mean.high} for q in self.quality],
            "chat_per_tier": [s.to_dict() for s in self.chat],
            "measuring": [s.to_dict() for s in self.measuring],
        }


def percent(part: int, whole: int) -> Decimal | None:
    """``100 * part / whole`` from exact integers, rounded half-even to 2 decimals; None when ``whole`` is 0."""
    if whole == 0:
        return None
    with localcontext() as ctx:
        ctx.prec = 60  # nano-dollar sums have at most ~20 digits: the quotient is exact to well past 2 decimals
        return (Decimal(100 * part) / Decimal(whole)).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)


def wilson(mean: float, n: int) -> Interval:
    """95% Wilson score interval of a proportion observed as ``mean`` over ``n`` trials."""
    if n == 0:
        return Interval(math.nan, 0.0, 1.0)
    z2 = Z95 * Z95
    centre = (mean + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(mean * (1 - mean) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Interval(mean, max(0.0, centre - half), min(1.0, centre + half))


def routed_and_ceiling(outcome: Outcome) -> tuple[float, float] | None:
    """(routed tier's grade, ceiling tier's grade), or None when the ceiling was not one of the two tiers."""
    grades = {outcome.weak_tier: outcome.weak_score, outcome.strong_tier: outcome.strong_score}
    if outcome.ceiling_tier not in grades:
        return None
    return grades[outcome.routed_tier], grades[outcome.ceiling_tier]


def ratio_interval(pairs: Sequence[tuple[float, float]], resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = BOOTSTRAP_SEED) -> Interval | None:
    """sum(routed) / sum(ceiling) with a 95% percentile-bootstrap interval (resampling whole requests)."""
    total = sum(c for _, c in pairs)
    if not pairs or total <= 0:
        return None
    value = sum(r for r, _ in pairs) / total
    counts = Counter(pairs)
    kinds = np.array(list(counts), dtype=float)  # distinct (routed, ceiling) pairs
    draws = np.random.default_rng(seed).multinomial(len(pairs), np.array(list(counts.values())) / len(pairs),
                                                    size=resamples)
    num, den = draws @ kinds[:, 0], draws @ kinds[:, 1]
    ratios = num[den > 0] / den[den > 0]  # a resample where the ceiling never scored has no ratio
    found = ratios.tolist()
    return Interval(value, float(nearest_rank(found, 2.5)), float(nearest_rank(found, 97.5)))


def tier_quality(outcomes: Sequence[Outcome]) -> list[TierQuality]:
    grades: dict[str, list[float]] = {}
    for o in outcomes:
        grades.setdefault(o.weak_tier, []).append(o.weak_score)
        grades.setdefault(o.strong_tier, []).append(o.strong_score)
    return [TierQuality(tier, len(g), wilson(sum(g) / len(g), len(g))) for tier, g in sorted(grades.items())]


def _spend(rows: Sequence[ReportRow], purposes: Sequence[str]) -> list[Spend]:
    return [Spend(str(r.keys["purpose"]), str(r.keys["tier"]), r.totals.requests, r.totals.cost_nanos,
                  r.totals.counterfactual_cost_nanos)
            for r in rows if r.keys["purpose"] in purposes]


def evidence(team: str, start: date, end: date, rows: Sequence[ReportRow], outcomes: Sequence[Outcome],
             ceiling: str | None) -> Evidence:
    """``rows``: the team's spend report over ``[start, end)`` grouped by ``("purpose", "tier")``; ``outcomes``:
    its judged requests in the same range; ``ceiling``: the team's ceiling tier's name, if known."""
    chat = _spend(rows, ("chat",))
    measuring = _spend(rows, MEASURING)
    cost = sum(s.cost_nanos for s in chat)
    counterfactual = sum(s.counterfactual_cost_nanos for s in chat)
    measuring_nanos = sum(s.cost_nanos for s in measuring)
    pairs: list[tuple[float, float]] = []
    left_out: Counter[str] = Counter()
    for o in outcomes:
        pair = routed_and_ceiling(o)
        if pair is None:
            left_out[o.routed_tier] += 1
        else:
            pairs.append(pair)
    return Evidence(
        team=team, start=start, end=end, ceiling=ceiling or (outcomes[-1].ceiling_tier if outcomes else None),
        quality=tier_quality(outcomes), chat=chat, measuring=measuring, cost_nanos=cost,
        counterfactual_cost_nanos=counterfactual, measuring_nanos=measuring_nanos,
        saved_percent=percent(counterfactual - cost, counterfactual),
        saved_net_percent=percent(counterfactual - cost - measuring_nanos, counterfactual),
        judged=len(outcomes), vs_ceiling=len(pairs), not_vs_ceiling=dict(left_out),
        quality_ratio=ratio_interval(pairs),
    )


async def team_evidence(ledger: Ledger, team: str, start: date, end: date, ceiling: str | None) -> Evidence:
    """Read both inputs from the ledger and compute: the one reader the API and the CLI share, so they cannot
    disagree on the range (outcomes stored in ``[start, end)`` UTC, like the report's days)."""
    report = await ledger.report(start, end, team=team, group_by=("purpose", "tier"))
    until = midnight(end)
    judged = [o for o in await ledger.outcomes(midnight(start), team) if o.created_at < until]
    return evidence(team, start, end, report.rows, judged, ceiling)

"""Spend anomalies: an hour of a team, key, tag or model far outside its own recent baseline (pure: no I/O).

Four hourly metrics per scope: spend, request count, the share of requests served by a frontier tier, and the P95
of output tokens. Each hour is compared with the same UTC hour of the ``baseline_days`` days before (traffic has a
daily shape: 3 a.m. is compared with 3 a.m.), robustly: the baseline is their median and the spread their median
absolute deviation, so a past spike or a missing day barely moves either. Seven values cannot measure counting
noise, so the spread is never below what counting explains (Poisson requests, compound-Poisson spend, binomial
share; see ``_ScopeSeries.counting_noise``). An hour fires when it is at least ``factor`` times the baseline
*and* ``z`` spreads above it *and* big enough to matter (``min_value``, and enough requests for a share or a
percentile to mean something).

An episode starts at the first firing hour and ends once the metric has stayed within bounds for ``quiet_hours``
hours; it is reported (and alerted) once, with the evidence of its first hour: value, baseline, factor and the
costliest request ids of that scope and hour. Only rises are anomalies here: a key going quiet costs nothing.
Episode ids are stable (scope, metric, first hour), so repeated scans of overlapping windows dedupe by id.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from statistics import median
from typing import Literal

from metering.finops.forecast import usd
from metering.finops.hourly import RequestRow
from metering.finops.scopes import Scope
from metering.percentile import nearest_rank

Metric = Literal["spend", "requests", "frontier_share", "p95_output_tokens"]
METRICS: tuple[Metric, ...] = ("spend", "requests", "frontier_share", "p95_output_tokens")
HOUR = timedelta(hours=1)
TOP_REQUESTS = 5
_MAD_TO_SD = 1.4826


@dataclass(frozen=True, slots=True)
class Threshold:
    factor: float  # value >= factor * baseline
    z: float  # value >= baseline + z * spread
    min_value: float  # value >= this (nano-dollars, requests, share or tokens)
    min_requests: int = 0  # requests in the hour, for a share or a percentile to be meaningful
    rel_spread: float = 0.0  # spread >= rel_spread * baseline: a flat baseline is not infinitely precise
    abs_spread: float = 0.0
    min_rise: float = 0.0  # value - baseline >= this (a share going from 2% to 5% is not news)


@dataclass(frozen=True, slots=True)
class Rules:
    baseline_days: int = 7
    min_baseline_points: int = 4  # hours with data among the reference hours (share, percentile)
    quiet_hours: int = 3
    thresholds: Mapping[Metric, Threshold] = field(default_factory=lambda: {
        "spend": Threshold(factor=3.0, z=5.0, min_value=50_000_000, rel_spread=0.25),  # >= $0.05 in the hour
        "requests": Threshold(factor=3.0, z=4.0, min_value=20, rel_spread=0.25),
        "frontier_share": Threshold(factor=2.0, z=5.0, min_value=0.0, min_requests=10, abs_spread=0.02,
                                    min_rise=0.3),
        "p95_output_tokens": Threshold(factor=1.5, z=4.0, min_value=0.0, min_requests=20, rel_spread=0.1),
    })


@dataclass
class _Cell:
    """One scope's one hour."""

    requests: int = 0
    cost_nanos: int = 0
    cost_squares: float = 0.0  # sum of squared costs: the noise of a spend made of few dear requests
    served: int = 0  # successful requests with a tier (the share's denominator)
    frontier: int = 0
    outputs: list[int] = field(default_factory=list)
    top: list[tuple[int, str]] = field(default_factory=list)  # min-heap of (cost, request id)

    def add(self, row: RequestRow, frontier_tiers: frozenset[str]) -> None:
        self.requests += 1
        self.cost_nanos += row.cost_nanos
        self.cost_squares += float(row.cost_nanos) ** 2
        if row.status < 400:
            self.outputs.append(row.completion_tokens)
            if row.tier:
                self.served += 1
                self.frontier += row.tier in frontier_tiers
        item = (row.cost_nanos, row.request_id)
        if len(self.top) < TOP_REQUESTS:
            heapq.heappush(self.top, item)
        elif item > self.top[0]:
            heapq.heapreplace(self.top, item)

    def value(self, metric: Metric) -> float | None:
        if metric == "spend":
            return float(self.cost_nanos)
        if metric == "requests":
            return float(self.requests)
        if metric == "frontier_share":
            return self.frontier / self.served if self.served else None
        if not self.outputs:
            return None
        return float(nearest_rank(self.outputs, 95))

    def sample_size(self, metric: Metric) -> int:
        return {"frontier_share": self.served, "p95_output_tokens": len(self.outputs)}.get(metric, self.requests)

    def tested(self, metric: Metric) -> float | None:
        """The value held against the threshold. For the P95 that is a lower confidence bound (the order
        statistic two binomial standard deviations below rank 0.95 n): thirty requests' P95 jumps by chance."""
        if metric != "p95_output_tokens" or not self.outputs:
            return self.value(metric)
        n = len(self.outputs)
        rank = math.ceil(0.95 * n - 2 * math.sqrt(n * 0.95 * 0.05))
        return float(sorted(self.outputs)[max(rank, 1) - 1])

    @property
    def max_cost(self) -> int:
        return max(self.top)[0] if self.top else 0


@dataclass
class _Week:
    """Sums over all hours of some days: the request-cost distribution and the pooled frontier share."""

    requests: int = 0
    cost_nanos: int = 0
    cost_squares: float = 0.0
    max_cost: int = 0
    served: int = 0
    frontier: int = 0

    def add(self, cell: _Cell | _Week) -> None:
        self.requests += cell.requests
        self.cost_nanos += cell.cost_nanos
        self.cost_squares += cell.cost_squares
        self.max_cost = max(self.max_cost, cell.max_cost)
        self.served += cell.served
        self.frontier += cell.frontier


def scopes_of(row: RequestRow) -> list[Scope]:
    out = [Scope.of_team(row.team), Scope("key", row.team, row.key_id)]
    out += [Scope("tag", row.team, f"{k}={v}") for k, v in sorted(row.tags.items())]
    if row.model:
        out.append(Scope("model", "", row.model))
    return out


def aggregate(rows: Iterable[RequestRow], frontier_tiers: frozenset[str]) -> dict[Scope, dict[datetime, _Cell]]:
    cube: dict[Scope, dict[datetime, _Cell]] = {}
    for row in rows:
        hour = row.hour
        for scope in scopes_of(row):
            cells = cube.setdefault(scope, {})
            cell = cells.get(hour)
            if cell is None:
                cell = cells[hour] = _Cell()
            cell.add(row, frontier_tiers)
    return cube


@dataclass(frozen=True, slots=True)
class Episode:
    scope: Scope
    metric: Metric
    started_at: datetime  # the first anomalous hour
    ended_at: datetime | None  # the first hour of the quiet run that closed it; None if still open
    value: float  # evidence from the first hour
    baseline: float
    threshold: float
    requests: int
    top_request_ids: tuple[str, ...]
    peak: float
    peak_at: datetime

    @property
    def factor(self) -> float | None:
        return self.value / self.baseline if self.baseline > 0 else None

    @property
    def ident(self) -> str:
        return f"{self.scope.ident}:{self.metric}:{self.started_at:%Y-%m-%dT%H}"

    def show(self, value: float) -> str:
        """A metric value as people read it."""
        if self.metric == "spend":
            return f"${usd(value)}"
        if self.metric == "frontier_share":
            return f"{value:.0%}"
        return f"{value:.0f}"

    def to_dict(self) -> dict[str, object]:
        def number(value: float) -> object:
            if self.metric == "spend":
                return usd(value)
            return round(value, 3) if self.metric == "frontier_share" else round(value, 1)

        return {
            "id": self.ident, **self.scope.labels(), "dimension": self.scope.dimension, "metric": self.metric,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "value": number(self.value), "baseline": number(self.baseline),
            "factor": round(self.factor, 2) if self.factor is not None else None,
            "threshold": number(self.threshold), "requests": self.requests,
            "peak": number(self.peak), "peak_at": self.peak_at.isoformat(),
            "top_request_ids": list(self.top_request_ids),
        }

    def summary(self) -> str:
        label = {"spend": "spend", "requests": "requests", "frontier_share": "frontier-tier share",
                 "p95_output_tokens": "P95 output tokens"}[self.metric]
        factor = f"{self.factor:.1f}x" if self.factor is not None else "new"
        return (f"{self.scope.describe()}: {label} {self.show(self.value)} in the hour from "
                f"{self.started_at:%Y-%m-%d %H:00} UTC, {factor} its baseline {self.show(self.baseline)}")


class _ScopeSeries:
    """One scope's hourly values per metric, computed once (a percentile sorts its hour's outputs)."""

    def __init__(self, cells: Mapping[datetime, _Cell]) -> None:
        self.cells = cells
        self.values = {m: {h: v for h, c in cells.items() if (v := c.value(m)) is not None} for m in METRICS}
        self._days: dict[date, _Week] = {}
        for hour, cell in cells.items():
            self._days.setdefault(hour.date(), _Week()).add(cell)
        self._weeks: dict[date, _Week] = {}

    def week_before(self, day: date, days: int) -> _Week:
        week = self._weeks.get(day)
        if week is None:
            week = self._weeks[day] = _Week()
            for back in range(1, days + 1):
                if (d := self._days.get(day - timedelta(days=back))) is not None:
                    week.add(d)
        return week

    def reference(self, hour: datetime, metric: Metric, rules: Rules) -> list[float] | None:
        """The same hour on each of the ``baseline_days`` days before; None if too few have data."""
        values = self.values[metric]
        total = metric in ("spend", "requests")  # no traffic is a real zero; a share or percentile is unknown
        out = []
        for back in range(1, rules.baseline_days + 1):
            value = values.get(hour - timedelta(days=back), 0.0 if total else None)
            if value is not None:
                out.append(value)
        return out if len(out) >= (rules.baseline_days if total else rules.min_baseline_points) else None

    def counting_noise(self, hour: datetime, metric: Metric, base: float, rules: Rules) -> tuple[float, float]:
        """(spread, rise) that counting alone explains, which seven reference values cannot measure: Poisson for
        requests; compound Poisson for spend (the week's request costs: a few dear requests make a noisy hour),
        and a rise of at least two of the week's dearest requests: when dear requests are rare their count is far
        from Gaussian, and one or two of them landing in a quiet hour is chance, not an anomaly; binomial for
        the frontier share."""
        if metric == "requests":
            return math.sqrt(base), 0.0
        week = self.week_before(hour.date(), rules.baseline_days)
        if metric == "spend":
            if week.requests == 0:
                return 0.0, 0.0
            expected_requests = median(self.reference(hour, "requests", rules) or [0.0])
            return math.sqrt(expected_requests * week.cost_squares / week.requests), 2.0 * week.max_cost
        if metric == "frontier_share":
            n = self.cells[hour].served
            return (math.sqrt(base * (1 - base) / n) if n else 0.0), 0.0
        return 0.0, 0.0

    def baseline(self, hour: datetime, metric: Metric, reference: Sequence[float], rules: Rules) -> float:
        """The median of the reference hours; for the frontier share, the week's pooled share (a quiet key's
        hourly shares are mostly 0% or 100% of a handful of requests, so their median says little)."""
        if metric == "frontier_share":
            week = self.week_before(hour.date(), rules.baseline_days)
            if week.served:
                return week.frontier / week.served
        return median(reference)

    def fires(self, hour: datetime, metric: Metric, rules: Rules) -> tuple[float, float, float] | None:
        """(value, baseline, threshold) if ``hour`` is out of bounds."""
        value = self.values[metric].get(hour)
        t = rules.thresholds[metric]
        cell = self.cells[hour]
        if value is None or cell.sample_size(metric) < t.min_requests:
            return None
        reference = self.reference(hour, metric, rules)
        if reference is None:
            return None
        base = self.baseline(hour, metric, reference, rules)
        noise, rise = self.counting_noise(hour, metric, base, rules)
        spread = max(_MAD_TO_SD * median(abs(v - base) for v in reference), t.rel_spread * base, t.abs_spread, noise)
        threshold = max(t.factor * base, base + t.z * spread, base + max(t.min_rise, rise), t.min_value)
        tested = cell.tested(metric)
        return (value, base, threshold) if tested is not None and tested >= threshold else None


def detect(rows: Iterable[RequestRow], start: datetime, end: datetime, frontier_tiers: frozenset[str],
           rules: Rules = Rules()) -> list[Episode]:
    """Episodes that start in the hours ``[start, end)``. ``rows`` must also cover the ``baseline_days`` before
    ``start`` (the baseline); an episode still open at ``end`` has ``ended_at=None``."""
    cube = aggregate(rows, frontier_tiers)
    first = start.replace(minute=0, second=0, microsecond=0)
    hours = [first + HOUR * i for i in range(int((end - first) / HOUR))]
    episodes = []
    for scope in sorted(cube):
        series = _ScopeSeries(cube[scope])
        for metric in METRICS:
            episodes += _episodes(scope, metric, series, hours, rules)
    return sorted(episodes, key=lambda e: (e.started_at, e.scope, e.metric))


@dataclass
class _Open:
    """An episode under way: its first hour's evidence and its peak so far."""

    started_at: datetime
    value: float
    baseline: float
    threshold: float
    requests: int
    top: tuple[str, ...]
    peak: float
    peak_at: datetime

    def close(self, scope: Scope, metric: Metric, ended_at: datetime | None) -> Episode:
        return Episode(scope, metric, self.started_at, ended_at, self.value, self.baseline, self.threshold,
                       self.requests, self.top, self.peak, self.peak_at)


def _episodes(scope: Scope, metric: Metric, series: _ScopeSeries, hours: Sequence[datetime],
              rules: Rules) -> list[Episode]:
    out: list[Episode] = []
    current: _Open | None = None
    quiet = 0
    for hour in hours:
        fired = series.fires(hour, metric, rules) if hour in series.cells else None
        if fired is not None:
            value, base, threshold = fired
            quiet = 0
            if current is None:
                cell = series.cells[hour]
                top = tuple(rid for _, rid in sorted(cell.top, reverse=True))
                current = _Open(hour, value, base, threshold, cell.requests, top, value, hour)
            elif value > current.peak:
                current.peak, current.peak_at = value, hour
        elif current is not None:
            quiet += 1
            if quiet >= rules.quiet_hours:
                out.append(current.close(scope, metric, hour - HOUR * (quiet - 1)))
                current, quiet = None, 0
    if current is not None:
        out.append(current.close(scope, metric, None))
    return out

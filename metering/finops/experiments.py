"""Spend per experiment: each manifest's spend from the ledger against its lifetime budget, its status and the cost
projected at its expiry; and the spend report grouped by experiment.

Spend is what the ledger holds under the tag ``experiment: <name>`` (attribution writes it, ``router.experiments``)
in the experiment's window of UTC days: exact, and the same from every worker (the budget counter is a cache of it).

The projection at expiry (``projected``): spend so far plus the expected spend of the time left.

- With at least ``FIT_MIN_DAYS`` whole days of the experiment's own spend, the forecast model of
  ``metering.finops.forecast`` (weekday factors, robust damped trend) predicts each day left, pro rata for the
  part of today and of the expiry day that is left.
- Otherwise (a 24-hour experiment never has a week of history) the run rate of the experiment's own life so far:
  ``spent / elapsed * left``, elapsed counted from ``starts_at`` (or its first day of spend) and at least an hour,
  so one request in its first second does not project a fortune.

- With no spend of its own yet (a manifest in review, or an experiment nobody has called), the traffic it is going
  to attribute: its keys' spend and its tags' (an upper bound: the least spent of its tag pairs) per day over the
  last ``PRIOR_DAYS`` days, times its days left. A manifest attributed only by the ``experiment`` tag has no such
  history and projects $0.

A production experiment without an expiry is projected to the end of the current month (``forecast_until``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from metering.finops.forecast import fit, usd
from metering.finops.manifest import Manifest
from metering.ledger.base import Ledger, month_bounds
from metering.ledger.report import GROUPS, Report, ReportRow, Totals, parse_group_by
from metering.money import format_usd

TAG = "experiment"
FIT_MIN_DAYS = 7  # whole days of history before the weekday-aware model is trusted over the run rate
MIN_ELAPSED = timedelta(hours=1)
PRIOR_DAYS = 14  # an experiment with no spend of its own is projected from its keys' and tags' last two weeks
PRIOR_BASIS = f"its keys' and tags' last {PRIOR_DAYS} days"
_DAY = timedelta(days=1)
STATUSES = ("active", "scheduled", "expired", "over_budget")


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Projection:
    until: datetime  # the expiry, or the end of this month for an experiment that never expires
    nanos: float  # spend expected by then, spent included
    basis: str  # "expired", "no spend yet", "run rate", "forecast"


def project(history: Mapping[date, int], spent: int, begin: datetime | None, until: datetime,
            now: datetime) -> Projection:
    """Spend expected by ``until`` from the daily ``history`` (``spent`` in total so far) as of ``now``."""
    if now >= until:
        return Projection(until, float(spent), "expired")
    if spent <= 0:
        return Projection(until, 0.0, "no spend yet")
    today = now.date()
    first = min(d for d, v in history.items() if v > 0)
    if (today - first).days >= FIT_MIN_DAYS:
        f = fit({d: v for d, v in history.items() if d < today}, today)
        if f is not None:
            expected = 0.0
            day = today
            while _midnight(day) < until:
                start, end = max(now, _midnight(day)), min(until, _midnight(day) + _DAY)
                expected += f.predict(day) * max(0.0, (end - start) / _DAY)
                day += _DAY
            return Projection(until, spent + expected, "forecast")
    since = begin if begin is not None else _midnight(first)
    elapsed = max(now - since, MIN_ELAPSED)
    return Projection(until, spent + spent * ((until - now) / elapsed), "run rate")


@dataclass(frozen=True, slots=True)
class ExperimentRow:
    manifest: Manifest
    spent_nanos: int
    requests: int
    status: str
    projection: Projection

    @property
    def budget_nanos(self) -> int:
        return self.manifest.budget.limit_nanos

    @property
    def projected_over_budget(self) -> bool:
        return self.projection.nanos > self.budget_nanos

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": m.name, "team": m.team, "owner": m.owner, "purpose": m.purpose, "production": m.production,
            "tags": dict(m.tags), "keys": list(m.keys),
            "starts_at": m.starts_at.isoformat() if m.starts_at else None,
            "expires_at": m.expires_at.isoformat() if m.expires_at else None,
            "status": self.status,
            "budget_usd": format_usd(self.budget_nanos),
            "spent_usd": format_usd(self.spent_nanos),
            "remaining_usd": format_usd(max(0, self.budget_nanos - self.spent_nanos)),
            "spent_share": round(self.spent_nanos / self.budget_nanos, 4),
            "requests": self.requests,
            "forecast_until": self.projection.until.isoformat(),
            "projected_usd": usd(self.projection.nanos),
            "projected_over_budget": self.projected_over_budget,
            "forecast_basis": self.projection.basis,
        }


def status_of(manifest: Manifest, spent_nanos: int, now: datetime) -> str:
    if manifest.expires_at is not None and now >= manifest.expires_at:
        return "expired"
    if spent_nanos >= manifest.budget.limit_nanos:
        return "over_budget"
    if manifest.starts_at is not None and now < manifest.starts_at:
        return "scheduled"
    return "active"


async def experiment_rows(ledger: Ledger, manifests: Sequence[Manifest], now: datetime) -> list[ExperimentRow]:
    """Every manifest's spend, status and projection (one tag-rollup query for all of them)."""
    if not manifests:
        return []
    teams = {m.team for m in manifests}
    first = min(min(m.budget.cap.start for m in manifests), now.date() - timedelta(days=PRIOR_DAYS))
    report = await ledger.report(first, now.date() + _DAY, team=next(iter(teams)) if len(teams) == 1 else None,
                                 group_by=("team", "tag", "day"))
    series: dict[tuple[str, str], dict[date, tuple[int, int]]] = {}
    for row in report.rows:
        if row.keys["tag_key"] != TAG or row.keys["tag_value"] is None:
            continue
        day = date.fromisoformat(str(row.keys["day"])[:10])
        series.setdefault((str(row.keys["team"]), row.keys["tag_value"]), {})[day] = (row.totals.cost_nanos,
                                                                                       row.totals.requests)
    out = []
    for m in manifests:
        cap = m.budget.cap
        days = {d: v for d, v in series.get((m.team, m.name), {}).items() if cap.start <= d < cap.end}
        spent = sum(v[0] for v in days.values())
        until = m.expires_at if m.expires_at is not None else _midnight(month_bounds(now.date())[1])
        projection = project({d: v[0] for d, v in days.items()}, spent, m.starts_at, until, now)
        out.append(ExperimentRow(m, spent, sum(v[1] for v in days.values()), status_of(m, spent, now), projection))
    fresh = [i for i, r in enumerate(out) if r.projection.basis == "no spend yet" and (r.manifest.keys or
                                                                                        r.manifest.tags)]
    if fresh:
        rates = await _prior_rates(ledger, [out[i].manifest for i in fresh], report.rows, now.date())
        for i in fresh:
            r = out[i]
            begin = max(now, r.manifest.starts_at or now)
            left = max(0.0, (r.projection.until - begin) / _DAY)
            out[i] = replace(r, projection=Projection(r.projection.until, rates[r.manifest.name] * left, PRIOR_BASIS))
    return out


async def _prior_rates(ledger: Ledger, manifests: Sequence[Manifest], tag_rows: Sequence[ReportRow],
                       today: date) -> dict[str, float]:
    """Spend per day, over the ``PRIOR_DAYS`` before ``today``, of the traffic each manifest will attribute: its
    keys' spend, plus for its tags the least spent of its tag pairs (every request matching all of them matches
    each one, so the least is an upper bound on the set; the rollups hold tags one by one)."""
    since = today - timedelta(days=PRIOR_DAYS)
    teams = {m.team for m in manifests}
    by_key: dict[tuple[str, str], int] = {}
    if any(m.keys for m in manifests):
        report = await ledger.report(since, today, team=next(iter(teams)) if len(teams) == 1 else None,
                                     group_by=("team", "key"))
        by_key = {(str(r.keys["team"]), str(r.keys["key_id"])): r.totals.cost_nanos for r in report.rows}
    by_tag: dict[tuple[str, str, str], int] = {}
    for row in tag_rows:
        day = date.fromisoformat(str(row.keys["day"])[:10])
        if since <= day < today and row.keys["tag_value"] is not None:
            at = (str(row.keys["team"]), str(row.keys["tag_key"]), str(row.keys["tag_value"]))
            by_tag[at] = by_tag.get(at, 0) + row.totals.cost_nanos
    rates = {}
    for m in manifests:
        keys = sum(by_key.get((m.team, k), 0) for k in m.keys)
        tags = min((by_tag.get((m.team, k, v), 0) for k, v in m.tags.items()), default=0)
        rates[m.name] = (keys + tags) / PRIOR_DAYS
    return rates


def render_text(rows: Sequence[ExperimentRow], now: datetime) -> str:
    """``tiergate experiments``' table (``--json`` prints ``to_dict`` of each row, as the API)."""
    lines = [f"Experiments as of {now:%Y-%m-%d %H:%M} UTC (spend from the ledger; projected at expiry)", ""]
    if not rows:
        return "\n".join(lines + ["no experiments in the policy"]) + "\n"
    width = max(len(f"{r.manifest.team}/{r.manifest.name}") for r in rows)
    lines.append(f"{'experiment':{width}}  {'status':11}  {'spent':>14}  {'budget':>12}  {'projected':>12}  "
                 f"{'expires':25}  owner: purpose")
    for r in rows:
        d = r.to_dict()
        flag = " !" if r.projected_over_budget and r.status != "expired" else ""
        lines.append(f"{r.manifest.team + '/' + r.manifest.name:{width}}  {r.status:11}  {d['spent_usd']:>14}  "
                     f"{d['budget_usd'][:-7]:>12}  {d['projected_usd']:>12}{flag}  "
                     f"{str(d['expires_at'] or 'never'):25}  {r.manifest.owner}: {r.manifest.purpose}")
    return "\n".join(lines) + "\n"


# ---- group_by=experiment ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ExperimentReport(Report):
    """The spend report with ``experiment`` among its dimensions: one row per experiment (and the other dimensions'
    values), plus a row with ``experiment`` null for each group's records outside any experiment, so each group's
    rows sum to its total. Same columns, JSON and CSV as ``Report``."""

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(col for g in self.group_by for col in (("experiment",) if g == TAG else GROUPS[g]))


def wants_experiments(group_by: Sequence[str]) -> bool:
    return TAG in (g.strip() for g in group_by)


def _minus(a: Totals, b: Totals) -> Totals:
    return Totals(*(x - y for x, y in zip(_values(a), _values(b))))


def _values(t: Totals) -> tuple[int, ...]:
    return (t.requests, t.prompt_tokens, t.completion_tokens, t.cached_tokens, t.reasoning_tokens, t.cost_nanos,
            t.counterfactual_cost_nanos)


async def experiment_report(ledger: Ledger, start: date, end: date, team: str | None,
                            group_by: Sequence[str]) -> ExperimentReport:
    """``group_by`` with ``experiment`` (and any of the report's dimensions): the tag report's ``experiment`` rows,
    and per group of the other dimensions its total less those rows (records of no experiment). ValueError on an
    unknown dimension, as ``Ledger.report``."""
    names = tuple(dict.fromkeys(g.strip() for g in group_by if g.strip()))
    if "tag" in names:
        raise ValueError("group_by cannot combine 'experiment' with 'tag' (the experiment is one of the tags: "
                         "group by tag and read the rows of tag_key 'experiment')")
    others = parse_group_by([g for g in names if g != TAG])
    as_tag = tuple("tag" if g == TAG else g for g in names)
    tagged = await ledger.report(start, end, team=team, group_by=as_tag)
    groups = await ledger.report(start, end, team=team, group_by=others)
    other_cols = [col for g in others for col in GROUPS[g]]

    def shown(keys: Mapping[str, Any], experiment: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for g in names:
            if g == TAG:
                out["experiment"] = experiment
            else:
                out.update({col: keys[col] for col in GROUPS[g]})
        return out

    in_experiments: dict[tuple[Any, ...], Totals] = {}
    rows = []
    for row in tagged.rows:
        if row.keys["tag_key"] != TAG or row.keys["tag_value"] is None:
            continue
        group = tuple(row.keys[c] for c in other_cols)
        in_experiments[group] = Totals(*(x + y for x, y in zip(_values(in_experiments.get(group, Totals())),
                                                                 _values(row.totals))))
        rows.append(ReportRow(shown(row.keys, row.keys["tag_value"]), row.totals))
    group_rows = groups.rows if other_cols else [ReportRow({}, groups.totals)]
    for row in group_rows:
        rest = _minus(row.totals, in_experiments.get(tuple(row.keys[c] for c in other_cols), Totals()))
        if rest.requests > 0:
            rows.append(ReportRow(shown(row.keys, None), rest))
    key_order = [c for g in names for c in (("experiment",) if g == TAG else GROUPS[g])]
    rows.sort(key=lambda r: tuple((r.keys[c] is None, str(r.keys[c] or "")) for c in key_order))
    return ExperimentReport(start, end, team, names, rows, groups.totals)

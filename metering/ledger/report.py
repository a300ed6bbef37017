"""Spend reports: grouping vocabulary, the SQL both backends run over the rollups, and the JSON/CSV forms.

Column names are a contract (outside checks rely on them): each row carries its group keys and ``requests,
prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost_usd, counterfactual_cost_usd, savings_usd``.
Money leaves as exact decimal strings with 9 decimals.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Iterable, Sequence

from metering.money import format_usd

# group_by name -> rollup column(s) it reads and the column names it shows.
GROUPS: dict[str, tuple[str, ...]] = {
    "team": ("team",),
    "model": ("model",),
    "tier": ("tier",),
    "day": ("day",),
    "key": ("key_id",),
    "purpose": ("purpose",),
    "tag": ("tag_key", "tag_value"),
}
# Tags live in their own rollup (a record with three tags counts once per tag), which knows only these dimensions.
TAG_COMPATIBLE = frozenset({"team", "day", "tag"})
# Summed from the rollups; only part is shown (cache writes are priced into cost but not a report column).
SUMMED = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_nanos",
          "counterfactual_cost_nanos")
METRIC_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_usd",
                  "counterfactual_cost_usd", "savings_usd")


def as_day(value: date) -> date:
    """Rollups are per UTC day: a datetime bound is accepted only at midnight (a silent truncation would misreport)."""
    if isinstance(value, datetime):
        offset = value.utcoffset()
        if value.time() != time(0) or (offset is not None and offset != timedelta(0)):
            raise ValueError(f"report bounds are UTC days; got {value.isoformat()}")
        return value.date()
    return value


def parse_group_by(group_by: Iterable[str]) -> tuple[str, ...]:
    """Validated, de-duplicated, order kept; raises ValueError (the API's 400) on unknown or unsupported mixes."""
    names = tuple(dict.fromkeys(g.strip() for g in group_by if g.strip()))
    unknown = [g for g in names if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown group_by {unknown}; choose from {sorted(GROUPS)}")
    if "tag" in names and not set(names) <= TAG_COMPATIBLE:
        raise ValueError(f"group_by=tag combines only with {sorted(TAG_COMPATIBLE - {'tag'})}")
    return names


def aggregate_sql(group_by: Sequence[str], placeholder: str, team_filter: bool, tag_table: str, daily_table: str
                  ) -> str:
    """``SELECT dims..., SUM(measures)... FROM rollup WHERE day in [start, end) [AND team = ?] GROUP BY dims``.

    Column names come only from ``GROUPS``/``SUMMED`` (never from input), so the string building is injection-free.
    """
    dims = [col for g in group_by for col in GROUPS[g]]
    table = tag_table if "tag" in group_by else daily_table
    select = ", ".join(dims + [f"SUM({m})" for m in SUMMED])
    where = f"day >= {placeholder} AND day < {placeholder}" + (f" AND team = {placeholder}" if team_filter else "")
    sql = f"SELECT {select} FROM {table} WHERE {where}"
    if dims:
        cols = ", ".join(dims)
        sql += f" GROUP BY {cols} ORDER BY {cols}"
    return sql


@dataclass(frozen=True, slots=True)
class Totals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_nanos: int = 0
    counterfactual_cost_nanos: int = 0

    @classmethod
    def from_sums(cls, sums: Sequence[Any]) -> "Totals":
        # SUM over no rows is NULL; PostgreSQL returns NUMERIC (Decimal) for SUM(bigint): both become exact ints.
        return cls(*(int(v or 0) for v in sums))

    @property
    def savings_nanos(self) -> int:
        return self.counterfactual_cost_nanos - self.cost_nanos

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": format_usd(self.cost_nanos),
            "counterfactual_cost_usd": format_usd(self.counterfactual_cost_nanos),
            "savings_usd": format_usd(self.savings_nanos),
        }


@dataclass(frozen=True, slots=True)
class ReportRow:
    keys: dict[str, str]
    totals: Totals

    def to_dict(self) -> dict[str, Any]:
        return {**self.keys, **self.totals.to_dict()}


@dataclass(frozen=True, slots=True)
class Report:
    """Rows per group, and ``totals`` over every record in range.

    With ``group_by=tag`` rows overlap (a record counts under each of its tags) and untagged records appear in no
    row, so ``totals`` is always read from the main rollup, not summed from the rows.
    """

    start: date
    end: date
    team: str | None
    group_by: tuple[str, ...]
    rows: list[ReportRow]
    totals: Totals

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(col for g in self.group_by for col in GROUPS[g])

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "team": self.team,
            "group_by": list(self.group_by),
            "rows": [row.to_dict() for row in self.rows],
            "totals": self.totals.to_dict(),
        }

    @property
    def metric_columns(self) -> tuple[str, ...]:
        return METRIC_COLUMNS

    def to_csv(self) -> str:
        """The rows only (CSV has no place for totals), columns: group keys then ``METRIC_COLUMNS``."""
        return rows_to_csv([*self.key_columns, *METRIC_COLUMNS], [row.to_dict() for row in self.rows])


def rows_to_csv(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    """CSV with exactly these column names, the same values as the JSON rows (money as decimal strings)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def build_report(start: date, end: date, team: str | None, group_by: tuple[str, ...],
                 grouped: Iterable[Sequence[Any]], total: Sequence[Any]) -> Report:
    """Assemble from the backend's result tuples (group key columns first, then ``SUMMED``)."""
    width = sum(len(GROUPS[g]) for g in group_by)
    cols = [col for g in group_by for col in GROUPS[g]]
    rows = [
        ReportRow(keys={c: str(v) for c, v in zip(cols, t[:width])}, totals=Totals.from_sums(t[width:]))
        for t in grouped
    ]
    return Report(start, end, team, group_by, rows, Totals.from_sums(total))

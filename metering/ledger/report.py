"""Spend reports: grouping vocabulary, the SQL both backends run over the rollups, and the JSON/CSV forms.

Column names are a contract (outside checks rely on them): each row carries its group keys and ``requests,
prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost_usd, counterfactual_cost_usd, savings_usd``.
Money leaves as exact decimal strings with 9 decimals.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterable, Literal, Sequence

from metering.money import format_usd

# group_by name -> column(s) it reads (in the rollups and the records table alike) and the column names it shows.
GROUPS: dict[str, tuple[str, ...]] = {
    "team": ("team",),
    "model": ("model",),
    "tier": ("tier",),
    "day": ("day",),
    "key": ("key_id",),
    "purpose": ("purpose",),
    "tag": ("tag_key", "tag_value"),
}
# Tags live in their own rollup (a record with three tags counts once per tag), which knows only these dimensions;
# tags with any other dimension are summed from the records table (a scan of the range: slower, still exact).
TAG_ROLLUP_DIMS = frozenset({"team", "day", "tag"})
# Summed from the rollups; only part is shown (cache writes are priced into cost but not a report column).
SUMMED = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_nanos",
          "counterfactual_cost_nanos")
METRIC_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "cost_usd",
                  "counterfactual_cost_usd", "savings_usd")

Source = Literal["rollup_daily", "rollup_tag", "records"]


def as_day(value: date) -> date:
    """Rollups are per UTC day: a datetime bound is accepted only at midnight (a silent truncation would misreport)."""
    if isinstance(value, datetime):
        offset = value.utcoffset()
        if value.time() != time(0) or (offset is not None and offset != timedelta(0)):
            raise ValueError(f"report bounds are UTC days; got {value.isoformat()}")
        return value.date()
    return value


def midnight(day: date) -> datetime:
    """The UTC instant a day starts: the bound a raw-record query uses for a day range."""
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def parse_group_by(group_by: Iterable[str]) -> tuple[str, ...]:
    """Validated, de-duplicated, order kept; raises ValueError (the API's 400) on an unknown name. Any combination
    of the names is allowed."""
    names = tuple(dict.fromkeys(g.strip() for g in group_by if g.strip()))
    unknown = [g for g in names if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown group_by {unknown}; choose from {sorted(GROUPS)}")
    return names


def source_of(group_by: Sequence[str]) -> Source:
    """Where a grouping is read: the daily rollup, the tag rollup, or (tags with key, model, tier or purpose) the
    records themselves."""
    if "tag" not in group_by:
        return "rollup_daily"
    return "rollup_tag" if set(group_by) <= TAG_ROLLUP_DIMS else "records"


def aggregate_sql(group_by: Sequence[str], placeholder: str, team_filter: bool, tag_rows: str) -> str:
    """``SELECT dims..., SUM(measures)... FROM <source> WHERE <range> [AND team = ?] GROUP BY dims``.

    Parameters: the first and the end day (exclusive), then the team if ``team_filter``; a records scan takes the
    same range twice more as timestamps first (``started_at``, which is indexed, and whose UTC date is ``day``).
    ``tag_rows`` is the backend's set-returning function over a record's tags (``json_each(records.tags)``,
    ``jsonb_each_text(records.tags)``), whose rows have ``key`` and ``value`` columns. Column names come only from
    ``GROUPS``/``SUMMED`` (never from input), so the string building is injection-free.
    """
    p = placeholder
    source = source_of(group_by)
    dims = [col for g in group_by for col in GROUPS[g]]
    if source == "records":
        shown = [f"t.{col[4:]} AS {col}" if col in ("tag_key", "tag_value") else f"records.{col}" for col in dims]
        sums = ["COUNT(*)"] + [f"SUM(records.{m})" for m in SUMMED[1:]]
        where = (f"records.started_at >= {p} AND records.started_at < {p} AND records.day >= {p} AND "
                 f"records.day < {p}" + (f" AND records.team = {p}" if team_filter else ""))
        sql = f"SELECT {', '.join(shown + sums)} FROM records CROSS JOIN {tag_rows} AS t WHERE {where}"
        keys = ", ".join(s.rsplit(" AS ", 1)[0] for s in shown)
    else:
        select = ", ".join(dims + [f"SUM({m})" for m in SUMMED])
        where = f"day >= {p} AND day < {p}" + (f" AND team = {p}" if team_filter else "")
        sql = f"SELECT {select} FROM {source} WHERE {where}"
        keys = ", ".join(dims)
    if dims:
        sql += f" GROUP BY {keys}"
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

    def minus(self, other: "Totals") -> "Totals":
        return Totals(*(a - b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def plus(self, other: "Totals") -> "Totals":
        return Totals(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[int, ...]:
        return (self.requests, self.prompt_tokens, self.completion_tokens, self.cached_tokens, self.reasoning_tokens,
                self.cost_nanos, self.counterfactual_cost_nanos)

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
    keys: dict[str, str | None]  # None only in an untagged row's tag_value (and tag_key, see ``Report``)
    totals: Totals

    def to_dict(self) -> dict[str, Any]:
        return {**self.keys, **self.totals.to_dict()}


@dataclass(frozen=True, slots=True)
class Report:
    """Rows per group, and ``totals`` over every record in range; rows sorted by their keys.

    ``group_by=tag``: a record counts once under each of its tags, and a record has at most one value per tag key,
    so the rows of ONE tag key partition the records: one row per value, plus an untagged row (``tag_value`` null,
    empty in CSV) for the records without that key, and the rows of each key sum to the total of their group
    (the other group_by columns). A group in which no record has any tag has one row with ``tag_key`` and
    ``tag_value`` null. Rows of different keys overlap, so ``totals`` is read from the daily rollup, never summed
    from the rows.
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


def _sort_key(row: ReportRow) -> tuple[tuple[bool, str], ...]:
    # An untagged row (None) after its key's values; str() so PostgreSQL dates and SQLite text sort alike.
    return tuple((v is None, "" if v is None else str(v)) for v in row.keys.values())


def _rows(cols: Sequence[str], grouped: Iterable[Sequence[Any]]) -> list[ReportRow]:
    width = len(cols)
    return [ReportRow(keys={c: str(v) for c, v in zip(cols, t[:width])}, totals=Totals.from_sums(t[width:]))
            for t in grouped]


def untagged_rows(group_by: tuple[str, ...], tagged: list[ReportRow], by_group: list[ReportRow]) -> list[ReportRow]:
    """Per group of the other dimensions (``by_group``: the daily rollup's rows for them) and per tag key seen in
    the report, the records without that key: the group's total minus its rows of that key (exact, as a record
    has at most one value per key). With no tag key at all, each group is one all-null row."""
    cols = [col for g in group_by for col in GROUPS[g]]
    other = [c for c in cols if c not in ("tag_key", "tag_value")]
    per_key: dict[tuple[tuple[str | None, ...], str | None], Totals] = {}
    for row in tagged:
        at = (tuple(row.keys[c] for c in other), row.keys["tag_key"])
        per_key[at] = per_key.get(at, Totals()).plus(row.totals)
    tag_keys: list[str | None] = sorted({k for _, k in per_key}) or [None]  # type: ignore[type-var]
    out = []
    for group in by_group:
        values = tuple(group.keys[c] for c in other)
        for key in tag_keys:
            rest = group.totals.minus(per_key.get((values, key), Totals()))
            if rest.requests > 0:
                keys = {c: (key if c == "tag_key" else None if c == "tag_value" else group.keys[c]) for c in cols}
                out.append(ReportRow(keys=keys, totals=rest))
    return out


def build_report(start: date, end: date, team: str | None, group_by: tuple[str, ...],
                 grouped: Iterable[Sequence[Any]], total: Sequence[Any],
                 by_group: Iterable[Sequence[Any]] = ()) -> Report:
    """Assemble from the backend's result tuples (group key columns first, then ``SUMMED``). With ``tag``,
    ``by_group`` is the daily rollup grouped by the other dimensions, for the untagged rows."""
    cols = [col for g in group_by for col in GROUPS[g]]
    rows = _rows(cols, grouped)
    if "tag" in group_by:
        other = [col for g in group_by if g != "tag" for col in GROUPS[g]]
        rows += untagged_rows(group_by, rows, _rows(other, by_group))
    rows.sort(key=_sort_key)
    return Report(start, end, team, group_by, rows, Totals.from_sums(total))

"""Spend reports: grouping vocabulary, the SQL both backends run over the rollups, and the JSON/CSV forms.

Column names are a contract (outside checks rely on them): each row carries its group keys and ``requests,
prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost_usd, counterfactual_cost_usd, savings_usd``.
Money leaves as exact decimal strings with 9 decimals.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from operator import add, itemgetter, sub
from typing import Any, Literal

from metering.money import format_usd

# group_by name -> column(s) it reads (in the rollups and the records table alike) and the column names it shows.
GROUPS: dict[str, tuple[str, ...]] = {
    "team": ("team",),
    "model": ("model",),
    "tier": ("tier",),
    "day": ("day",),
    "key": ("key_id",),
    "purpose": ("purpose",),
    "api": ("api",),  # the wire format the client spoke (chat, completions, embeddings, responses, messages)
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
    return datetime.combine(day, time(0), tzinfo=UTC)


def parse_group_by(group_by: Iterable[str]) -> tuple[str, ...]:
    """Validated, de-duplicated, order kept; raises ValueError (the API's 400) on an unknown name. Any combination
    of the names is allowed."""
    names = tuple(dict.fromkeys(g.strip() for g in group_by if g.strip()))
    unknown = [g for g in names if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown group_by {unknown}; choose from {sorted(GROUPS)}")
    return names


def source_of(group_by: Sequence[str]) -> Source:
    """Where a grouping is read: the daily rollup, the tag rollup, or (tags with key, model, tier, purpose or api)
    the records themselves."""
    if "tag" not in group_by:
        return "rollup_daily"
    return "rollup_tag" if set(group_by) <= TAG_ROLLUP_DIMS else "records"


def aggregate_sql(group_by: Sequence[str], placeholder: str, team_filter: bool, tag_rows: str) -> str:
    """``SELECT dims..., SUM(measures)... FROM <source> WHERE <range> [AND team = ?] GROUP BY dims``.

    Parameters: the first and the end day (exclusive), then the team if ``team_filter``; a records scan takes the
    same range twice more as timestamps first (``started_at``, which is indexed, and whose UTC date is ``day``).
    ``tag_rows`` is the backend's set-returning function over a JSON object of tags, ``{tags}`` standing for it
    (``json_each({tags})``, ``jsonb_each_text({tags})``), whose rows have ``key`` and ``value`` columns. A records
    scan first sums the records per distinct tag set (far fewer than records), and only then expands the tags.
    Column names come only from ``GROUPS``/``SUMMED`` (never from input), so the string building is injection-free.
    """
    p = placeholder
    source = source_of(group_by)
    dims = [col for g in group_by for col in GROUPS[g]]
    if source == "records":
        other = [col for col in dims if col not in ("tag_key", "tag_value")]
        where = (f"started_at >= {p} AND started_at < {p} AND day >= {p} AND day < {p}"
                 + (f" AND team = {p}" if team_filter else ""))
        per_tag_set = (f"SELECT {', '.join(['tags', *other, 'COUNT(*) AS requests'])}, "
                       f"{', '.join(f'SUM({m}) AS {m}' for m in SUMMED[1:])} FROM records WHERE {where} "
                       f"GROUP BY {', '.join(['tags', *other])}")
        shown = [f"t.{col[4:]}" if col in ("tag_key", "tag_value") else f"g.{col}" for col in dims]
        sql = (f"SELECT {', '.join(shown + [f'SUM(g.{m})' for m in SUMMED])} FROM ({per_tag_set}) AS g "
               f"CROSS JOIN {tag_rows.format(tags='g.tags')} AS t")
        keys = ", ".join(shown)
    else:
        select = ", ".join(dims + [f"SUM({m})" for m in SUMMED])
        where = f"day >= {p} AND day < {p}" + (f" AND team = {p}" if team_filter else "")
        sql = f"SELECT {select} FROM {source} WHERE {where}"
        keys = ", ".join(dims)
    if dims:
        # Tag reports are sorted again in Python (with their untagged rows, the same order on both backends):
        # the database's order makes that a near-linear merge.
        sql += f" GROUP BY {keys} ORDER BY {keys}"
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
    def from_sums(cls, sums: Sequence[Any]) -> Totals:
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
    keys: dict[str, str | None]  # None only in an untagged row's tag_value (and tag_key, see ``Report``)
    totals: Totals

    def key(self, name: str) -> str:
        """A grouping column that is never null (any but the tag columns of an untagged row)."""
        value = self.keys[name]
        if value is None:
            raise ValueError(f"report column {name!r} is null in this row")
        return value

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


_TAG_COLUMNS = ("tag_key", "tag_value")


class _Untagged:
    """Stands for an untagged row's null ``tag_value`` (``tag_key``) while rows are sorted: after every string, so
    the row follows its key's values, and plain tuples sort in C. Replaced by None in the report."""

    def __eq__(self, other: object) -> bool:
        return other is self

    def __lt__(self, other: object) -> bool:
        return False

    def __gt__(self, other: object) -> bool:
        return other is not self

    __hash__ = object.__hash__


UNTAGGED = _Untagged()


def _normal(rows: Iterable[Sequence[Any]], width: int) -> list[tuple[Any, ...]]:
    """Keys as text (PostgreSQL returns dates) and sums as ints (it returns Decimals; a SUM over nothing is NULL)."""
    return [(*(str(v) for v in t[:width]), *(int(v or 0) for v in t[width:])) for t in rows]


def untagged_rows(cols: Sequence[str], tagged: list[tuple[Any, ...]], by_group: list[tuple[Any, ...]]
                  ) -> list[tuple[Any, ...]]:
    """Per group of the other dimensions (``by_group``: the daily rollup's sums for them) and per tag key seen in
    the report, the records without that key: the group's sums minus those of its rows of that key (exact, as a
    record has at most one value per key); ``UNTAGGED`` in ``tag_value`` (and ``tag_key`` when no record of the
    report has a tag). Rows are normalised tuples (``_normal``), keys in ``cols`` order, then ``SUMMED``."""
    width = len(cols)
    other = [i for i, c in enumerate(cols) if c not in _TAG_COLUMNS]
    group_and_key = itemgetter(*other, cols.index("tag_key"))  # C-level: tag reports can have 100 000s of rows
    per_key: dict[Any, tuple[int, ...]] = {}
    nothing = (0,) * len(SUMMED)
    for t in tagged:
        at = group_and_key(t)
        per_key[at] = tuple(map(add, per_key.get(at, nothing), t[width:]))
    tag_keys: list[Any] = sorted({at[-1] if other else at for at in per_key}) or [UNTAGGED]
    out = []
    for group in by_group:
        values, sums = group[:len(other)], group[len(other):]
        for key in tag_keys:
            rest = tuple(map(sub, sums, per_key.get((*values, key) if other else key, nothing)))
            if rest[0] > 0:  # requests: a group with none left has nothing untagged
                given = iter(values)
                out.append((*(key if c == "tag_key" else UNTAGGED if c == "tag_value" else next(given)
                              for c in cols), *rest))
    return out


def build_report(start: date, end: date, team: str | None, group_by: tuple[str, ...],
                 grouped: Iterable[Sequence[Any]], total: Sequence[Any],
                 by_group: Iterable[Sequence[Any]] = ()) -> Report:
    """Assemble from the backend's result tuples (group key columns first, then ``SUMMED``, ordered by the keys).
    With ``tag``, ``by_group`` is the daily rollup's sums grouped by the other dimensions, for the untagged rows,
    and rows are sorted again here, untagged rows included (code-point order on both backends)."""
    cols = [col for g in group_by for col in GROUPS[g]]
    width = len(cols)
    rows = _normal(grouped, width)
    if "tag" in group_by:
        other = [col for g in group_by if g != "tag" for col in GROUPS[g]]
        rows += untagged_rows(cols, rows, _normal(by_group, len(other)))
        rows.sort(key=itemgetter(slice(0, width)))
    # UNTAGGED (only ever in an untagged row's tag columns) is None in the report.
    out = [ReportRow(keys={c: None if v is UNTAGGED else v for c, v in zip(cols, t[:width])}, totals=Totals(*t[width:]))
           for t in rows]
    return Report(start, end, team, group_by, out, Totals.from_sums(total))

"""The ``feedback`` table and the cost per valuable output (issue 15, item 7): what a team said about answers it got,
and what each accepted answer cost.

Why in the ledger's database: every worker and replica already shares it, and the value report joins feedback to the
usage records there. Every feedback given is a row (history is kept: who changed their mind, and when); for a request
the latest row counts (``created_at``, then ``id``), in reports and in the routing learning loop alike.

Accepted: the latest feedback's label is ``accepted``; or its label is neither ``accepted`` nor ``rejected`` (none, or
a free label such as ``too-long``) and its score is at least 0.5. ``ACCEPTED_SQL`` is the same rule in SQL.

The value report counts the client's requests (purposes ``chat`` and ``embedding``: the answers feedback can be given
on) and their cost; summaries, shadow answers and judging are not outputs (``/v1/spend/report?group_by=purpose`` shows
them). Requests and cost come from the daily rollup, feedback from joining the feedback rows to their records, so the
report reads no record without feedback.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from metering.money import format_usd

FEEDBACK_COLUMNS: tuple[str, ...] = (
    "id", "request_id", "team", "key_id", "response_id", "created_at", "score", "label", "comment",
)
ACCEPT_SCORE = 0.5
ANSWERED_PURPOSES = ("chat", "embedding")  # records whose answer the client got (pipeline.records)
VALUE_GROUPS = ("team", "model", "tier")
_PURPOSES_SQL = "purpose IN ('chat', 'embedding')"


def accepted(score: float | None, label: str | None) -> bool:
    if label in ("accepted", "rejected"):
        return label == "accepted"
    return score is not None and score >= ACCEPT_SCORE


def accepted_sql(alias: str) -> str:
    """``accepted`` over the columns of ``alias`` (a feedback row)."""
    label, score = f"{alias}.label", f"{alias}.score"
    return (f"({label} = 'accepted' OR (COALESCE({label}, '') NOT IN ('accepted', 'rejected') "
            f"AND {score} >= {ACCEPT_SCORE}))")


@dataclass(frozen=True, slots=True)
class Feedback:
    request_id: str
    team: str
    key_id: str  # the key that gave it
    created_at: datetime
    response_id: str | None = None  # the answer's id, as the ledger knows it
    score: float | None = None  # 0..1
    label: str | None = None  # accepted | rejected | a free label (at most 64 characters)
    comment: str | None = None  # at most 2 kB
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def accepted(self) -> bool:
        return accepted(self.score, self.label)

    def values(self) -> tuple[Any, ...]:
        """In ``FEEDBACK_COLUMNS`` order; the instant stays a datetime for the backend to adapt."""
        return (self.id, self.request_id, self.team, self.key_id, self.response_id,
                self.created_at.astimezone(UTC), self.score, self.label, self.comment)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Feedback:
        v = dict(zip(FEEDBACK_COLUMNS, row))
        at = v["created_at"]
        v["created_at"] = (datetime.fromisoformat(at) if isinstance(at, str) else at).astimezone(UTC)
        v["score"] = None if v["score"] is None else float(v["score"])
        return cls(**v)

    def to_dict(self) -> dict[str, Any]:
        return {"object": "feedback", "id": self.id, "request_id": self.request_id, "response_id": self.response_id,
                "team": self.team, "score": self.score, "label": self.label, "comment": self.comment,
                "accepted": self.accepted, "created_at": self.created_at.isoformat()}


def feedback_ddl(ts_type: str, real_type: str) -> list[str]:
    nullable = {"response_id", "score", "label", "comment"}
    types = {"created_at": ts_type, "score": real_type}
    cols = ", ".join(f"{c} {types.get(c, 'TEXT')}{'' if c in nullable else ' NOT NULL'}" for c in FEEDBACK_COLUMNS)
    return [f"CREATE TABLE IF NOT EXISTS feedback ({cols}, PRIMARY KEY (id))",
            "CREATE INDEX IF NOT EXISTS feedback_team_request ON feedback (team, request_id, created_at)"]


def insert_feedback_sql(placeholder: str) -> str:
    return (f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) "
            f"VALUES ({', '.join([placeholder] * len(FEEDBACK_COLUMNS))})")


def _latest(placeholder: str, team: bool, columns: str) -> str:
    """Each request's latest feedback row (``rn = 1``); ``team`` filters by a bound team."""
    where = f" WHERE team = {placeholder}" if team else ""
    return (f"SELECT {columns}, ROW_NUMBER() OVER (PARTITION BY team, request_id ORDER BY created_at DESC, id DESC) "
            f"AS rn FROM feedback{where}")


def latest_feedback_sql(placeholder: str, team: bool) -> str:
    """The latest row per request among those created at or after a bound instant (bound after the team)."""
    cols = ", ".join(FEEDBACK_COLUMNS)
    return (f"SELECT {cols} FROM ({_latest(placeholder, team, cols)}) AS f WHERE rn = 1 "
            f"AND created_at >= {placeholder} ORDER BY created_at, id")


def answered_sql(placeholder: str, by: str) -> str:
    """The answered records with a given ``request_id`` or ``response_id`` (``by``): team, request id, answer id."""
    assert by in ("request_id", "response_id")  # a column name, never input
    return (f"SELECT team, request_id, response_id FROM records WHERE {by} = {placeholder} AND {_PURPOSES_SQL} "
            "LIMIT 50")


def value_sql(group_by: Sequence[str], placeholder: str, team: bool) -> tuple[str, str]:
    """(spend per group from the daily rollup: day range then team; feedback per group: team, then the range as
    instants and as days). Columns come from ``VALUE_GROUPS`` only."""
    p = placeholder
    dims = ", ".join(group_by)
    team_where = f" AND team = {p}" if team else ""
    spend = (f"SELECT {dims}, SUM(requests), SUM(cost_nanos) FROM rollup_daily WHERE day >= {p} AND day < {p} "
             f"AND {_PURPOSES_SQL}{team_where} GROUP BY {dims}")
    r_dims = ", ".join(f"r.{d}" for d in group_by)
    judged = (f"SELECT {r_dims}, COUNT(*), SUM(CASE WHEN {accepted_sql('f')} THEN 1 ELSE 0 END) "
              f"FROM ({_latest(p, team, 'team, request_id, score, label')}) AS f "
              "JOIN records AS r ON r.request_id = f.request_id AND r.team = f.team "
              f"WHERE f.rn = 1 AND r.started_at >= {p} AND r.started_at < {p} AND r.day >= {p} AND r.day < {p} "
              f"AND r.{_PURPOSES_SQL} GROUP BY {r_dims}")
    return spend, judged


def parse_value_group_by(group_by: Iterable[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(g.strip() for g in group_by if g.strip()))
    unknown = [g for g in names if g not in VALUE_GROUPS]
    if unknown or not names:
        raise ValueError(f"group_by must be one or more of {list(VALUE_GROUPS)}, got {list(names) or 'nothing'}")
    return names


def per_accepted(cost_nanos: int, accepted_outputs: int) -> int | None:
    """Cost per accepted output in nano-dollars, rounded half up to a whole nano-dollar; None without any."""
    if accepted_outputs == 0:
        return None
    return (2 * cost_nanos + accepted_outputs) // (2 * accepted_outputs)


@dataclass(frozen=True, slots=True)
class ValueRow:
    keys: dict[str, str]
    requests: int = 0
    with_feedback: int = 0
    accepted: int = 0
    cost_nanos: int = 0

    def to_dict(self) -> dict[str, Any]:
        each = per_accepted(self.cost_nanos, self.accepted)
        return {**self.keys, "requests": self.requests, "with_feedback": self.with_feedback,
                "accepted": self.accepted, "cost_usd": format_usd(self.cost_nanos),
                "cost_per_accepted_usd": None if each is None else format_usd(each)}


VALUE_COLUMNS = ("requests", "with_feedback", "accepted", "cost_usd", "cost_per_accepted_usd")


@dataclass(frozen=True, slots=True)
class ValueReport:
    start: date
    end: date
    team: str | None
    group_by: tuple[str, ...]
    rows: list[ValueRow]
    totals: ValueRow

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "team": self.team,
                "group_by": list(self.group_by), "rows": [r.to_dict() for r in self.rows],
                "totals": self.totals.to_dict()}

    def to_csv(self) -> str:
        from metering.ledger.report import rows_to_csv  # not at the top: the ledger imports this module

        return rows_to_csv([*self.group_by, *VALUE_COLUMNS], [r.to_dict() for r in self.rows])

    def table(self) -> str:
        """Aligned text columns, for the CLI."""
        head = [*self.group_by, *VALUE_COLUMNS]
        body = [[str(v if v is not None else "-") for v in r.to_dict().values()] for r in self.rows]
        body.append(["total", *[""] * (len(self.group_by) - 1),
                     *[str(v if v is not None else "-") for v in self.totals.to_dict().values()]])
        widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body])


def value_report(start: date, end: date, team: str | None, group_by: tuple[str, ...],
                 spend: Iterable[Sequence[Any]], judged: Iterable[Sequence[Any]]) -> ValueReport:
    """Rows from the two queries of ``value_sql`` (keys first), merged per group and sorted by their keys."""
    width = len(group_by)
    groups: dict[tuple[str, ...], list[int]] = {}
    for row in spend:  # requests, cost
        acc = groups.setdefault(tuple(str(k) for k in row[:width]), [0, 0, 0, 0])
        acc[0], acc[3] = int(row[width] or 0), int(row[width + 1] or 0)
    for row in judged:  # with feedback, accepted
        acc = groups.setdefault(tuple(str(k) for k in row[:width]), [0, 0, 0, 0])
        acc[1], acc[2] = int(row[width] or 0), int(row[width + 1] or 0)
    rows = [ValueRow(dict(zip(group_by, key)), *values) for key, values in sorted(groups.items())]
    total = ValueRow({}, *(sum(v) for v in zip(*groups.values()))) if groups else ValueRow({})
    return ValueReport(start, end, team, group_by, rows, total)


async def feedback_pairs(ledger: Any, since: datetime, team: str | None = None
                         ) -> list[tuple[str, float | None, str | None]]:
    """(request_id, score, label) of each request's latest feedback given at or after ``since``: the users' verdicts,
    for the routing learning loop beside the judge's outcomes (``ledger`` is a ``metering.ledger.Ledger``)."""
    return [(f.request_id, f.score, f.label) for f in await ledger.feedback(since, team)]

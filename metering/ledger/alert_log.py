"""The ``alerts`` table: budget thresholds that fired and requests a budget refused, kept beside the bill.

Why in the ledger's database: it is the one store every worker and replica already shares and keeps, so
``GET /v1/alerts`` answers the same history from any of them, and a threshold alert's ``once_key`` (scope,
period, threshold) is UNIQUE, so of several processes that see the same crossing exactly one stores it, even
without Redis. Refusals have no ``once_key``: each one is a row.

Column types differ only where the backends do (SQLite keeps ISO text for instants and days, PostgreSQL
TIMESTAMPTZ and DATE); tags are JSON text in both.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal

import orjson

from metering.money import format_usd

AlertKind = Literal["threshold", "refusal"]
ALERT_KINDS: tuple[AlertKind, ...] = ("threshold", "refusal")

ALERT_COLUMNS: tuple[str, ...] = (
    "id", "kind", "at", "team", "scope", "scope_name", "period", "period_start", "threshold_pct", "limit_nanos",
    "spent_nanos", "previous_nanos", "amount_nanos", "request_id", "key_id", "tags", "once_key",
)


def once_key(scope: str, team: str, scope_name: str, period: str, period_start: date, pct: int | None) -> str:
    """A threshold of one budget scope in one period: the UNIQUE key of the ``alerts`` table."""
    return f"{scope}:{team}:{scope_name}:{period}:{period_start.isoformat()}:{pct}"


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One fired threshold or one refusal, on one budget scope.

    ``scope`` is the kind of budget (``team``, ``key``, ``tag``; any later kind, such as ``experiment``, needs no
    schema change) and ``scope_name`` names it within the team (``""``, the key id, ``"k=v"``).

    A threshold: ``spent_nanos`` is the scope's settled spend once the crossing request (``request_id``) was added,
    ``previous_nanos`` the spend just before it (so ``previous < threshold <= spent``), ``amount_nanos`` what that
    request cost. A refusal: ``spent_nanos`` the settled spend when the request was refused, ``amount_nanos`` the
    worst case it asked to hold.
    """

    kind: AlertKind
    at: datetime
    team: str
    scope: str
    scope_name: str
    period: str  # "day" | "month"
    period_start: date
    limit_nanos: int
    spent_nanos: int
    threshold_pct: int | None = None
    previous_nanos: int | None = None
    amount_nanos: int | None = None
    request_id: str | None = None
    key_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def once_key(self) -> str | None:
        """What makes a threshold fire once (None for a refusal: every one counts)."""
        if self.kind != "threshold":
            return None
        return once_key(self.scope, self.team, self.scope_name, self.period, self.period_start, self.threshold_pct)

    def values(self) -> tuple[Any, ...]:
        """In ``ALERT_COLUMNS`` order; the instant (UTC) and the day stay objects for the backend to adapt."""
        return (self.id, self.kind, self.at.astimezone(UTC), self.team, self.scope, self.scope_name,
                self.period, self.period_start, self.threshold_pct, self.limit_nanos, self.spent_nanos,
                self.previous_nanos, self.amount_nanos, self.request_id, self.key_id,
                orjson.dumps(dict(sorted(self.tags.items()))).decode(), self.once_key)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> AlertEvent:
        values = dict(zip(ALERT_COLUMNS, row))
        at, start = values["at"], values["period_start"]
        return cls(
            kind=values["kind"], team=values["team"], scope=values["scope"], scope_name=values["scope_name"],
            at=(datetime.fromisoformat(at) if isinstance(at, str) else at).astimezone(UTC),
            period=values["period"], period_start=date.fromisoformat(start) if isinstance(start, str) else start,
            limit_nanos=int(values["limit_nanos"]), spent_nanos=int(values["spent_nanos"]),
            threshold_pct=_int_or_none(values["threshold_pct"]), previous_nanos=_int_or_none(values["previous_nanos"]),
            amount_nanos=_int_or_none(values["amount_nanos"]), request_id=values["request_id"],
            key_id=values["key_id"], tags=orjson.loads(values["tags"]), id=values["id"],
        )

    def to_dict(self) -> dict[str, Any]:
        """The API's shape: money as exact decimal strings, like the spend report."""
        return {
            "id": self.id, "kind": self.kind, "at": self.at.isoformat(), "team": self.team, "scope": self.scope,
            "scope_name": self.scope_name, "period": self.period, "period_start": self.period_start.isoformat(),
            "threshold_pct": self.threshold_pct, "limit_usd": format_usd(self.limit_nanos),
            "spent_usd": format_usd(self.spent_nanos),
            "previous_spent_usd": None if self.previous_nanos is None else format_usd(self.previous_nanos),
            "amount_usd": None if self.amount_nanos is None else format_usd(self.amount_nanos),
            "request_id": self.request_id, "key_id": self.key_id, "tags": dict(self.tags),
        }


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """``[since, until)`` by ``at``, newest first, at most ``limit`` rows; None filters nothing."""

    since: datetime
    until: datetime
    limit: int = 100
    team: str | None = None
    kind: AlertKind | None = None

    def sql(self, placeholder: str) -> tuple[str, list[str]]:
        """The WHERE/ORDER/LIMIT tail and which of ``since, until, team, kind, limit`` it binds, in order."""
        p = placeholder
        where, binds = [f"at >= {p}", f"at < {p}"], ["since", "until"]
        for name in ("team", "kind"):
            if getattr(self, name) is not None:
                where.append(f"{name} = {p}")
                binds.append(name)
        return f" WHERE {' AND '.join(where)} ORDER BY at DESC, id DESC LIMIT {p}", [*binds, "limit"]


def alerts_ddl(ts_type: str, day_type: str, int_type: str) -> list[str]:
    types = {"at": ts_type, "period_start": day_type, "threshold_pct": "INTEGER", "limit_nanos": int_type,
             "spent_nanos": int_type, "previous_nanos": int_type, "amount_nanos": int_type}
    required = {"id", "kind", "at", "team", "scope", "scope_name", "period", "period_start", "limit_nanos",
                "spent_nanos", "tags"}
    cols = ", ".join(f"{c} {types.get(c, 'TEXT')}{' NOT NULL' if c in required else ''}" for c in ALERT_COLUMNS)
    return [f"CREATE TABLE IF NOT EXISTS alerts ({cols}, PRIMARY KEY (id), UNIQUE (once_key))",
            "CREATE INDEX IF NOT EXISTS alerts_at ON alerts (at)"]


def insert_alert_sql(placeholder: str) -> str:
    """Idempotent on ``id`` and ``once_key``: a second worker's copy of a threshold changes nothing."""
    return (f"INSERT INTO alerts ({', '.join(ALERT_COLUMNS)}) VALUES ({', '.join([placeholder] * len(ALERT_COLUMNS))})"
            " ON CONFLICT DO NOTHING")


SELECT_ALERTS = f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts"

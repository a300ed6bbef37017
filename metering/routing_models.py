"""The ``routing_models`` table: each team's learned routing models, versioned, with the one that is active.

Why in the ledger's database: every worker and replica already shares it, so a model registered by
``tiergate learn --team`` or the admin API reaches all of them (each polls ``active_versions``, one small
query, and loads the ONNX bytes of a version it does not hold yet), and a rollback is one transaction seen
by all. The model bytes live in the row: models are small (tens of kB), and a file path would not be shared
between hosts.

Status: ``candidate`` (registered, not serving: the gate refused it, ``reason`` says why), ``active`` (at most
one per team, enforced by the transactions below, never by two workers guessing), ``retired`` (replaced or
rolled back). ``parent_version`` is the version that was active when this one was fitted (None = the default
prior), which is what a rollback returns to.

A rolled-back version's ``reason`` starts with ``rollback_reason``'s words: when and by whom (``the watch``, which
reverts a promoted model that judged rows after its promotion show worse than the one it replaced, or ``an
admin``), then why. Parsing them back (``RoutingModel.rollback``) is how the schedule knows a team's latest rollback
without a column of its own (no retrain from the rows that condemned a model) and how ``/metrics`` counts rollbacks
from the shared history rather than per process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

ModelStatus = Literal["active", "candidate", "retired"]
STATUSES: tuple[ModelStatus, ...] = ("active", "candidate", "retired")
RolledBackBy = Literal["watch", "admin"]
_BY: dict[RolledBackBy, str] = {"watch": "the watch", "admin": "an admin"}
_ROLLED_BACK = "rolled back"


def rollback_reason(at: datetime, by: RolledBackBy, why: str = "") -> str:
    """The reason a rolled-back version keeps: ``rolled back at <ISO instant> by <who>[: why]``."""
    return f"{_ROLLED_BACK} at {at.astimezone(UTC).isoformat()} by {_BY[by]}" + (f": {why}" if why else "")

# Listing columns (no bytes: a listing must stay cheap however many versions a team has).
LIST_COLUMNS: tuple[str, ...] = (
    "team", "version", "created_at", "model_id", "metrics", "status", "parent_version", "reason",
)


def routing_models_ddl(ts_type: str, blob_type: str, int_type: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS routing_models (team TEXT NOT NULL, version {int_type} NOT NULL, "
        f"created_at {ts_type} NOT NULL, model_id TEXT NOT NULL, model {blob_type} NOT NULL, metrics TEXT NOT NULL, "
        f"status TEXT NOT NULL, parent_version {int_type}, reason TEXT NOT NULL, PRIMARY KEY (team, version))",
        "CREATE INDEX IF NOT EXISTS routing_models_status ON routing_models (status, team)",
    ]


@dataclass(frozen=True, slots=True)
class RoutingModel:
    team: str
    version: int
    created_at: datetime
    model_id: str  # sha256 prefix of the bytes, as ComplexityScorer names it (and usage records carry)
    metrics: Mapping[str, Any]
    status: ModelStatus
    parent_version: int | None
    reason: str

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> RoutingModel:
        v = dict(zip(LIST_COLUMNS, row))
        at = v["created_at"]
        return cls(team=v["team"], version=int(v["version"]),
                   created_at=(datetime.fromisoformat(at) if isinstance(at, str) else at).astimezone(UTC),
                   model_id=v["model_id"], metrics=orjson.loads(v["metrics"]), status=v["status"],
                   parent_version=None if v["parent_version"] is None else int(v["parent_version"]),
                   reason=v["reason"])

    @property
    def rollback(self) -> tuple[datetime | None, RolledBackBy] | None:
        """(when, by whom) this version was rolled back, None if it never was. A bare ``rolled back`` (written
        before rollbacks were dated) is an admin's at an unknown instant."""
        if not self.reason.startswith(_ROLLED_BACK):
            return None
        rest = self.reason[len(_ROLLED_BACK):]
        if not rest.startswith(" at "):
            return None, "admin"
        stamp, _, tail = rest[4:].partition(" by ")
        by: RolledBackBy = next((b for b, words in _BY.items() if tail.startswith(words)), "admin")
        try:
            return datetime.fromisoformat(stamp).astimezone(UTC), by
        except ValueError:
            return None, by

    def to_dict(self) -> dict[str, Any]:
        return {"team": self.team, "version": self.version, "created_at": self.created_at.isoformat(),
                "model_id": self.model_id, "metrics": dict(self.metrics), "status": self.status,
                "parent_version": self.parent_version, "reason": self.reason}


def latest_rollback(models: Sequence[RoutingModel]) -> datetime | None:
    """The instant of the latest dated rollback among a team's versions (None: none)."""
    return max((r[0] for r in (m.rollback for m in models) if r is not None and r[0] is not None), default=None)


Statement = tuple[str, Sequence[Any]]


def insert_statements(p: str, team: str, created_at: Any, model_id: str, model: bytes, metrics: Mapping[str, Any],
                      parent_version: int | None, reason: str) -> list[Statement]:
    """Register a candidate under the next version of its team; the last statement returns that version.

    Run in one transaction (the backend serialises writers), so two registrations never take one version."""
    return [
        (f"INSERT INTO routing_models (team, version, created_at, model_id, model, metrics, status, parent_version, "
         f"reason) SELECT {p}, COALESCE(MAX(version), 0) + 1, {p}, {p}, {p}, {p}, 'candidate', {p}, {p} "
         f"FROM routing_models WHERE team = {p}",
         (team, created_at, model_id, model, orjson.dumps(dict(metrics)).decode(), parent_version, reason, team)),
        (f"SELECT MAX(version) FROM routing_models WHERE team = {p}", (team,)),
    ]


def activate_statements(p: str, team: str, version: int | None, reason: str | None = None) -> list[Statement]:
    """Make ``version`` the team's one active model (None: no model, the default prior serves); the last statement
    returns the number of rows that are now active for the team (1 when ``version`` exists, 0 for None)."""
    out: list[Statement] = [(f"UPDATE routing_models SET status = 'retired' WHERE team = {p} AND status = 'active'",
                             (team,))]
    if version is not None:
        if reason is None:
            out.append((f"UPDATE routing_models SET status = 'active' WHERE team = {p} AND version = {p}",
                        (team, version)))
        else:
            out.append((f"UPDATE routing_models SET status = 'active', reason = {p} WHERE team = {p} AND version = {p}",
                        (reason, team, version)))
    out.append((f"SELECT COUNT(*) FROM routing_models WHERE team = {p} AND status = 'active'", (team,)))
    return out


def set_reason_sql(p: str) -> str:
    return f"UPDATE routing_models SET reason = {p} WHERE team = {p} AND version = {p}"


def list_sql(p: str) -> str:
    return f"SELECT {', '.join(LIST_COLUMNS)} FROM routing_models WHERE team = {p} ORDER BY version DESC"


def bytes_sql(p: str) -> str:
    return f"SELECT model FROM routing_models WHERE team = {p} AND version = {p}"


# What each worker polls: one row per team with an active model.
ACTIVE_SQL = "SELECT team, version, model_id FROM routing_models WHERE status = 'active'"

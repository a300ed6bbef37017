"""The ``outcomes`` table: per judged request, what the router saw and how the judge graded the two tiers.

Why in the ledger's database: every worker and replica already shares it, so judged samples from all of them meet
in one place for ``tiergate learn`` and the evidence report. A row holds the classifier's feature vector (in
``classifiers.features.FEATURE_NAMES`` order, JSON), the prior's score, the two tiers and their grades
(``weak`` = the cheaper tier), and the messages only for teams that opted in (``learning.store_prompts``).
``export_row`` is the shared routing-outcome format (``../shared/data/routing/``) that ``tiergate learn`` reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

OUTCOME_COLUMNS: tuple[str, ...] = (
    "id", "request_id", "team", "created_at", "features", "feature_names", "prior_score", "model_id", "weak_tier",
    "strong_tier", "routed_tier", "ceiling_tier", "weak_score", "strong_score", "judge", "messages",
)


@dataclass(frozen=True, slots=True)
class Outcome:
    request_id: str
    team: str
    created_at: datetime
    features: tuple[float, ...]
    feature_names: tuple[str, ...]
    prior_score: float
    model_id: str
    weak_tier: str  # the cheaper of the two tiers
    strong_tier: str
    routed_tier: str  # which of the two the client was served by
    ceiling_tier: str  # the team's most capable tier (the evidence report's baseline)
    weak_score: float
    strong_score: float
    judge: str  # the judge's deployment id
    messages: list[Any] | None = None  # only with store_prompts
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def values(self) -> tuple[Any, ...]:
        """In ``OUTCOME_COLUMNS`` order; the instant stays a datetime for the backend to adapt."""
        return (self.id, self.request_id, self.team, self.created_at.astimezone(UTC),
                orjson.dumps(list(self.features)).decode(), ",".join(self.feature_names), self.prior_score,
                self.model_id, self.weak_tier, self.strong_tier, self.routed_tier, self.ceiling_tier,
                self.weak_score, self.strong_score, self.judge,
                None if self.messages is None else orjson.dumps(self.messages).decode())

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Outcome:
        v = dict(zip(OUTCOME_COLUMNS, row))
        at = v["created_at"]
        return cls(
            id=v["id"], request_id=v["request_id"], team=v["team"],
            created_at=(datetime.fromisoformat(at) if isinstance(at, str) else at).astimezone(UTC),
            features=tuple(float(x) for x in orjson.loads(v["features"])),
            feature_names=tuple(v["feature_names"].split(",")) if v["feature_names"] else (),
            prior_score=float(v["prior_score"]), model_id=v["model_id"], weak_tier=v["weak_tier"],
            strong_tier=v["strong_tier"], routed_tier=v["routed_tier"], ceiling_tier=v["ceiling_tier"],
            weak_score=float(v["weak_score"]), strong_score=float(v["strong_score"]), judge=v["judge"],
            messages=None if v["messages"] is None else orjson.loads(v["messages"]),
        )

    def export_row(self) -> dict[str, Any]:
        """One line of the shared routing-outcome format (``tiergate learn --outcomes`` reads it)."""
        return {
            "id": self.request_id,
            "messages": self.messages,
            "weak_score": self.weak_score,
            "strong_score": self.strong_score,
            "meta": {"team": self.team, "features": list(self.features), "feature_names": list(self.feature_names),
                     "prior_score": self.prior_score, "model_id": self.model_id, "weak_tier": self.weak_tier,
                     "strong_tier": self.strong_tier, "judge": self.judge},
        }


def outcomes_ddl(ts_type: str, real_type: str) -> list[str]:
    types = {"created_at": ts_type, "prior_score": real_type, "weak_score": real_type, "strong_score": real_type}
    cols = ", ".join(f"{c} {types.get(c, 'TEXT')}{'' if c == 'messages' else ' NOT NULL'}" for c in OUTCOME_COLUMNS)
    return [f"CREATE TABLE IF NOT EXISTS outcomes ({cols}, PRIMARY KEY (id))",
            "CREATE INDEX IF NOT EXISTS outcomes_team_created ON outcomes (team, created_at)"]


def insert_outcome_sql(placeholder: str) -> str:
    return (f"INSERT INTO outcomes ({', '.join(OUTCOME_COLUMNS)}) "
            f"VALUES ({', '.join([placeholder] * len(OUTCOME_COLUMNS))}) ON CONFLICT DO NOTHING")


def select_outcomes_sql(placeholder: str, team: bool) -> str:
    """Rows created at or after a bound instant, oldest first; ``team`` adds a team filter (bound second)."""
    where = f"created_at >= {placeholder}" + (f" AND team = {placeholder}" if team else "")
    return f"SELECT {', '.join(OUTCOME_COLUMNS)} FROM outcomes WHERE {where} ORDER BY created_at, id"

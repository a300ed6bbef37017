"""Per-team routing models: how a team's model is retrained, promoted through the gate, and rolled back.

Which scorer serves a team on each worker is ``router.scoring.TeamScorers``. It lives in the pipeline, not the
router, because it reads and writes the ledger; the router stays pure.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from classifiers import promotion
from classifiers.learn import LearnError, Outcomes, read_outcomes
from classifiers.scorer import DEFAULT_MODEL
from metering.ledger.base import Ledger
from metering.routing_models import RoutingModel


async def team_outcomes(ledger: Ledger, team: str, fallback: str | Path | None = None) -> Outcomes:
    """The team's judged rows, oldest first: from the ledger's outcome store, else from an exported JSONL file
    (rows of every team in it are kept only if ``meta.team`` is this team or absent)."""
    rows = [o.export_row() for o in await ledger.outcomes(datetime(1970, 1, 1, tzinfo=UTC), team)]
    if not rows and fallback is not None:
        with open(fallback, encoding="utf-8") as f:
            rows = [r for r in map(json.loads, filter(str.strip, f))
                    if not isinstance(r.get("meta"), dict) or r["meta"].get("team") in (None, team)]
    if not rows:
        raise LearnError(f"no judged rows for team {team!r}")
    with tempfile.TemporaryDirectory() as tmp:  # one validator for every source: read_outcomes
        path = Path(tmp) / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return read_outcomes(path)


async def serving_bytes(ledger: Ledger, team: str) -> tuple[bytes, int | None]:
    """(bytes of the team's active model or of the default prior, its version or None)."""
    active = (await ledger.active_routing_models()).get(team)
    if active is not None:
        data = await ledger.routing_model_bytes(team, active[0])
        if data is not None:
            return data, active[0]
    return DEFAULT_MODEL.read_bytes(), None


@dataclass(frozen=True)
class Retrained:
    model: RoutingModel
    promoted: bool
    reason: str


async def retrain(ledger: Ledger, team: str, data: Outcomes, seed: int = 0, margin: float = promotion.DEFAULT_MARGIN,
                  min_holdout: int = promotion.DEFAULT_MIN_HOLDOUT) -> Retrained:
    """Fit a candidate on the team's rows, register it, and activate it if the gate says so."""
    current, version = await serving_bytes(ledger, team)
    verdict = await asyncio.to_thread(promotion.judge, data, current, seed, margin, min_holdout)
    model = await ledger.add_routing_model(team, verdict.model, verdict.model_id, verdict.metrics, version,
                                           verdict.reason)
    if verdict.promote:
        await ledger.activate_routing_model(team, model.version)
    return Retrained(model, verdict.promote, verdict.reason)


async def rollback(ledger: Ledger, team: str) -> int | None:
    """Make the version the active one replaced active again (None: the default prior); LookupError when the team
    has no active model to roll back."""
    models = await ledger.routing_models(team)
    active = next((m for m in models if m.status == "active"), None)
    if active is None:
        raise LookupError(f"team {team!r} has no active routing model to roll back")
    await ledger.activate_routing_model(team, active.parent_version,
                                        reason=f"restored by rollback of v{active.version}")
    await ledger.set_routing_model_reason(team, active.version, "rolled back")
    return active.parent_version

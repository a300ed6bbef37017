"""Per-team routing models: how a team's model is retrained, promoted through the gate, watched, and rolled back.

Which scorer serves a team on each worker is ``router.scoring.TeamScorers``. It lives in the pipeline, not the
router, because it reads and writes the ledger; the router stays pure.

The watch (``watch``): the gate judges a candidate on the newest 25% of the rows it had, which is still a sample, so
a promotion can be wrong. After it, judged rows keep arriving that neither the promoted model nor the one it
replaced was fitted on (the judge grades both tiers whichever model routed the request), so both are scored on them
with the gate's paired bootstrap, and the promoted model is rolled back when it is worse beyond noise
(``classifiers.promotion.worse``). It runs before every fit (scheduled, admin API, ``tiergate learn --team``), so a
fit is judged against the model that should be serving. The default prior is never rolled back (nothing replaced
it), and nothing automatic ever activates a retired version again: the gate only promotes the candidate it has just
registered, and the schedule fits again only on rows that arrived after the rollback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from classifiers import promotion
from classifiers.learn import LearnError, Outcomes, read_outcomes
from classifiers.scorer import DEFAULT_MODEL
from metering.ledger.base import Ledger
from metering.outcomes import Outcome
from metering.routing_models import RolledBackBy, RoutingModel, rollback_reason

log = logging.getLogger("tiergate.retrain")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _as_outcomes(rows: Sequence[dict[str, Any]]) -> Outcomes:
    with tempfile.TemporaryDirectory() as tmp:  # one validator for every source: read_outcomes
        path = Path(tmp) / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return read_outcomes(path)


async def team_outcomes(ledger: Ledger, team: str, fallback: str | Path | None = None) -> Outcomes:
    """The team's judged rows, oldest first: from the ledger's outcome store, else from an exported JSONL file
    (rows of every team in it are kept only if ``meta.team`` is this team or absent)."""
    rows = [o.export_row() for o in await ledger.outcomes(_EPOCH, team)]
    if not rows and fallback is not None:
        with open(fallback, encoding="utf-8") as f:
            rows = [r for r in map(json.loads, filter(str.strip, f))
                    if not isinstance(r.get("meta"), dict) or r["meta"].get("team") in (None, team)]
    if not rows:
        raise LearnError(f"no judged rows for team {team!r}")
    return _as_outcomes(rows)


async def serving_bytes(ledger: Ledger, team: str) -> tuple[bytes, int | None]:
    """(bytes of the team's active model or of the default prior, its version or None)."""
    active = (await ledger.active_routing_models()).get(team)
    if active is not None:
        data = await ledger.routing_model_bytes(team, active[0])
        if data is not None:
            return data, active[0]
    return DEFAULT_MODEL.read_bytes(), None


@dataclass(frozen=True)
class Watched:
    """What the watch found for a team's active (promoted) model."""

    team: str
    version: int  # the active version it judged
    replaced: int | None  # the version that one replaced (None: the default prior)
    n_rows: int  # judged rows since the active version was registered
    rolled_back: bool
    reason: str
    difference: dict[str, Any] | None = None  # promotion.Difference.to_dict() when it judged

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "replaced": self.replaced, "n_rows": self.n_rows,
                "rolled_back": self.rolled_back, "reason": self.reason, "difference": self.difference}


@dataclass(frozen=True)
class Retrained:
    model: RoutingModel
    promoted: bool
    reason: str
    watched: Watched | None = None  # the watch that ran before the fit, when it did


def _name(version: int | None) -> str:
    return "the default model" if version is None else f"v{version}"


async def watch(ledger: Ledger, team: str, margin: float = promotion.DEFAULT_MARGIN,
                min_holdout: int = promotion.DEFAULT_MIN_HOLDOUT, confidence: float = promotion.DEFAULT_CONFIDENCE,
                seed: int = 0) -> Watched | None:
    """Judge the team's active model against the version it replaced on the judged rows registered after it, and
    roll it back when it is worse beyond noise (``promotion.worse``); None when no learned model is active.

    Rows after the active version's ``created_at``: it was registered (and promoted) after its fit read the rows,
    so none of them trained it or the version it replaced. At least ``min_holdout`` of them are needed, the same
    bar as the gate's held-out rows. A rollback is recorded in the version history (``rollback_reason``) and logged
    as one WARNING line (numbers, no prompt text)."""
    models = await ledger.routing_models(team)
    active = next((m for m in models if m.status == "active"), None)
    if active is None:
        return None
    rows = [o for o in await ledger.outcomes(active.created_at, team) if o.created_at > active.created_at]
    base = (team, active.version, active.parent_version, len(rows))
    if len(rows) < min_holdout:
        return Watched(*base, False, f"{len(rows)} judged rows since v{active.version} was promoted; the watch "
                                     f"judges it from {min_holdout}")
    promoted = await ledger.routing_model_bytes(team, active.version)
    replaced = (DEFAULT_MODEL.read_bytes() if active.parent_version is None
                else await ledger.routing_model_bytes(team, active.parent_version))
    if promoted is None or replaced is None:
        return Watched(*base, False, f"{_name(active.parent_version)}'s model is not stored: nothing to compare")
    diff = await asyncio.to_thread(promotion.compare, promoted, replaced, _rows_of(rows), confidence, seed)
    judged = (f"on {len(rows)} judged rows since its promotion, APGR {diff.new:.4f} against "
              f"{_name(active.parent_version)}'s {diff.old:.4f} (difference {diff.observed:+.4f}; "
              f"{diff.interval_text()})")
    if not promotion.worse(diff, margin):
        return Watched(*base, False, f"kept: {judged}", diff.to_dict())
    try:
        await rollback(ledger, team, by="watch", why=judged, version=active.version)
    except LookupError:  # another process promoted or rolled back meanwhile: its model is not the one judged
        return Watched(*base, False, "the active version changed while the watch judged it", diff.to_dict())
    log.warning("team %s: routing model v%d rolled back to %s by the watch: %s", team, active.version,
                _name(active.parent_version), judged)
    return Watched(*base, True, f"rolled back: {judged}", diff.to_dict())


def _rows_of(rows: Sequence[Outcome]) -> Outcomes:
    return _as_outcomes([o.export_row() for o in rows])


async def retrain(ledger: Ledger, team: str, data: Outcomes, seed: int = 0, margin: float = promotion.DEFAULT_MARGIN,
                  min_holdout: int = promotion.DEFAULT_MIN_HOLDOUT, confidence: float = promotion.DEFAULT_CONFIDENCE,
                  watch_first: bool = False) -> Retrained:
    """Fit a candidate on the team's rows, register it, and activate it if the gate says so. ``watch_first``
    runs the watch before (the admin API and ``tiergate learn --team`` do), so the candidate is judged against
    the model that should be serving."""
    watched = await watch(ledger, team, margin, min_holdout, confidence, seed) if watch_first else None
    current, version = await serving_bytes(ledger, team)
    verdict = await asyncio.to_thread(promotion.judge, data, current, seed, margin, min_holdout, None, confidence)
    model = await ledger.add_routing_model(team, verdict.model, verdict.model_id, verdict.metrics, version,
                                           verdict.reason)
    if verdict.promote:
        await ledger.activate_routing_model(team, model.version)
    return Retrained(model, verdict.promote, verdict.reason, watched)


async def rollback(ledger: Ledger, team: str, by: RolledBackBy = "admin", why: str = "",
                   version: int | None = None) -> int | None:
    """Make the version the active one replaced active again (None: the default prior); LookupError when the team
    has no active model to roll back, or ``version`` is given and is not the active one. The rolled-back version
    keeps when, by whom and why (``rollback_reason``), followed by the reason it had."""
    models = await ledger.routing_models(team)
    active = next((m for m in models if m.status == "active"), None)
    if active is None:
        raise LookupError(f"team {team!r} has no active routing model to roll back")
    if version is not None and active.version != version:
        raise LookupError(f"team {team!r}: v{version} is no longer the active routing model")
    await ledger.activate_routing_model(team, active.parent_version,
                                        reason=f"restored by rollback of v{active.version} ({by})")
    why = f"{why}; it was: {active.reason}" if why else f"it was: {active.reason}"
    await ledger.set_routing_model_reason(team, active.version, rollback_reason(datetime.now(UTC), by, why))
    return active.parent_version

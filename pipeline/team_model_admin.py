"""``TeamModelAdmin``: what the admin API does to a team's routing models (the runtime's ``team_models``; the HTTP
handlers of ``proxy.models_api`` call it and know no ledger).

Why here: each action is ledger reads and writes (``pipeline.team_models``) followed by loading the new active
model on this worker (the others at their next poll), and the training path belongs to the optional ``train``
install layer, so a runtime-only worker answers ``training_unavailable`` naming what to install instead of failing
at import. Its refusals are the taxonomy's codes; this module knows no HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from classifiers.gate import DEFAULT_CONFIDENCE, DEFAULT_MARGIN, DEFAULT_MIN_HOLDOUT
from classifiers.learn import LearnError
from metering.ledger.base import Ledger
from metering.routing_models import RoutingModel
from pipeline.errors import TiergateError
from pipeline.retrain_schedule import training_path
from router.config import LearningSettings
from router.scoring import TeamScorers

if TYPE_CHECKING:  # the module itself is imported when an action runs: it needs the train layer
    from pipeline.team_models import Retrained


def _unavailable(missing: str) -> TiergateError:
    return TiergateError("training_unavailable", f"retraining needs the train layer ({missing} is not installed): "
                         "bash scripts/install.sh train")


@dataclass(frozen=True, slots=True)
class TeamModels:
    """A team's registered versions (newest first), the active one and the model this worker serves it with."""

    team: str
    models: list[RoutingModel]
    serving_model_id: str

    def to_dict(self) -> dict[str, Any]:
        active = next((m.version for m in self.models if m.status == "active"), None)
        return {"team": self.team, "active_version": active, "serving_model_id": self.serving_model_id,
                "models": [m.to_dict() for m in self.models]}


class TeamModelAdmin:
    def __init__(self, ledger: Ledger, scorers: TeamScorers) -> None:
        self._ledger = ledger
        self._scorers = scorers

    async def state(self, team: str) -> TeamModels:
        return TeamModels(team, await self._ledger.routing_models(team), self._scorers.for_team(team).model_id)

    async def retrain(self, team: str, seed: int, learning: LearningSettings | None) -> Retrained:
        """Watch the team's promoted model (roll it back if the rows since its promotion show it worse), then fit
        a candidate on the team's judged rows with the team's gate thresholds (as its schedule uses), register it
        and promote it if it passes (``pipeline.team_models.Retrained``, whose ``watched`` says what the watch
        did)."""
        training = training_path()
        if isinstance(training, str):
            raise _unavailable(training)
        margin = learning.promote_margin if learning is not None else DEFAULT_MARGIN
        min_holdout = learning.min_holdout if learning is not None else DEFAULT_MIN_HOLDOUT
        confidence = learning.promote_confidence if learning is not None else DEFAULT_CONFIDENCE
        try:  # training is the lazily imported train-layer module (attributes untyped): name the result's type
            outcomes = await training.team_outcomes(self._ledger, team)
            done: Retrained = await training.retrain(self._ledger, team, outcomes, seed=seed, margin=margin,
                                                     min_holdout=min_holdout, confidence=confidence,
                                                     watch_first=True)
        except LearnError as exc:
            raise TiergateError("invalid_request.invalid_value", f"cannot retrain {team}: {exc}") from None
        await self._scorers.refresh(self._ledger)
        return done

    async def rollbacks(self, teams: list[str]) -> dict[tuple[str, str], int]:
        """(team, by) -> how many of the team's versions were rolled back, by the watch or an admin: read from the
        shared version history at each ``/metrics`` scrape, so every worker and replica answers the same count
        and it survives restarts (a per-process counter would need the worker that rolled back to answer)."""
        out: dict[tuple[str, str], int] = {}
        for team in teams:
            for model in await self._ledger.routing_models(team):
                rolled = model.rollback
                if rolled is not None:
                    out[(team, rolled[1])] = out.get((team, rolled[1]), 0) + 1
        return out

    async def rollback(self, team: str) -> int | None:
        """Make the version the active one replaced active again; the restored version (None: the default)."""
        try:  # ledger writes only: no fit, but the module imports the learner's (numpy) side
            from pipeline.team_models import rollback
        except ModuleNotFoundError as exc:
            raise _unavailable(exc.name or "numpy") from None
        try:
            restored = await rollback(self._ledger, team)
        except LookupError as exc:
            raise TiergateError("not_found", str(exc), param="team") from None
        await self._scorers.refresh(self._ledger)
        return restored

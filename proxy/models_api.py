"""Admin API of per-team routing models (``routing_models`` in the ledger's database; ``router.team_models``).

- ``GET /v1/routing/models/{team}``: the team's versions (newest first, metrics and the gate's reason), the active
  one, and the model this worker serves the team with.
- ``POST /v1/routing/models/{team}/retrain``: fit a candidate on the team's judged rows in the outcome store, register
  it, promote it if it passes the gate (body, optional: ``{"seed": int}``).
- ``POST /v1/routing/models/{team}/rollback``: make the version the active one replaced active again (or the
  default model).

Admin keys only. This worker loads the new active model before answering; the others within their poll period.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from classifiers.gate import DEFAULT_MARGIN, DEFAULT_MIN_HOLDOUT
from pipeline.errors import TiergateError
from proxy.body import shown
from proxy.endpoints import authenticated, read_body, runtime
from proxy.errors import bad_request
from proxy.render import json_response


def _training() -> ModuleType:
    """The training path (classifiers.learn -> onnx) is the train layer's, not the runtime's: a serving worker
    imports it only when an admin asks to retrain, and says what to install when it is missing."""
    try:
        from pipeline import team_models
    except ModuleNotFoundError as exc:
        raise TiergateError("training_unavailable", f"retraining needs the train layer ({exc.name} is not "
                            "installed): bash scripts/install.sh train") from None
    return team_models

_MAX_BODY = 1024


def _team(request: Request) -> str:
    if not authenticated(request).admin:
        raise TiergateError("admin_key_required", "routing models are managed with an admin key")
    team = request.path_params["team"]
    if team not in runtime(request).store.policy.teams:
        raise TiergateError("not_found", f"unknown team {shown(team)}", param="team")
    return team


async def _state(request: Request, team: str) -> dict[str, Any]:
    rt = runtime(request)
    models = await rt.meter.ledger.routing_models(team)
    active = next((m.version for m in models if m.status == "active"), None)
    return {"team": team, "active_version": active, "serving_model_id": rt.scorers.for_team(team).model_id,
            "models": [m.to_dict() for m in models]}


async def models(request: Request) -> Response:
    """``GET /v1/routing/models/{team}``."""
    team = _team(request)
    return json_response(await _state(request, team))


async def retrain(request: Request) -> Response:
    """``POST /v1/routing/models/{team}/retrain``."""
    team = _team(request)
    raw = await read_body(request, _MAX_BODY)
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise bad_request("body must be JSON (or empty)") from None
    seed = body.get("seed", 0) if isinstance(body, dict) else None
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise bad_request(f"'seed' must be an integer, got {shown(str(seed))}", param="seed")
    rt = runtime(request)
    training = _training()
    from classifiers.learn import LearnError  # loaded with the training path above

    learning = rt.store.policy.teams[team].settings.learning  # the team's gate thresholds, as its schedule uses
    margin = learning.promote_margin if learning is not None else DEFAULT_MARGIN
    min_holdout = learning.min_holdout if learning is not None else DEFAULT_MIN_HOLDOUT
    try:
        done = await training.retrain(rt.meter.ledger, team, await training.team_outcomes(rt.meter.ledger, team),
                                      seed=seed, margin=margin, min_holdout=min_holdout)
    except LearnError as exc:
        raise bad_request(f"cannot retrain {team}: {exc}") from None
    await rt.scorers.refresh(rt.meter.ledger)
    return json_response({"promoted": done.promoted, "reason": done.reason, "model": done.model.to_dict(),
                          **await _state(request, team)})


async def rollback(request: Request) -> Response:
    """``POST /v1/routing/models/{team}/rollback``."""
    team = _team(request)
    rt = runtime(request)
    try:
        restored = await _training().rollback(rt.meter.ledger, team)
    except LookupError as exc:
        raise TiergateError("not_found", str(exc), param="team") from None
    await rt.scorers.refresh(rt.meter.ledger)
    return json_response({"restored_version": restored, **await _state(request, team)})

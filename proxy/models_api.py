"""Admin API of per-team routing models (``routing_models`` in the ledger's database; ``router.team_models``).

- ``GET /v1/routing/models/{team}``: the team's versions (newest first, metrics and the gate's reason), the active
  one, and the model this worker serves the team with.
- ``POST /v1/routing/models/{team}/retrain``: first the watch (the team's promoted model against the version it
  replaced, on judged rows newer than its promotion: rolled back if worse beyond noise; ``watch`` in the answer),
  then fit a candidate on the team's judged rows in the outcome store, register it, promote it if it passes the
  gate (body, optional: ``{"seed": int}``).
- ``POST /v1/routing/models/{team}/rollback``: make the version the active one replaced active again (or the
  default model).

Admin keys only. This worker loads the new active model before answering; the others within their poll period.
The actions are the runtime's ``team_models`` (``pipeline.team_model_admin``).
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from pipeline.errors import TiergateError
from proxy.body import shown
from proxy.endpoints import authenticated, read_body, runtime
from proxy.errors import bad_request
from proxy.render import json_response

_MAX_BODY = 1024


def _team(request: Request) -> str:
    if not authenticated(request).admin:
        raise TiergateError("admin_key_required", "routing models are managed with an admin key")
    team = request.path_params["team"]
    if team not in runtime(request).store.policy.teams:
        raise TiergateError("not_found", f"unknown team {shown(team)}", param="team")
    return team


async def models(request: Request) -> Response:
    """``GET /v1/routing/models/{team}``."""
    team = _team(request)
    return json_response((await runtime(request).team_models.state(team)).to_dict())


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
    done = await rt.team_models.retrain(team, seed, rt.store.policy.teams[team].settings.learning)
    watched = done.watched.to_dict() if done.watched is not None else None
    return json_response({"promoted": done.promoted, "reason": done.reason, "model": done.model.to_dict(),
                          "watch": watched, **(await rt.team_models.state(team)).to_dict()})


async def rollback(request: Request) -> Response:
    """``POST /v1/routing/models/{team}/rollback``."""
    team = _team(request)
    admin = runtime(request).team_models
    restored = await admin.rollback(team)
    return json_response({"restored_version": restored, **(await admin.state(team)).to_dict()})

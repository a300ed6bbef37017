"""HTTP endpoints of OpenAI's Responses API (``/v1/responses``): the thin layer over ``wire.responses``.

Stored responses (retrieve, delete, input_items) live in ``kvcache.responses``; ``create`` is being built this
session (issue 14) and answers a clear 404 until then."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from kvcache.responses import ResponseStoreUnavailable, StoredResponse
from pipeline.errors import TiergateError
from proxy.endpoints import authenticated, runtime
from proxy.render import json_response
from proxy.responses_create import create  # POST /v1/responses: the ingress lives in its own module
from wire.input_items import BadPageQuery, PageQuery, page


def _owner(request: Request) -> tuple[str, str]:
    """(the caller's team, the path's response id). Stored responses belong to teams: admin keys hold none."""
    principal = authenticated(request)
    if principal.team is None:
        raise TiergateError("team_key_required", "admin keys hold no stored responses; use a team key")
    return principal.team, request.path_params["response_id"]


def _not_found(response_id: str) -> TiergateError:
    # Another team's id answers exactly as an unknown one, so ids cannot be probed across teams.
    return TiergateError("not_found", f"Response with id {response_id[:100]!r} not found.", param="response_id")


def _unavailable(exc: ResponseStoreUnavailable) -> TiergateError:
    return TiergateError("response_store_unavailable", f"the response store did not answer ({exc}); retry later")


async def _own_stored(request: Request) -> StoredResponse:
    team, response_id = _owner(request)
    try:
        stored = await runtime(request).responses.get(response_id, team)
    except ResponseStoreUnavailable as exc:
        raise _unavailable(exc) from None
    if stored is None:
        raise _not_found(response_id)
    return stored


async def retrieve(request: Request) -> Response:
    """``GET /v1/responses/{id}``: the Response object as it was answered."""
    if request.query_params.get("stream", "false").lower() not in ("false", "0"):
        raise TiergateError("invalid_request.invalid_value", "streaming a stored response again is not supported; "
                            "retrieve it without stream", param="stream")
    return json_response((await _own_stored(request)).response)


async def delete(request: Request) -> Response:
    """``DELETE /v1/responses/{id}``: gone for good, also as a ``previous_response_id``."""
    team, response_id = _owner(request)
    try:
        deleted = await runtime(request).responses.delete(response_id, team)
    except ResponseStoreUnavailable as exc:
        raise _unavailable(exc) from None
    if not deleted:
        raise _not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def input_items(request: Request) -> Response:
    """``GET /v1/responses/{id}/input_items``: the items the response was generated from (the whole conversation
    before its output), paged by ``limit``/``order``/``after``."""
    try:
        query = PageQuery.parse(request.query_params)
    except BadPageQuery as exc:
        raise TiergateError("invalid_request.invalid_value", str(exc), param=exc.param) from None
    stored = await _own_stored(request)
    try:
        return json_response(page(stored.input_items, stored.id, query))
    except BadPageQuery as exc:
        raise TiergateError("invalid_request.invalid_value", str(exc), param=exc.param) from None

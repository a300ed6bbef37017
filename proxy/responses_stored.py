"""``GET``/``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``: the stored responses
(``kvcache.responses``) a team reads back, lists and deletes. ``POST`` lives in ``proxy.responses_create``."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from kvcache.responses import ResponseStoreUnavailable, StoredResponse
from pipeline.errors import TiergateError
from proxy.endpoints import authenticated, runtime
from proxy.render import json_response
from wire.input_items import BadPageQuery, PageQuery, page

T = TypeVar("T")


def store_unavailable(exc: ResponseStoreUnavailable) -> TiergateError:
    """A store outage as the client sees it: 503, retry later (never a 500, never "no such response")."""
    return TiergateError("response_store_unavailable", f"the response store did not answer ({exc}); retry later")


async def _asked(call: Awaitable[T]) -> T:
    try:
        return await call
    except ResponseStoreUnavailable as exc:
        raise store_unavailable(exc) from None


def _owner(request: Request) -> tuple[str, str]:
    """(the caller's team, the path's response id). Stored responses belong to teams: admin keys hold none."""
    principal = authenticated(request)
    if principal.team is None:
        raise TiergateError("team_key_required", "admin keys hold no stored responses; use a team key")
    return principal.team, request.path_params["response_id"]


def _not_found(response_id: str) -> TiergateError:
    # Another team's id answers exactly as an unknown one, so ids cannot be probed across teams.
    return TiergateError("not_found", f"Response with id {response_id[:100]!r} not found.", param="response_id")


async def _own_stored(request: Request) -> StoredResponse:
    team, response_id = _owner(request)
    stored = await _asked(runtime(request).responses.get(response_id, team))
    if stored is None:
        raise _not_found(response_id)
    return stored


def _bad_query(exc: BadPageQuery) -> TiergateError:
    return TiergateError("invalid_request.invalid_value", str(exc), param=exc.param)


async def retrieve(request: Request) -> Response:
    """The Response object as it was answered."""
    if request.query_params.get("stream", "false").lower() not in ("false", "0"):
        raise TiergateError("invalid_request.invalid_value", "streaming a stored response again is not supported; "
                            "retrieve it without stream", param="stream")
    return json_response((await _own_stored(request)).response)


async def delete(request: Request) -> Response:
    """Gone for good, also as a ``previous_response_id``; answered as OpenAI does."""
    team, response_id = _owner(request)
    if not await _asked(runtime(request).responses.delete(response_id, team)):
        raise _not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def input_items(request: Request) -> Response:
    """The items the response was generated from (the whole conversation before its output), paged by
    ``limit``/``order``/``after``."""
    try:
        query = PageQuery.parse(request.query_params)
    except BadPageQuery as exc:
        raise _bad_query(exc) from None
    stored = await _own_stored(request)
    try:
        return json_response(page(stored.input_items, stored.id, query))
    except BadPageQuery as exc:
        raise _bad_query(exc) from None

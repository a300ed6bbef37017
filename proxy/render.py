"""The pipeline's result on OpenAI's wire: ``x-tiergate-*`` headers from its notes, a JSON body or an SSE stream.

``headers()`` is the one place a result becomes headers, so every ingress that speaks HTTP tells clients the same
things the same way."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import Response

from metering.money import format_usd
from pipeline.result import Notes, Served, Streaming
from proxy.streaming import SSEResponse

_JSON = "application/json"
# Proxies between tiergate and the client must pass events on as they come.
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def headers(notes: Notes) -> dict[str, str]:
    out = {"x-tiergate-tier": notes.tier}
    if notes.deployment is not None:
        out["x-tiergate-model"] = notes.model or ""
        out["x-tiergate-deployment"] = notes.deployment
    if notes.score is not None:
        out["x-tiergate-score"] = f"{notes.score:.4f}"
    if notes.max_tokens_note is not None:
        out["x-tiergate-max-tokens"] = f"{notes.max_tokens};{notes.max_tokens_note}"
    if notes.sticky_held:
        out["x-tiergate-sticky"] = "held"
    elif notes.prefix_held:  # held by other conversations' warm prefix, not by this one's history
        out["x-tiergate-sticky"] = "prefix"
    if notes.budget_downgraded:
        out["x-tiergate-budget"] = "downgraded"
    if notes.cache_hit:
        out["x-tiergate-cache"] = "hit"
    if notes.cost_nanos is not None:
        out["x-tiergate-cost-usd"] = format_usd(notes.cost_nanos)
    if notes.attempts > 1:
        out["x-tiergate-attempts"] = str(notes.attempts)
    if notes.context is not None:
        out["x-tiergate-context"] = notes.context
    return out


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=_JSON, headers=headers)


def respond(result: Served | Streaming) -> Response:
    if isinstance(result, Served):
        return json_response(result.body, headers=headers(result.notes))
    return SSEResponse(result, {**headers(result.notes), **_SSE_HEADERS})


def respond_as(result: Served | Streaming, body: Any, events: AsyncIterator[bytes] | None) -> Response:
    """The result in another wire format: ``body`` (a served answer translated) or ``events`` (the stream
    framed), with the same ``x-tiergate-*`` headers as OpenAI's wire."""
    if isinstance(result, Served):
        return json_response(body, headers=headers(result.notes))
    return SSEResponse(result, {**headers(result.notes), **_SSE_HEADERS}, events)

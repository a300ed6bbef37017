"""HTTP endpoints of the OpenAI-compatible API. Parsing, auth and response shaping only; the decisions are the
gateway's."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from pipeline.errors import TiergateError
from proxy.auth import authenticate
from proxy.body import check_chat, check_completion, check_embeddings, header_tags, parse_json
from proxy.gateway import CallContext, Completed, Streamed
from proxy.runtime import Runtime
from proxy.streaming import SSEResponse
from router.policy import Policy

_JSON = "application/json"


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=_JSON, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes without reading them all into memory first."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TiergateError("invalid_request.body_too_large",
                            f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TiergateError("invalid_request.body_too_large", f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def call_context(request: Request) -> CallContext:
    rt = runtime(request)
    policy = rt.store.policy  # one policy object for the whole request, even across a reload
    principal = authenticate(policy, request.headers)
    return CallContext(
        request_id=request.scope["state"]["request_id"],
        principal=principal,
        policy=policy,
        tier_header=request.headers.get("x-tiergate-tier"),
        header_tags=header_tags(request.headers.items()),
    )


async def _json_body(request: Request, ctx: CallContext) -> dict[str, Any]:
    return parse_json(await read_body(request, ctx.policy.config.server.max_body_bytes))


def _respond(result: Completed | Streamed) -> Response:
    if isinstance(result, Completed):
        return json_response(result.body, headers=result.headers)
    headers = {**result.headers, "cache-control": "no-cache", "x-accel-buffering": "no"}
    return SSEResponse(result, headers)


async def chat_completions(request: Request) -> Response:
    ctx = call_context(request)
    body = await _json_body(request, ctx)
    check_chat(body)
    return _respond(await runtime(request).gateway.chat(ctx, body))


async def completions(request: Request) -> Response:
    ctx = call_context(request)
    body = await _json_body(request, ctx)
    check_completion(body)
    return _respond(await runtime(request).gateway.completions(ctx, body))


async def embeddings(request: Request) -> Response:
    ctx = call_context(request)
    body = await _json_body(request, ctx)
    check_embeddings(body)
    return _respond(await runtime(request).gateway.embeddings(ctx, body))


async def route(request: Request) -> Response:
    """Dry run: the score, tier, model and estimated cost a chat request would get. No upstream call."""
    ctx = call_context(request)
    body = await _json_body(request, ctx)
    check_chat(body)
    return json_response(runtime(request).gateway.preview(ctx, body))


async def models(request: Request) -> Response:
    ctx = call_context(request)
    # The names decide() accepts from this key, from the policy's one compiled table.
    names = ctx.policy.allowed_models(ctx.principal.team)
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "tiergate"} for name in names]
    return json_response({"object": "list", "data": data})


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


def _is_admin(request: Request, policy: Policy) -> bool:
    try:
        return authenticate(policy, request.headers).admin
    except TiergateError:
        return False


async def readyz(request: Request) -> Response:
    """Ready, and which config (its sha256): enough for a probe or a deploy check. Where the file lives, why a
    reload was rejected and what waits for a restart are for an admin key only."""
    rt = runtime(request)
    policy = rt.store.policy
    config: dict[str, Any] = {"sha256": policy.sha256}
    payload: dict[str, Any] = {"status": "ready", "config": config}
    if _is_admin(request, policy):
        config.update(path=policy.source, loaded_at=policy.loaded_at, last_reload_error=rt.store.last_error,
                      pending_restart=rt.store.pending_restart, warnings=list(policy.warnings))
        payload["classifier"] = rt.scorer.model_id
    return json_response(payload)

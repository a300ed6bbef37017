"""HTTP endpoints of the OpenAI-compatible API, the ingress adapter for OpenAI's wire format: parse and check the
body, authenticate the key, collect the client's tags -> ``pipeline.request.Request`` -> the pipeline -> render."""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

from metering.money import format_usd
from pipeline.errors import TiergateError
from pipeline.request import Api
from pipeline.request import Request as PipelineRequest
from proxy.auth import authenticate
from proxy.body import check_chat, check_completion, check_embeddings, header_tags, parse_json
from proxy.model_list import anthropic_model, anthropic_page, openai_model
from proxy.render import json_response, respond
from proxy.runtime import Runtime
from router.policy import Policy, Principal
from upstream.base import Endpoint


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def authenticated(request: Request) -> Principal:
    return authenticate(runtime(request).store.policy, request.headers)


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


MAX_SESSION_CHARS = 256  # a session id is hashed into a key; a longer header is no more of an identity


def session_of(headers: Mapping[str, str], policy: Policy, principal: Principal) -> str | None:
    """The client's conversation key: the first of the team's ``context.session_headers`` it sent (Claude Code's
    ``x-claude-code-session-id`` by default). None for an admin key, which the pipeline refuses anyway."""
    team = policy.teams.get(principal.team) if principal.team is not None else None
    if team is None:
        return None
    for name in team.settings.context.session_headers:
        value = headers.get(name)
        if value and value.strip():
            return value.strip()[:MAX_SESSION_CHARS]
    return None


# The wire format each OpenAI endpoint speaks (the ledger's ``api`` column).
_API_OF_KIND: dict[Endpoint, Api] = {"chat/completions": "chat", "completions": "completions",
                                     "embeddings": "embeddings"}


async def _parse(request: Request, kind: Endpoint) -> PipelineRequest:
    """The canonical request: the key's principal, the checked body and the client's tags (``metadata``, then
    ``x-tiergate-tag-*`` headers, which win)."""
    policy = runtime(request).store.policy  # one policy object for the whole request, even across a reload
    principal = authenticate(policy, request.headers)
    tags = header_tags(request.headers.items())
    body = parse_json(await read_body(request, policy.config.server.max_body_bytes))
    if kind == "chat/completions":
        check_chat(body)
    elif kind == "completions":
        check_completion(body)
    else:
        check_embeddings(body)
    metadata = body.get("metadata")
    if metadata:  # checked by check_*: string values, sane sizes
        tags = {**metadata, **tags}
    # The pipeline asks once its answer is in hand: no watcher task per request, and a client that hung up is
    # recorded as 499 with what the call cost.
    return PipelineRequest(kind=kind, api=_API_OF_KIND[kind], body=body, principal=principal, policy=policy,
                           request_id=request.scope["state"]["request_id"], tags=tags,
                           tier_header=request.headers.get("x-tiergate-tier"),
                           client_gone=lambda: hung_up(request.receive),
                           session=session_of(request.headers, policy, principal))


async def hung_up(receive: Receive) -> bool:
    """Whether the ASGI server already has ``http.disconnect`` for us, without waiting for it.

    Once the body is read, the next message can only be the disconnect: ``receive()`` either returns it at once or
    suspends until it comes. Stepping the coroutine to its first suspension and closing it there answers in ~2 us;
    Starlette's ``request.is_disconnected()`` does the same under an anyio cancel scope in ~65 us (measured), a few
    percent of a request's CPU.
    """
    step = receive()
    if not isinstance(step, Coroutine):  # a server whose receive is not a coroutine: assume still connected
        return False
    try:
        step.send(None)
    except StopIteration as done:
        return bool(done.value.get("type") == "http.disconnect")
    step.close()  # suspended: nothing has arrived, so the client is still there
    return False


async def chat_completions(request: Request) -> Response:
    return respond(await runtime(request).pipeline.run(await _parse(request, "chat/completions")))


async def completions(request: Request) -> Response:
    return respond(await runtime(request).pipeline.run(await _parse(request, "completions")))


async def embeddings(request: Request) -> Response:
    return respond(await runtime(request).pipeline.run(await _parse(request, "embeddings")))


async def route(request: Request) -> Response:
    """Dry run: the score, tier, model and estimated cost a chat request would get. No upstream call."""
    preview = runtime(request).pipeline.preview(await _parse(request, "chat/completions"))
    decision, dep = preview.decision, preview.decision.plan[0]
    return json_response({
        "score": decision.score,
        "tier": decision.tier.name,
        "model": dep.upstream_model,
        "deployment": dep.id,
        "fallbacks": [d.id for d in decision.plan[1:]],
        "reasons": list(decision.reasons),
        "prompt_tokens": preview.features.prompt_tokens,
        "max_tokens": decision.max_tokens,
        "estimated_max_cost_usd": format_usd(decision.reserve_nanos),
        "classifier": preview.classifier,
    })


def _allowed_models(request: Request) -> tuple[str, ...]:
    """The names this key may send (chat and embeddings), from the policy's one compiled table."""
    policy = runtime(request).store.policy
    return policy.allowed_models(authenticate(policy, request.headers).team)


async def models(request: Request) -> Response:
    """OpenAI's list, or Anthropic's page of ``ModelInfo`` when ``anthropic-version`` is sent (the app renders
    errors in Anthropic's shape then too)."""
    if "anthropic-version" in request.headers:
        return json_response(anthropic_page(_allowed_models(request), request.query_params))
    return json_response({"object": "list", "data": [openai_model(name) for name in _allowed_models(request)]})


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


async def model(request: Request) -> Response:
    """One model this key may use, in OpenAI's shape or Anthropic's (``anthropic-version``); any other name is a
    404 ``model_not_found``, like the name sent to a model endpoint."""
    name = request.path_params["model_id"]
    policy = runtime(request).store.policy
    team = authenticate(policy, request.headers).team
    # A name the team's model_aliases map to a model it may use is one it may send (Claude Code retrieves its own)
    resolved = policy.teams[team].aliases.resolve(name) if team is not None else name
    if resolved not in policy.allowed_models(team):
        raise TiergateError("routing_refused.model_not_found", f"model {name!r} does not exist or this key may not "
                            "use it; GET /v1/models lists the models it may use", param="model")
    return json_response(anthropic_model(name) if "anthropic-version" in request.headers else openai_model(name))

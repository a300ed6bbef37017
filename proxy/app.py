"""The ASGI application: routes, error rendering, lifespan. The request's steps live in ``pipeline``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from pipeline.errors import TiergateError, error_object
from proxy import (
    alerts_api,
    budgets_api,
    dashboard,
    endpoints,
    experiments_api,
    feedback_api,
    forecast_api,
    messages_api,
    metrics,
    models_api,
    plan_api,
    responses_api,
    spend,
    upstreams_api,
)
from proxy.errors import error_body, headers_of, wire
from proxy.evidence_api import evidence as routing_evidence
from proxy.request_id import RequestIdMiddleware
from proxy.runtime import Runtime


async def _tiergate_error(request: Request, exc: Exception) -> Response:
    """The error in the wire format of the route it came from: Anthropic's under /v1/messages (and /v1/models when
    an Anthropic client asks), else OpenAI's."""
    assert isinstance(exc, TiergateError)
    path = request.url.path
    if path.startswith("/v1/messages") or (path.startswith("/v1/models") and "anthropic-version" in request.headers):
        return messages_api.error_response(exc)
    return Response(error_body(exc), status_code=wire(exc).status, media_type="application/json",
                    headers=headers_of(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, a method the route lacks), in the same shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return await _tiergate_error(request, TiergateError("not_found", f"no such endpoint: {request.method} "
                                                                         f"{request.url.path}"))
    if exc.status_code == 405:
        return await _tiergate_error(request, TiergateError("method_not_allowed", str(exc.detail)))
    # Any other refusal is Starlette's choice of status, not ours: passed on in the same shape.
    body = orjson.dumps(error_object(str(exc.detail), "invalid_request_error", None, None))
    return Response(body, status_code=exc.status_code, media_type="application/json")


def create_app(config_path: str, after_start: Callable[[], None] | None = None) -> Starlette:
    """``after_start`` runs once the runtime has started, before the server accepts connections (the server
    process releases start-up memory there)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = await Runtime.start(config_path)
        if after_start is not None:
            after_start()
        alerts_api.connect(runtime)
        app.state.runtime = runtime
        try:
            yield
        finally:
            await runtime.stop()

    # Starlette, not FastAPI: the gateway parses and validates bodies itself (no dependency injection, body models or
    # OpenAPI on the hot path), so FastAPI's layer only cost ~12 MB per worker, ~0.3 s of start-up and a middleware
    # hop per request (benchmarks/proxy/RESULTS.md).
    # RequestIdMiddleware sits inside Starlette's ServerErrorMiddleware and answers every unhandled exception
    # itself: that layer would re-raise it to uvicorn, which logs it again and drops the keep-alive connection.
    app = Starlette(lifespan=lifespan, middleware=[Middleware(RequestIdMiddleware)])
    for path, handler, methods in (
        ("/v1/chat/completions", endpoints.chat_completions, ["POST"]),
        ("/v1/completions", endpoints.completions, ["POST"]),
        ("/v1/embeddings", endpoints.embeddings, ["POST"]),
        ("/v1/responses", responses_api.create, ["POST"]),
        ("/v1/responses/{response_id}", responses_api.retrieve, ["GET"]),
        ("/v1/responses/{response_id}", responses_api.delete, ["DELETE"]),
        ("/v1/responses/{response_id}/input_items", responses_api.input_items, ["GET"]),
        ("/v1/messages", messages_api.create, ["POST"]),
        ("/v1/messages/count_tokens", messages_api.count_tokens, ["POST"]),
        ("/v1/route", endpoints.route, ["POST"]),
        ("/v1/models", endpoints.models, ["GET"]),
        ("/v1/models/{model_id:path}", endpoints.model, ["GET"]),
        ("/v1/spend/report", spend.report, ["GET"]),
        ("/v1/spend/teams", spend.teams, ["GET"]),
        ("/v1/spend/percentiles", spend.percentiles, ["GET"]),
        ("/v1/spend/requests", spend.expensive_requests, ["GET"]),
        ("/v1/spend/timeseries", spend.timeseries, ["GET"]),
        ("/v1/spend/forecast", forecast_api.forecast, ["GET"]),
        ("/v1/spend/plan", plan_api.create_plan, ["POST"]),
        ("/v1/spend/experiments", experiments_api.experiments, ["GET"]),
        ("/v1/spend/budgets", budgets_api.budgets, ["GET"]),
        ("/v1/upstreams", upstreams_api.upstreams, ["GET"]),
        ("/v1/spend/value", feedback_api.value, ["GET"]),
        ("/v1/feedback", feedback_api.give, ["POST"]),
        ("/v1/alerts", alerts_api.alerts, ["GET"]),
        ("/v1/routing/evidence", routing_evidence, ["GET"]),
        ("/v1/routing/models/{team}", models_api.models, ["GET"]),
        ("/v1/routing/models/{team}/retrain", models_api.retrain, ["POST"]),
        ("/v1/routing/models/{team}/rollback", models_api.rollback, ["POST"]),
        ("/dashboard", dashboard.page, ["GET"]),
        ("/dashboard/{name}", dashboard.asset, ["GET"]),
        ("/metrics", metrics.endpoint, ["GET"]),
        ("/healthz", endpoints.healthz, ["GET"]),
        ("/readyz", endpoints.readyz, ["GET"]),
    ):
        app.router.add_route(path, handler, methods=methods)
    app.add_exception_handler(TiergateError, _tiergate_error)
    app.add_exception_handler(HTTPException, _http_error)
    return app


"""The ASGI application: routes, error mapping, lifespan. Business logic lives in the gateway."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from proxy import dashboard, endpoints, metrics, spend
from proxy.errors import ApiError
from proxy.request_id import RequestIdMiddleware
from proxy.runtime import Runtime


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return Response(exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    not_found = exc.status_code == 404
    message = f"no such endpoint: {request.method} {request.url.path}" if not_found else str(exc.detail)
    return await _api_error(request, ApiError(exc.status_code, message, code="not_found" if not_found else None))


def create_app(config_path: str) -> Starlette:

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = await Runtime.start(config_path)
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
        ("/v1/route", endpoints.route, ["POST"]),
        ("/v1/models", endpoints.models, ["GET"]),
        ("/v1/spend/report", spend.report, ["GET"]),
        ("/v1/spend/teams", spend.teams, ["GET"]),
        ("/v1/spend/percentiles", spend.percentiles, ["GET"]),
        ("/v1/spend/requests", spend.expensive_requests, ["GET"]),
        ("/v1/spend/timeseries", spend.timeseries, ["GET"]),
        ("/dashboard", dashboard.page, ["GET"]),
        ("/dashboard/{name}", dashboard.asset, ["GET"]),
        ("/metrics", metrics.endpoint, ["GET"]),
        ("/healthz", endpoints.healthz, ["GET"]),
        ("/readyz", endpoints.readyz, ["GET"]),
    ):
        app.router.add_route(path, handler, methods=methods)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    return app


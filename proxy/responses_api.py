"""HTTP endpoints of OpenAI's Responses API (``/v1/responses``): the thin layer over ``wire.responses``.

Being built this session (issue 14); until then every route answers a clear 404."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from pipeline.errors import TiergateError


async def create(request: Request) -> Response:
    raise TiergateError("not_found", "no such endpoint: POST /v1/responses")


async def retrieve(request: Request) -> Response:
    raise TiergateError("not_found", "no such endpoint: GET /v1/responses/{id}")


async def delete(request: Request) -> Response:
    raise TiergateError("not_found", "no such endpoint: DELETE /v1/responses/{id}")


async def input_items(request: Request) -> Response:
    raise TiergateError("not_found", "no such endpoint: GET /v1/responses/{id}/input_items")

"""HTTP endpoints of Anthropic's Messages API (``/v1/messages``, Claude Code's): the thin layer over
``wire.messages``, and the error body in Anthropic's shape for every route under it.

Being built this session (issue 14); until then every route answers a clear 404."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from pipeline.errors import TiergateError
from proxy.errors import headers_of, wire

# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors).
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


def error_response(error: TiergateError) -> Response:
    """``error`` as Anthropic's SDKs expect it: ``{"type": "error", "error": {"type", "message"}}``, same status and
    headers as on OpenAI's wire."""
    status = wire(error).status
    kind = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": error.message}})
    return Response(body, status_code=status, media_type="application/json", headers=headers_of(error))


async def create(request: Request) -> Response:
    raise TiergateError("not_found", "no such endpoint: POST /v1/messages")


async def count_tokens(request: Request) -> Response:
    raise TiergateError("not_found", "no such endpoint: POST /v1/messages/count_tokens")

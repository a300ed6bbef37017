"""Raw ASGI middleware at the edge of every request: the request id, and the last line of error handling.

Every response carries ``x-request-id``, the client's own when it sent a sane one. An exception no handler turned
into a response ends here: it is logged once, with that request id, and answered with an OpenAI-shaped 500 naming
the id. It is not re-raised: Starlette's ServerErrorMiddleware and uvicorn would each log it again, and uvicorn
closes a keep-alive connection after an exception, so the client's next request on it would fail. A client that
hangs up while its request is being read is not an error of ours and is logged at INFO.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which wraps every response body in extra tasks and costs
measurable latency per request. Installed inside Starlette's ServerErrorMiddleware (``proxy.app``), so that layer
never sees an exception.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect

from pipeline.errors import TiergateError
from proxy.errors import error_body, status_of

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("tiergate.app")

_SANE = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    return "req_" + os.urandom(12).hex()


def internal_error(request_id: str) -> TiergateError:
    return TiergateError("internal_error",
                         f"internal error in tiergate; its log has the details under request id {request_id}")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = incoming.decode() if incoming is not None and _SANE.match(incoming) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        # Anthropic's API names it request-id: the anthropic SDK puts that on its responses and exceptions.
        headers = ([(b"x-request-id", request_id.encode()), (b"request-id", request_id.encode())]
                   if scope["path"].startswith("/v1/messages") else [(b"x-request-id", request_id.encode())])
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            log.info("client disconnected before its request was read request_id=%s %s %s", request_id,
                     scope["method"], scope["path"])
        except Exception as exc:
            log.error("unhandled error request_id=%s %s %s", request_id, scope["method"], scope["path"], exc_info=exc)
            if started:
                # Part of the answer is out: returning unfinished makes uvicorn close the connection, the only way
                # to tell the client the body is cut short.
                return
            body = error_body(internal_error(request_id))
            await send_with_id({"type": "http.response.start", "status": status_of("internal_error"),
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
            await send_with_id({"type": "http.response.body", "body": body})

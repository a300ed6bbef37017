"""The one interface every upstream (HTTP, litellm, in-process simulator) implements.

The proxy speaks OpenAI's wire format end to end; an upstream takes an OpenAI-shaped request body and returns an
OpenAI-shaped response (or the stream of chunk payloads). Failures are raised as ``UpstreamError`` with a
``kind`` the fallback logic can act on, never as transport-specific exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

# The upstream path a call goes to. "responses" and "messages" carry OpenAI Responses and Anthropic Messages bodies
# to deployments that speak those formats natively (``DeploymentSpec.native_apis``); every other call is OpenAI-shaped.
Endpoint = Literal["chat/completions", "completions", "embeddings", "responses", "messages"]

# rate_limit: 429; server: 5xx; timeout: no answer in time; connection: could not connect / reset;
# client: any other 4xx (the request itself is wrong: passed back to the client, never retried).
ErrorKind = Literal["rate_limit", "server", "timeout", "connection", "client"]


class UpstreamError(Exception):
    """An upstream call failed; ``kind`` decides whether a fallback may retry it."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.body = body

    @property
    def retryable(self) -> bool:
        return self.kind != "client"


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """A complete (non-streamed) answer: the parsed JSON body and the upstream's status."""

    body: dict[str, Any]
    status: int = 200


class Upstream(Protocol):
    """One deployment's client. Instances are long-lived and pooled; ``close`` releases connections."""

    async def send(self, endpoint: Endpoint, body: dict[str, Any], headers: Mapping[str, str] | None = None
                   ) -> UpstreamReply:
        """Send a non-streamed request. Raises ``UpstreamError``. ``headers``: the client's own, passed on with a
        native call (anthropic-version, anthropic-beta); they win over the client's defaults."""
        ...

    def stream(self, endpoint: Endpoint, body: dict[str, Any], headers: Mapping[str, str] | None = None
               ) -> AsyncIterator[bytes]:
        """Stream a request (``body["stream"]`` is true): yields each SSE event's JSON payload as bytes, in order,
        without the ``data: `` prefix and without the final ``[DONE]``. Raises ``UpstreamError`` before the first
        payload if the call fails; a failure mid-stream also raises ``UpstreamError``. Closing the iterator
        (``aclose``) cancels the upstream call."""
        ...

    async def close(self) -> None:
        ...

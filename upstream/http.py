"""Pooled direct HTTP client for OpenAI-wire upstreams (OpenAI, vLLM, any OpenAI-compatible server), and for the
native passthrough of Responses (``{api_base}/responses``) and Anthropic Messages (``{api_base}/v1/messages``).

aiohttp with keep-alive beats litellm's generic path by milliseconds per call (see benchmarks/upstream/), and
the proxy already speaks OpenAI's format, so no translation is needed on this path. A Messages call authenticates
Anthropic's way (``x-api-key``, ``anthropic-version``); the client's own anthropic-version / anthropic-beta headers
win. Native streams name their events (``event:`` lines), and their payloads carry the name too, so only ``data:``
lines are read, as for chat.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from upstream.base import Endpoint, UpstreamError, UpstreamReply

_DONE = b"[DONE]"
# How many times a call goes out again after its pooled connection turned out closed by the upstream before any
# answer (each stale connection is dropped by aiohttp, so a few idle ones in the pool cost a try each).
STALE_RETRIES = 2
ANTHROPIC_VERSION = "2023-06-01"  # sent when the client named none: the version every current model accepts


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error_body(raw: bytes) -> tuple[str, dict[str, Any] | None]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:300].decode("utf-8", "replace"), None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or body["error"]), body
    return raw[:300].decode("utf-8", "replace"), body if isinstance(body, dict) else None


def _status_error(status: int, raw: bytes, headers: Any, where: str) -> UpstreamError:
    message, body = _error_body(raw)
    if status == 429:
        return UpstreamError("rate_limit", f"{where} rate-limited: {message}", status=429,
                             retry_after=_retry_after(headers), body=body)
    if status >= 500:
        return UpstreamError("server", f"{where} failed with {status}: {message}", status=status, body=body)
    return UpstreamError("client", message, status=status, body=body)


class HttpUpstream:
    """One OpenAI-compatible base URL; shares the pool's session (connections are per host)."""

    def __init__(
        self, session: aiohttp.ClientSession, api_base: str, api_key: str | None, timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        self._session = session
        self._base = api_base.rstrip("/")
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._anthropic = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            self._anthropic["x-api-key"] = api_key
        # Anthropic's path carries the version: a base URL given with it (OpenAI's habit) is not doubled.
        self._messages_url = self._base + ("/messages" if self._base.endswith("/v1") else "/v1/messages")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=timeout_s)
        self._where = f"upstream {self._base}"

    async def _post(self, url: str, data: bytes, headers: Mapping[str, str],
                    timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        """The response (status and headers read) of a POST, sent again on a fresh connection when the pooled one
        was closed by the upstream before it answered.

        Why: uvicorn-based servers (vLLM, the simulator) close idle keep-alive connections after 5 s while the
        pool keeps them for 60 s; a request written as the server closes the connection comes back as a disconnect
        with no response at all, so the upstream never answered it: a failed call only because of our pool.
        Only a disconnect before any response is retried; refusals, resets mid-answer and timeouts are not."""
        for _ in range(STALE_RETRIES):
            try:
                return await self._session.post(url, data=data, headers=headers, timeout=timeout)
            except aiohttp.ServerDisconnectedError:
                continue
        return await self._session.post(url, data=data, headers=headers, timeout=timeout)

    def _target(self, endpoint: Endpoint, extra: Mapping[str, str] | None) -> tuple[str, Mapping[str, str]]:
        """URL and headers of a call; ``extra`` (the client's forwarded headers) win over the defaults."""
        if endpoint == "messages":
            return self._messages_url, {**self._anthropic, **extra} if extra else self._anthropic
        return f"{self._base}/{endpoint}", {**self._headers, **extra} if extra else self._headers

    async def send(self, endpoint: Endpoint, body: dict[str, Any], headers: Mapping[str, str] | None = None
                   ) -> UpstreamReply:
        url, sent = self._target(endpoint, headers)
        try:
            async with await self._post(url, orjson.dumps(body), sent, self._timeout) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise _status_error(resp.status, raw, resp.headers, self._where)
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise UpstreamError("timeout", f"{self._where} did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("connection", f"{self._where} unreachable: {type(exc).__name__}") from exc
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError("server", f"{self._where} sent a body that is not JSON") from exc
        if not isinstance(answer, dict):  # a 200 that no caller can serve: a failed attempt, so the next one runs
            raise UpstreamError("server", f"{self._where} sent a JSON {type(answer).__name__}, not an object")
        return UpstreamReply(body=answer)

    async def stream(self, endpoint: Endpoint, body: dict[str, Any], headers: Mapping[str, str] | None = None
                     ) -> AsyncIterator[bytes]:
        url, sent = self._target(endpoint, headers)
        try:
            async with await self._post(url, orjson.dumps(body), sent, self._stream_timeout) as resp:
                if resp.status != 200:
                    raise _status_error(resp.status, await resp.read(), resp.headers, self._where)
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue  # SSE comments, event names, blank separators
                    payload = line[5:].strip()
                    if payload == _DONE:
                        return
                    if payload:
                        yield payload
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise UpstreamError("timeout", f"{self._where} stalled mid-stream or did not answer") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("connection", f"{self._where} connection failed: {type(exc).__name__}") from exc

    async def close(self) -> None:
        """Connections belong to the pool's shared session."""

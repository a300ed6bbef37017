"""litellm-backed upstream for providers whose wire format is not OpenAI's (Anthropic, Bedrock, Gemini, ...).

litellm is imported on first use only: importing it costs ~150 MB and ~2.8 s, which a proxy serving only
OpenAI-compatible deployments should never pay.

A call in a provider's own format (an Anthropic deployment sent a Messages request untranslated) goes to ``native``,
the pooled direct client (``upstream.http``), not through litellm's passthrough: on the upstream benchmark the
pooled aiohttp path costs a fraction of litellm's per call (benchmarks/upstream/RESULTS.md), and a passthrough
needs none of litellm's translation.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from upstream.base import Endpoint, Upstream, UpstreamError, UpstreamReply


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.drop_params = True  # a param one provider lacks must not fail the request
    litellm.telemetry = False
    return litellm


def _translate(exc: Exception) -> UpstreamError:
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    message = str(getattr(exc, "message", "") or exc)[:500]
    if name == "RateLimitError" or status == 429:
        return UpstreamError("rate_limit", message, status=429)
    if name in {"Timeout", "APITimeoutError"} or status == 408:
        return UpstreamError("timeout", message)
    if name == "APIConnectionError":
        return UpstreamError("connection", message)
    if isinstance(status, int) and 400 <= status < 500:
        return UpstreamError("client", message, status=status)
    return UpstreamError("server", message, status=status if isinstance(status, int) else 502)


_NATIVE: frozenset[str] = frozenset({"responses", "messages"})


class LiteLLMUpstream:
    def __init__(self, model: str, api_base: str | None, api_key: str | None, timeout_s: float,
                 native: Upstream | None = None) -> None:
        """``native``: the client for calls in the provider's own format, which litellm never sees."""
        self._model = model
        self._native = native
        self._native_model = model.partition("/")[2] or model  # "anthropic/claude-x" -> the provider's own name
        self._extra: dict[str, Any] = {"timeout": timeout_s, "num_retries": 0}
        if api_base:
            self._extra["api_base"] = api_base
        if api_key:
            self._extra["api_key"] = api_key

    def _call(self, endpoint: Endpoint, body: dict[str, Any]) -> Any:
        llm = _litellm()
        params = {k: v for k, v in body.items() if k != "model"}
        if endpoint == "chat/completions":
            return llm.acompletion(model=self._model, **params, **self._extra)
        if endpoint == "completions":
            return llm.atext_completion(model=self._model, **params, **self._extra)
        return llm.aembedding(model=self._model, **params, **self._extra)

    def _passthrough(self, endpoint: Endpoint, body: dict[str, Any]) -> tuple[Upstream, dict[str, Any]]:
        if self._native is None:
            raise UpstreamError("client", f"{self._model} is not configured for native '{endpoint}' calls", status=400)
        return self._native, {**body, "model": self._native_model}

    async def send(self, endpoint: Endpoint, body: dict[str, Any], headers: Mapping[str, str] | None = None
                   ) -> UpstreamReply:
        if endpoint in _NATIVE:
            native, body = self._passthrough(endpoint, body)
            return await native.send(endpoint, body, headers)
        try:
            response = await self._call(endpoint, body)
        except Exception as exc:  # litellm raises its own hierarchy; translate all of it
            raise _translate(exc) from exc
        return UpstreamReply(body=response.model_dump(exclude_none=False))

    async def stream(self, endpoint: Endpoint, body: dict[str, Any], headers: Mapping[str, str] | None = None
                     ) -> AsyncIterator[bytes]:
        if endpoint in _NATIVE:
            native, body = self._passthrough(endpoint, body)
            async for payload in native.stream(endpoint, body, headers):
                yield payload
            return
        try:
            response = await self._call(endpoint, body)
            async for chunk in response:
                yield orjson.dumps(chunk.model_dump(exclude_none=True))
        except UpstreamError:
            raise
        except Exception as exc:
            raise _translate(exc) from exc

    async def close(self) -> None:
        """litellm manages its own clients."""

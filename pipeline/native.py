"""Native passthrough: a Responses or Messages request sent untranslated to a deployment that speaks its format
(``DeploymentSpec.native_apis``), so nothing a translation to chat would lose (hosted tools, ``cache_control``,
reasoning items) is lost. The rest of the plan gets the canonical chat body, so a fallback can cross formats; the
answer says which it is (``Served.api``), and it is metered from its own format's usage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from metering.usage import Usage, estimate_usage, normalize_usage
from pipeline.request import Request
from router.decide import Decision
from router.policy import DeploymentSpec
from upstream.dispatch import Outgoing

# Where each format keeps its output limit; the team's max_tokens policy is applied there.
_LIMIT_FIELD = {"responses": "max_output_tokens", "messages": "max_tokens"}


@dataclass(frozen=True, slots=True)
class Native:
    """The client's own call, as every deployment that speaks its format receives it."""

    api: str  # "responses" or "messages": also the upstream Endpoint
    body: dict[str, Any]
    headers: Mapping[str, str] | None

    def outgoing(self, dep: DeploymentSpec) -> Outgoing:
        return self.api, {**self.body, "model": dep.upstream_model}, self.headers  # type: ignore[return-value]


def native_call(request: Request, decision: Decision) -> Native | None:
    """The native call for ``request``, after the policy's edits; None when the client spoke an OpenAI format."""
    if request.native is None or request.api not in _LIMIT_FIELD:
        return None
    body = dict(request.native)
    if decision.max_tokens is not None and decision.max_tokens_note is not None:  # the team's default or cap
        body[_LIMIT_FIELD[request.api]] = decision.max_tokens
    if request.api == "responses":
        body["store"] = False  # the gateway keeps the conversation (its response store), never the provider
    return Native(request.api, body, request.forward_headers)


def answered_natively(request: Request, dep: DeploymentSpec) -> bool:
    """Whether ``dep`` was sent the client's own body (and so answered in the client's format)."""
    return request.native is not None and request.api in dep.native_apis


def native_text(body: dict[str, Any], api: str) -> str:
    """What the model generated in a native answer, as text (estimates when usage is missing, shadow sampling)."""
    parts: list[str] = []
    if api == "responses":
        for item in body.get("output") or ():
            if not isinstance(item, dict):
                continue
            if item.get("type") == "function_call":
                parts += (str(item.get("name") or ""), str(item.get("arguments") or ""))
            for part in item.get("content") or ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    parts.append(part["text"])
        return "".join(parts)
    for block in body.get("content") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "tool_use":
            parts += (str(block.get("name") or ""), orjson.dumps(block.get("input") or {}).decode())
        elif isinstance(block.get("text") or block.get("thinking"), str):
            parts.append(block.get("text") or block["thinking"])
    return "".join(parts)


def native_usage(raw: Any, api: str) -> Usage:
    """A native usage block normalised: Anthropic's ``input_tokens`` excludes cache reads and writes, the
    Responses API's includes its cached tokens (``metering.usage`` knows both; the format settles which)."""
    return normalize_usage(raw, "anthropic" if api == "messages" else "openai")


def native_answer_usage(body: dict[str, Any], api: str, dep: DeploymentSpec, prompt_tokens: int) -> Usage:
    """The usage of a native answer, or an estimate from its text when the provider sent none."""
    raw = body.get("usage")
    if isinstance(raw, dict) and raw:
        return native_usage(raw, api)
    return estimate_usage(prompt_tokens, native_text(body, api), dep.upstream_model)

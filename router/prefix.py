"""Prefix-cache planning: keep the static prefix recognisable so providers (and our own replicas) reuse it.

Two keys: the *prefix key* (system messages + tools: what every turn of a conversation and every request of an
app resends) drives provider caching hints and deployment affinity; the *conversation key* (prefix + first user
message) lets a conversation stay on the tier whose provider cache is warm.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from router.context import SUMMARY_PREFIX
from router.policy import DeploymentSpec

# Providers whose litellm translation honours Anthropic-style cache_control markers.
_EXPLICIT_CACHING = ("anthropic/", "bedrock/", "vertex_ai/", "gemini/")


def _head(messages: list[Any]) -> list[Any]:
    head = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer"):
            break
        head.append(message)
    return head


def prefix_key(body: dict[str, Any]) -> str | None:
    """Hash of the static prefix (leading system messages and tools), or None if the request has none."""
    head = _head(body.get("messages") or [])
    tools = body.get("tools")
    if not head and not tools:
        return None
    return hashlib.sha256(orjson.dumps([head, tools])).hexdigest()[:32]


def conversation_key(team: str, body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    first_user = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
    return hashlib.sha256(orjson.dumps([team, _head(messages), first_user, body.get("tools")])).hexdigest()[:32]


def _mark_last_head_message(messages: list[Any]) -> list[Any]:
    """Put the cache breakpoint after the client's own system prompt: a rolling summary that follows it changes
    whenever turns age out, and a breakpoint on it would move the cached prefix every time."""
    head = [m for m in _head(messages) if not str(m.get("content") or "").startswith(SUMMARY_PREFIX)]
    if not head:
        return messages
    index = messages.index(head[-1])
    last = dict(head[-1])
    content = last.get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else [dict(p) for p in content or ()]
    if not parts:
        return messages
    parts[-1]["cache_control"] = {"type": "ephemeral"}
    last["content"] = parts
    return [*messages[:index], last, *messages[index + 1 :]]


def provider_caching(body: dict[str, Any], dep: DeploymentSpec, team: str, key: str | None) -> dict[str, Any]:
    """The body as this deployment should see it: OpenAI gets ``prompt_cache_key`` (routes equal prefixes to the
    same cache shard), Anthropic-style providers get a ``cache_control`` breakpoint after the static prefix."""
    if key is None:
        return body
    if dep.provider in ("openai", "simulated"):
        if "prompt_cache_key" in body:
            return body
        return {**body, "prompt_cache_key": f"tg-{team}-{key[:16]}"}
    if dep.model.startswith(_EXPLICIT_CACHING) and isinstance(body.get("messages"), list):
        return {**body, "messages": _mark_last_head_message(body["messages"])}
    return body

"""Prefix-cache planning: keep the static prefix recognisable so providers (and our own replicas) reuse it.

Two keys: the *prefix key* (system messages + tools: what every turn of a conversation and every request of an
app resends) drives provider caching hints and deployment affinity; the *conversation key* (prefix + first user
message, or the client's session id when it sends one) lets a conversation stay on the tier whose provider cache is
warm. The prefix key stays content-based even with a session: sessions that share a system prompt share a cache.

Neither key reads a leading attribution line (``ATTRIBUTION_PREFIX``): Claude Code opens its system prompt with one
whose hash changes on every request, and keying on it would scatter one app's identical prompts across deployments.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from router.context import SUMMARY_PREFIX
from router.policy import DeploymentSpec

# Providers whose litellm translation honours Anthropic-style cache_control markers.
_EXPLICIT_CACHING = ("anthropic/", "bedrock/", "vertex_ai/", "gemini/")


# Claude Code's billing line (``x-anthropic-billing-header: cc_version=2.1.37.0d9; cc_entrypoint=cli;
# cch=fa690;``), system block 0 of every request since 2.1.36: addressed to Anthropic's billing, and its ``cch``
# differs per request.
ATTRIBUTION_PREFIX = "x-anthropic-billing-header:"


def without_attribution(text: str) -> str:
    """``text`` without a leading attribution line (all of it when that line is all there is)."""
    if not text.startswith(ATTRIBUTION_PREFIX):
        return text
    return text.partition("\n")[2].lstrip("\n")


def _keyed(head: list[Any]) -> list[Any]:
    """The head as the keys see it: the first system message without its attribution line, if it has one."""
    if not head:
        return head
    first = head[0]
    content = first.get("content")
    if isinstance(content, str):
        if not content.startswith(ATTRIBUTION_PREFIX):
            return head
        return [{**first, "content": without_attribution(content)}, *head[1:]]
    if isinstance(content, list) and content and isinstance(content[0], dict):
        text = content[0].get("text")
        if isinstance(text, str) and text.startswith(ATTRIBUTION_PREFIX):
            rest = without_attribution(text)
            parts = ([{**content[0], "text": rest}] if rest else []) + content[1:]
            return [{**first, "content": parts}, *head[1:]]
    return head


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
    return hashlib.sha256(orjson.dumps([_keyed(head), tools])).hexdigest()[:32]


def conversation_key(team: str, body: dict[str, Any], session: str | None = None) -> str:
    """The conversation's identity: the client's ``session`` when it names one, with its system prompt (Claude
    Code's side calls in a session, titles and summaries, have prompts of their own and are other conversations),
    else the team, static prefix, tools and first user message."""
    messages = body.get("messages") or []
    if session is not None:
        return hashlib.sha256(orjson.dumps([team, "session", session, _keyed(_head(messages))])).hexdigest()[:32]
    first_user = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
    return hashlib.sha256(orjson.dumps([team, _keyed(_head(messages)), first_user, body.get("tools")])).hexdigest()[:32]


def _mark_last_head_message(messages: list[Any]) -> list[Any]:
    """Put the cache breakpoint after the client's own system prompt: a rolling summary that follows it changes
    whenever turns age out, and a breakpoint on it would move the cached prefix every time."""
    head = [m for m in _head(messages) if not str(m.get("content") or "").startswith(SUMMARY_PREFIX)]
    if not head:
        return messages
    index = messages.index(head[-1])
    last = dict(head[-1])
    content = last.get("content")
    parts: list[dict[str, Any]] = ([{"type": "text", "text": content}] if isinstance(content, str)
                                   else [dict(p) for p in content or ()])
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

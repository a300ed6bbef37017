"""Deterministic generation: the one implementation of "what the simulated model answers", for both transports.

A reply is a pure function of the request (model, messages or prompt, tools, response format, seed, n): the same
body always gets the same text, so tests can compare runs and benchmarks do the same work each time. Only the id,
``created`` and ``cached_tokens`` (which depends on what the prefix cache saw before) vary.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import random
import time
from array import array
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from simulator.judge import judge_reply
from simulator.prefix_cache import MIN_CACHED_TOKENS, PrefixCache
from simulator.structured import json_object_reply, object_for, value_for
from simulator.text import seed_for, words
from text.messages import message_text
from text.tokens import count_messages, count_text, encoding_for

_ALNUM_ONLY = bytes.maketrans(b"+/", b"xZ")  # base64 minus its two symbols looks like OpenAI's ids
_FRAME = 0xFFFF0000  # ids above any real vocabulary stand in for OpenAI's chat framing tokens in cached prefixes
_ROLE_IDS = {"system": 1, "developer": 2, "user": 3, "assistant": 4, "tool": 5, "function": 6}
_LEGACY_DEFAULT_MAX_TOKENS = 16  # what OpenAI's /v1/completions uses when max_tokens is absent


@dataclass(slots=True)
class Choice:
    """One generated choice: text pieces to stream (or a tool call) and the tokens it cost."""

    pieces: list[str]
    finish_reason: str
    completion_tokens: int
    tool_call: dict[str, Any] | None = None


@dataclass(slots=True)
class Generation:
    """Everything both transports need to render a response or its stream of chunks."""

    kind: Literal["chat", "text"]
    id: str
    created: int
    model: str
    fingerprint: str
    choices: list[Choice]
    usage: dict[str, Any]
    include_usage: bool = False
    # The wire format to render it in ("chat" also covers legacy text completions) and, for the native formats,
    # what their rendering needs besides the chat answer (``simulator.responses`` / ``simulator.messages``).
    api: Literal["chat", "responses", "messages"] = "chat"
    native: dict[str, Any] | None = None


def is_reasoning_model(model: str) -> bool:
    name = model.rsplit("/", 1)[-1].lower()
    return name.startswith(("o1", "o3", "o4")) or "reason" in name


def _token_pieces(text: str, model: str, cap: int | None) -> tuple[list[str], int, int]:
    """Split ``text`` at token boundaries (keeping multi-byte characters whole), truncated to ``cap`` tokens.

    Returns the pieces, the tokens kept and the tokens the whole text has."""
    enc = encoding_for(model)
    tokens = enc.encode(text, disallowed_special=())
    total = len(tokens)
    if cap is not None:
        tokens = tokens[:cap]
    pieces: list[str] = []
    pending = b""
    for raw in enc.decode_tokens_bytes(tokens):
        pending += raw
        try:
            pieces.append(pending.decode("utf-8"))
            pending = b""
        except UnicodeDecodeError:
            continue
    return pieces, len(tokens), total


def _apply_stop(pieces: list[str], stop: Any) -> list[str] | None:
    """The pieces before the earliest stop sequence, or None when no stop sequence occurs."""
    stops = [stop] if isinstance(stop, str) else [s for s in stop or () if s]
    if not stops:
        return None
    text = "".join(pieces)
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut < 0:
        return None
    kept: list[str] = []
    length = 0
    for piece in pieces:
        if length + len(piece) >= cut:
            if cut > length:
                kept.append(piece[: cut - length])
            break
        kept.append(piece)
        length += len(piece)
    return kept


def _usage(prompt: int, completion: int, cached: int, reasoning: int, chat: bool) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    if chat:
        usage["prompt_tokens_details"] = {"cached_tokens": cached, "audio_tokens": 0}
        usage["completion_tokens_details"] = {
            "reasoning_tokens": reasoning, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
        }
    return usage


class Engine:
    """Generates chat and legacy completions; owns the prefix cache so cached_tokens reflect this instance's past."""

    def __init__(self, cache: PrefixCache | None = None) -> None:
        self.cache = cache if cache is not None else PrefixCache()
        self._counter = itertools.count()

    def _id(self, prefix: str, seed: int) -> str:
        """29 letters and digits like OpenAI's ids: unique per call, reproducible for the same call sequence."""
        digest = hashlib.blake2b(f"{prefix}{seed}:{next(self._counter)}".encode(), digest_size=22).digest()
        return prefix + base64.b64encode(digest)[:29].translate(_ALNUM_ONLY).decode()

    def _prompt_stream(self, messages: list[dict[str, Any]], tools_text: str, model: str) -> array:
        """The prompt as token ids in OpenAI's order (tools, then framed messages); its length is prompt_tokens."""
        enc = encoding_for(model)
        tokens = array("I", enc.encode(tools_text, disallowed_special=()) if tools_text else ())
        for message in messages:
            if not isinstance(message, dict):
                continue
            tokens.extend((_FRAME, _FRAME + _ROLE_IDS.get(message.get("role"), 0), _FRAME))
            tokens.extend(enc.encode(message_text(message), disallowed_special=()))
            if message.get("name"):
                tokens.append(_FRAME + 64)
        # The reply primer equals the next assistant turn's framing, so a follow-up turn extends this prefix.
        tokens.extend((_FRAME, _FRAME + _ROLE_IDS["assistant"], _FRAME))
        return tokens

    def chat(self, body: dict[str, Any], auto_cache: bool = True) -> Generation:
        """Answer a validated chat completion request. ``auto_cache`` False: the provider caches only where asked
        (Anthropic), so the OpenAI-style automatic prefix cache is neither read nor written."""
        model: str = body["model"]
        messages: list[dict[str, Any]] = body["messages"]
        tools = [t for t in body.get("tools") or () if isinstance(t, dict)]
        tools_text = orjson.dumps(tools).decode() if tools else ""
        prompt_tokens = count_messages(messages, model) + count_text(tools_text, model)
        seed = seed_for(model, orjson.dumps(messages, option=orjson.OPT_SORT_KEYS).decode(), tools_text,
                        orjson.dumps(body.get("response_format")).decode(), body.get("seed"))
        cached = 0
        if auto_cache and prompt_tokens >= MIN_CACHED_TOKENS:
            namespace = f"{model}\x00{body.get('prompt_cache_key') or ''}"
            cached = self.cache.lookup_and_store(namespace, self._prompt_stream(messages, tools_text, model))
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        tool = self._chosen_tool(body, tools, messages, seed)
        reasoning_total = 0
        choices: list[Choice] = []
        for index in range(body.get("n") or 1):
            rng = random.Random(seed_for(seed, index))
            reasoning = 0
            if is_reasoning_model(model):
                # Capped at half the budget so a small max_tokens still shows some visible answer.
                reasoning = rng.randint(1, 7) * 64 if cap is None else min(rng.randint(1, 7) * 64, cap // 2)
            visible_cap = None if cap is None else cap - reasoning
            verdict = judge_reply(messages) if tool is None else None
            if tool is not None:
                choice = self._tool_choice(tool, model, rng)
            elif verdict is not None:  # judge mode (simulator.judge)
                pieces, tokens, total = _token_pieces(verdict, model, visible_cap)
                choice = Choice(pieces, "length" if tokens < total else "stop", tokens)
            else:
                choice = self._content_choice(body, model, rng, visible_cap)
            choice.completion_tokens += reasoning
            reasoning_total += reasoning
            choices.append(choice)
        completion = sum(c.completion_tokens for c in choices)
        return Generation(
            "chat", self._id("chatcmpl-", seed), int(time.time()), model, "fp_" + format(seed_for(model), "x")[:10],
            choices, _usage(prompt_tokens, completion, cached, reasoning_total, chat=True),
            include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        )

    @staticmethod
    def _chosen_tool(body: dict[str, Any], tools: list[dict[str, Any]], messages: list[dict[str, Any]],
                     seed: int) -> dict[str, Any] | None:
        """The function the model calls, following OpenAI's tool_choice semantics; None to answer in text."""
        choice = body.get("tool_choice")
        functions = [t["function"] for t in tools if isinstance(t.get("function"), dict)]
        if not functions or choice == "none":
            return None
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            return next((f for f in functions if f.get("name") == name), None)
        # With "auto", call a tool only when the user just spoke: after a tool result the model answers in text.
        # System and developer messages are instructions, not turns (Claude Code lists its agents in one after
        # the user's message).
        last = next((m for m in reversed(messages) if m.get("role") not in ("system", "developer")), messages[-1])
        if choice == "required" or last.get("role") == "user":
            return functions[seed % len(functions)]
        return None

    def _tool_choice(self, function: dict[str, Any], model: str, rng: random.Random) -> Choice:
        arguments = orjson.dumps(object_for(function.get("parameters") or {}, model, rng)).decode()
        pieces, tokens, _ = _token_pieces(arguments, model, None)
        call = {"id": "call_" + format(rng.getrandbits(96), "024x"), "type": "function",
                "function": {"name": function["name"], "arguments": arguments}}
        return Choice(pieces, "tool_calls", tokens + count_text(function["name"], model), call)

    @staticmethod
    def _content_choice(body: dict[str, Any], model: str, rng: random.Random, cap: int | None) -> Choice:
        fmt = body.get("response_format") or {}
        if fmt.get("type") in ("json_object", "json_schema"):
            schema = (fmt.get("json_schema") or {}).get("schema")
            value = value_for(schema, model, rng) if schema else json_object_reply(model, rng)
            text = orjson.dumps(value).decode()
            pieces, tokens, total = _token_pieces(text, model, cap)
            return Choice(pieces, "length" if tokens < total else "stop", tokens)
        target = 20 + int(180 * rng.random() ** 2)  # skewed towards short answers, like chat traffic
        count = target if cap is None else min(target, cap)
        pieces = words(model, rng.getrandbits(64), count)
        stopped = _apply_stop(pieces, body.get("stop"))
        if stopped is not None:
            return Choice(stopped, "stop", len(stopped))
        return Choice(pieces, "length" if count < target else "stop", count)

    def completion(self, body: dict[str, Any]) -> Generation:
        """Answer a validated legacy completion request: n choices per prompt, OpenAI's default max_tokens of 16."""
        model: str = body["model"]
        prompt = body["prompt"]
        prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
        cap = body.get("max_tokens") or _LEGACY_DEFAULT_MAX_TOKENS
        prompt_tokens = 0
        choices: list[Choice] = []
        for p in prompts:
            prompt_tokens += count_text(p, model) if isinstance(p, str) else len(p)
            seed = seed_for(model, p, body.get("seed"))
            for index in range(body.get("n") or 1):
                rng = random.Random(seed_for(seed, index))
                target = 20 + int(180 * rng.random() ** 2)
                pieces = words(model, rng.getrandbits(64), min(target, cap))
                stopped = _apply_stop(pieces, body.get("stop"))
                if stopped is not None:
                    choices.append(Choice(stopped, "stop", len(stopped)))
                else:
                    choices.append(Choice(pieces, "length" if cap < target else "stop", len(pieces)))
        completion = sum(c.completion_tokens for c in choices)
        return Generation(
            "text", self._id("cmpl-", seed_for(model, prompt_tokens)), int(time.time()), model,
            "fp_" + format(seed_for(model), "x")[:10], choices, _usage(prompt_tokens, completion, 0, 0, chat=False),
            include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        )

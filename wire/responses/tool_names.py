"""The one mapping between a Responses tool's identity and the chat function that stands for it.

Chat completions know a flat list of functions named ``[a-zA-Z0-9_-]{1,64}``; the Responses API also has custom
(freeform) tools and ``namespace`` tools grouping functions under a shared name (Codex CLI sends its sub-agent tools
as ``{"type": "namespace", "name": "multi_agent_v1", "tools": [...]}``, and their calls come back as function_call
items carrying ``namespace``). A translated request flattens each namespaced tool to ``<namespace>__<name>``; one
that does not fit chat's name rule (too long, other characters, or a name a plain tool or an earlier namespaced one
already has) gets a readable prefix and a hash of the pair instead. The same table turns the model's calls back
into items with ``name`` and ``namespace`` (plain and streamed answers) and turns the client's replayed calls into
chat's names, so a conversation survives any number of turns.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# Chat completions' rule for a function's name (OpenAI refuses any other; vLLM and litellm follow it).
_CHAT_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_NOT_NAME_CHAR = re.compile(r"[^a-zA-Z0-9_-]")
_SEPARATOR = "__"
_HASH_HEX = 10  # 40 bits: two tools of one request colliding is out of reach; a collision is refused anyway

Key = tuple[str | None, str]  # (namespace, name); namespace None for a top-level tool


class ToolNameClash(ValueError):
    """A tool declared twice, or two tools of one request that would be the same chat function."""


def _flat(namespace: str, name: str, taken: set[str]) -> str:
    joined = f"{namespace}{_SEPARATOR}{name}"
    if _CHAT_NAME.fullmatch(joined) and joined not in taken:
        return joined
    digest = hashlib.blake2b(f"{namespace}\0{name}".encode(), digest_size=_HASH_HEX // 2).hexdigest()
    return f"{_NOT_NAME_CHAR.sub('_', joined)[:64 - _HASH_HEX - 1]}_{digest}"


@dataclass(frozen=True, slots=True)
class ToolNames:
    """One request's table: chat function name <-> (namespace, name), and which chat names are custom tools."""

    to_chat: dict[Key, str] = field(default_factory=dict)
    from_chat: dict[str, Key] = field(default_factory=dict)
    custom: frozenset[str] = frozenset()  # chat names whose calls are custom_tool_call items

    @classmethod
    def of(cls, tools: Iterable[tuple[str | None, str, bool]]) -> ToolNames:
        """From the request's tools as (namespace, name, is_custom), top-level ones first or not: a plain tool
        keeps its own name, so a namespaced one never takes it. Raises ``ToolNameClash``."""
        entries = list(tools)
        taken = {name for namespace, name, _ in entries if namespace is None}
        to_chat: dict[Key, str] = {}
        from_chat: dict[str, Key] = {}
        custom: set[str] = set()
        for namespace, name, is_custom in entries:
            key = (namespace, name)
            if key in to_chat:
                raise ToolNameClash(f"tool {_shown(key)} is declared twice")
            # ("a__b", "c") and ("a", "b__c") join alike: the second gets the hashed name
            chat = name if namespace is None else _flat(namespace, name, taken)
            taken.add(chat)
            if chat in from_chat:
                raise ToolNameClash(f"tools {_shown(from_chat[chat])} and {_shown(key)} are both the chat "
                                    f"function {chat!r}")
            to_chat[key] = chat
            from_chat[chat] = key
            if is_custom:
                custom.add(chat)
        return cls(to_chat, from_chat, frozenset(custom))

    def chat(self, name: str, namespace: str | None = None) -> str:
        """The chat function name of a tool (or of a call the client replays: its tool may no longer be offered,
        then the name is derived the same way)."""
        known = self.to_chat.get((namespace, name))
        if known is not None:
            return known
        if namespace is None:
            return name
        return _flat(namespace, name, {chat for chat, key in self.from_chat.items() if key[0] is None})

    def responses(self, chat_name: str) -> Key:
        """(namespace, name) of the tool a chat call names; a name the table does not know is a top-level one."""
        return self.from_chat.get(chat_name, (None, chat_name))

    def is_custom(self, chat_name: str) -> bool:
        return chat_name in self.custom


def _shown(key: Key) -> str:
    namespace, name = key
    return repr(name) if namespace is None else f"{namespace!r}.{name!r}"


NO_TOOLS = ToolNames()

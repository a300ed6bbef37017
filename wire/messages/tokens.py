"""``POST /v1/messages/count_tokens``: the prompt's size before sending it.

The count is tiktoken's (o200k_base, ``text.tokens``) over the canonical chat body, the number tiergate itself routes
and reserves budget by; it is not Anthropic's tokenizer, which is not published, so a Claude model's own count
differs (typically by a few percent, more for code). Server tools and Claude Code's attribution line, which the
translation leaves out, are not counted.
"""

from __future__ import annotations

from typing import Any

from router.features import chat_features
from wire.messages.request import to_chat


def count_tokens(body: dict[str, Any]) -> int:
    """Input tokens of a count_tokens body (a Messages request without ``max_tokens``); raises like ``to_chat``."""
    return prompt_tokens(to_chat(body, count_only=True))


def prompt_tokens(chat: dict[str, Any]) -> int:
    """The pipeline's own count of a canonical body's prompt (``router.features``)."""
    return chat_features(chat).prompt_tokens

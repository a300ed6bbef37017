"""Token counting with tiktoken, offline.

tiktoken downloads its BPE files on first use; this machine class has no internet at run time, so ``configure``
points ``TIKTOKEN_CACHE_DIR`` at the copies litellm ships (found without importing litellm, which costs ~150 MB and
~2.8 s). Entry points call it at start-up; importing this module changes nothing. Counting follows OpenAI's chat
accounting closely enough for estimates and trimming decisions; billed numbers always come from the provider's
``usage`` when it sends one.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any, Iterable

import tiktoken

from text.messages import message_text

# The model whose encoding (o200k_base) counts tokens when the caller names none: what tiergate assumes of a
# request before a deployment is chosen, and for providers that publish no tiktoken encoding.
DEFAULT_MODEL = "gpt-4o"

# Per-message framing overhead of OpenAI's chat format (<|start|>role\n ... <|end|>).
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_REPLY = 3

_configured = False


def _litellm_tokenizer_dir() -> Path | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "litellm_core_utils" / "tokenizers"
    return path if path.is_dir() else None


def configure() -> None:
    """Point tiktoken at litellm's bundled encodings unless ``TIKTOKEN_CACHE_DIR`` is already set (an operator's
    own choice wins). Idempotent; tiktoken reads the variable when it first loads an encoding, so this must run
    before the first count. The first count runs it too, for callers that are not an entry point (a library
    user, a test): a forgotten call costs nothing but the download tiktoken would attempt offline."""
    global _configured
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        directory = _litellm_tokenizer_dir()
        if directory is not None:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
    _configured = True


@functools.lru_cache(maxsize=64)
def encoding_for(model: str) -> tiktoken.Encoding:
    """The tiktoken encoding for a model name; o200k_base for unknown or non-OpenAI models.

    Provider prefixes (``openai/gpt-4o``) are stripped. Anthropic and others do not publish a tiktoken encoding;
    o200k_base is a reasonable estimator for them.
    """
    if not _configured:
        configure()
    name = model.rsplit("/", 1)[-1]
    try:
        enc = tiktoken.encoding_for_model(name)
    except KeyError:
        enc = tiktoken.get_encoding("o200k_base")
    # The Rust core holds its own copy of the BPE ranks; the Python dict kept beside it (~30 MB for o200k) is
    # only read when pickling an Encoding, which we never do. Dropping it keeps a worker's RSS in budget.
    if getattr(enc, "_mergeable_ranks", None):
        enc._mergeable_ranks = {}
    return enc


# System prompts and tool schemas repeat on every request of an app; BPE on them dominated the proxy's CPU
# profile. Hashing a string is far cheaper than encoding it, so repeated texts are counted once. The cache keeps
# (hash, length) -> count, never the text: holding up to 8k prompts of up to 64 KB would let a worker's memory grow
# with traffic. A 64-bit hash collision between two texts of equal length is too unlikely to matter for an estimate.
_CACHEABLE_CHARS = 64 * 1024
_CACHE_ENTRIES = 8192
_counts: dict[tuple[int, int, str], int] = {}


def count_text(text: str, model: str = DEFAULT_MODEL) -> int:
    """Tokens in a plain string."""
    if not text:
        return 0
    enc = encoding_for(model)
    if len(text) > _CACHEABLE_CHARS:
        return len(enc.encode(text, disallowed_special=()))
    key = (hash(text), len(text), enc.name)
    count = _counts.get(key)
    if count is None:
        count = len(enc.encode(text, disallowed_special=()))
        if len(_counts) >= _CACHE_ENTRIES:
            del _counts[next(iter(_counts))]  # oldest first: dicts keep insertion order
        _counts[key] = count
    return count


def count_messages(messages: Iterable[dict[str, Any]], model: str = DEFAULT_MODEL) -> int:
    """Prompt tokens of a chat request, the way OpenAI counts them (content plus per-message framing)."""
    total = _TOKENS_PER_REPLY
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += _TOKENS_PER_MESSAGE
        total += count_text(message_text(message), model)
        if message.get("name"):
            total += 1
    return total

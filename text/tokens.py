"""Token counting with tiktoken, offline.

tiktoken downloads its BPE files on first use; a proxy has no internet at run time, so tiergate ships the files of
the encodings it counts with (``SHIPPED_ENCODINGS``, in ``text/encodings/`` under tiktoken's own cache file names,
copied from litellm by ``scripts/vendor_litellm_data.py``) and ``configure`` points ``TIKTOKEN_CACHE_DIR`` there.
A model whose encoding is not shipped (the retired GPT-3 models' r50k_base) is counted with o200k_base rather
than attempt a download. Entry points call ``configure`` at start-up; importing this module changes nothing.
Counting follows OpenAI's chat accounting closely enough for estimates and trimming decisions; billed numbers
always come from the provider's ``usage`` when it sends one.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path

import tiktoken

from text.messages import message_text

# The model whose encoding (o200k_base) counts tokens when the caller names none: what tiergate assumes of a
# request before a deployment is chosen, and for providers that publish no tiktoken encoding.
DEFAULT_MODEL = "gpt-4o"
_DEFAULT_ENCODING = "o200k_base"

# Encodings whose BPE files ship in ENCODINGS_DIR (o200k_harmony is o200k_base's file with more special tokens).
SHIPPED_ENCODINGS = ("o200k_base", "cl100k_base", "p50k_base")
_LOADABLE = frozenset(SHIPPED_ENCODINGS) | {"o200k_harmony"}
ENCODINGS_DIR = Path(__file__).resolve().parent / "encodings"

# Per-message framing overhead of OpenAI's chat format (<|start|>role\n ... <|end|>).
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_REPLY = 3

_configured = False


def configure() -> None:
    """Point tiktoken at the shipped encodings unless ``TIKTOKEN_CACHE_DIR`` is already set (an operator's own
    choice wins). Idempotent; tiktoken reads the variable when it first loads an encoding, so this must run
    before the first count. The first count runs it too, for callers that are not an entry point (a library
    user, a test): a forgotten call costs nothing but the download tiktoken would attempt offline."""
    global _configured
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ENCODINGS_DIR))
    _configured = True


@functools.lru_cache(maxsize=64)
def encoding_for(model: str) -> tiktoken.Encoding:
    """The tiktoken encoding for a model name; o200k_base for unknown or non-OpenAI models.

    Provider prefixes (``openai/gpt-4o``) are stripped. Anthropic and others do not publish a tiktoken encoding;
    o200k_base is a reasonable estimator for them, and for models whose encoding is not shipped.
    """
    if not _configured:
        configure()
    try:
        name = tiktoken.encoding_name_for_model(model.rsplit("/", 1)[-1])
    except KeyError:
        name = _DEFAULT_ENCODING
    enc = tiktoken.get_encoding(name if name in _LOADABLE else _DEFAULT_ENCODING)
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


def count_messages(messages: Iterable[object], model: str = DEFAULT_MODEL) -> int:
    """Prompt tokens of a chat request, the way OpenAI counts them (content plus per-message framing). A client's
    JSON may hold anything: entries that are not objects are skipped."""
    total = _TOKENS_PER_REPLY
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += _TOKENS_PER_MESSAGE
        total += count_text(message_text(message), model)
        if message.get("name"):
            total += 1
    return total

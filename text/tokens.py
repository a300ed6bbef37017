"""Token counting with tiktoken, offline.

tiktoken downloads its BPE files on first use; a proxy has no internet at run time, so tiergate ships the files of
the encodings it counts with (``SHIPPED_ENCODINGS``, in ``text/encodings/`` under tiktoken's own cache file names,
copied from litellm by ``scripts/vendor_litellm_data.py``) and ``configure`` points ``TIKTOKEN_CACHE_DIR`` there.
The files are read and checked as tiktoken would but parsed here, in about half the CPU of tiktoken's loader
(every worker and test process loads o200k_base at start).
A model whose encoding is not shipped (the retired GPT-3 models' r50k_base) is counted with o200k_base rather
than attempt a download. Entry points call ``configure`` at start-up; importing this module changes nothing.
Counting follows OpenAI's chat accounting closely enough for estimates and trimming decisions; billed numbers
always come from the provider's ``usage`` when it sends one.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import importlib.util
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import tiktoken
import tiktoken.load
import tiktoken.registry

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
    enc = _shipped_encoding(name if name in _LOADABLE else _DEFAULT_ENCODING)
    # The Rust core holds its own copy of the BPE ranks; the Python dict kept beside it (~30 MB for o200k) is
    # only read when pickling an Encoding, which we never do. Dropping it keeps a worker's RSS in budget.
    if getattr(enc, "_mergeable_ranks", None):
        enc._mergeable_ranks = {}
    return enc


# One load per encoding per process, even when two threads ask for it at once (tiktoken's get_encoding locks too).
_loading = threading.Lock()


def _shipped_encoding(name: str) -> tiktoken.Encoding:
    """``tiktoken.get_encoding(name)``: the same file, constructor and checks, with a faster parse of the file.
    The result is kept in tiktoken's own registry, as ``get_encoding`` does: code that asks tiktoken for the
    encoding by name (the simulator does) shares it, and an encoding tiktoken already loaded is used as it is."""
    with _loading:
        enc = tiktoken.registry.ENCODINGS.get(name)
        if enc is None:
            enc = tiktoken.Encoding(**_openai_constructors()[name]())
            tiktoken.registry.ENCODINGS[name] = enc
    return enc


@functools.cache
def _openai_constructors() -> dict[str, Callable[[], dict[str, Any]]]:
    """tiktoken's own constructors of OpenAI's encodings, so the name, pattern, special tokens, vocabulary size,
    file URL and sha256 stay tiktoken's. They run in a private copy of their module whose ``load_tiktoken_bpe``
    is ``_load_bpe_ranks``: patching tiktoken's module would change every other caller of it as well."""
    spec = importlib.util.find_spec("tiktoken_ext.openai_public")
    assert spec is not None and spec.loader is not None  # installed with tiktoken
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    vars(module)["load_tiktoken_bpe"] = _load_bpe_ranks
    constructors: dict[str, Callable[[], dict[str, Any]]] = module.ENCODING_CONSTRUCTORS
    return constructors


def _load_bpe_ranks(blobpath: str, expected_hash: str) -> dict[bytes, int]:
    """``tiktoken.load.load_tiktoken_bpe`` without its per-line Python loop (most of its ~0.4 s CPU for o200k_base).

    Exact because the file is verified first: a file with the expected sha256 is OpenAI's, one ``<base64 token>
    <rank>`` pair a line, so splitting it whole pairs the same fields as tiktoken's per-line split, and
    ``base64.b64decode`` of bytes is ``binascii.a2b_base64``. Every constructor we run passes a hash; were one to
    stop, the missing argument fails the load rather than reading an unverified file."""
    fields = _read_verified(blobpath, expected_hash).split()
    return dict(zip(map(binascii.a2b_base64, fields[::2]), map(int, fields[1::2])))


def _read_verified(blobpath: str, expected_hash: str) -> bytes:
    """The BPE file tiktoken would read for ``blobpath``: ``TIKTOKEN_CACHE_DIR`` under tiktoken's cache name (the
    sha1 of the URL), checked against the sha256 tiktoken expects. A copy that fails the check is refused, not
    deleted as tiktoken would (the shipped directory is part of the install). A file not in the cache (an
    operator's own directory without it, or caching disabled) is tiktoken's to fetch, as before."""
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR", "")
    path = os.path.join(cache_dir, hashlib.sha1(blobpath.encode()).hexdigest())
    if not cache_dir or not os.path.exists(path):
        return tiktoken.load.read_file_cached(blobpath, expected_hash)
    with open(path, "rb") as file:
        data = file.read()
    if hashlib.sha256(data).hexdigest() != expected_hash:
        raise ValueError(f"tiktoken file {path} (cached {blobpath}) does not match its sha256 {expected_hash}: "
                         "the copy is corrupted; restore it, or remove it to have tiktoken download it again")
    return data


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

"""Deterministic pseudo-English whose token count is known without tokenizing it.

Every word comes from a vocabulary filtered so that the word is exactly one token in the model's encoding with and
without a leading space, lower-case and capitalised, and "," and "." are single tokens too. Because tiktoken's
pre-tokenizer never merges across these boundaries, a reply of N pieces is exactly N tokens: ``max_tokens`` can be
honoured by slicing and stream chunks carry exact token counts, with no encoding on the hot path.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Iterator

import tiktoken

from text.tokens import encoding_for

_CANDIDATES = """
the of and to in is that for it as with was on be by this are from or at an not but have which all can has
were one their there been more when will would about what they also into some other time than its only new
used these two may first any after most such where should over between each many well then those very through
during both same under while being could must just like make made because each before since much long part
system model data value request response token cost team user tier price cache model query answer result
service network server client record report budget limit policy route level small large fast slow simple
clear short brief whole early later final total daily weekly market order price plan rule test check input
output stream batch signal factor method reason point case group area work need note list step view state
world place house water light night money story power music family night paper point right study school
""".split()


def _stable_hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def vocabulary(model: str) -> tuple[str, ...]:
    """Words that tokenise to exactly one token in every position they can appear in, for ``model``'s encoding."""
    return _vocabulary(encoding_for(model).name)


@functools.lru_cache(maxsize=8)  # keyed by encoding, so any number of model names shares a handful of entries
def _vocabulary(encoding: str) -> tuple[str, ...]:
    enc = tiktoken.get_encoding(encoding)

    def single(text: str) -> bool:
        return len(enc.encode(text, disallowed_special=())) == 1

    words = dict.fromkeys(  # ordered de-duplication keeps the vocabulary stable across runs
        w for w in _CANDIDATES if all(single(v) for v in (w, " " + w, w.capitalize(), " " + w.capitalize()))
    )
    return tuple(words)


def seed_for(*parts: object) -> int:
    """A 64-bit seed from anything printable; ``hash()`` is salted per process, so it cannot be used here."""
    return _stable_hash("\x1f".join(map(str, parts)).encode("utf-8", "surrogatepass"))


@functools.lru_cache(maxsize=8)
def _forms(encoding: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Each vocabulary word mid-sentence, starting a sentence, and starting the reply: built once, not per word."""
    vocab = _vocabulary(encoding)
    return (tuple(" " + w for w in vocab), tuple(" " + w.capitalize() for w in vocab),
            tuple(w.capitalize() for w in vocab))


def words(model: str, seed: int, count: int) -> list[str]:
    """``count`` single-token pieces of sentence-shaped text (words, commas and full stops), deterministic in seed.

    Every request's reply is generated here, so it draws with bare ``random()`` calls: the server's per-request
    cost is mostly this loop."""
    spaced, sentence_start, reply_start = _forms(encoding_for(model).name)
    size = len(spaced)
    rand = random.Random(seed).random
    pieces = [reply_start[int(rand() * size)]] if count > 0 else []
    until_stop = 4 + int(rand() * 10)
    while len(pieces) < count:
        if until_stop <= 0:
            pieces.append(".")
            if len(pieces) < count:
                pieces.append(sentence_start[int(rand() * size)])
            until_stop = 4 + int(rand() * 10)
            continue
        if rand() < 0.07:
            pieces.append(",")
            if len(pieces) >= count:
                break
        pieces.append(spaced[int(rand() * size)])
        until_stop -= 1
    return pieces


def phrase(model: str, seed: int, count: int) -> str:
    """A short phrase for string values inside generated JSON (tool arguments, structured outputs)."""
    return "".join(words(model, seed, count)).rstrip(".,")


def groups(pieces: list[str]) -> Iterator[tuple[str, int]]:
    """A few tokens per chunk (1-4, in a fixed rhythm): fewer events than OpenAI's one per token, same shape."""
    i = step = 0
    while i < len(pieces):
        size = 1 + (step * 3) % 4
        yield "".join(pieces[i : i + size]), len(pieces[i : i + size])
        i += size
        step += 1

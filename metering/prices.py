"""Per-token prices and model facts from litellm's price table, vendored in ``metering/data/``.

The table is litellm's own (MIT; ``metering/data/SOURCE.md`` says which version, ``scripts/vendor_litellm_data.py``
refreshes it), shipped with tiergate so the runtime install needs no litellm: litellm and its dependencies weigh
~300 MB and serve only deployments whose wire format is not OpenAI's (the ``providers`` extra).

Prices are kept as ``Decimal`` dollars per token, parsed from the JSON text (never through float), so a cost is
exact until the single rounding to integer nano-dollars in ``metering.usage``. YAML overrides are given per 1M
tokens, the unit provider price pages use.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).resolve().parent / "data" / "model_prices_and_context_window.json"
_MILLION = Decimal(1_000_000)

# Capability names used in policies, and the litellm table flag that implies each.
CAPABILITY_FLAGS: dict[str, str] = {
    "tools": "supports_function_calling",
    "json_schema": "supports_response_schema",
    "vision": "supports_vision",
    "reasoning": "supports_reasoning",
}


@dataclass(frozen=True, slots=True)
class Price:
    """Dollars per token. ``cached_input`` is the price of a cache read, ``cache_write`` of a cache write (Anthropic's
    5-minute one), ``cache_write_1h`` of a write kept an hour (Anthropic bills it at 2x input, not 1.25x)."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal

    @classmethod
    def per_million(
        cls, input: Decimal, output: Decimal, cached_input: Decimal | None = None, cache_write: Decimal | None = None,
        cache_write_1h: Decimal | None = None,
    ) -> Price:
        """Build from $ per 1M tokens; a missing cached price means no discount, a missing write price no surcharge
        (and a missing 1-hour write price the 5-minute one)."""
        inp = Decimal(input) / _MILLION
        write = inp if cache_write is None else Decimal(cache_write) / _MILLION
        return cls(
            input=inp,
            output=Decimal(output) / _MILLION,
            cached_input=inp if cached_input is None else Decimal(cached_input) / _MILLION,
            cache_write=write,
            cache_write_1h=write if cache_write_1h is None else Decimal(cache_write_1h) / _MILLION,
        )


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the price table knows about one model."""

    key: str
    price: Price
    context_window: int | None
    capabilities: frozenset[str]
    mode: str | None


# litellm's file is ``json.dump(..., indent=4)`` touched up by hand: a top-level key may sit at another
# indentation (one is at column 0) and a nested line at the top level's, but every top-level value is an object
# whose closing brace, alone among the braces, starts a line indented four spaces. So entries are found from those
# lines: each is followed by a comma and the next entry's plain key (no escape, no control character) and object,
# or by the table's closing brace at the end of the text. The empty last branch matches a closing line followed by
# anything else, which means another layout.
_WS = rb"[ \t\n\r]*"
_KEY = rb'"([^"\\\x00-\x1f]*)"' + _WS + rb":" + _WS + rb"(?=\{)"
_FIRST_ENTRY = re.compile(_WS + rb"\{" + _WS + _KEY)
_ENTRY_END = re.compile(rb"\n    \}(?:" + _WS + rb"," + _WS + _KEY + rb"|" + _WS + rb"\}" + _WS + rb"\Z|())")
_DECODER = json.JSONDecoder(parse_float=Decimal)


def _parse(data: bytes) -> dict[str, Any]:
    table: dict[str, Any] = json.loads(data.decode("utf-8"), parse_float=Decimal)  # the vendored file's shape
    return table


def _index(data: bytes) -> dict[str, tuple[int, int]] | None:
    """Each top-level key's value span in ``data`` (the later of a repeated key, as json.loads keeps), or None if the
    text is not laid out as described above."""
    entry = _FIRST_ENTRY.match(data)
    if entry is None:
        return None
    spans: dict[str, tuple[int, int]] = {}
    key, start = entry[1], entry.end()
    for end in _ENTRY_END.finditer(data, start):  # one pass without copying the text: every worker runs it
        if end[2] is not None:
            return None
        spans[key.decode("utf-8")] = (start, end.start() + 6)  # through the "\n    }"
        if end[1] is None:
            return spans
        key, start = end[1], end.end()
    return None


class _Table:
    """The vendored table, decoded one top-level entry at a time.

    Parsing all 3.4 MB with Decimal prices cost every process that compiles a policy (which names a handful of
    models) 50-80 ms of CPU, 0.3 s on a busy host; indexing the entries is one regex pass, and an entry is decoded
    when asked for. The layout the index relies on is checked as far as a pass that cheap can: where each entry's
    key and object start, that each closing line is followed by the next entry or ends the table, and that a decoded
    value fills its span exactly (else the whole text is parsed from then on). Text of another layout is parsed
    whole, as before. A complete check of the structure would cost as much as the parse. The one slip the cheap
    checks cannot see, an entry's closing brace elsewhere than at the start of a four-space-indented line (which
    hides the next entry), tests/test_prices.py rules out for the vendored file, every key, and
    tests/test_lean_runtime.py pins its bytes.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._spans = _index(data)
        self._parsed = None if self._spans is not None else _parse(data)

    def get(self, key: str) -> Any:
        """The key's value as ``json.loads(text, parse_float=Decimal).get(key)`` gives it."""
        if self._spans is not None:
            span = self._spans.get(key)
            if span is None:
                return None
            text = self._data[span[0]:span[1]].decode("utf-8")
            try:
                value, end = _DECODER.raw_decode(text)
            except json.JSONDecodeError:
                pass
            else:
                if end == len(text):
                    return value
            # The index missed the JSON structure here, so it may elsewhere too. (Parsed first: a concurrent get
            # sees either the index or the parse.)
            self._parsed = _parse(self._data)
            self._spans = None
        assert self._parsed is not None  # one of the two is always set
        return self._parsed.get(key)


@functools.lru_cache(maxsize=1)
def _table() -> _Table:
    return _Table(TABLE_PATH.read_bytes())


def raw_entry(key: str) -> Any:
    """The table's entry for a key exactly as litellm's JSON has it (numbers as Decimal), or None."""
    return _table().get(key)


def release_table() -> None:
    """Drop the table's text and index (~4 MB): a running proxy needs them only while compiling a policy."""
    _table.cache_clear()


def _dec(value: Any) -> Decimal | None:
    if value is None or isinstance(value, (dict, list, str, bool)):
        return None
    return Decimal(value)


def lookup(model: str) -> ModelFacts | None:
    """Facts for a litellm model string, or None if the table has no price for it.

    Tries the string as given, then without its provider prefix (``openai/gpt-4o`` -> ``gpt-4o``,
    ``simulated/gpt-4o-mini`` -> ``gpt-4o-mini``), because the table keys first-party models bare.
    """
    candidates = [model]
    if "/" in model:
        candidates.append(model.split("/", 1)[1])
    for key in candidates:
        entry = raw_entry(key)
        if not isinstance(entry, dict) or key == "sample_spec":
            continue
        inp, out = _dec(entry.get("input_cost_per_token")), _dec(entry.get("output_cost_per_token"))
        if out is None and entry.get("mode") == "embedding":
            out = Decimal(0)  # an embedding has no output: some rows (mistral-embed, azure/eu/...) omit its price
        if inp is None or out is None:
            continue
        cached = _dec(entry.get("cache_read_input_token_cost"))
        write = _dec(entry.get("cache_creation_input_token_cost"))
        write_1h = _dec(entry.get("cache_creation_input_token_cost_above_1hr"))
        price = Price(
            input=inp,
            output=out,
            cached_input=inp if cached is None else cached,
            cache_write=inp if write is None else write,
            cache_write_1h=(inp if write is None else write) if write_1h is None else write_1h,
        )
        window = entry.get("max_input_tokens")
        caps = frozenset(cap for cap, flag in CAPABILITY_FLAGS.items() if entry.get(flag) is True)
        return ModelFacts(
            key=key,
            price=price,
            context_window=int(window) if isinstance(window, (int, Decimal)) else None,
            capabilities=caps,
            mode=entry.get("mode") if isinstance(entry.get("mode"), str) else None,
        )
    return None


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


@functools.lru_cache(maxsize=1)
def load_table() -> dict[str, dict[str, Any]]:
    """The raw table, numbers as Decimal (parsed from text, not float)."""
    import json

    text = TABLE_PATH.read_text(encoding="utf-8")
    table: dict[str, dict[str, Any]] = json.loads(text, parse_float=Decimal)  # the vendored file's shape
    return table


def release_table() -> None:
    """Drop the parsed table (~6 MB): a running proxy needs it only while compiling a policy."""
    load_table.cache_clear()


def _dec(value: Any) -> Decimal | None:
    if value is None or isinstance(value, (dict, list, str, bool)):
        return None
    return Decimal(value)


@functools.lru_cache(maxsize=1024)
def lookup(model: str) -> ModelFacts | None:
    """Facts for a litellm model string, or None if the table has no price for it.

    Tries the string as given, then without its provider prefix (``openai/gpt-4o`` -> ``gpt-4o``,
    ``simulated/gpt-4o-mini`` -> ``gpt-4o-mini``), because the table keys first-party models bare.
    Remembered (the table is vendored: it cannot change while the process runs), so a reload that prices the same
    models does not parse the 3.4 MB table again after ``release_table``: ~45 ms of CPU per reload.
    """
    table = load_table()
    candidates = [model]
    if "/" in model:
        candidates.append(model.split("/", 1)[1])
    for key in candidates:
        entry = table.get(key)
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


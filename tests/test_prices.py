"""``metering.prices`` reads litellm's price table one entry at a time (an index of where its entries are) instead of
parsing all 3.4 MB: every entry of the vendored file equals the full parse's, ``lookup`` answers as it did over the
full parse, and a text of another layout, or one the index misreads, is parsed whole."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from metering import prices
from metering.prices import TABLE_PATH, lookup, raw_entry, release_table


def _full_parse(text: str) -> dict[str, Any]:
    table: dict[str, Any] = json.loads(text, parse_float=Decimal)
    return table


def _exact(value: Any) -> Any:
    """The value with each leaf's type and text: ``==`` alone calls 1, 1.0 and Decimal("1.00") equal."""
    if isinstance(value, dict):
        return {key: _exact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_exact(item) for item in value]
    return type(value).__name__, repr(value)


def _indexed() -> bool:
    """Whether the loaded table answers from its index (not from the full-parse fallback)."""
    return prices._table()._spans is not None


@pytest.fixture
def table_text(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """Makes the module read a table text of the test's making; the vendored one is back afterwards."""
    path = tmp_path / "model_prices_and_context_window.json"

    def use(text: str) -> None:
        path.write_bytes(text.encode("utf-8"))
        monkeypatch.setattr(prices, "TABLE_PATH", path)
        release_table()

    yield use
    release_table()


def test_every_entry_of_the_vendored_table_is_the_full_parses() -> None:
    full = _full_parse(TABLE_PATH.read_text(encoding="utf-8"))
    release_table()
    assert _indexed()
    assert set(prices._table()._spans or ()) == set(full)  # no key the index lacks or invents
    for key, entry in full.items():
        assert _exact(raw_entry(key)) == _exact(entry), key
    assert _indexed()  # no entry sent it to the fallback
    assert raw_entry("no-such-model") is None


def test_lookup_answers_as_over_the_full_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    full = _full_parse(TABLE_PATH.read_text(encoding="utf-8"))
    models = [*full, "openai/gpt-4o", "simulated/gpt-4o-mini", "anthropic/claude-3-5-sonnet-20240620",
              "mistral/mistral-embed", "openai/text-embedding-3-small", "azure/gpt-4o", "openrouter/openai/gpt-4o",
              "hosted_vllm/meta-llama/Llama-3.1-8B-Instruct", "sample_spec", "openai/sample_spec", "no-such-model",
              "openai/no-such-model", "", "/", "gpt-4o/"]
    release_table()
    fast = {model: lookup(model) for model in models}
    with monkeypatch.context() as patch:
        patch.setattr(prices, "raw_entry", full.get)
        assert fast == {model: lookup(model) for model in models}
    assert fast["openai/gpt-4o"] is not None and fast["openai/gpt-4o"].key == "gpt-4o"
    assert fast["no-such-model"] is None and fast["sample_spec"] is None


def _redumped(indent: int | str | None, separators: tuple[str, str] | None = None) -> str:
    return json.dumps(json.loads(TABLE_PATH.read_text(encoding="utf-8")), indent=indent, separators=separators)


@pytest.mark.parametrize("make", [
    pytest.param(lambda: _redumped(None, (",", ":")), id="compact"),
    pytest.param(lambda: _redumped(2), id="indent-2"),
    pytest.param(lambda: _redumped("\t"), id="tabs"),
    pytest.param(lambda: '{\n    "a": {\n        "x": 1.5\n    },\n    "b\\"c": {\n    }\n}\n', id="escaped-key"),
    pytest.param(lambda: '{\n    "a": {\n        "x": 1.5\n    },\n    "c": 2\n}\n', id="scalar-value"),
    pytest.param(lambda: '{\n    "a": {\n        "x": 1.5\n    },\n    "c": [\n    ]\n}\n', id="array-value"),
    pytest.param(lambda: '{\n    "a": {\n        "n": {\n    },\n        "x": 1.5\n    }\n}\n', id="nested-close-at-4"),
    pytest.param(lambda: '{\n    "a": {"x": 1.5},\n    "c": {"y": 2}\n}\n', id="entries-on-one-line"),
])
def test_a_text_of_another_layout_is_parsed_whole(make: Callable[[], str],
                                                  table_text: Callable[[str], None]) -> None:
    text = make()
    full = _full_parse(text)
    table_text(text)
    assert not _indexed()
    for key in [*list(full)[:50], "gpt-4o", "openai/gpt-4o-mini", "no-such-model"]:
        assert _exact(raw_entry(key)) == _exact(full.get(key)), key


# Entries as litellm's file has them, hand-edited lines included: a key at column 0, a nested key at the top
# level's indentation, a repeated key (json.loads keeps the later), values that are null, empty or hold arrays.
EDITED = """{
    "a": {
        "x": 1.50,
    "misplaced": "2.5e-07"
    },
"b": {
        "price": null,
        "list": [
            1,
            {
                "y": 0.000001
            }
        ]
    },
    "a": {
        "x": 2.5e-07,
        "x": 3E-7
    },
    "c": {
    }
}
"""


@pytest.mark.parametrize("text", [EDITED, EDITED.replace("\n", "\r\n"), EDITED.rstrip()], ids=["lf", "crlf", "no-eol"])
def test_hand_edited_entries_and_repeated_keys_read_as_json_loads_does(text: str,
                                                                       table_text: Callable[[str], None]) -> None:
    table_text(text)
    assert _indexed()
    full = _full_parse(text)
    for key in [*full, "misplaced", "x", "y", "d"]:
        assert _exact(raw_entry(key)) == _exact(full.get(key)), key
    assert raw_entry("a") == {"x": Decimal("3E-7")} and raw_entry("misplaced") is None
    assert _indexed()


def test_an_entry_the_index_misreads_sends_the_table_to_the_full_parse(table_text: Callable[[str], None]) -> None:
    """A nested closing brace at the top level's indentation, followed by a sibling object, passes the index's
    checks: it splits "a" in two and makes "k" look like an entry. Decoding either shows it."""
    text = ('{\n    "a": {\n        "n": {\n            "x": 1\n    },\n        "k": {\n            "y": 2\n        }\n'
            '    },\n    "b": {\n        "z": 3\n    }\n}\n')
    full = _full_parse(text)
    for first in ("k", "a"):
        table_text(text)
        assert _indexed()
        assert _exact(raw_entry(first)) == _exact(full.get(first))
        assert not _indexed()
        assert _exact(raw_entry("b")) == _exact(full["b"])


def test_release_table_drops_what_was_read(table_text: Callable[[str], None]) -> None:
    table_text('{\n    "a": {\n        "v": 1\n    }\n}\n')
    assert raw_entry("a") == {"v": 1} and _indexed()
    prices.TABLE_PATH.write_text('{\n    "a": {\n        "v": 2\n    }\n}\n', encoding="utf-8")
    assert raw_entry("a") == {"v": 1}  # kept until released
    release_table()
    assert raw_entry("a") == {"v": 2}

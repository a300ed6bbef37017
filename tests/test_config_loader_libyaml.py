"""The libyaml fast path of router.config_loader gives what the pure-Python SafeLoader gives: the same data, the
same line of every path, the same error text for bad YAML (SafeLoader is the reference, reached with
``_FAST_LOADER`` set to None, as on a PyYAML built without libyaml).

Derandomized, so CI runs the same examples every time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router import config_loader
from router.config_loader import ConfigError
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(getattr(yaml, "CSafeLoader", None) is None, reason="PyYAML built without libyaml")

_SETTINGS = settings(derandomize=True, database=None, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

YAML_FILES = sorted([*(ROOT / "configs").rglob("*.yaml"), *(ROOT / "configs").rglob("*.yml"),
                     *(ROOT / "tests" / "fixtures").rglob("*.yaml"), *(ROOT / "tests" / "fixtures").rglob("*.yml")])

# Pieces of YAML where libyaml and SafeLoader are known to part (tabs, other line breaks, BOMs, tags, '?' in flow
# collections, empty nodes, block scalar headers) next to ordinary ones; joined at random and spliced into configs.
TOKENS = ["a", "b", "1", "0.5", ":", ": ", " ", "\n", "\n  ", "\n    ", "\n- ", "- ", "-", "?", "? ", "[", "]", "{",
          "}", ",", ", ", "&x ", "*x", "&x", "&y ", "*y", "!!str ", "!", "! ", "!x ", "'", '"', "#", " #c", "|", ">",
          "|-", "|+", ">2", "|#", "%", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "@", "`", "\\", "---", "--- ", "...",
          "\n---\n", "\n...\n", "\r", "\r\n", "\x85", "\u2028", "\ufeff", "<<", "<<: ", "~", ".", "é", "x y", '"a"',
          "'a'", '"\\x41"', "''", '""', "-1", "0x1f", "null", "!!map ", "!!seq ", "!!int ", "!!binary ", "!!set ",
          "!!timestamp ", "2001-12-14", "yes", ".inf", "\t", "\x07", "\x00", "->", "http://x?y=1", "a:b", "b?c",
          "a?", " ?", ":x", "[a?]", "{k: v?}", "{a: 1}", "[1, 2]", "key: value\n", "- item\n", "k:\n  - ", "[&x b?c]",
          "&x b?c", "&x [a, b?]", "&y {p: q?}", "[*x]", "{a: *y}"]

HOSTILE = [
    "a: 1\nb: \x07x\n", "a: \x7f\n", "a: \x80\n", "a: \ufffe\n", "a: \x00\n", "a: \ud800\n",  # control characters
    "a:\n\tb: 1\n", "a:\t1\n", "-\t1\n", "a: 1 \t\nb: 2\n", "a: |\n\tx\n",  # tabs
    'a: "abc\n', "a: 'abc\n", "a: [1, 2\n", "a: {b: 1\n", 'a: "\\q"\n',  # unclosed quotes and flows, bad escapes
    "a: 1\na: 2\n", "a:\n  b: 1\n  b: 2\n",  # duplicate keys: the last wins, with its line
    "a: &x 1\nb: &x 2\nc: *x\n", "a: *y\n", "a: &x [*x]\n",  # duplicate, undefined and self-holding anchors
    "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: &c [*b, *b, *b]\nd: [*c, *c, *c]\n",  # a small alias bomb
    "base: &b {x: 1}\nc:\n  <<: *b\n  y: 2\n", "? [a]\n: b\n", "&k a: 1\n*k : 2\n",
    "a: !foo 1\n", "a: !!python/object:os.system 1\n", "a: !!timestamp nope\n", "a: !!int nope\n", "a: ! 1\n",
    "a: !\n", "- !:! \n", "a: |#\n  x\n",
    "a: 1\n---\nb: 2\n", "%YAML 1.2\n---\na: 1\n", "%YAML 2.0\n---\na: 1\n", "%YAML 1.1\na: 1\n", "a: 1\n...\n",
    "", "# only a comment\n", "---\n", "~\n", "- \n- 1\n", "a:\n  - \n  - b\n", "? \n: 1\n", "a:\n",
    "a: b: c\n", "a\nb: 1\n", "a:\n  b: 1\n c: 2\n", "a: %x\n", "a: @x\n", "a: `x\n", "a" * 1100 + ": 1\n",
    "tiers: {floor: small, ceiling: mi?d}\n", "a: [b?]\n", "a: [?x]\n", "a: {?}\n", "a: [b: c?]\n",
    "a: [&x b?c]\nd: *x\n", "a: {k: &x [b?c]}\nd: [*x]\n", "a: &x\nb: [*x]\n",  # judged where the anchor is
    "\ufeffa: 1\n", "a: \ufeff1\n", "a: b\x85c: d\n", "a: b\u2028c: d\n", "a: 1\rb: 2\r", "a: 1\r\nb: 2\r\n",
    "a: [1e3, 1.0e3, .inf, -.Inf, .nan, 0x1f, 0o17, 017, 1_000, 190:20:30, 0b101, yes, No, on, ~]\n",
    "a: 2001-12-14t21:59:43.10-05:00\n", "a: !!binary aGk=\n", "!!set {a, b}\n", "!!omap [a: 1]\n",
    "a: [" * 99 + "]" * 99 + "\n", "a: [" * 400 + "]" * 400 + "\n", "a: [" * 1200 + "]" * 1200 + "\n",
    "".join(" " * i + f"k{i}:\n" for i in range(150)) + " " * 150 + "v: 1\n",
]


def _comparable(value: Any) -> Any:
    """A value equal to another exactly when the parses agree (nan equals nan; sets and dicts keep their order)."""
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    if isinstance(value, dict):
        return ("dict", [(_comparable(k), _comparable(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_comparable(v) for v in value])
    if isinstance(value, set):
        return ("set", sorted(map(repr, value)))
    return (type(value).__name__, repr(value))


def _outcome(text: str, *, fast: bool) -> tuple[Any, ...]:
    """What ``_parse_yaml`` gives: data and line map, or the error's type and text."""
    loader = config_loader._FAST_LOADER if fast else None
    with mock.patch.object(config_loader, "_FAST_LOADER", loader):
        try:
            data, lines = config_loader._parse_yaml(text, "p.yaml")
        except RecursionError:
            return ("RecursionError",)  # its text depends on the frame that ran out
        except Exception as exc:  # an unhashable key is a TypeError today: the fast path must raise it alike
            return ("error", type(exc).__name__, str(exc))
    return ("ok", _comparable(data), sorted(lines.items(), key=repr))


def _assert_same(text: str) -> None:
    assert _outcome(text, fast=True) == _outcome(text, fast=False), repr(text)


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_yaml_parses_alike_and_on_the_fast_path(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    _assert_same(text)
    # the start-up saving holds for what we ship: a '!' or a tab, say, would send it to SafeLoader
    assert config_loader._parse_fast(text) is not None, "takes the SafeLoader path (see _DIVERGENT)"


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_yaml_gives_what_safeloader_gives(text: str) -> None:
    _assert_same(text)


@pytest.mark.parametrize(("text", "message"), [
    ("a: 1\nb: \x07x\n", "p.yaml:2: <root>: invalid YAML: special characters are not allowed (character #x0007)"),
    ("a:\t1\n", "p.yaml:1: <root>: invalid YAML: found character '\\t' that cannot start any token"),
    ('a: "abc\n', "p.yaml:2: <root>: invalid YAML: found unexpected end of stream"),
    ("a: *y\n", "p.yaml:1: <root>: invalid YAML: found undefined alias 'y'"),
    ("a: &x 1\nb: &x 2\n", "p.yaml:2: <root>: invalid YAML: second occurrence"),
    ("a: !foo 1\n", "p.yaml:1: <root>: invalid YAML: could not determine a constructor for the tag '!foo'"),
    ("t: {floor: small, ceiling: mi?d}\n", "p.yaml:1: <root>: invalid YAML: expected ',' or '}', but got '?'"),
    ("", "p.yaml:1: <root>: the file is empty"),
])
def test_bad_yaml_keeps_its_wording(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config_loader._parse_yaml(text, "p.yaml")
    assert str(exc.value) == message


def test_duplicate_keys_keep_the_last_value_and_its_line() -> None:
    assert config_loader._parse_yaml("a: 1\nb:\n  c: 2\na: 3\n", "p.yaml") == (
        {"a": 3, "b": {"c": 2}}, {(): 1, ("a",): 4, ("b",): 2, ("b", "c"): 3})


def test_schema_errors_name_the_same_line_on_both_paths() -> None:
    first = "        simulator: {ttft_ms: 20"  # a bad weight goes in above it, on line 30 of demo.yaml
    text = (ROOT / "configs" / "demo.yaml").read_text().replace(first, "        weight: -2\n" + first, 1)
    messages = []
    for loader in (config_loader._FAST_LOADER, None):
        with mock.patch.object(config_loader, "_FAST_LOADER", loader), pytest.raises(ConfigError) as exc:
            config_loader.parse_policy(text, "demo.yaml")
        messages.append(str(exc.value))
    assert messages[0] == messages[1] and messages[0].startswith("demo.yaml:30: tiers.0.deployments.0.weight: ")


@settings(_SETTINGS, max_examples=300)
@given(text=st.lists(st.sampled_from(TOKENS), min_size=1, max_size=16).map("".join))
def test_token_soup_parses_alike(text: str) -> None:
    _assert_same(text)


_CONFIGS = [p.read_text(encoding="utf-8") for p in YAML_FILES]
_EDIT = st.tuples(st.floats(0, 1), st.integers(0, 3), st.sampled_from(TOKENS))  # where, how much to cut, what to put


@settings(_SETTINGS, max_examples=100)
@given(base=st.sampled_from(_CONFIGS), edits=st.lists(_EDIT, min_size=1, max_size=4))
def test_edited_configs_parse_alike(base: str, edits: list[tuple[float, int, str]]) -> None:
    text = base
    for where, cut, token in edits:
        at = int(where * len(text))
        text = text[:at] + token + text[at + cut:]
    _assert_same(text)


_PLAIN = ["a", "x y", "b?c", "q?", "?", "", "k:v", "-1", "~", "1.5", "yes", "http://h?x=1", '"b?c"', "'q'", "null"]


@st.composite
def _anchored_doc(draw: st.DrawFn) -> str:
    """A block mapping whose entries nest flow and block collections with anchors, aliased inside and again at the
    end: a node shared through aliases must be judged where its anchor wrote it (a '?' in a flow collection, say)."""
    anchors: list[str] = []

    def value(indent: int, depth: int, flow: bool) -> str:
        if anchors and draw(st.integers(0, 4)) == 0:
            return f"*{draw(st.sampled_from(anchors))} "
        kind = draw(st.sampled_from(["scalar", "flow", "block"])) if depth < 3 else "scalar"
        if kind == "scalar":
            text = draw(st.sampled_from(_PLAIN))
        elif kind == "flow" or flow:
            text = "[" + ", ".join(value(indent, depth + 1, True) for _ in range(draw(st.integers(0, 3)))) + "]"
        else:
            pad = " " * (indent + 2)
            text = "".join(f"\n{pad}- {value(indent + 4, depth + 1, False)}" for _ in range(draw(st.integers(1, 3))))
        if draw(st.integers(0, 2)):
            return text
        # named once its children are drawn: a self-holding anchor only recurses (HOSTILE has one)
        anchors.append(f"a{len(anchors)}")
        return f"&{anchors[-1]}" + ("" if text.startswith("\n") else " ") + text

    entries = "".join(f"e{i}: {value(0, 0, False)}\n" for i in range(draw(st.integers(1, 5))))
    return entries + "".join(f"r{i}: *{name}\n" for i, name in enumerate(anchors))  # each one again, in block


@settings(_SETTINGS, max_examples=300)
@given(text=_anchored_doc())
def test_anchored_docs_parse_alike(text: str) -> None:
    _assert_same(text)

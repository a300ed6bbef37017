"""Load a YAML policy file into ``Config`` with errors that name the file, the line and the field.

PyYAML's node graph keeps line marks; we build plain Python data from it while remembering the line of every
path, so a pydantic error location (``teams.research.keys.0.sha256``) maps back to where the operator typed it.

Every proxy worker and CLI parses its policy at start-up, so the common case goes through libyaml (``CSafeLoader``,
some 7x faster on the shipped configs). The pure-Python ``SafeLoader`` stays the reference: it decides every text
libyaml could read differently and reports every error, so data, line numbers and error messages are SafeLoader's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from router.config import Config
from router.policy import Policy, PolicyError, compile_policy

PathKey = tuple[str | int, ...]

# None when PyYAML was built without libyaml: then every text takes the reference parse.
_FAST_LOADER: type[Any] | None = getattr(yaml, "CSafeLoader", None)

# What libyaml reads differently from SafeLoader (found by differential fuzzing): tabs (SafeLoader refuses them
# between tokens), line breaks other than \n and byte-order marks (libyaml counts lines differently and drops BOMs
# anywhere), '!' (libyaml resolves the non-specific tag to str, SafeLoader resolves it as a plain scalar, and they
# accept different tag characters) and a comment glued to a block scalar header (``|#``, refused by SafeLoader).
# Such a text, rare in a policy, takes the reference parse (tests/test_config_loader_libyaml.py holds both to it).
_DIVERGENT = re.compile(r"[\t\r\x85\u2028\u2029\ufeff!]|[|>][-+0-9]*#")

# Deeper documents take the reference parse: its recursive composer runs out of stack at a few hundred levels
# (a RecursionError today) where libyaml goes on to 1000. A policy is under ten levels deep.
_FAST_MAX_DEPTH = 100


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.field or '<root>'}: {self.message}"


class ConfigError(Exception):
    """The file cannot become a policy; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("\n".join(str(issue) for issue in issues))
        self.issues = issues


def _construct(node: yaml.Node, path: PathKey, lines: dict[PathKey, int],
               loader: yaml.constructor.BaseConstructor) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            lines[path + (str(key),)] = key_node.start_mark.line + 1
            result[key] = _construct(value_node, path + (str(key),), lines, loader)
            lines[path + (str(key),)] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, path + (i,), lines, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _fast_nodes_agree(root: yaml.Node) -> bool:
    """Whether SafeLoader would have built the nodes libyaml built for ``root``, with the same kept lines.

    Three differences the text alone does not show: an empty node's start (SafeLoader: at the indicator before it;
    libyaml: at the next token), which matters where that line is kept (the root, a key, a sequence item; a mapping
    value's line is its key's); a '?' in a plain scalar inside a flow collection (SafeLoader ends the scalar there
    and refuses the rest); and nesting past ``_FAST_MAX_DEPTH``.

    Iterative (a deep document must not recurse here) and in document order, so a node shared through aliases is
    judged where its anchor wrote it, before any alias to it: in a flow collection or not, at its own depth.
    """
    # node, depth, whether its own line is kept, whether it sits in a flow collection
    stack: list[tuple[yaml.Node, int, bool, bool]] = [(root, 0, True, False)]
    seen: set[int] = set()  # aliases share nodes, and an anchor can hold itself
    while stack:
        node, depth, line_kept, in_flow = stack.pop()
        if depth > _FAST_MAX_DEPTH or (line_kept and _is_empty(node)):
            return False
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            if in_flow and not node.style and "?" in node.value:
                return False
            continue
        flow = in_flow or bool(node.flow_style)
        if isinstance(node, yaml.MappingNode):
            for key, value in reversed(node.value):  # reversed onto the stack: popped first to last
                stack.append((value, depth + 1, False, flow))
                stack.append((key, depth + 1, True, flow))
        else:
            stack.extend((item, depth + 1, True, flow) for item in reversed(node.value))
    return True


def _is_empty(node: yaml.Node) -> bool:
    """A node with no text of its own (``- `` with nothing after it, a key left out): its start mark is in doubt."""
    return isinstance(node, yaml.ScalarNode) and node.value == "" and not node.style


def _parse_fast(text: str) -> tuple[Any, dict[PathKey, int]] | None:
    """Parse with libyaml; None when the reference parse must decide (a text read differently, or any error)."""
    if _FAST_LOADER is None or _DIVERGENT.search(text):
        return None
    if yaml.reader.Reader.NON_PRINTABLE.search(text):
        return None  # SafeLoader's reader refuses it up front, with the character and its position: that error stays
    loader = _FAST_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None or not _fast_nodes_agree(node):
            return None
        lines: dict[PathKey, int] = {}
        return _construct(node, (), lines, loader), lines
    except Exception:
        # Whatever fails (bad YAML, an unhashable key, a self-holding anchor) fails as SafeLoader reports it today:
        # libyaml words its errors differently, and SafeLoader's wording is what operators and tests see.
        return None
    finally:
        loader.dispose()


def _parse_yaml(text: str, file: str) -> tuple[Any, dict[PathKey, int]]:
    parsed = _parse_fast(text)
    if parsed is not None:
        return parsed
    try:
        loader = yaml.SafeLoader(text)  # refuses control characters at once: an unmarked error with a position
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError([ConfigIssue(file, line, "", f"invalid YAML: {exc.reason} (character "
                                                       f"#x{exc.character:04x})")]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError([ConfigIssue(file, 1, "", "the file is empty")])
        lines: dict[PathKey, int] = {}
        return _construct(node, (), lines, loader), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        marked = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigIssue(file, marked, "", f"invalid YAML: {exc.problem or exc}")]) from None
    finally:
        loader.dispose()


def _line_for(loc: PathKey, lines: dict[PathKey, int]) -> int | None:
    path = tuple(str(p) if isinstance(p, str) else p for p in loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def parse_policy(text: str, file: str = "<string>") -> Policy:
    """Validate YAML text and compile it; raises ``ConfigError``."""
    data, lines = _parse_yaml(text, file)
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(file, 1, "", "the top level must be a mapping")])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        issues = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc)
            message = err["msg"].removeprefix("Value error, ")
            issues.append(ConfigIssue(file, _line_for(loc, lines), field, message))
        raise ConfigError(issues) from None
    try:
        return compile_policy(config)
    except PolicyError as exc:
        field = ".".join(str(p) for p in exc.loc)
        raise ConfigError([ConfigIssue(file, _line_for(exc.loc, lines), field, exc.message)]) from None


def load_policy(path: str | Path) -> Policy:
    """Read, validate and compile a policy file; raises ``ConfigError`` naming file, line and field."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), None, "", f"cannot read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(str(path), None, "", "the file is not UTF-8")]) from None
    policy = parse_policy(text, str(path))
    return dataclasses.replace(
        policy, sha256=hashlib.sha256(raw).hexdigest(), source=str(path.resolve()), loaded_at=time.time()
    )

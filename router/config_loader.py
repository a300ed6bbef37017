"""Load a YAML policy file into ``Config`` with errors that name the file, the line and the field.

PyYAML's node graph keeps line marks; we build plain Python data from it while remembering the line of every
path, so a pydantic error location (``teams.research.keys.0.sha256``) maps back to where the operator typed it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from router.config import Config
from router.policy import Policy, PolicyError, compile_policy

PathKey = tuple[str | int, ...]


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


# A policy is a few hundred nodes; aliases may repeat a node, but what they expand to is validated (and copied) in
# full, so a few nested aliases of aliases (a "billion laughs") would take the process's memory.
MAX_EXPANDED_NODES = 100_000


class _Refused(Exception):
    """A composed document this loader will not build: the message and the line it names."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def _check_expansion(root: yaml.Node) -> None:
    """Refuse an anchor that holds itself (its data would be cyclic) and aliases that expand past
    ``MAX_EXPANDED_NODES``. Iterative, each node walked once: the sizes of shared nodes are remembered."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            on_path.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_EXPANDED_NODES:
                raise _Refused(node.start_mark.line + 1, f"aliases expand the document past {MAX_EXPANDED_NODES} "
                                                         "nodes")
            continue
        if id(node) in sizes:
            continue
        if id(node) in on_path:
            raise _Refused(node.start_mark.line + 1, "an anchor refers to itself")
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def _construct(node: yaml.Node, path: PathKey, lines: dict[PathKey, int], loader: yaml.SafeLoader) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                raise _Refused(key_node.start_mark.line + 1, "a mapping key must be a single value, not a list or "
                                                             "a mapping")
            lines[path + (str(key),)] = key_node.start_mark.line + 1
            result[key] = _construct(value_node, path + (str(key),), lines, loader)
            lines[path + (str(key),)] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, path + (i,), lines, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _parse_yaml(text: str, file: str) -> tuple[Any, dict[PathKey, int]]:
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
        _check_expansion(node)
        lines: dict[PathKey, int] = {}
        return _construct(node, (), lines, loader), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        marked = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigIssue(file, marked, "", f"invalid YAML: {exc.problem or exc}")]) from None
    except _Refused as exc:
        raise ConfigError([ConfigIssue(file, exc.line, "", f"invalid YAML: {exc}")]) from None
    except RecursionError:  # PyYAML's composer recurses once per level of nesting; a policy is under ten deep
        raise ConfigError([ConfigIssue(file, None, "", "invalid YAML: nested too deeply")]) from None
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

"""A team's ``model_aliases``: requested model names (glob patterns) mapped to ``auto``, a tier or a pin.

Clients such as Claude Code send concrete vendor names (``claude-sonnet-4-5-20250929``, ``claude-haiku-4-5``) that no
tier or pin is called; the team's policy says what each family means here, so ops decide whether a "sonnet" request is
routed by complexity (``auto``) or always lands on one tier. Patterns are tried in YAML order, first match wins, and a
name that is itself a tier, a pin or ``auto`` is never rewritten (an alias cannot shadow what the team may already
name). Compiled once per policy; resolution is memoised per name, so the hot path pays one dict lookup.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

# Distinct requested names remembered per team: clients send a handful of model names, but a client may send many
# made-up ones, and the memo must not grow with them.
_MEMO_ENTRIES = 1024


@dataclass(frozen=True, slots=True)
class ModelAliases:
    """``(pattern, target)`` pairs in YAML order; ``resolve`` maps a requested name to its target."""

    rules: tuple[tuple[str, str], ...] = ()
    exact: frozenset[str] = frozenset()  # names the team may already send: each always means itself
    _compiled: tuple[tuple[re.Pattern[str], str], ...] = field(default=(), init=False, repr=False, compare=False)
    _memo: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # fnmatchcase: globs are case-sensitive like model names; translate() anchors the whole name.
        compiled = tuple((re.compile(fnmatch.translate(pattern)), target) for pattern, target in self.rules)
        object.__setattr__(self, "_compiled", compiled)

    def match(self, model: str) -> tuple[str, str] | None:
        """The first ``(pattern, target)`` whose pattern matches ``model``, or None."""
        for (pattern, target), (regex, _) in zip(self.rules, self._compiled):
            if regex.match(model):
                return pattern, target
        return None

    def resolve(self, model: str) -> str:
        """The name routing should use for ``model``: its alias target, or ``model`` itself when nothing matches."""
        if not self.rules or model in self.exact:
            return model
        found = self._memo.get(model)
        if found is None:
            hit = self.match(model)
            found = hit[1] if hit is not None else model
            if len(self._memo) >= _MEMO_ENTRIES:
                self._memo.clear()
            self._memo[model] = found
        return found


NO_ALIASES = ModelAliases()


def compile_aliases(rules: dict[str, str], names: tuple[str, ...]) -> ModelAliases:
    """``rules`` (pattern -> target) with every name the team may already send (``names``: auto, its tiers and
    pins) kept as it is: an exact name always means itself, however broad a pattern."""
    if not rules:
        return NO_ALIASES
    return ModelAliases(tuple(rules.items()), frozenset(names))

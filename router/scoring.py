"""The score seam: something that maps OpenAI ``messages`` to P(the strong tier is needed) in [0, 1].

``default`` is the shipped ONNX complexity model (``classifiers/``); ``length`` is the prompt-length baseline
the model has to beat, kept as an explicit option for comparison and for deployments that want no model.

``TeamScorers`` holds, on each worker, one scorer per team with an active learned model (``routing_models`` in the
ledger's database) and the default for everyone else; ``for_team`` is one dict lookup on the request path.
``refresh`` (every few seconds, from the proxy) asks for the active versions in one small query, loads the bytes
only of a version it does not hold, then swaps the whole dict at once: a request sees the old set or the new one.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, Protocol

from text.tokens import count_messages


class Scorer(Protocol):
    model_id: str

    def score(self, messages: list[Any]) -> float: ...


log = logging.getLogger(__name__)


class ModelSource(Protocol):
    """Where the active team models are registered (the ledger: ``metering.routing_models``)."""

    async def active_routing_models(self) -> dict[str, tuple[int, str]]: ...

    async def routing_model_bytes(self, team: str, version: int) -> bytes | None: ...


class LengthScorer:
    """Logistic in log prompt tokens: 50% at ~400 tokens. A baseline, not a classifier."""

    model_id = "length"

    def score(self, messages: list[Any]) -> float:
        tokens = count_messages([m for m in messages if isinstance(m, dict)])
        return 1.0 / (1.0 + math.exp(-(math.log(tokens + 1) - 6.0)))


def load_scorer(setting: str) -> Scorer:
    """Build the scorer a config names; raises ValueError if a model file cannot be loaded."""
    if setting == "length":
        return LengthScorer()
    from classifiers.scorer import ComplexityScorer

    try:
        return ComplexityScorer.load(None if setting == "default" else setting)
    except Exception as exc:  # onnxruntime raises its own types; all mean "this file is not a usable model"
        raise ValueError(f"cannot load classifier {setting!r}: {exc}") from exc


class TeamScorers:
    """The default scorer plus each team's active learned model."""

    def __init__(self, default: Scorer) -> None:
        self.default = default
        self._by_team: dict[str, Scorer] = {}
        self._versions: dict[str, tuple[int, str]] = {}

    def for_team(self, team: str) -> Scorer:
        return self._by_team.get(team, self.default)

    @property
    def versions(self) -> dict[str, tuple[int, str]]:
        return dict(self._versions)

    async def refresh(self, ledger: ModelSource) -> None:
        """Load what changed since the last refresh; a version that fails to load keeps the team's previous
        scorer (logged), never a worker without one."""
        active = await ledger.active_routing_models()
        if active == self._versions:
            return
        by_team, versions = {}, {}
        for team, (version, model_id) in active.items():
            if self._versions.get(team) == (version, model_id) and team in self._by_team:
                by_team[team], versions[team] = self._by_team[team], (version, model_id)
                continue
            data = await ledger.routing_model_bytes(team, version)
            try:
                if data is None:
                    raise ValueError("no bytes stored")
                from classifiers.scorer import ComplexityScorer

                scorer = await asyncio.to_thread(ComplexityScorer, data)
            except Exception as exc:  # noqa: BLE001 -- any failure: keep serving what this team had
                log.error("routing model %s v%d does not load (%s); team keeps its previous scorer", team, version,
                          type(exc).__name__)
                if team in self._by_team:
                    by_team[team], versions[team] = self._by_team[team], self._versions[team]
                continue
            by_team[team], versions[team] = scorer, (version, model_id)
        self._by_team, self._versions = by_team, versions

"""The score seam: something that maps OpenAI ``messages`` to P(the strong tier is needed) in [0, 1].

``default`` is the shipped ONNX complexity model (``classifiers/``); ``length`` is the prompt-length baseline
the model has to beat, kept as an explicit option for comparison and for deployments that want no model.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from text.tokens import count_messages


class Scorer(Protocol):
    model_id: str

    def score(self, messages: list[Any]) -> float: ...


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

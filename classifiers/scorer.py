"""In-process complexity scoring: OpenAI ``messages`` -> P(the strong tier is needed), in [0, 1].

The proxy calls ``score()`` synchronously on the event loop for every ``model: auto`` request, so
it is built for latency: one onnxruntime session created at load, one thread, sequential
execution, no per-call allocation beyond the feature vector. It must never raise on a request,
however malformed: a broken request still needs a routing decision (the proxy's validation
returns the 400s), so on any internal failure it falls back to ``FALLBACK_SCORE``.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from classifiers.features import FEATURE_NAMES, featurize, featurize_many
from classifiers.modelmeta import INPUT_NAME, LOGIT_OUTPUT, PROBA_OUTPUT

DEFAULT_MODEL = Path(__file__).parent / "models" / "complexity.onnx"
# Used only if featurization or inference fails: the middle of the scale, neither tier favoured.
FALLBACK_SCORE = 0.5


def _session(data: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


class ComplexityScorer:
    """A loaded complexity model. Thread-safe for concurrent ``score`` calls (onnxruntime sessions are)."""

    def __init__(self, data: bytes) -> None:
        self._session = _session(data)
        self.model_id: str = hashlib.sha256(data).hexdigest()[:12]
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)
        stored = self.metadata.get("feature_names")
        if stored is not None and stored != ",".join(FEATURE_NAMES):
            raise ValueError("model was trained on a different feature set than classifiers/features.py computes")
        # A model learned from a deployment's traffic may add a word block: one 0/1 input per vocabulary word.
        words = self.metadata.get("vocabulary", "").split()
        self.vocabulary: dict[str, int] | None = {w: i for i, w in enumerate(words)} if words else None

    def features(self, batch: list[Any]) -> np.ndarray:
        """The model's input matrix for many requests (hand features, plus its word block if it has one)."""
        return featurize_many(batch, self.vocabulary)

    @classmethod
    def load(cls, path: str | Path | None = None) -> ComplexityScorer:
        """Load a model file; ``None`` means the shipped ``classifiers/models/complexity.onnx``."""
        return cls(Path(path if path is not None else DEFAULT_MODEL).read_bytes())

    def _run(self, X: np.ndarray) -> np.ndarray:
        # Inputs are clipped to the training range inside the graph (classifiers/export.py).
        return self._session.run([PROBA_OUTPUT], {INPUT_NAME: X})[0][:, 1]

    def logits(self, X: np.ndarray) -> np.ndarray:
        """The model's logit for each row of a feature matrix: the prior a learned model builds on."""
        logits = self._session.run([LOGIT_OUTPUT], {INPUT_NAME: np.asarray(X, dtype=np.float32)})[0]
        return logits[:, 0].astype(np.float64)

    def probabilities(self, X: np.ndarray) -> np.ndarray:
        """P(strong tier needed) for each row of an input matrix (``features`` or a stored feature vector)."""
        return self._run(np.asarray(X, dtype=np.float32)).astype(np.float64)

    def score(self, messages: list) -> float:
        """P(strong tier needed) for one request. Never raises; deterministic for a given input."""
        try:
            value = float(self._run(featurize(messages, self.vocabulary).reshape(1, -1))[0])
        except Exception:  # noqa: BLE001 -- a routing decision must come out of any request
            return FALLBACK_SCORE
        return min(max(value, 0.0), 1.0) if math.isfinite(value) else FALLBACK_SCORE

    def score_many(self, batch: list[Any]) -> list[float]:
        """Scores of many requests in one inference call (same values as ``score`` one by one)."""
        if not batch:
            return []
        try:
            X = featurize_many(batch, self.vocabulary)
        except Exception:  # noqa: BLE001 -- fall back to per-row scoring to isolate the bad row
            return [self.score(m) for m in batch]
        values = self._run(X)
        return [min(max(float(v), 0.0), 1.0) if math.isfinite(v) else FALLBACK_SCORE for v in values]

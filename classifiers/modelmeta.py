"""What the ONNX model file and its readers agree on: tensor names and the metadata codec.

Kept free of scikit-learn and skl2onnx imports so the scorer loads fast and small.
"""

from __future__ import annotations

import numpy as np

INPUT_NAME = "features"
# ONNX output holding P(strong needed) in column 1 (zipmap disabled: a plain float tensor is faster).
PROBA_OUTPUT = "probabilities"


def encode_bounds(X: np.ndarray) -> dict[str, str]:
    """Per-feature training range, stored in the model so the scorer can clip inputs to it.

    A linear model extrapolates without limit: an empty request or a 1 MB prompt would land far
    outside anything seen in training and get an extreme score. Clipping keeps such requests at
    the edge of known territory.
    """
    return {
        "feature_lo": ",".join(repr(float(v)) for v in X.min(axis=0)),
        "feature_hi": ",".join(repr(float(v)) for v in X.max(axis=0)),
    }


def decode_bounds(metadata: dict[str, str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(lo, hi) float32 vectors from model metadata, or None for a model without them."""
    if "feature_lo" not in metadata or "feature_hi" not in metadata:
        return None
    lo = np.array([float(v) for v in metadata["feature_lo"].split(",")], dtype=np.float32)
    hi = np.array([float(v) for v in metadata["feature_hi"].split(",")], dtype=np.float32)
    return lo, hi

"""Export a fitted scikit-learn pipeline to ONNX, with the metadata the scorer and the model card need."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.pipeline import Pipeline

from classifiers.features import FEATURE_NAMES, N_FEATURES
from classifiers.modelmeta import INPUT_NAME, PROBA_OUTPUT


def to_onnx(model: Pipeline, path: Path, metadata: dict[str, str]) -> bytes:
    """Write ``model`` to ``path`` and return the bytes. Feature names are stored so a scorer can refuse a mismatch."""
    onx = convert_sklearn(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
        name="tiergate_complexity",  # fixed, so the same fit gives the same bytes (default is a uuid)
    )
    meta = dict(metadata, feature_names=",".join(FEATURE_NAMES))
    for key, value in sorted(meta.items()):
        entry = onx.metadata_props.add()
        entry.key, entry.value = key, value
    names = [o.name for o in onx.graph.output]
    if PROBA_OUTPUT not in names:
        raise RuntimeError(f"unexpected ONNX outputs {names}")
    data = onx.SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def check_roundtrip(model: Pipeline, data: bytes, X: np.ndarray) -> float:
    """Largest |sklearn - onnxruntime| probability difference on ``X``: export must not change the scores."""
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run([PROBA_OUTPUT], {INPUT_NAME: X.astype(np.float32)})[0][:, 1]
    return float(np.max(np.abs(got - model.predict_proba(X)[:, 1])))

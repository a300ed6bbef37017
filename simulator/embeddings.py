"""Deterministic embeddings: a unit vector per input, seeded by a hash of (model, input).

Equal inputs embed equally and different inputs are nearly orthogonal, which is all a cache or router test needs.
"""

from __future__ import annotations

import base64
from typing import Any

from simulator.text import seed_for
from text.tokens import count_text

_DEFAULT_DIMENSIONS = {"text-embedding-3-large": 3072}


def _inputs(value: Any) -> list[str | list[int]]:
    if isinstance(value, str) or (value and isinstance(value[0], int)):
        return [value]
    return list(value)


def embed(body: dict[str, Any]) -> dict[str, Any]:
    """The response body for a validated embeddings request (float lists, or base64 float32 as the SDK asks)."""
    import numpy as np  # deferred: only embeddings need it, and the proxy imports this package on its hot path

    model: str = body["model"]
    dims = body.get("dimensions") or _DEFAULT_DIMENSIONS.get(model.rsplit("/", 1)[-1], 1536)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for index, item in enumerate(_inputs(body["input"])):
        tokens += count_text(item, model) if isinstance(item, str) else len(item)
        vector = np.random.default_rng(seed_for(model, item)).standard_normal(dims).astype(np.float32)
        vector /= np.linalg.norm(vector)
        embedding: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode() if as_base64 else vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

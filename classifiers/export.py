"""Write complexity models as small hand-built ONNX graphs.

Every model is a logit followed by a sigmoid; the graph outputs ``probabilities`` ([N, 2], column 1 =
P(strong needed), what the scorer reads) and ``logit`` ([N, 1], what ``tiergate learn`` builds on).

- The default model: ``logit = (clip(x, lo, hi) - center) . w + b`` (``linear_model``).
- A learned deployment model (``stacked_model``): the prior's whole graph is embedded (node and tensor
  names prefixed), and ``logit = a1 * q + a2 * q^2 + (clip(x, lo, hi) - center) . w + b`` with
  ``q = clip(prior_logit, lo, hi) - shift``, where ``x`` may extend the hand features with a word block (one 0/1 input
  per vocabulary word).

Built with the ``onnx`` helper API rather than a converter: a few standard operators, fixed names and
sorted metadata, so the same weights always serialise to the same bytes (``tiergate train`` and
``tiergate learn`` are deterministic down to the file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from numpy.typing import ArrayLike
from onnx import TensorProto, helper, numpy_helper

from classifiers.features import FEATURE_NAMES, N_FEATURES
from classifiers.model import LinearScore
from classifiers.modelmeta import INPUT_NAME, LOGIT_OUTPUT, PROBA_OUTPUT

OPSET = 17
_PRIOR = "prior/"


def _const(name: str, value: ArrayLike) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _linear(prefix: str, score: LinearScore, out: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing ``(clip(x, lo, hi) - center) . coef + intercept`` into ``out`` ([N, 1])."""
    p = prefix
    inits = [_const(p + "lo", score.lo), _const(p + "hi", score.hi), _const(p + "center", score.center),
             _const(p + "w", np.asarray(score.coef).reshape(-1, 1)), _const(p + "b", [score.intercept])]
    nodes = [
        helper.make_node("Max", [INPUT_NAME, p + "lo"], [p + "x_lo"]),
        helper.make_node("Min", [p + "x_lo", p + "hi"], [p + "x_clip"]),
        helper.make_node("Sub", [p + "x_clip", p + "center"], [p + "x_centred"]),
        helper.make_node("MatMul", [p + "x_centred", p + "w"], [p + "xw"]),
        helper.make_node("Add", [p + "xw", p + "b"], [out]),
    ]
    return nodes, inits


def _finish(nodes: list, inits: list, metadata: dict[str, str], path: Path, n_inputs: int = N_FEATURES) -> bytes:
    """Add the sigmoid head, metadata and feature names; write ``path``; return the bytes."""
    nodes = nodes + [
        helper.make_node("Sigmoid", [LOGIT_OUTPUT], ["p_strong"]),
        helper.make_node("Sub", ["one", "p_strong"], ["p_weak"]),
        helper.make_node("Concat", ["p_weak", "p_strong"], [PROBA_OUTPUT], axis=1),
    ]
    inits = inits + [_const("one", [1.0])]
    graph = helper.make_graph(
        nodes,
        "tiergate_complexity",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [None, n_inputs])],
        [helper.make_tensor_value_info(PROBA_OUTPUT, TensorProto.FLOAT, [None, 2]),
         helper.make_tensor_value_info(LOGIT_OUTPUT, TensorProto.FLOAT, [None, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tiergate")
    model.ir_version = 8  # readable by onnxruntime >= 1.10
    for key, value in sorted({**metadata, "feature_names": ",".join(FEATURE_NAMES)}.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def linear_model(score: LinearScore, path: Path, metadata: dict[str, str]) -> bytes:
    """Write the default model's graph."""
    nodes, inits = _linear("", score, LOGIT_OUTPUT)
    return _finish(nodes, inits, metadata, path)


def stacked_model(prior: bytes, prior_range: tuple[float, float], shift: float, a1: float, a2: float,
                  score: LinearScore, path: Path, metadata: dict[str, str], vocabulary: tuple[str, ...] = ()) -> bytes:
    """Write a learned model: ``a1 * q + a2 * q^2 + score(x)``, ``q = clip(prior_logit, prior_range) - shift``,
    with the prior's graph inside.

    ``shift`` (the mean prior logit of the training rows) keeps the float32 graph from adding large
    terms that cancel when the prior barely varies over a deployment's traffic.

    With a ``vocabulary`` the input is the hand features followed by one 0/1 column per word (the scorer
    reads the words from the metadata); the prior sees the hand features only.
    """
    src = onnx.load_from_string(prior)
    hand = INPUT_NAME if not vocabulary else "hand_features"

    def rename(name: str) -> str:
        if name == INPUT_NAME:
            return hand
        return _PRIOR + name if name else name

    nodes, inits = [], []
    if vocabulary:
        inits += [_const_int("hand_start", [0]), _const_int("hand_end", [N_FEATURES]), _const_int("hand_axis", [1])]
        nodes.append(helper.make_node("Slice", [INPUT_NAME, "hand_start", "hand_end", "hand_axis"], [hand]))
    for node in src.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = rename(node.name) if node.name else ""
        copy.input[:] = [rename(n) for n in node.input]
        copy.output[:] = [rename(n) for n in node.output]
        nodes.append(copy)
    for init in src.graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(init)
        copy.name = rename(init.name)
        inits.append(copy)
    prior_logit = rename(LOGIT_OUTPUT)
    new_nodes, new_inits = _linear("new/", score, "new/logit")
    nodes += new_nodes + [
        helper.make_node("Max", [prior_logit, "prior_lo"], ["prior_at_least"]),
        helper.make_node("Min", ["prior_at_least", "prior_hi"], ["prior_clip"]),
        helper.make_node("Sub", ["prior_clip", "shift"], ["prior_q"]),
        helper.make_node("Mul", ["prior_q", "a1"], ["prior_lin"]),
        helper.make_node("Mul", ["prior_q", "prior_q"], ["prior_sq"]),
        helper.make_node("Mul", ["prior_sq", "a2"], ["prior_quad"]),
        helper.make_node("Add", ["prior_lin", "prior_quad"], ["prior_part"]),
        helper.make_node("Add", ["prior_part", "new/logit"], [LOGIT_OUTPUT]),
    ]
    inits += new_inits + [_const("prior_lo", [prior_range[0]]), _const("prior_hi", [prior_range[1]]),
                          _const("shift", [shift]), _const("a1", [a1]), _const("a2", [a2])]
    meta = dict(metadata, vocabulary=" ".join(vocabulary)) if vocabulary else metadata
    return _finish(nodes, inits, meta, path, N_FEATURES + len(vocabulary))


def _const_int(name: str, value: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.int64), name)

"""What the ONNX model file and its readers agree on: tensor names.

Kept free of scikit-learn and onnx imports so the scorer loads fast and small.
"""

from __future__ import annotations

INPUT_NAME = "features"
# ONNX output holding P(strong needed) in column 1 (a plain float tensor: no zipmap).
PROBA_OUTPUT = "probabilities"
# ONNX output holding the score before the sigmoid ([N, 1]): what a learned model builds on.
LOGIT_OUTPUT = "logit"

"""Reference embeddings from sentence-transformers on torch, for checking minilm_onnx.py.

Runs in a throwaway venv, never the project's:

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.13.0 sentence-transformers
    /tmp/tv/bin/python benchmarks/classifier/minilm_reference.py MODEL_DIR texts.json out.npy

Writes the (unnormalised, as sentence-transformers returns them: its Normalize module is part of
the model) embeddings and, next to them, the token ids (``out.npy.ids.json``).
"""

import json
import sys

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

torch.set_num_threads(1)
model_dir, texts_path, out = sys.argv[1:4]
m = SentenceTransformer(model_dir, device="cpu")
texts = json.load(open(texts_path))
np.save(out, m.encode(texts, batch_size=16, convert_to_numpy=True))
ids = [m.tokenizer(t, truncation=True, max_length=m.max_seq_length)["input_ids"] for t in texts]
json.dump({"max_seq_length": m.max_seq_length, "ids": ids}, open(out + ".ids.json", "w"))

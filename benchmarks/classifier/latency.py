"""Latency, load time, model size and memory of the shipped complexity scorer (issue 3 targets).

    .venv/bin/python benchmarks/classifier/latency.py [--model PATH] [--calls N]

Targets: score() p50 <= 0.3 ms and p99 <= 1 ms for prompts up to 2k tokens, featurization
included; load <= 300 ms; file <= 20 MB; <= 150 MB RSS added. Prompts are real MMLU questions
and AlpacaEval instructions, plus synthetic ones padded to 500, 1000 and 2000 tokens, a
multi-turn chat with a system prompt, and a 1 MB prompt (reported separately: it is truncated).
Run on a quiet machine; single-threaded by design, as the proxy calls it on the event loop.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from classifiers.dataset import read_jsonl


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def padded(text: str, n_tokens: int) -> list[dict]:
    from text.tokens import count_text

    body = text
    while count_text(body) < n_tokens:
        body += "\n" + text
    return [{"role": "user", "content": body}]


def timed(scorer, prompts: list, calls: int) -> tuple[np.ndarray, np.ndarray]:
    """(wall ms, thread CPU ms) per call. CPU time excludes preemption, which on a shared
    machine dominates the wall-clock tail."""
    for m in prompts[:50]:
        scorer.score(m)
    wall, cpu = np.empty(calls), np.empty(calls)
    for i in range(calls):
        m = prompts[i % len(prompts)]
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        scorer.score(m)
        wall[i] = (time.perf_counter_ns() - t0) / 1e6
        cpu[i] = (time.thread_time_ns() - c0) / 1e6
    return wall, cpu


def row(name: str, wall: np.ndarray, cpu: np.ndarray) -> str:
    p = np.percentile
    return f"| {name} | {p(wall, 50):.3f} | {p(wall, 99):.3f} | {p(cpu, 50):.3f} | {p(cpu, 99):.3f} |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()

    # Imports the proxy process already has (numpy, onnxruntime, tiktoken via metering) are not
    # counted as the model's memory; only the session and its buffers are.
    import onnxruntime  # noqa: F401

    import classifiers.features  # noqa: F401
    from classifiers.scorer import DEFAULT_MODEL, ComplexityScorer

    gc.collect()
    rss0 = rss_mb()
    t0 = time.perf_counter()
    scorer = ComplexityScorer.load(args.model)
    load_ms = (time.perf_counter() - t0) * 1e3
    load_rss = rss_mb() - rss0
    path = Path(args.model) if args.model else DEFAULT_MODEL

    mmlu = [r["messages"] for r in read_jsonl(REPO / "classifiers" / "data" / "mmlu_dev.jsonl")]
    alpaca_path = REPO.parent / "shared" / "data" / "routing" / "alpaca_eval.jsonl"
    alpaca = [r["messages"] for r in read_jsonl(alpaca_path)] if alpaca_path.exists() else []
    law = max(mmlu, key=lambda m: len(m[0]["content"]))[0]["content"]
    chat = [{"role": "system", "content": "You are a helpful assistant. " * 40},
            {"role": "user", "content": "Explain recursion."}, {"role": "assistant", "content": "It is ... " * 50},
            {"role": "user", "content": "Now write a Python function that flattens nested lists, with tests."}]
    sets = {
        "MMLU questions": mmlu,
        "AlpacaEval instructions": alpaca,
        "500-token prompts": [padded(law, 500)],
        "1000-token prompts": [padded(law, 1000)],
        "2000-token prompts": [padded(law, 2000)],
        "multi-turn chat": [chat],
    }
    mixed = (mmlu + alpaca + sets["500-token prompts"] * 200 + sets["1000-token prompts"] * 200
             + sets["2000-token prompts"] * 200)
    rng = np.random.default_rng(0)
    mixed = [mixed[i] for i in rng.permutation(len(mixed))]
    sets["mix (all of the above, up to 2k tokens)"] = mixed

    print(f"model {path} ({path.stat().st_size} bytes, id {scorer.model_id})")
    print(f"load {load_ms:.1f} ms; RSS added by load {load_rss:.1f} MB")
    print(f"load average {Path('/proc/loadavg').read_text().split()[0]} on {len(os.sched_getaffinity(0))} CPUs")
    print("| prompts | wall p50 ms | wall p99 ms | CPU p50 ms | CPU p99 ms |\n|---|---:|---:|---:|---:|")
    for name, prompts in sets.items():
        if prompts:
            print(row(name, *timed(scorer, prompts, min(args.calls, max(2000, len(prompts))))))
    huge = [{"role": "user", "content": "x " * 500_000}]
    print(row("1 MB prompt (truncated head+tail)", *timed(scorer, [huge], 200)))
    print(f"RSS after all calls: +{rss_mb() - rss0:.1f} MB over the pre-load baseline "
          "(includes the test prompts held in memory)")


if __name__ == "__main__":
    main()

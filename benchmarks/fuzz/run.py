"""Long fuzz run: the strategies and checks of tests/test_fuzz.py (tests/fuzz_harness.py), many more examples.

Unlike the test, a run does not stop at the first broken promise: it counts them all, prints each kind once and
exits 1 if there was any. Random unless ``--seed`` is given (the test is derandomized; long runs should explore).

    .venv/bin/python benchmarks/fuzz/run.py --examples 20000 [--spend-examples 3000] [--seed N] [--classifier length]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from fuzz_harness import FuzzApp, Tally, model_request, spend_request  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def run(app: FuzzApp, tally: Tally, strategy: st.SearchStrategy[dict[str, Any]], examples: int,
        seed_value: int | None) -> None:
    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def explore(request: dict[str, Any]) -> None:
        app.send(request, tally)  # problems are tallied, not raised: one run reports every kind it finds

    if seed_value is not None:
        explore = seed(seed_value)(explore)
    explore()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=20000, help="model-endpoint requests")
    parser.add_argument("--spend-examples", type=int, default=None, help="spend-endpoint requests (default 15%%)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--classifier", default="default", help="'length' skips the ONNX model (faster runs)")
    args = parser.parse_args()
    spend_examples = args.spend_examples if args.spend_examples is not None else max(1, args.examples * 15 // 100)
    logging.disable(logging.ERROR)  # 4xx are the point of the run; problems are counted below, not logged

    tally = Tally()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, FuzzApp(Path(tmp), args.classifier) as app:
        run(app, tally, model_request(), args.examples, args.seed)
        run(app, tally, spend_request(), spend_examples, args.seed)
    elapsed = time.perf_counter() - started

    print(f"{tally.requests:,} requests in {elapsed:.0f} s ({tally.requests / elapsed:.0f}/s); "
          f"{tally.reached_pipeline:,} reached the pipeline (have a ledger record); {len(tally.problems)} problems")
    by_path: dict[str, dict[str, int]] = {}
    for key, count in tally.statuses.items():
        path, status = key.rsplit(" ", 1)
        by_path.setdefault(path, {})[status] = count
    for path, statuses in sorted(by_path.items()):
        print(f"  {path:24} " + ", ".join(f"{s}: {n:,}" for s, n in sorted(statuses.items())))
    seen: set[str] = set()
    for problem in tally.problems:
        kind = problem.split(":", 1)[0]
        if kind not in seen:
            seen.add(kind)
            print("PROBLEM", problem[:600])
    return 1 if tally.problems else 0


if __name__ == "__main__":
    sys.exit(main())

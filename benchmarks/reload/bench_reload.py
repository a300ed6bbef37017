"""CPU of compiling a policy again in a running process (what a SIGHUP reload or an in-process test server pays).

Usage: python benchmarks/reload/bench_reload.py [--root CHECKOUT] [--config FILE] [-n 10]
``--root`` runs another checkout's code (a ``git worktree`` of the commit before a change) for a same-run comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--config", type=Path, default=None, help="default: ROOT/configs/demo.yaml")
    parser.add_argument("-n", type=int, default=10)
    args = parser.parse_args()
    sys.path.insert(0, str(args.root))
    from metering.prices import release_table
    from router.config_loader import load_policy

    config = args.config or args.root / "configs" / "demo.yaml"

    def once() -> float:
        start = time.process_time()
        load_policy(config)
        release_table()  # what a running proxy does after compiling (proxy/runtime.py)
        return time.process_time() - start

    first = once()
    again = [once() for _ in range(args.n)]
    print(f"{args.root}: first load {first * 1000:.0f} ms, reload median {statistics.median(again) * 1000:.1f} ms "
          f"(min {min(again) * 1000:.1f}, n={args.n}) of CPU")


if __name__ == "__main__":
    main()

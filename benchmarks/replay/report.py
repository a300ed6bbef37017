"""Tables and ASCII curves of replay runs (``benchmarks/out/replay/*.json`` written by ``run.py --out``), as
Markdown for RESULTS.md.

    .venv/bin/python benchmarks/replay/report.py benchmarks/out/replay/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

WIDTH = 50


def table(run: dict[str, Any]) -> str:
    out = [f"### {run['file']}: {run['requests']} requests, checkpoint every {run['every']}, "
           f"shadow share {run['shadow_share']}, min_holdout {run['min_holdout']}, margin {run['margin']}, "
           + (f"bootstrap confidence {run['confidence']}, " if "confidence" in run else "") +
           f"calibrated to {run['target_quality']:.0%} judged quality ({run['wall_s']:.0f} s)",
           "",
           f"Always-weak quality is {run['weak_mean'] / run['strong_mean']:.1%} of always-frontier's on these "
           f"requests; always-frontier would have cost ${run['always_frontier_usd']:.4f}, routing cost "
           f"${run['routed_usd']:.4f} ({run['routed_usd'] / run['always_frontier_usd']:.1%}).",
           "",
           "| requests | judged | serving | retrain at this checkpoint (gate: candidate / current held-out APGR) "
           "| threshold after | frontier share (window) | quality vs always-frontier: window / cumulative "
           "| cost vs always-frontier: window / cumulative | + shadow & judge (cumulative) "
           "| APGR on unseen traffic: serving / new candidate / prior / length |",
           "|---:|---:|---|---|---:|---:|---|---:|---:|---|"]
    for c in run["checkpoints"]:
        gate = c.get("gate_holdout_apgr") or {}
        interval = c.get("gate_interval")
        ci = f", interval {interval[0]:+.3f} .. {interval[1]:+.3f}" if interval else ""
        verdict = c["retrain"] + (f" ({gate['candidate']:.3f} / {gate['current']:.3f}{ci})" if gate else "")
        if c.get("watch", "-") != "-":
            verdict = f"watch: {c['watch']}; " + verdict
        apgr = c["apgr_unseen"]
        candidate = c["retrain"].split()[1] if c["retrain"].startswith(("kept", "promoted")) else None
        serving = apgr.get(c["serving"])
        cells = [f"{serving:.3f}" if serving is not None else "-",
                 f"{apgr[candidate]:.3f}" if candidate and candidate in apgr and candidate != c["serving"] else "-",
                 f"{apgr['prior']:.3f}" if "prior" in apgr else "-",
                 f"{apgr['length']:.3f}" if "length" in apgr else "-"]
        out.append(f"| {c['requests']} | {c['judged']} | {c['serving']} | {verdict} | {c['threshold']:.4f} "
                   f"| {c['frontier_share']:.1%} | {c['quality_window']:.1%} / {c['quality']:.1%} "
                   f"| {c['cost_window']:.1%} / {c['cost']:.1%} | {c['learning_cost']:.1%} | {' / '.join(cells)} |")
    return "\n".join(out)


def curve(run: dict[str, Any]) -> str:
    """Quality (q) and cost (c) vs always-frontier over each window between checkpoints, 0-100% across."""
    lines = [f"{run['file']}: quality (q) and cost (c) as % of always-frontier, per window (* = both)",
             f"{'requests':>8} 0%{' ' * (WIDTH - 6)}100%"]
    for c in run["checkpoints"]:
        row = [" "] * (WIDTH + 1)
        for mark, value in (("c", c["cost_window"]), ("q", c["quality_window"])):
            i = round(min(max(value, 0.0), 1.0) * WIDTH)
            row[i] = "*" if row[i] != " " else mark
        lines.append(f"{c['requests']:>8} |{''.join(row)}|")
    return "\n".join(lines)


def main() -> None:
    runs = [json.loads(Path(p).read_text()) for p in sys.argv[1:]]
    for run in runs:
        print(table(run) + "\n\n```\n" + curve(run) + "\n```\n")


if __name__ == "__main__":
    main()

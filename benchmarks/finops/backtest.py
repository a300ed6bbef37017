"""Backtest of the month-end forecast and of the anomaly detector on the synthetic ledger of ``synth.py``.

    .venv/bin/python benchmarks/finops/synth.py --out /tmp/finops/ledger.db --seed 7
    .venv/bin/python benchmarks/finops/backtest.py --ledger /tmp/finops/ledger.db [--json out.json] [--sweep]

Forecasts: for every team, key, tag and model, each month of the ledger, made at the start of day 8, 15 and 22
(7, 14 and 21 full days observed), the month-end forecast against the actual month-end spend, as MAPE, beside
the naive run rate (month-to-date / days elapsed * days in the month), and the share of actual month-end spends
inside the reported 80% interval. Reads through the same functions ``tiergate forecast`` uses.

Anomalies: ``detect`` over every hour after the first 8 days (a week of baseline), episodes compared with the
generator's marks (``truth.json``). A detection is right when its (scope, metric) is one the injected anomaly
moves (its primary pairs, or the parents and siblings it necessarily moves) and it starts during the anomaly;
recall counts an anomaly found when a detection matches one of its primary pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from metering.finops import forecast  # noqa: E402
from metering.finops.anomaly import Episode, Rules, detect  # noqa: E402
from metering.finops.daily import daily_spend  # noqa: E402
from metering.finops.forecast import forecast_month, run_rate  # noqa: E402
from metering.finops.hourly import request_rows  # noqa: E402
from metering.finops.scopes import DIMENSIONS, Scope  # noqa: E402
from metering.ledger import open_ledger  # noqa: E402
from metering.ledger.base import month_bounds  # noqa: E402

CHECKPOINTS = (7, 14, 21)


def months(start: date, end: date) -> list[date]:
    out, day = [], start.replace(day=1)
    while day < end:
        out.append(day)
        day = month_bounds(day)[1]
    return out


def forecast_scores(series: dict[Scope, dict[date, int]], start: date, end: date) -> dict:
    """Per checkpoint: MAPE of the model and of the run rate, interval coverage, over scopes and months."""
    out: dict = {}
    for k in CHECKPOINTS:
        model, naive, covered, cases = [], [], [], []
        for month in months(start, end):
            month_start, month_end = month_bounds(month)
            if month_start < start or month_end > end:
                continue  # only whole months have a true month-end
            for history in series.values():
                actual = sum(v for d, v in history.items() if month_start <= d < month_end)
                if actual <= 0:
                    continue
                as_of = month_start + timedelta(days=k)
                f = forecast_month(history, as_of)
                model.append(abs(f.projected - actual) / actual)
                naive.append(abs(run_rate(history, as_of) - actual) / actual)
                covered.append(f.low <= actual <= f.high)
                cases.append(month.isoformat()[:7])
        out[f"day_{k}"] = {"mape_model_pct": round(100 * mean(model), 1), "mape_naive_pct": round(100 * mean(naive), 1),
                           "interval_80_coverage_pct": round(100 * mean(covered), 1), "cases": len(model)}
    return out


def _pair(e: Episode) -> list[str]:
    return [e.scope.dimension, e.scope.team, e.scope.name, e.metric]


def anomaly_scores(episodes: list[Episode], truth: list[dict]) -> dict:
    spans = [(datetime.fromisoformat(a["start"]), datetime.fromisoformat(a["end"]) + timedelta(hours=1), a)
             for a in truth]
    correct, false = 0, []
    found: set[str] = set()
    for e in episodes:
        hits = [a for s, t, a in spans if s <= e.started_at < t and _pair(e) in a["primary"] + a["affected"]]
        if hits:
            correct += 1
            found.update(a["id"] for a in hits if _pair(e) in a["primary"])
        else:
            false.append(e)
    by_kind: dict[str, list[int]] = {}
    for a in truth:
        by_kind.setdefault(a["kind"], [0, 0])
        by_kind[a["kind"]][0] += a["id"] in found
        by_kind[a["kind"]][1] += 1
    false_by_metric: dict[str, int] = {}
    for e in false:
        metric = f"{e.scope.dimension}/{e.metric}"
        false_by_metric[metric] = false_by_metric.get(metric, 0) + 1
    return {
        "episodes": len(episodes), "correct": correct,
        "precision_pct": round(100 * correct / len(episodes), 1) if episodes else None,
        "anomalies": len(truth), "found": len(found), "recall_pct": round(100 * len(found) / len(truth), 1),
        "recall_by_kind": {k: f"{n}/{d}" for k, (n, d) in sorted(by_kind.items())},
        "false_positives_by_dimension_metric": dict(sorted(false_by_metric.items())),
        "missed": [a["id"] + " " + a["kind"] for a in truth if a["id"] not in found],
    }


def forecast_sweep(series: dict[str, dict[Scope, dict[date, int]]], start: date, end: date) -> dict:
    """Team-level MAPE at days 7/14/21 for other trend dampings and fit windows (how much the choice matters)."""
    out = {}
    saved = (forecast.PHI, forecast.FIT_DAYS)
    try:
        for phi in (1.0, 0.98, 0.95, 0.9):
            for fit_days in (14, 28):
                forecast.PHI, forecast.FIT_DAYS = phi, fit_days
                scores = forecast_scores(series["team"], start, end)
                out[f"phi={phi} fit_days={fit_days}"] = [scores[f"day_{k}"]["mape_model_pct"] for k in CHECKPOINTS]
    finally:
        forecast.PHI, forecast.FIT_DAYS = saved
    return out


def anomaly_sweep(rows: list, start: datetime, end: datetime, truth: list[dict]) -> dict:
    """Precision and recall at other minimum hourly spends (the knob that says what is worth an alert)."""
    out = {}
    for usd in ("0.05", "0.25", "1.00"):
        thresholds = dict(Rules().thresholds)
        thresholds["spend"] = replace(thresholds["spend"], min_value=int(Decimal(usd) * 10**9))
        scores = anomaly_scores(detect(rows, start, end, frozenset({"frontier"}), Rules(thresholds=thresholds)), truth)
        out[f"min_spend=${usd}/h"] = {k: scores[k] for k in ("episodes", "precision_pct", "recall_pct")}
    return out


async def run(ledger_url: str, truth_path: Path, sweep: bool) -> dict:
    truth = json.loads(truth_path.read_text())
    start = date.fromisoformat(truth["start"])
    end = start + timedelta(days=truth["days"])
    ledger = open_ledger(ledger_url, spool_dir=None)
    await ledger.start()
    try:
        t0 = time.perf_counter()
        series = {dim: await daily_spend(ledger, dim, start, end) for dim in DIMENSIONS}
        forecasts = {dim: forecast_scores(s, start, end) for dim, s in series.items()}
        t1 = time.perf_counter()
        midnight = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
        rows = await request_rows(ledger, midnight, midnight + timedelta(days=truth["days"]))
        t2 = time.perf_counter()
        episodes = detect(rows, midnight + timedelta(days=8), midnight + timedelta(days=truth["days"]),
                          frozenset({"frontier"}))
        t3 = time.perf_counter()
    finally:
        await ledger.close()
    result = {
        "ledger": {"records": truth["records"], "days": truth["days"], "seed": truth["seed"]},
        "forecast": forecasts, "forecast_seconds": round(t1 - t0, 2),
        "anomalies": anomaly_scores(episodes, truth["anomalies"]),
        "anomaly_read_seconds": round(t2 - t1, 2), "anomaly_detect_seconds": round(t3 - t2, 2),
    }
    if sweep:
        result["forecast_sweep_team_mape_pct_day_7_14_21"] = forecast_sweep(series, start, end)
        result["anomaly_sweep"] = anomaly_sweep(rows, midnight + timedelta(days=8),
                                                midnight + timedelta(days=truth["days"]), truth["anomalies"])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledger", required=True, type=Path, help="SQLite ledger written by synth.py")
    parser.add_argument("--truth", type=Path, help="default: truth.json beside the ledger")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--sweep", action="store_true", help="also other trend dampings, fit windows and minimum "
                                                             "hourly spends")
    args = parser.parse_args()
    result = asyncio.run(run(f"sqlite:///{args.ledger}", args.truth or args.ledger.with_name("truth.json"),
                             args.sweep))
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

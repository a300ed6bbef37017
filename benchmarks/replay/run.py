"""Replay harness (issue 12, section 3): drive a running proxy with a routing-outcome file as traffic and measure
the learning loop end to end.

What runs, as in production: a real ``tiergate serve`` subprocess (one worker, SQLite ledger), real HTTP from this
process (httpx), two simulated tiers that answer each prompt with the grade the file recorded for it
(``simulator.outcomes``: the weak model's grade on ``small``, the strong model's on ``frontier``), a simulated judge
(the simulator's judge mode, which returns the recorded comparison), shadow sampling, the outcome store, retraining
through the admin API every ``--every`` requests, the promotion gate (the team's ``promote_margin`` /
``min_holdout``), and ``tiergate calibrate --team`` after each retrain, whose threshold is written to the policy
file (the proxy reloads it). A new team starts with the default config's frontier threshold (0.416).

Reported at each checkpoint: routed quality (the recorded grade of the tier each request was served by) and cost
(the proxy's ``x-tiergate-cost-usd``) against always-frontier (every request at the strong grade and the frontier
price), the shadow and judge spend the loop cost, and the APGR of the serving model, of the default prior and of
prompt length on the traffic not yet sent. Prices are the data card's per file (``PAIRS``).

Only the DEV files the data card allows for this (AlpacaEval is evaluation-only and its self-instruct rows must
not train anything, and this loop trains): ``mmlu_dev``, ``mmlu_pro``, ``math_l5``, ``llmrouter``.

    .venv/bin/python benchmarks/replay/run.py --file math_l5 --requests 700 --every 100
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from classifiers.metrics import evaluate  # noqa: E402
from classifiers.scorer import ComplexityScorer  # noqa: E402
from router.scoring import LengthScorer  # noqa: E402
from simulator.outcomes import graded_answer, prompt_key  # noqa: E402
from text.tokens import count_text  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "routing"
# file -> (weak $/1M in, out), (strong $/1M in, out): the data card's price table (litellm 1.110.2). nemotron-51b has
# no entry there; it is priced as an assumption (llmrouter's ratio is then 0.2 / 0.9).
PAIRS: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "mmlu_dev": (("0.60", "0.60"), ("10.00", "30.00")),  # Mixtral-8x7B -> gpt-4-1106-preview
    "mmlu_pro": (("0.60", "0.60"), ("1.25", "5.00")),  # Mixtral-8x7B -> gemini-1.5-pro (assumed: no table entry)
    "math_l5": (("0.25", "1.25"), ("3.00", "15.00")),  # claude-3-haiku -> claude-3.5-sonnet
    "llmrouter": (("0.20", "0.20"), ("0.90", "0.90")),  # mistral-7b -> nemotron-51b (assumed)
}
START_THRESHOLD = 0.416  # configs/default.yaml's frontier threshold: what a new team starts with
TEAM, KEY, ADMIN = "replay", "sk-replay", "sk-replay-admin"


def rows_of(name: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` rows of one file in a seeded order, one per prompt (the simulator keys prompts by their text)."""
    if name not in PAIRS:
        raise SystemExit(f"--file must be one of {', '.join(PAIRS)} (alpaca_eval is evaluation-only)")
    seen: set[str] = set()
    rows = []
    with open(DATA / f"{name}.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            key = prompt_key(row["messages"])
            if key not in seen:
                seen.add(key)
                rows.append({k: row[k] for k in ("id", "messages", "weak_score", "strong_score")})
    random.Random(seed).shuffle(rows)
    return rows[:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def policy_yaml(tmp: Path, traffic: Path, name: str, threshold: float, shadow_share: float, min_holdout: int,
                margin: float, confidence: float) -> str:
    (w_in, w_out), (s_in, s_out) = PAIRS[name]
    sha = lambda key: hashlib.sha256(key.encode()).hexdigest()  # noqa: E731
    return f"""# written by benchmarks/replay/run.py
metering: {{ledger: 'sqlite:///{tmp}/ledger.db', spool_dir: '{tmp}/spool'}}
admin_keys: [{{id: admin, sha256: {sha(ADMIN)}}}]
tiers:
  - name: small
    deployments:
      - {{id: weak, model: simulated/weak-model, context_window: 128000, price: {{input: {w_in}, output: {w_out}}},
         simulator: {{outcomes: '{traffic}', outcomes_grade: weak}}}}
  - name: frontier
    deployments:
      - {{id: strong, model: simulated/strong-model, context_window: 128000, price: {{input: {s_in}, output: {s_out}}},
         simulator: {{outcomes: '{traffic}', outcomes_grade: strong}}}}
  - name: judge
    deployments:
      - {{id: judge-sim, model: simulated/judge-model, context_window: 128000,
         price: {{input: {s_in}, output: {s_out}}}}}
teams:
  {TEAM}:
    keys: [{{id: replay-key, sha256: {sha(KEY)}}}]
    tiers: {{floor: small, ceiling: frontier}}
    routing: {{thresholds: {{frontier: {threshold:.6f}}}}}
    learning: {{shadow_share: {shadow_share}, shadow_daily_usd: 1000, judge: judge-sim, store_prompts: true,
               promote_margin: {margin}, min_holdout: {min_holdout}, promote_confidence: {confidence}}}
"""


@dataclass
class Checkpoint:
    requests: int
    judged: int
    threshold: float
    serving: str  # "prior" or "v<N>"
    retrain: str  # what the retrain at this checkpoint did
    frontier_share: float  # of the requests since the last checkpoint
    quality_window: float  # routed quality / always-frontier quality, since the last checkpoint
    quality: float  # cumulative, same ratio
    cost_window: float  # routed cost / always-frontier cost since the last checkpoint (client traffic only)
    cost: float  # cumulative, same ratio
    learning_cost: float  # cumulative shadow + judge spend / always-frontier cost
    apgr_unseen: dict[str, float] = field(default_factory=dict)  # serving model, new candidate, prior, length
    gate_holdout_apgr: dict[str, float] = field(default_factory=dict)  # the gate's verdict: candidate vs current
    gate_interval: list[float] | None = None  # the gate's bootstrap interval of the difference (None: off)
    watch: str = "-"  # what the watch did before the retrain ("rolled back v1", "kept v1", "-")
    watch_detail: dict[str, Any] | None = None  # the admin API's "watch" object


class Proxy:
    def __init__(self, config: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config),
                                          "--port", str(self.port), "--workers", "1"], cwd=ROOT, env=env,
                                         stdout=out, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=600)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"tiergate serve exited:\n{log.read_text()[-3000:]}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit("tiergate serve did not become ready")

    def sha(self) -> str:
        return str(self.client.get("/readyz").json()["config"]["sha256"])

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute(sql).fetchone()[0] or 0)
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def settle(db: Path) -> int:
    """Wait until the background shadow and judge calls have landed (the counts stop moving); the judged rows."""
    last, stable = (-1, -1), 0
    while stable < 4:
        time.sleep(0.25)
        now = (_count(db, "SELECT COUNT(*) FROM outcomes"),
               _count(db, "SELECT COUNT(*) FROM records WHERE purpose IN ('shadow', 'judge')"))
        stable = stable + 1 if now == last else 0
        last = now
    return last[0]


def active_model(db: Path) -> tuple[str, bytes | None]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT version, model FROM routing_models WHERE team = ? AND status = 'active'",
                           (TEAM,)).fetchone()
    finally:
        conn.close()
    return ("prior", None) if row is None else (f"v{row[0]}", bytes(row[1]))


def model_bytes(db: Path, version: int) -> bytes:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return bytes(conn.execute("SELECT model FROM routing_models WHERE team = ? AND version = ?",
                                  (TEAM, version)).fetchone()[0])
    finally:
        conn.close()


def calibrate(config: Path, target: float) -> float | None:
    """``tiergate calibrate --team`` as an operator runs it: the threshold it prints, or None when it cannot."""
    out = subprocess.run([sys.executable, "-m", "proxy.cli", "calibrate", "--team", TEAM, "--config", str(config),
                          "--target-quality", str(target)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    found = re.search(r"frontier: ([0-9.]+)", out.stdout)
    return float(found.group(1)) if out.returncode == 0 and found else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = rows_of(args.file, args.requests, args.seed)
    weak = np.array([r["weak_score"] for r in rows])
    strong = np.array([r["strong_score"] for r in rows])
    messages = [r["messages"] for r in rows]
    prior_scores = np.array(ComplexityScorer.load().score_many(messages))
    length = LengthScorer()
    length_scores = np.array([length.score(m) for m in messages])
    (_, _), (s_in, s_out) = PAIRS[args.file]
    frontier_price = (Decimal(s_in), Decimal(s_out))
    tmp = Path(tempfile.mkdtemp(prefix="replay-"))
    traffic = tmp / "traffic.jsonl"  # the rows sent, for the simulator (a subset of the shared file)
    traffic.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp / "policy.yaml"
    threshold = START_THRESHOLD

    def write_policy() -> None:
        config.write_text(policy_yaml(tmp, traffic, args.file, threshold, args.shadow_share, args.min_holdout,
                                      args.margin, args.confidence))

    write_policy()
    db = tmp / "ledger.db"
    proxy = Proxy(config, tmp / "proxy.log")
    headers = {"authorization": f"Bearer {KEY}"}
    admin = {"authorization": f"Bearer {ADMIN}"}
    routed_q = frontier_q = routed_cost = frontier_cost = Decimal(0)
    window: list[tuple[bool, float, float]] = []  # (went to frontier, routed grade, strong grade)
    window_cost = [Decimal(0), Decimal(0)]  # routed, always-frontier
    checkpoints: list[Checkpoint] = []
    started = time.monotonic()
    try:
        for i, row in enumerate(rows, 1):
            r = proxy.client.post("/v1/chat/completions", headers=headers,
                                  json={"model": "auto", "messages": row["messages"], "max_tokens": 64})
            r.raise_for_status()
            tier = r.headers["x-tiergate-tier"]
            grade = row["strong_score"] if tier == "frontier" else row["weak_score"]
            text = r.json()["choices"][0]["message"]["content"]
            assert text == graded_answer(grade), (row["id"], tier, text)  # the simulator replayed the record
            usage = r.json()["usage"]
            strong_tokens = count_text(graded_answer(row["strong_score"]))
            paid = Decimal(r.headers["x-tiergate-cost-usd"])
            frontier = (usage["prompt_tokens"] * frontier_price[0] + strong_tokens * frontier_price[1]) / 10**6
            routed_cost, frontier_cost = routed_cost + paid, frontier_cost + frontier
            window_cost = [window_cost[0] + paid, window_cost[1] + frontier]
            routed_q += Decimal(str(grade))
            frontier_q += Decimal(str(row["strong_score"]))
            window.append((tier == "frontier", grade, row["strong_score"]))
            if i % args.every and i != len(rows):
                continue
            judged = settle(db)
            retrain, gate, candidate, interval, watched, watch_detail = "-", {}, None, None, "-", None
            if judged >= 4 * args.min_holdout:  # fewer: the gate (newest 25% held out) could not promote anything
                done = proxy.client.post(f"/v1/routing/models/{TEAM}/retrain", headers=admin, json={"seed": 0})
                body = done.json()
                if done.status_code == 200:
                    version = body["model"]["version"]
                    retrain = ("promoted v%d" if body["promoted"] else "kept v%d as candidate") % version
                    gate = body["model"]["metrics"]["holdout_apgr"]
                    interval = (body["model"]["metrics"].get("bootstrap") or {}).get("interval")
                    candidate = (f"v{version}", model_bytes(db, version))
                    watch_detail = body.get("watch")
                    if watch_detail is not None:
                        watched = watch_summary(watch_detail)
                else:
                    retrain = f"no fit ({done.status_code})"
            serving, model = active_model(db)
            if judged >= 50:
                found = calibrate(config, args.target_quality)
                if found is not None and found != threshold:
                    before, threshold = proxy.sha(), found
                    write_policy()
                    deadline = time.monotonic() + 10
                    while proxy.sha() == before and time.monotonic() < deadline:
                        time.sleep(0.2)
            rest = slice(i, len(rows))
            apgr: dict[str, float] = {}
            if len(rows) - i >= 50:
                for name, data in ((serving, model), candidate or (serving, None)):
                    if data is not None and name not in apgr:
                        apgr[name] = evaluate(np.array(ComplexityScorer(data).score_many(messages[rest])),
                                              weak[rest], strong[rest]).apgr
                apgr["prior"] = evaluate(prior_scores[rest], weak[rest], strong[rest]).apgr
                apgr["length"] = evaluate(length_scores[rest], weak[rest], strong[rest]).apgr
            learning = learning_spend(db)
            w_strong = sum(s for _, _, s in window) or 1.0
            point = Checkpoint(
                requests=i, judged=judged, threshold=threshold, serving=serving, retrain=retrain,
                frontier_share=sum(f for f, _, _ in window) / len(window),
                quality_window=sum(g for _, g, _ in window) / w_strong,
                quality=float(routed_q / frontier_q), cost_window=float(window_cost[0] / window_cost[1]),
                cost=float(routed_cost / frontier_cost),
                learning_cost=float(learning / frontier_cost), apgr_unseen={k: round(v, 4) for k, v in apgr.items()},
                gate_holdout_apgr=gate, gate_interval=interval, watch=watched, watch_detail=watch_detail)
            checkpoints.append(point)
            window, window_cost = [], [Decimal(0), Decimal(0)]
            print(line(point), flush=True)
        scraped = proxy.client.get("/metrics", headers=admin).text
        rollbacks = sum(float(line.rsplit(" ", 1)[1]) for line in scraped.splitlines()
                        if line.startswith("tiergate_routing_model_rollbacks_total{"))
    finally:
        proxy.stop()
    return {"file": args.file, "requests": len(rows), "every": args.every, "seed": args.seed,
            "shadow_share": args.shadow_share, "min_holdout": args.min_holdout, "margin": args.margin,
            "confidence": args.confidence, "rollbacks_metric": rollbacks,
            "target_quality": args.target_quality, "wall_s": round(time.monotonic() - started, 1),
            "always_frontier_usd": float(frontier_cost), "routed_usd": float(routed_cost),
            "weak_mean": float(weak.mean()), "strong_mean": float(strong.mean()),
            "checkpoints": [asdict(c) for c in checkpoints], "ledger": str(db)}


def watch_summary(w: dict[str, Any]) -> str:
    """One cell: what the watch did to the serving model before this checkpoint's retrain."""
    if w["difference"] is None:
        return f"v{w['version']}: {w['n_rows']} rows since promotion"
    d = w["difference"]
    interval = f" [{d['interval'][0]:+.3f}, {d['interval'][1]:+.3f}]" if d["interval"] else ""
    verb = "rolled back" if w["rolled_back"] else "kept"
    return f"{verb} v{w['version']} ({d['difference']:+.3f}{interval} on {w['n_rows']} rows)"


def learning_spend(db: Path) -> Decimal:
    nanos = _count(db, "SELECT SUM(cost_nanos) FROM records WHERE purpose IN ('shadow', 'judge')")
    return Decimal(nanos) / 10**9


def line(c: Checkpoint) -> str:
    apgr = " ".join(f"{k}={v:.3f}" for k, v in c.apgr_unseen.items())
    if c.gate_holdout_apgr:
        apgr += f"  (gate: candidate {c.gate_holdout_apgr['candidate']:.3f} vs {c.gate_holdout_apgr['current']:.3f}"
        apgr += f", interval [{c.gate_interval[0]:+.3f}, {c.gate_interval[1]:+.3f}])" if c.gate_interval else ")"
    if c.watch != "-":
        apgr += f"  watch: {c.watch}"
    return (f"{c.requests:5d} req  judged {c.judged:4d}  serving {c.serving:6s} thr {c.threshold:.4f}  "
            f"frontier {c.frontier_share:5.1%}  quality {c.quality_window:6.1%} (cum {c.quality:6.1%})  "
            f"cost {c.cost_window:6.1%} (cum {c.cost:6.1%}) +learning {c.learning_cost:5.1%}  {c.retrain:24s} "
            f"APGR unseen: {apgr}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", required=True, help=f"one of {', '.join(PAIRS)}")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--every", type=int, default=100, help="checkpoint (retrain, calibrate, report) every N requests")
    p.add_argument("--shadow-share", type=float, default=0.5)
    p.add_argument("--min-holdout", type=int, default=50, help="the team's learning.min_holdout")
    p.add_argument("--margin", type=float, default=0.01, help="the team's learning.promote_margin")
    p.add_argument("--confidence", type=float, default=0.8,
                   help="the team's learning.promote_confidence (0: the margin alone, the gate before the bootstrap)")
    p.add_argument("--target-quality", type=float, default=0.95, help="tiergate calibrate --target-quality")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the run as JSON here")
    args = p.parse_args()
    result = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{args.file}: {result['requests']} requests in {result['wall_s']} s; routed ${result['routed_usd']:.4f} "
          f"vs always-frontier ${result['always_frontier_usd']:.4f}")


if __name__ == "__main__":
    main()

"""A synthetic 90-day ledger with known trends, weekly and daily cycles, one-off spikes and marked anomalies.

    .venv/bin/python benchmarks/finops/synth.py --out /tmp/finops/ledger.db [--seed 7] [--days 90]

Writes every record through the real ledger (``open_ledger("sqlite:///...").write``, the proxy's own path) and,
beside it, ``truth.json``: the generator's parameters and each injected anomaly with the scopes and metrics it
moves. Seeded and deterministic: the same seed gives the same records (the ledger's own entry ids differ per run).

Four teams, each a different shape, so a forecaster cannot win by assuming one:

- research: growing 1.5% a day, quiet weekends (35% of a weekday);
- support:  flat, mild weekends (80%), then a permanent +40% step on day 50;
- growth:   growing linearly (+4% of its start level a day), weekends at 50%;
- batch:    shrinking 0.8% a day, no weekly cycle, and one-off batch days at 4x (a one-off spike).

Within a day, requests follow a business-hours profile (UTC); each hour's count is Poisson around its mean, and
each day has a multiplicative noise (lognormal, sigma 0.12). Each team has three keys (60/30/10% of traffic) and
two project tags (70/30; 10% of requests untagged); tiers small/mid/frontier are priced as gpt-4o-mini / gpt-4o /
o1 from tiergate's own price arithmetic.

Injected anomalies (after a 9-day warm-up, so each has a week of baseline): a key sending 8x its usual traffic,
a tag whose requests all go to the frontier tier, a model whose outputs grow 3x, a team bursting 5x; and the
batch team's 4x days (a day-long burst). Each is
marked with its primary (scope, metric) pairs and every other pair it necessarily moves (the team of a bursting
key spends more too): a detector firing on those is right, not a false positive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from metering.ledger import open_ledger  # noqa: E402
from metering.prices import Price  # noqa: E402
from metering.record import UsageRecord  # noqa: E402
from metering.usage import Usage, cost_nanos  # noqa: E402

START = date(2026, 1, 1)
TIERS = ("small", "mid", "frontier")
MODELS = {"small": "gpt-4o-mini", "mid": "gpt-4o", "frontier": "o1"}
PRICES = {
    "small": Price.per_million(Decimal("0.15"), Decimal("0.60")),
    "mid": Price.per_million(Decimal("2.50"), Decimal("10.00")),
    "frontier": Price.per_million(Decimal("15.00"), Decimal("60.00")),
}
# Median output tokens per tier (reasoning models write more).
OUTPUT_MEDIAN = {"small": 220, "mid": 320, "frontier": 700}
# Business-hours profile (UTC), relative weights per hour.
HOURLY = (0.25, 0.2, 0.18, 0.18, 0.2, 0.3, 0.5, 0.8, 1.2, 1.5, 1.6, 1.6,
          1.5, 1.6, 1.6, 1.5, 1.3, 1.0, 0.8, 0.6, 0.5, 0.4, 0.35, 0.3)
KEY_SHARES = (0.6, 0.3, 0.1)
WARMUP_DAYS = 9


@dataclass(frozen=True)
class TeamShape:
    name: str
    requests_per_day: float  # weekday level at day 0
    weekend: float  # Saturday/Sunday level relative to a weekday
    growth: float = 0.0  # compound per day
    linear: float = 0.0  # share of the day-0 level added per day
    step_day: int | None = None
    step: float = 1.0
    batch_days: tuple[int, ...] = ()
    batch_factor: float = 1.0
    tier_mix: tuple[float, float, float] = (0.7, 0.2, 0.1)

    def mean_requests(self, day_index: int, day: date) -> float:
        level = self.requests_per_day * (1 + self.growth) ** day_index * (1 + self.linear * day_index)
        if self.step_day is not None and day_index >= self.step_day:
            level *= self.step
        if day.weekday() >= 5:
            level *= self.weekend
        if day_index in self.batch_days:
            level *= self.batch_factor
        return level


TEAMS = (
    TeamShape("research", 700, 0.35, growth=0.015),
    TeamShape("support", 1300, 0.8, step_day=50, step=1.4, tier_mix=(0.8, 0.2, 0.0)),
    TeamShape("growth", 350, 0.5, linear=0.04),
    TeamShape("batch", 500, 1.0, growth=-0.008, batch_days=(17, 38, 61, 80), batch_factor=4.0),
)


@dataclass
class Anomaly:
    id: str
    kind: str  # key_burst | tag_frontier | model_output | team_burst | batch_day
    start: datetime
    end: datetime  # exclusive
    primary: list[list[str]]  # [dimension, team, name, metric]
    affected: list[list[str]] = field(default_factory=list)
    team: str = ""
    key: str = ""
    tag: str = ""
    model: str = ""

    def active(self, hour: datetime) -> bool:
        return self.start <= hour < self.end


def keys_of(team: str) -> list[str]:
    return [f"{team}-k{i}" for i in range(len(KEY_SHARES))]


def tags_of(team: str) -> list[str]:
    return [f"{team}-main", f"{team}-side"]


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 40:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def plan_anomalies(rng: random.Random, days: int) -> list[Anomaly]:
    """Six of each kind, at random hours after the warm-up, never two on the same team at once."""
    out: list[Anomaly] = []
    kinds = ["key_burst", "tag_frontier", "model_output", "team_burst"] * 6
    rng.shuffle(kinds)
    busy: list[tuple[str, datetime, datetime]] = []
    model_busy: list[tuple[datetime, datetime]] = []
    for n, kind in enumerate(kinds):
        for _ in range(200):
            day = rng.randrange(WARMUP_DAYS, days - 1)
            hour = rng.randrange(7, 18)  # business hours: enough traffic to measure
            start = datetime.combine(START + timedelta(days=day), datetime.min.time(), tzinfo=UTC)
            start += timedelta(hours=hour)
            length = {"key_burst": rng.randrange(2, 5), "tag_frontier": 3, "model_output": 4, "team_burst": 3}[kind]
            end = start + timedelta(hours=length)
            team = rng.choice([t.name for t in TEAMS if kind != "tag_frontier" or t.tier_mix[2] > 0])
            # A week apart from anything else on the same team (or model): each keeps a clean baseline.
            gap = timedelta(days=8)
            if any(t == team and s - gap < end and start < e + gap for t, s, e in busy):
                continue
            if kind == "model_output" and any(s - gap < end and start < e + gap for s, e in model_busy):
                continue
            busy.append((team, start, end))
            if kind == "model_output":
                model_busy.append((start, end))
            out.append(_mark(Anomaly(f"a{n:02d}", kind, start, end, [], team=team), rng))
            break
    # The batch team's 4x days are one-off spikes for the forecast and, hour by hour, anomalies too.
    for team in TEAMS:
        for day in team.batch_days:
            start = datetime.combine(START + timedelta(days=day), datetime.min.time(), tzinfo=UTC)
            out.append(_mark(Anomaly(f"b{day:02d}", "batch_day", start, start + timedelta(days=1), [],
                                     team=team.name), rng))
    return sorted(out, key=lambda a: a.start)


def _mark(a: Anomaly, rng: random.Random) -> Anomaly:
    team_scope = ["team", a.team, a.team]
    models = [["model", "", m] for m in MODELS.values()]
    tags = [["tag", a.team, f"project={t}"] for t in tags_of(a.team)]
    keys = [["key", a.team, k] for k in keys_of(a.team)]
    if a.kind == "key_burst":
        a.key = rng.choice(keys_of(a.team)[:2])
        a.primary = [["key", a.team, a.key, m] for m in ("spend", "requests")]
        a.affected = [[*s, m] for s in [team_scope, *tags, *models] for m in ("spend", "requests")]
    elif a.kind == "tag_frontier":
        a.tag = f"project={tags_of(a.team)[0]}"
        a.primary = [["tag", a.team, a.tag, "frontier_share"]]
        a.affected = [[*s, m] for s in [team_scope, *keys, ["tag", a.team, a.tag], ["model", "", "o1"]]
                      for m in ("frontier_share", "spend", "requests")]
    elif a.kind == "model_output":
        a.model = rng.choice(list(MODELS.values()))
        a.primary = [["model", "", a.model, "p95_output_tokens"]]
        # Every team uses every model: longer outputs lengthen (and dear) everyone's requests on it.
        everyone = [s for t in TEAMS for s in (["team", t.name, t.name], *(["key", t.name, k] for k in keys_of(t.name)),
                                                *(["tag", t.name, f"project={g}"] for g in tags_of(t.name)))]
        a.affected = [[*s, m] for s in [*everyone, ["model", "", a.model]] for m in ("p95_output_tokens", "spend")]
    else:  # team_burst, batch_day
        a.primary = [["team", a.team, a.team, m] for m in ("spend", "requests")]
        a.affected = [[*s, m] for s in [*keys, *tags, *models] for m in ("spend", "requests")]
    return a


def generate(seed: int, days: int) -> tuple[list[UsageRecord], list[Anomaly]]:
    rng = random.Random(seed)
    anomalies = plan_anomalies(random.Random(seed + 1), days)
    hourly_total = sum(HOURLY)
    records: list[UsageRecord] = []
    for day_index in range(days):
        day = START + timedelta(days=day_index)
        for team in TEAMS:
            day_mean = team.mean_requests(day_index, day) * math.exp(rng.gauss(0, 0.12))
            for hour in range(24):
                at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=hour)
                active = [a for a in anomalies if a.team == team.name and a.active(at)]
                model_active = [a for a in anomalies if a.kind == "model_output" and a.active(at)]
                for key, share in zip(keys_of(team.name), KEY_SHARES):
                    mean = day_mean * HOURLY[hour] / hourly_total * share
                    if any(a.kind == "team_burst" for a in active):
                        mean *= 5
                    if any(a.kind == "key_burst" and a.key == key for a in active):
                        mean *= 8
                    for _ in range(_poisson(rng, mean)):
                        records.append(_request(rng, len(records), team, key, at, active, model_active))
    return records, anomalies


def _request(rng: random.Random, n: int, team: TeamShape, key: str, hour: datetime, active: list[Anomaly],
             model_active: list[Anomaly]) -> UsageRecord:
    draw = rng.random()
    tags: dict[str, str] = {}
    if draw < 0.63:
        tags["project"] = tags_of(team.name)[0]
    elif draw < 0.9:
        tags["project"] = tags_of(team.name)[1]
    tier = rng.choices(TIERS, weights=team.tier_mix)[0]
    if any(a.kind == "tag_frontier" and tags.get("project") == a.tag.split("=", 1)[1] for a in active):
        tier = "frontier"
    model = MODELS[tier]
    prompt = max(20, int(rng.lognormvariate(math.log(800), 0.6)))
    completion = max(1, int(rng.lognormvariate(math.log(OUTPUT_MEDIAN[tier]), 0.5)))
    if any(a.model == model for a in model_active):
        completion *= 3
    started = hour + timedelta(seconds=rng.uniform(0, 3599.0))
    failed = rng.random() < 0.01
    usage = Usage(prompt_tokens=prompt, completion_tokens=0 if failed else completion)
    return UsageRecord.with_usage(
        usage, request_id=f"syn-{n:07d}", started_at=started,
        ended_at=started + timedelta(milliseconds=int(rng.uniform(300, 9000))), team=team.name, key_id=key,
        requested_model="auto", model=model, tier=tier, deployment=f"{tier}-0", status=502 if failed else 200,
        tags=tags, cost_nanos=0 if failed else cost_nanos(usage, PRICES[tier]),
        counterfactual_cost_nanos=0 if failed else cost_nanos(usage, PRICES["frontier"]),
        error="upstream_failed" if failed else None,
    )


async def write(path: Path, records: list[UsageRecord]) -> None:
    ledger = open_ledger(f"sqlite:///{path}", spool_dir=None)
    await ledger.start()
    try:
        for i in range(0, len(records), 5000):
            await asyncio.gather(*(ledger.write(r) for r in records[i:i + 5000]))
    finally:
        await ledger.close()


def truth(seed: int, days: int, anomalies: list[Anomaly], count: int) -> dict:
    return {
        "seed": seed, "start": START.isoformat(), "days": days, "records": count,
        "teams": [t.__dict__ for t in TEAMS],
        "anomalies": [{**a.__dict__, "start": a.start.isoformat(), "end": a.end.isoformat()} for a in anomalies],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="SQLite ledger file to create (must not exist)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=90)
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; the generator writes a fresh ledger")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records, anomalies = generate(args.seed, args.days)
    asyncio.run(write(args.out, records))
    meta = truth(args.seed, args.days, anomalies, len(records))
    args.out.with_name("truth.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{len(records)} records, {len(anomalies)} anomalies -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

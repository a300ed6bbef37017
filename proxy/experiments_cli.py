"""``tiergate experiments`` (each experiment's spend, status and projection, as ``GET /v1/spend/experiments``) and
``tiergate check-config --fail-over-budget`` (a CI gate: a manifest whose projected cost at expiry exceeds its
budget fails the job, naming the experiment).

Both read the ledger the policy file names, read-only (no spool: a CI job or an operator's shell must neither
create spool segments nor replay a running proxy's). A SQLite ledger file that does not exist yet has no spend: the
projections are $0 and nothing is created.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from metering.finops.experiments import ExperimentRow, Projection, experiment_rows, render_text, status_of
from metering.ledger import open_ledger
from proxy.policy_file import load_or_report
from router.policy import Policy


def _no_ledger_yet(url: str) -> bool:
    return url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists()


async def _read(policy: Policy, team: str | None, now: datetime) -> list[ExperimentRow]:
    manifests = [m for m in policy.experiments.manifests if team is None or m.team == team]
    metering = policy.config.metering
    if not manifests:
        return []
    if _no_ledger_yet(metering.ledger):
        return [ExperimentRow(m, 0, 0, status_of(m, 0, now), Projection(m.expires_at or now, 0.0, "no ledger yet"))
                for m in manifests]
    ledger = open_ledger(metering.ledger, spool_dir=None, schema=metering.ledger_schema)
    await ledger.start()
    try:
        return await experiment_rows(ledger, manifests, now)
    finally:
        await ledger.close()


def rows_for(policy: Policy, team: str | None = None) -> tuple[list[ExperimentRow], datetime]:
    now = datetime.now(UTC)
    return asyncio.run(_read(policy, team, now)), now


def over_budget(rows: list[ExperimentRow]) -> list[ExperimentRow]:
    """Experiments still running whose projected cost at expiry exceeds their budget."""
    return [r for r in rows if r.status != "expired" and r.projected_over_budget]


def _experiments(args: argparse.Namespace) -> int:
    policy = load_or_report(args.config, "tiergate experiments")
    if policy is None:
        return 2
    if args.team is not None and args.team not in policy.teams:
        print(f"tiergate experiments: unknown team {args.team!r}; teams: {', '.join(policy.teams)}", file=sys.stderr)
        return 2
    try:
        rows, now = rows_for(policy, args.team)
    except Exception as exc:  # noqa: BLE001 - an unreachable ledger: one line naming it, exit 2
        print(f"tiergate experiments: cannot read the ledger: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        doc: dict[str, Any] = {"now": now.isoformat(), "team": args.team, "experiments": [r.to_dict() for r in rows]}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_text(rows, now))
    return 0


def check_budgets(policy: Policy, path: str) -> int:
    """``check-config --fail-over-budget``: 1 naming each experiment projected over its budget, 2 if the ledger
    cannot be read, else 0."""
    try:
        rows, _ = rows_for(policy)
    except Exception as exc:  # noqa: BLE001
        print(f"{path}: cannot read the ledger to project experiments: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    failing = over_budget(rows)
    for r in failing:
        d = r.to_dict()
        print(f"{path}: experiment {r.manifest.name!r} (team {r.manifest.team}, owner {r.manifest.owner}) is "
              f"projected at ${d['projected_usd']} by {d['forecast_until']} ({r.projection.basis}; spent "
              f"${d['spent_usd']}), over its budget of ${d['budget_usd']}", file=sys.stderr)
    if not failing:
        print(f"  experiments: {len(rows)} within budget at their projected cost")
    return 1 if failing else 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("experiments", help="each experiment's owner, purpose, spend, budget, status and the cost "
                                           "projected at its expiry")
    p.add_argument("--config", required=True, help="tiergate YAML config (its experiments and ledger)")
    p.add_argument("--team", help="only this team's experiments")
    p.add_argument("--json", action="store_true", help="the API's JSON (GET /v1/spend/experiments)")
    p.set_defaults(func=_experiments)

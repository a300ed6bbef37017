"""``tiergate audit``: the token-economics audit of ``metering.audit``, offline (the proxy need not run).

The ledger says what happened; the policy says what should have (tier order, thresholds, caps, negotiated prices),
so this command reads both. It lives with the CLI, not in metering/, because metering does not read policies.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from metering.audit import AuditReport, TeamRules, audit, price_from_table, render_text
from metering.ledger import open_ledger
from metering.prices import Price
from proxy.policy_file import load_or_report
from router.policy import Policy

_SINCE = re.compile(r"^([1-9][0-9]*)([dh])$")


def _since(text: str) -> timedelta:
    match = _SINCE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"--since takes a duration like 7d or 36h, got {text!r}")
    return timedelta(**{"days" if match[2] == "d" else "hours": int(match[1])})


def team_rules(policy: Policy) -> dict[str, TeamRules]:
    """Per team: its most capable tier, the score under which it routes to its cheapest tier, its cap."""
    rules = {}
    for name, team in policy.teams.items():
        # Only a threshold of a tier above the floor can lift a request off the cheapest tier.
        lifts = [t for i, t in enumerate(team.thresholds) if t is not None and i > team.floor]
        rules[name] = TeamRules(
            frontier_tier=policy.tiers[team.ceiling].name if team.ceiling > team.floor else None,
            simple_below=min(lifts) if lifts else None,
            max_tokens_cap=team.settings.max_tokens.cap,
        )
    return rules


def policy_prices(policy: Policy) -> Callable[[str], Price | None]:
    """Records name upstream models; price them as the policy does (overrides first), else from litellm's table."""
    configured: dict[str, Price] = {}
    for tier in policy.tiers:
        for dep in tier.deployments:
            configured.setdefault(dep.upstream_model, dep.price)
    return lambda model: configured.get(model) or price_from_table(model)


async def _run(url: str, schema: str, policy: Policy, since: timedelta) -> AuditReport:
    # No spool: a read-only process must neither create segments nor replay a running proxy's.
    ledger = open_ledger(url, spool_dir=None, schema=schema)
    await ledger.start()
    try:
        end = datetime.now(UTC)
        return await audit(ledger, end - since, end, team_rules(policy), policy_prices(policy))
    finally:
        await ledger.close()


def run_audit(args: argparse.Namespace) -> int:
    policy = load_or_report(args.config, "tiergate audit")
    if policy is None:
        return 2
    metering = policy.config.metering
    report = asyncio.run(_run(metering.ledger, metering.ledger_schema, policy, args.since))
    if args.format == "json":
        sys.stdout.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_text(report))
    return 0


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("audit", help="token economics from the ledger: prompts, output lengths, savings")
    p.add_argument("--config", required=True, help="tiergate YAML config (ledger, tiers, thresholds, caps)")
    p.add_argument("--since", type=_since, default=timedelta(days=7), help="window ending now: 7d, 36h (default 7d)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run_audit)

"""``tiergate bill``: a team's bill for a month straight from the ledger, offline (the proxy need not run).

A team that neither the policy (with ``--config``) nor the ledger knows is an error naming the known ones (exit 2),
not a $0 bill: a typo must not read as "nothing spent". The month is ``[first day, first day of the next month)``,
the same inclusive-start, exclusive-end convention as the spend API.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import date
from typing import Any, Sequence

import orjson

from metering.ledger import Report, open_ledger
from metering.ledger.base import month_bounds


def _period(text: str) -> tuple[date, date]:
    try:
        return month_bounds(date.fromisoformat(f"{text}-01"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"period must be YYYY-MM, got {text!r}") from None


async def _bill(url: str, schema: str, team: str, period: tuple[date, date], group_by: list[str],
                policy_teams: Sequence[str]) -> Report:
    # No spool: a read-only process must neither create segments nor replay a running proxy's.
    ledger = open_ledger(url, spool_dir=None, schema=schema)
    await ledger.start()
    try:
        if team not in policy_teams:
            known = sorted(set(policy_teams) | set(await ledger.teams()))
            if team not in known:
                raise ValueError(f"unknown team {team!r}; known teams: {', '.join(known) or '(none)'}")
        return await ledger.report(period[0], period[1], team=team, group_by=group_by)
    finally:
        await ledger.close()


def bill(args: argparse.Namespace) -> int:
    try:
        if args.ledger:
            url, schema, policy_teams = args.ledger, args.schema, ()
        else:
            from metering.finops.policy_view import load_view

            view = load_view(args.config)
            url, schema, policy_teams = view.ledger_url, view.ledger_schema, view.teams
        report = asyncio.run(_bill(url, schema, args.team, args.period, args.group_by.split(","), policy_teams))
    except ValueError as exc:  # an invalid config, an unknown team, a bad --group-by
        print(f"tiergate bill: {exc}", file=sys.stderr)
        return 2
    if args.format == "csv":
        sys.stdout.write(report.to_csv())
    else:
        sys.stdout.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ``bill`` and the FinOps commands (``forecast``, ``anomalies``, ``reconcile``). Commands that read a
    policy file (teams, budgets, the ledger's location) go through ``metering.finops.policy_view``: metering does
    not parse policy files itself."""
    p = subparsers.add_parser("bill", help="a team's bill for one month, from the ledger")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="tiergate YAML config (its metering.ledger URL and teams)")
    source.add_argument("--ledger", help="ledger URL: sqlite:///PATH or postgresql://...")
    p.add_argument("--schema", default="public", help="PostgreSQL schema, with --ledger (default public)")
    p.add_argument("--team", required=True, help="a team of the policy or the ledger (exit 2 naming them if not)")
    p.add_argument("--period", required=True, type=_period, help="month, YYYY-MM (UTC)")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.add_argument("--group-by", default="model,tier",
                   help="comma list of team,model,tier,day,key,purpose,tag, any combination (default model,tier); "
                        "tag rows include each tag key's untagged records (tag_value null, empty in CSV)")
    p.set_defaults(func=bill)

    from metering.finops.cli import add_commands as finops_commands

    finops_commands(subparsers)

"""``tiergate bill``: a team's bill for a month straight from the ledger, offline (the proxy need not run)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import date
from typing import Any, Callable

import orjson

from metering.ledger import open_ledger
from metering.ledger.base import month_bounds


def _period(text: str) -> tuple[date, date]:
    try:
        return month_bounds(date.fromisoformat(f"{text}-01"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"period must be YYYY-MM, got {text!r}") from None


async def _bill(url: str, schema: str, team: str, period: tuple[date, date], group_by: list[str]) -> Any:
    # No spool: a read-only process must neither create segments nor replay a running proxy's.
    ledger = open_ledger(url, spool_dir=None, schema=schema)
    await ledger.start()
    try:
        return await ledger.report(period[0], period[1], team=team, group_by=group_by)
    finally:
        await ledger.close()


def bill(args: argparse.Namespace, ledger_from_config: Callable[[str], tuple[str, str]]) -> int:
    try:
        url, schema = (args.ledger, args.schema) if args.ledger else ledger_from_config(args.config)
    except ValueError as exc:
        print(f"tiergate bill: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_bill(url, schema, args.team, args.period, args.group_by.split(",")))
    except ValueError as exc:
        print(f"tiergate bill: {exc}", file=sys.stderr)
        return 2
    if args.format == "csv":
        sys.stdout.write(report.to_csv())
    else:
        sys.stdout.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def add_commands(subparsers: Any, ledger_from_config: Callable[[str], tuple[str, str]]) -> None:
    """Register ``bill`` and the FinOps commands (``forecast``, ``anomalies``, ``reconcile``, which need teams and
    budgets too, so they read the policy through ``metering.finops.policy_view``); ``ledger_from_config`` resolves
    ``--config`` to the validated policy's ledger URL and PostgreSQL schema (the proxy's config loader: metering
    does not parse policy files itself)."""
    p = subparsers.add_parser("bill", help="a team's bill for one month, from the ledger")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="tiergate YAML config (its metering.ledger URL)")
    source.add_argument("--ledger", help="ledger URL: sqlite:///PATH or postgresql://...")
    p.add_argument("--schema", default="public", help="PostgreSQL schema, with --ledger (default public)")
    p.add_argument("--team", required=True)
    p.add_argument("--period", required=True, type=_period, help="month, YYYY-MM (UTC)")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.add_argument("--group-by", default="model,tier",
                   help="comma list of team,model,tier,day,key,purpose,tag (default model,tier)")
    p.set_defaults(func=lambda args: bill(args, ledger_from_config))

    from metering.finops.cli import add_commands as finops_commands

    finops_commands(subparsers)

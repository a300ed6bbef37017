"""``tiergate bill``: a team's bill for a month straight from the ledger, offline (the proxy need not run)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import date
from typing import Any

import orjson

from metering.ledger import open_ledger
from metering.ledger.base import month_bounds


def ledger_url_from_config(path: str) -> str:
    """The ledger URL in a tiergate YAML config: ``metering.ledger`` (hook to align with the proxy's config model)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    url = (config.get("metering") or {}).get("ledger")
    if not isinstance(url, str) or not url:
        raise SystemExit(f"{path}: no metering.ledger URL (sqlite:///PATH or postgresql://...)")
    return url


def _period(text: str) -> tuple[date, date]:
    try:
        return month_bounds(date.fromisoformat(f"{text}-01"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"period must be YYYY-MM, got {text!r}") from None


async def _bill(url: str, team: str, period: tuple[date, date], group_by: list[str]) -> Any:
    # No spool: a read-only process must neither create segments nor replay a running proxy's.
    ledger = open_ledger(url, spool_dir=None)
    await ledger.start()
    try:
        return await ledger.report(period[0], period[1], team=team, group_by=group_by)
    finally:
        await ledger.close()


def bill(args: argparse.Namespace) -> int:
    url = args.ledger or ledger_url_from_config(args.config)
    try:
        report = asyncio.run(_bill(url, args.team, args.period, args.group_by.split(",")))
    except ValueError as exc:
        print(f"tiergate bill: {exc}", file=sys.stderr)
        return 2
    if args.format == "csv":
        sys.stdout.write(report.to_csv())
    else:
        sys.stdout.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("bill", help="a team's bill for one month, from the ledger")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="tiergate YAML config (its metering.ledger URL)")
    source.add_argument("--ledger", help="ledger URL: sqlite:///PATH or postgresql://...")
    p.add_argument("--team", required=True)
    p.add_argument("--period", required=True, type=_period, help="month, YYYY-MM (UTC)")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.add_argument("--group-by", default="model,tier",
                   help="comma list of team,model,tier,day,key,purpose,tag (default model,tier)")
    p.set_defaults(func=bill)

"""``tiergate plan --config NEW.yaml --since 7d``: what the ledger's recent traffic would have cost under a candidate
policy (``pipeline.plan_report``), before it ships. Offline: the proxy need not run.

The ledger is the candidate's own ``metering.ledger`` (a candidate is usually the serving file with a change), or
``--ledger URL [--schema S]``. Exit 0 with the plan, 2 for bad input: an invalid candidate (every issue with its
file, line and field), a bad window, or a team neither the candidate nor the ledger knows.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime

import orjson

from metering.ledger import open_ledger
from pipeline.plan import parse_window
from pipeline.plan_report import Plan, plan
from proxy.policy_file import load_or_report
from router.policy import Policy


class _Refused(Exception):
    """Exit 2 with this message."""


async def _plan(policy: Policy, args: argparse.Namespace, since: datetime, until: datetime) -> Plan:
    url = args.ledger or policy.config.metering.ledger
    schema = args.schema if args.ledger else policy.config.metering.ledger_schema
    # No spool: a read-only process must neither create segments nor replay a running proxy's.
    ledger = open_ledger(url, spool_dir=None, schema=schema)
    await ledger.start()
    try:
        if args.team is not None and args.team not in policy.teams:
            known = sorted(set(policy.teams) | set(await ledger.teams()))
            if args.team not in known:
                raise _Refused(f"unknown team {args.team!r}; known teams: {', '.join(known) or '(none)'}")
        return await plan(ledger, policy, since, until, team=args.team)
    finally:
        await ledger.close()


def plan_command(args: argparse.Namespace) -> int:
    policy = load_or_report(args.config, "tiergate plan")
    if policy is None:
        return 2
    try:
        since, until = parse_window(args.since, args.until, datetime.now(UTC))
        found = asyncio.run(_plan(policy, args, since, until))
    except (ValueError, _Refused) as exc:
        print(f"tiergate plan: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(orjson.dumps(found.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(found.render_text())
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("plan", help="what-if: re-price the ledger's recent requests under a candidate policy",
                              description="Re-price the ledger's recorded requests under a candidate policy: cost "
                                          "per team before and after, share of requests per tier, judged quality "
                                          "change, and what the ledger cannot tell.")
    p.add_argument("--config", required=True, metavar="NEW.yaml",
                   help="the candidate policy (validated as serving would; its metering.ledger is read)")
    p.add_argument("--since", default="7d", help="window start: a duration before --until (7d, 36h) or an ISO "
                                                 "date/time (default 7d)")
    p.add_argument("--until", help="window end, exclusive, ISO 8601 (UTC when no zone; default now)")
    p.add_argument("--team", help="only this team's records")
    p.add_argument("--ledger", metavar="URL", help="read this ledger instead of the candidate's metering.ledger")
    p.add_argument("--schema", default="public", help="PostgreSQL schema with --ledger (default public)")
    p.add_argument("--json", action="store_true", help="the plan as JSON (the same document as POST /v1/spend/plan)")
    p.set_defaults(func=plan_command)

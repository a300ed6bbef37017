"""``tiergate bill``: a team's bill for a month straight from the ledger, offline (the proxy need not run); and
``tiergate outcomes export`` (the outcome store as routing-outcome JSONL), ``tiergate evidence`` (what routing
saved a team, at what judged quality) and ``tiergate value`` (cost per accepted output), read from the same ledger
the same way.

A team that neither the policy (with ``--config``) nor the ledger knows is an error naming the known ones (exit 2),
not a $0 bill: a typo must not read as "nothing spent". The month is ``[first day, first day of the next month)``,
the same inclusive-start, exclusive-end convention as the spend API.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson

from metering.finops.experiments import ExperimentReport, experiment_report, wants_experiments
from metering.ledger import Ledger, Report, open_ledger
from metering.ledger.base import month_bounds
from metering.money import format_usd

T = TypeVar("T")


def _period(text: str) -> tuple[date, date]:
    try:
        return month_bounds(date.fromisoformat(f"{text}-01"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"period must be YYYY-MM, got {text!r}") from None


async def _bill(url: str, schema: str, team: str, period: tuple[date, date], group_by: list[str],
                policy_teams: Sequence[str]) -> Report | ExperimentReport:
    # No spool: a read-only process must neither create segments nor replay a running proxy's.
    ledger = open_ledger(url, spool_dir=None, schema=schema)
    await ledger.start()
    try:
        await _check_team(ledger, team, policy_teams)
        if wants_experiments(group_by):
            return await experiment_report(ledger, period[0], period[1], team, group_by)
        return await ledger.report(period[0], period[1], team=team, group_by=group_by)
    finally:
        await ledger.close()


async def _check_team(ledger: Ledger, team: str, policy_teams: Sequence[str]) -> None:
    """ValueError naming the known teams (the policy's and the ledger's) for any other."""
    if team not in policy_teams:
        known = sorted(set(policy_teams) | set(await ledger.teams()))
        if team not in known:
            raise ValueError(f"unknown team {team!r}; known teams: {', '.join(known) or '(none)'}")


def bill(args: argparse.Namespace) -> int:
    policy_teams: tuple[str, ...]
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


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date like 2026-11-01, got {text!r}") from None


async def _with_ledger(config: str, team: str | None, read: Callable[[Ledger], Awaitable[T]]) -> T:
    """Open the config's ledger read-only (no spool), check ``team`` is known, run ``read``."""
    from metering.finops.policy_view import load_view

    view = load_view(config)
    ledger = open_ledger(view.ledger_url, spool_dir=None, schema=view.ledger_schema)
    await ledger.start()
    try:
        if team is not None:
            await _check_team(ledger, team, view.teams)
        return await read(ledger)
    finally:
        await ledger.close()


def outcomes_export(args: argparse.Namespace) -> int:
    """``tiergate outcomes export``: the outcome store as routing-outcome JSONL (what ``tiergate learn`` reads)."""
    since = datetime.combine(args.since, datetime.min.time(), tzinfo=UTC)
    try:
        rows = asyncio.run(_with_ledger(args.config, args.team, lambda ledger: ledger.outcomes(since, args.team)))
    except ValueError as exc:  # an invalid config, an unknown team
        print(f"tiergate outcomes export: {exc}", file=sys.stderr)
        return 2
    with Path(args.out).open("wb") as out:
        for outcome in rows:
            out.write(orjson.dumps(outcome.export_row()) + b"\n")
    print(f"{len(rows)} judged outcome(s) written to {args.out}", file=sys.stderr)
    return 0


def _window(args: argparse.Namespace, command: str) -> tuple[date, date] | None:
    """``--start`` and ``--end`` (exclusive; default this month so far), or None once it said why they are wrong."""
    today = datetime.now(UTC).date()
    start, end = args.start or today.replace(day=1), args.end or today + timedelta(days=1)
    if end <= start:
        print(f"tiergate {command}: --end must be after --start (it is exclusive), got {start} and {end}",
              file=sys.stderr)
        return None
    return start, end


def evidence(args: argparse.Namespace) -> int:
    """``tiergate evidence``: what routing saved a team and at what judged quality (``metering.evidence``)."""
    from metering.evidence import team_evidence

    window = _window(args, "evidence")
    if window is None:
        return 2
    start, end = window
    try:
        # the ceiling's name comes from the outcome rows: metering reads no tier layout from the policy
        found = asyncio.run(_with_ledger(args.config, args.team,
                                         lambda ledger: team_evidence(ledger, args.team, start, end, None)))
    except ValueError as exc:
        print(f"tiergate evidence: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(orjson.dumps(found.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(f"{args.team}, {start} to {end} (exclusive): {found.sentence()}")
    for q in found.quality:
        print(f"  judged {q.tier}: mean grade {q.mean.value:.3f} (95% Wilson {q.mean.low:.3f}-{q.mean.high:.3f}, "
              f"n={q.n})")
    for s in found.chat + found.measuring:
        print(f"  {s.purpose} on {s.tier}: {s.requests} requests, ${format_usd(s.cost_nanos)}")
    return 0


def value(args: argparse.Namespace) -> int:
    """``tiergate value``: requests, feedback, accepted outputs and the cost per accepted output
    (``metering.feedback``), as a table or the API's JSON."""
    window = _window(args, "value")
    if window is None:
        return 2
    start, end = window
    try:
        found = asyncio.run(_with_ledger(args.config, args.team,
                                         lambda ledger: ledger.value(start, end, args.team, args.group_by.split(","))))
    except ValueError as exc:  # an invalid config, an unknown team, a bad --group-by
        print(f"tiergate value: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        sys.stdout.write(orjson.dumps(found.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    elif args.format == "csv":
        sys.stdout.write(found.to_csv())
    else:
        print(f"{args.team or 'every team'}, {start} to {end} (exclusive), client requests (chat and embeddings):")
        print(found.table())
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
                   help="comma list of team,model,tier,day,key,purpose,api,tag, any combination (default model,tier); "
                        "tag rows include each tag key's untagged records (tag_value null, empty in CSV); "
                        "experiment: one row per experiment, and null for records of none")
    p.set_defaults(func=bill)

    p = subparsers.add_parser("outcomes", help="the outcome store (judged shadow samples)")
    actions = p.add_subparsers(dest="action", required=True)
    e = actions.add_parser("export", help="judged outcomes as routing-outcome JSONL (tiergate learn --outcomes)")
    e.add_argument("--config", required=True, help="tiergate YAML config (its metering.ledger URL and teams)")
    e.add_argument("--team", default=None, help="one team (default: every team); exit 2 naming them if unknown")
    e.add_argument("--since", type=_day, default=date(2000, 1, 1), help="first UTC day, YYYY-MM-DD (default: all)")
    e.add_argument("--out", required=True, help="output .jsonl")
    e.set_defaults(func=outcomes_export)

    p = subparsers.add_parser("evidence", help="what routing saved a team, at what judged quality")
    p.add_argument("--config", required=True, help="tiergate YAML config (its metering.ledger URL and teams)")
    p.add_argument("--team", required=True, help="a team of the policy or the ledger (exit 2 naming them if not)")
    p.add_argument("--start", type=_day, default=None, help="first UTC day (default: the 1st of this month)")
    p.add_argument("--end", type=_day, default=None, help="UTC day after the last (exclusive; default: tomorrow)")
    p.add_argument("--json", action="store_true", help="the API's JSON instead of text")
    p.set_defaults(func=evidence)

    p = subparsers.add_parser("value", help="cost per accepted output (feedback), by team, model or tier")
    p.add_argument("--config", required=True, help="tiergate YAML config (its metering.ledger URL and teams)")
    p.add_argument("--team", default=None, help="one team (default: every team); exit 2 naming them if unknown")
    p.add_argument("--group-by", default="team", help="comma list of team,model,tier (default team)")
    p.add_argument("--start", type=_day, default=None, help="first UTC day (default: the 1st of this month)")
    p.add_argument("--end", type=_day, default=None, help="UTC day after the last (exclusive; default: tomorrow)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(func=value)

    from metering.finops.cli import add_commands as finops_commands

    finops_commands(subparsers)

"""``tiergate forecast | anomalies | reconcile``: offline FinOps over the ledger a policy file names.

Exit codes: 0 done (reconcile: within tolerance), 1 reconcile found gaps, 2 bad input (an invalid config, an
unknown team, an unreadable invoice: one line naming what is wrong).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from metering.finops.daily import day_model_totals, known_teams
from metering.finops.forecast import HISTORY_DAYS
from metering.finops.invoices import InvoiceError, read_invoice
from metering.finops.notify import deliver
from metering.finops.outlook import outlook
from metering.finops.policy_view import FinopsView, load_view
from metering.finops.reconcile import LedgerCell, Tolerance, reconcile
from metering.finops.scan import scan
from metering.finops.scopes import DIMENSIONS
from metering.ledger import open_ledger
from metering.ledger.base import Ledger
from metering.money import usd_to_nanos

_DURATION = re.compile(r"^([1-9][0-9]*)([hd])$")


class UsageError(Exception):
    """Exit 2 with this one-line message."""


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time, got {text!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _usd(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"expected an amount in USD, got {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative amount in USD, got {text!r}")
    return value


def _duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration like 24h or 7d, got {text!r}")
    return timedelta(**{"hours" if match[2] == "h" else "days": int(match[1])})


def _print(doc: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


@asynccontextmanager
async def _ledger(view: FinopsView) -> AsyncIterator[Ledger]:
    # No spool: a read-only process must neither create segments nor replay a running proxy's.
    ledger = open_ledger(view.ledger_url, spool_dir=None, schema=view.ledger_schema)
    await ledger.start()
    try:
        yield ledger
    finally:
        await ledger.close()


async def _check_team(ledger: Ledger, view: FinopsView, team: str | None, today: date) -> None:
    if team is None or team in view.teams:
        return
    known = sorted(set(view.teams) | set(await known_teams(ledger, today - timedelta(days=HISTORY_DAYS), today
                                                           + timedelta(days=1))))
    if team not in known:
        raise UsageError(f"unknown team {team!r}; known teams: {', '.join(known)}")


def _fail(name: str, exc: Exception) -> int:
    first, *rest = str(exc).splitlines() or [""]
    print(f"tiergate {name}: {first}", file=sys.stderr)
    for line in rest:  # a config error lists its issues, one per line
        print(f"  {line}", file=sys.stderr)
    return 2


def _run(name: str, args: argparse.Namespace, body: Callable[[FinopsView], Any]) -> int:
    try:
        view = load_view(args.config)
    except ValueError as exc:
        return _fail(name, exc)
    try:
        return int(asyncio.run(body(view)) or 0)
    except (UsageError, InvoiceError) as exc:
        return _fail(name, exc)


def forecast_command(args: argparse.Namespace) -> int:
    async def body(view: FinopsView) -> int:
        async with _ledger(view) as ledger:
            await _check_team(ledger, view, args.team, args.as_of or datetime.now(UTC).date())
            report = await outlook(ledger, args.group_by, view.budgets, team=args.team, as_of=args.as_of)
        if args.json:
            _print(report.to_dict())
        else:
            sys.stdout.write(report.render_text())
        return 0

    return _run("forecast", args, body)


def anomalies_command(args: argparse.Namespace) -> int:
    async def body(view: FinopsView) -> int:
        routing_key = None
        if args.notify:
            if not view.alert_webhook:
                raise UsageError(f"{args.config}: --notify needs metering.alert_webhook")
            if args.format == "pagerduty":
                routing_key = os.environ.get(args.routing_key_env or "")
                if not routing_key:
                    raise UsageError("--format pagerduty needs --routing-key-env naming a set variable")
        until = args.until or datetime.now(UTC)
        async with _ledger(view) as ledger:
            await _check_team(ledger, view, args.team, until.date())
            episodes = await scan(ledger, until - args.since, until, view.frontier_tiers, team=args.team)
        if args.json:
            _print({"since": (until - args.since).isoformat(), "until": until.isoformat(),
                    "episodes": [e.to_dict() for e in episodes]})
        else:
            for e in episodes:
                ids = ", ".join(e.top_request_ids)
                sys.stdout.write(f"{e.summary()}{'' if e.ended_at else ' (ongoing)'}; costliest: {ids}\n")
            if not episodes:
                sys.stdout.write(f"no anomalies in the last {args.since}\n")
        if args.notify and episodes:
            assert view.alert_webhook
            sent = await deliver(view.alert_webhook, episodes, args.format, routing_key)
            print(f"sent {sent} of {len(episodes)} to the alert webhook", file=sys.stderr)
        return 0

    return _run("anomalies", args, body)


def reconcile_command(args: argparse.Namespace) -> int:
    async def body(view: FinopsView) -> int:
        invoices = [read_invoice(path) for path in args.invoice]
        covered = sorted(d for i in invoices for d in i.days)
        if not covered:
            raise UsageError(f"{args.invoice[0]}: no buckets: nothing to reconcile")
        start = args.start or covered[0]
        end = args.end or covered[-1] + timedelta(days=1)
        if end <= start:
            raise UsageError(f"--end {end} must be after --start {start} (the end is exclusive)")
        async with _ledger(view) as ledger:
            sums = await day_model_totals(ledger, start, end)
        cells = {k: LedgerCell(*v) for k, v in sums.items()}
        tolerance = Tolerance(relative=args.tolerance, absolute_nanos=usd_to_nanos(args.tolerance_usd))
        result = reconcile(cells, invoices, start, end, tolerance)
        if args.json:
            _print(result.to_dict())
        else:
            sys.stdout.write(result.render_text())
        return 0 if result.ok else 1

    return _run("reconcile", args, body)


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("forecast", help="month-end spend forecast per team, key, tag or model, and the day "
                                               "each budget runs out")
    p.add_argument("--config", required=True, help="tiergate YAML config (ledger, teams, budgets)")
    p.add_argument("--group-by", choices=DIMENSIONS, default="team")
    p.add_argument("--team", help="only this team's spend")
    p.add_argument("--as-of", type=_day, help="forecast as at 00:00 UTC of this day, YYYY-MM-DD (default: now)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=forecast_command)

    p = subparsers.add_parser("anomalies", help="hourly spend, requests, frontier share and P95 output tokens far "
                                                "above their own baseline")
    p.add_argument("--config", required=True, help="tiergate YAML config (ledger, tiers, alert webhook)")
    p.add_argument("--since", type=_duration, default=timedelta(hours=24),
                   help="report episodes that started in this window ending now: 24h, 7d (default 24h)")
    p.add_argument("--until", type=_instant, help="end of the window, ISO 8601 UTC (default: now)")
    p.add_argument("--team", help="only this team's requests")
    p.add_argument("--json", action="store_true")
    p.add_argument("--notify", action="store_true", help="also post each episode to metering.alert_webhook")
    p.add_argument("--format", choices=("slack", "json", "pagerduty"), default="slack",
                   help="webhook body with --notify (default slack)")
    p.add_argument("--routing-key-env", help="environment variable holding the PagerDuty routing key")
    p.set_defaults(func=anomalies_command)

    p = subparsers.add_parser("reconcile", help="compare the ledger with provider usage/cost exports per day and "
                                                "model")
    p.add_argument("--config", required=True, help="tiergate YAML config (its ledger)")
    p.add_argument("--invoice", required=True, action="append", help="an export file (repeat for several)")
    p.add_argument("--start", type=_day, help="first UTC day, inclusive (default: the exports' first day)")
    p.add_argument("--end", type=_day, help="UTC day after the last, exclusive (default: after the exports' last)")
    p.add_argument("--tolerance", type=float, default=0.01, help="relative tolerance (default 0.01 = 1%%)")
    p.add_argument("--tolerance-usd", type=_usd, default=Decimal("0.01"),
                   help="absolute tolerance per row in USD (default 0.01)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=reconcile_command)

"""Finance and ops endpoints: the spend report (JSON or CSV), each team's spend against its budgets, and the
raw-record views the dashboard needs (output-token percentiles, single requests by cost, spend per hour).

An admin key sees every team; a team key sees only its own; a team neither the policy nor the ledger knows is a
404 naming the known ones (a typo must not read as a $0 bill). Date ranges are UTC days, ``start`` inclusive and
``end`` exclusive (as ``tiergate bill`` and the ledger's reports): ``start=2026-11-01&end=2026-12-01`` is
November. Every endpoint flushes the ledger first, so a response that completed before the question was asked is
in the answer.
"""

from __future__ import annotations

import asyncio
import re
from datetime import date, datetime, timedelta, timezone

from starlette.requests import Request
from starlette.responses import Response

from metering.finops.experiments import ExperimentReport, experiment_report, wants_experiments
from metering.ledger.report import Report, rows_to_csv
from pipeline.errors import TiergateError
from proxy.body import CONTROL_CHARS, shown
from proxy.endpoints import authenticated, runtime
from proxy.errors import bad_request
from proxy.render import json_response

FLUSH_TIMEOUT_S = 10.0
_MAX_REQUESTS = 200
_MAX_HOURS = 24 * 31
_MAX_TEAM_CHARS = 256
# Dates outside are refused: before any ledger existed, or so close to date.max that adding a day or a month (the
# hourly and forecast queries do) would overflow.
FIRST_DAY = date(2000, 1, 1)
LAST_DAY = date(9998, 12, 31)
_DIGITS = re.compile(r"[0-9]{1,9}")


def _day(value: str | None, name: str, default: date) -> date:
    """A date from ``FIRST_DAY`` to ``LAST_DAY``: ``date.max`` + 1 day would overflow (a 500) instead of naming the
    parameter."""
    if not value:
        return default
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise bad_request(f"'{name}' must be a date like 2026-11-01, got {shown(value)}", param=name) from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise bad_request(f"'{name}' must be from {FIRST_DAY} to {LAST_DAY}, got {day}", param=name)
    return day


def _period(request: Request) -> tuple[date, date]:
    """``start`` (inclusive) and ``end`` (exclusive) query parameters; default this month so far, today included."""
    today = datetime.now(timezone.utc).date()
    start = _day(request.query_params.get("start"), "start", today.replace(day=1))
    end = _day(request.query_params.get("end"), "end", today + timedelta(days=1))
    if end <= start:
        one_day = f"start={start}&end={start + timedelta(days=1)}"
        raise bad_request(f"'end' must be after 'start' ('end' is exclusive: {one_day} is one day), got "
                          f"start={start}&end={end}", param="end")
    return start, end


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter from ``low`` to ``high`` (400 naming it otherwise)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    # ASCII digits only: str.isdigit() also accepts '²' (int() refuses it) and 5,000-digit strings (so does int()).
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise bad_request(f"'{name}' must be an integer from {low} to {high}, got {shown(raw)}", param=name)
    return int(raw)


async def _flushed(request: Request) -> None:
    """Wait for records written so far to be queryable; a stuck database must not hang the endpoint."""
    try:
        await asyncio.wait_for(runtime(request).meter.ledger.flush(), FLUSH_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise TiergateError("ledger_unavailable",
                            f"the ledger did not commit within {FLUSH_TIMEOUT_S:.0f}s; see the proxy log") from None


async def visible_team(request: Request) -> str | None:
    """The team a caller may see: its own for a team key, any known one (or all: None) for an admin key."""
    requested = request.query_params.get("team")
    if requested and (len(requested) > _MAX_TEAM_CHARS or CONTROL_CHARS.search(requested)):
        # PostgreSQL refuses NUL in a query parameter: that would be a 500, not an empty answer
        raise bad_request(f"'team' must be a team name (at most {_MAX_TEAM_CHARS} characters, no control "
                          f"characters), got {shown(requested)}", param="team")
    principal = authenticated(request)
    if principal.admin:
        if requested:
            await _known(request, requested)
        return requested or None
    if requested and requested != principal.team:
        raise TiergateError("forbidden_team", f"a key of team {principal.team!r} may only see its own spend")
    return principal.team


async def _known(request: Request, team: str) -> None:
    """404 for a team neither the policy nor the ledger knows, naming those that are."""
    rt = runtime(request)
    if team in rt.store.policy.teams:
        return
    await _flushed(request)  # a team that left the policy is known by its records, this worker's last ones too
    known = sorted(set(rt.store.policy.teams) | set(await rt.meter.ledger.teams()))
    if team not in known:
        raise TiergateError("not_found", f"unknown team {shown(team)}; known teams: {_listed(known)}", param="team")


def _listed(names: list[str], most: int = 50) -> str:
    shown_names = ", ".join(names[:most])
    return shown_names + (f" and {len(names) - most} more" if len(names) > most else "") if names else "(none)"


async def report(request: Request) -> Response:
    """``GET /v1/spend/report``. Grouped by team and model (in either order), rows also carry P50/P95 output
    tokens, so ops can set max_tokens caps from what is really used."""
    team = await visible_team(request)
    start, end = _period(request)
    group_by = [g.strip() for g in request.query_params.get("group_by", "team").split(",") if g.strip()]
    rt = runtime(request)
    await _flushed(request)
    try:
        result: Report | ExperimentReport
        if wants_experiments(group_by):  # the ``experiment`` tag as a dimension of its own (with owner: /experiments)
            result = await experiment_report(rt.meter.ledger, start, end, team, group_by)
        else:
            result = await rt.meter.ledger.report(start, end, team=team, group_by=group_by)
    except ValueError as exc:
        raise bad_request(str(exc), param="group_by") from None
    payload = result.to_dict()
    columns = [*result.key_columns, *result.metric_columns]
    if sorted(group_by) == ["model", "team"]:
        found = await rt.meter.ledger.output_percentiles(start, end, team)
        by_group = {(p.team, p.model): p for p in found}
        for row in payload["rows"]:
            p = by_group.get((row["team"], row["model"]))
            row["p50_output_tokens"] = p.p50 if p else None
            row["p95_output_tokens"] = p.p95 if p else None
        columns += ["p50_output_tokens", "p95_output_tokens"]
    if request.query_params.get("format") == "csv" or "text/csv" in request.headers.get("accept", ""):
        return Response(rows_to_csv(columns, payload["rows"]), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="spend-{start}-{end}.csv"'})
    return json_response(payload)


async def teams(request: Request) -> Response:
    """``GET /v1/spend/teams``: each team's spend today and this month against its budgets, and its ceiling tier
    (what ``savings_usd`` is measured against)."""
    team = await visible_team(request)
    rt = runtime(request)
    await _flushed(request)
    policies = rt.budgets.of(rt.store.policy)
    if team is not None:
        policies = {team: policies[team]} if team in policies else {}
    rows = await rt.meter.teams_status(policies)
    if team is not None:
        rows = [row for row in rows if row["team"] == team]
    for row in rows:  # the savings baseline: the team's usage priced on its most capable tier (its ceiling)
        known = rt.store.policy.teams.get(str(row["team"]))
        row["ceiling_tier"] = known.tier_names[-1] if known else None
    return json_response({"day": datetime.now(timezone.utc).date().isoformat(), "teams": rows})


async def percentiles(request: Request) -> Response:
    """``GET /v1/spend/percentiles?start=&end=&team=``: P50/P95 output tokens per team and model."""
    team = await visible_team(request)
    start, end = _period(request)
    await _flushed(request)
    rows = await runtime(request).meter.ledger.output_percentiles(start, end, team)
    return json_response({"start": start.isoformat(), "end": end.isoformat(), "team": team,
                          "rows": [row.to_dict() for row in rows]})


async def expensive_requests(request: Request) -> Response:
    """``GET /v1/spend/requests?limit=20&order=cost|recent&hours=24&team=``: single requests of the last hours."""
    team = await visible_team(request)
    limit = int_param(request, "limit", 20, 1, _MAX_REQUESTS)
    hours = int_param(request, "hours", 24, 1, _MAX_HOURS)
    order = request.query_params.get("order", "cost")
    if order not in ("cost", "recent"):
        raise bad_request(f"'order' must be 'cost' or 'recent', got {order!r}", param="order")
    since = datetime.now(timezone.utc) - timedelta(hours=hours)
    await _flushed(request)
    rows = await runtime(request).meter.ledger.request_costs(since, limit, team,
                                                           "cost" if order == "cost" else "recent")
    return json_response({"since": since.isoformat(), "order": order, "team": team,
                          "requests": [row.to_dict() for row in rows]})


async def timeseries(request: Request) -> Response:
    """``GET /v1/spend/timeseries?bucket=hour&day=&team=``: spend per UTC hour of one day (default today)."""
    team = await visible_team(request)
    if request.query_params.get("bucket", "hour") != "hour":
        raise bad_request("only bucket=hour is supported (daily spend: /v1/spend/report?group_by=day)",
                          param="bucket")
    day = _day(request.query_params.get("day"), "day", datetime.now(timezone.utc).date())
    await _flushed(request)
    points = await runtime(request).meter.ledger.hourly_spend(day, team)
    return json_response({"day": day.isoformat(), "bucket": "hour", "team": team,
                          "points": [p.to_dict() for p in points]})

"""Finance and ops endpoints: the spend report (JSON or CSV) and each team's spend against its budgets.

An admin key sees every team; a team key sees only its own. Reports read the ledger's rollups after a flush,
so a response that completed before the report was asked for is in it.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta, timezone

from starlette.requests import Request
from starlette.responses import Response

from proxy.endpoints import call_context, json_response, runtime
from proxy.errors import ApiError, bad_request

FLUSH_TIMEOUT_S = 10.0


def _day(value: str | None, name: str, default: date) -> date:
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise bad_request(f"'{name}' must be a date like 2026-11-01, got {value!r}", param=name) from None


async def _flushed(request: Request) -> None:
    """Wait for records written so far to be queryable; a stuck database must not hang the endpoint."""
    try:
        await asyncio.wait_for(runtime(request).meter.inner.ledger.flush(), FLUSH_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise ApiError(503, f"the ledger did not commit within {FLUSH_TIMEOUT_S:.0f}s; see the proxy log",
                       code="ledger_unavailable") from None


def _scope(request: Request, requested: str | None) -> str | None:
    """The team a caller may report on: its own for a team key, any (or all) for an admin key."""
    principal = call_context(request).principal
    if principal.admin:
        return requested or None
    if requested and requested != principal.team:
        raise ApiError(403, f"a key of team {principal.team!r} may only see its own spend", code="forbidden_team")
    return principal.team


async def report(request: Request) -> Response:
    params = request.query_params
    team = _scope(request, params.get("team"))
    today = datetime.now(timezone.utc).date()
    start = _day(params.get("start"), "start", today.replace(day=1))
    end = _day(params.get("end"), "end", today)  # inclusive: the last day reported
    if end < start:
        raise bad_request("'end' is before 'start'", param="end")
    group_by = [g for g in params.get("group_by", "team").split(",") if g.strip()]
    ledger = runtime(request).meter.inner.ledger
    await _flushed(request)
    try:
        result = await ledger.report(start, end + timedelta(days=1), team=team, group_by=group_by)
    except ValueError as exc:
        raise bad_request(str(exc), param="group_by") from None
    wants_csv = params.get("format") == "csv" or "text/csv" in request.headers.get("accept", "")
    if wants_csv:
        return Response(result.to_csv(), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="spend-{start}-{end}.csv"'})
    payload = result.to_dict()
    payload["end"] = end.isoformat()
    return json_response(payload)


async def teams(request: Request) -> Response:
    team = _scope(request, request.query_params.get("team"))
    rt = runtime(request)
    meter = rt.meter
    await _flushed(request)
    policies = meter.policies(rt.store.policy)
    if team is not None:
        policies = {team: policies[team]} if team in policies else {}
    rows = await meter.inner.teams_status(policies)
    if team is not None:
        rows = [row for row in rows if row["team"] == team]
    return json_response({"day": datetime.now(timezone.utc).date().isoformat(), "teams": rows})

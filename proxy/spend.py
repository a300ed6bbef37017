"""Finance and ops endpoints: the spend report (JSON or CSV), each team's spend against its budgets, and the
raw-record views the dashboard needs (output-token percentiles, single requests by cost, spend per hour).

Access and dates are ``proxy.query_params``' (an admin key sees every team, a team key its own; UTC days, ``start``
inclusive, ``end`` exclusive). Every answer comes from the runtime's ``pipeline.spend.Spend``, which flushes the
ledger first, so a response that completed before the question was asked is in the answer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response

from metering.ledger.report import rows_to_csv
from proxy.endpoints import runtime
from proxy.errors import bad_request
from proxy.query_params import day, int_param, period, visible_team
from proxy.render import json_response

_MAX_REQUESTS = 200
_MAX_HOURS = 24 * 31


async def report(request: Request) -> Response:
    """``GET /v1/spend/report``. Grouped by team and model (in either order), rows also carry P50/P95 output
    tokens, so ops can set max_tokens caps from what is really used."""
    team = await visible_team(request)
    start, end = period(request)
    group_by = [g.strip() for g in request.query_params.get("group_by", "team").split(",") if g.strip()]
    try:
        found = await runtime(request).spend.report(start, end, team, group_by)
    except ValueError as exc:
        raise bad_request(str(exc), param="group_by") from None
    result = found.report
    payload = result.to_dict()
    columns = [*result.key_columns, *result.metric_columns]
    if found.percentiles is not None:
        for row in payload["rows"]:
            p = found.percentiles.get((row["team"], row["model"]))
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
    policies = rt.budgets.of(rt.store.policy)
    if team is not None:
        policies = {team: policies[team]} if team in policies else {}
    rows = await rt.spend.teams_status(policies)
    if team is not None:
        rows = [row for row in rows if row["team"] == team]
    for row in rows:  # the savings baseline: the team's usage priced on its most capable tier (its ceiling)
        known = rt.store.policy.teams.get(str(row["team"]))
        row["ceiling_tier"] = known.tier_names[-1] if known else None
    return json_response({"day": datetime.now(UTC).date().isoformat(), "teams": rows})


async def percentiles(request: Request) -> Response:
    """``GET /v1/spend/percentiles?start=&end=&team=``: P50/P95 output tokens per team and model."""
    team = await visible_team(request)
    start, end = period(request)
    rows = await runtime(request).spend.output_percentiles(start, end, team)
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
    since = datetime.now(UTC) - timedelta(hours=hours)
    rows = await runtime(request).spend.request_costs(since, limit, team, "cost" if order == "cost" else "recent")
    return json_response({"since": since.isoformat(), "order": order, "team": team,
                          "requests": [row.to_dict() for row in rows]})


async def timeseries(request: Request) -> Response:
    """``GET /v1/spend/timeseries?bucket=hour&day=&team=``: spend per UTC hour of one day (default today)."""
    team = await visible_team(request)
    if request.query_params.get("bucket", "hour") != "hour":
        raise bad_request("only bucket=hour is supported (daily spend: /v1/spend/report?group_by=day)",
                          param="bucket")
    on = day(request.query_params.get("day"), "day", datetime.now(UTC).date())
    points = await runtime(request).spend.hourly_spend(on, team)
    return json_response({"day": on.isoformat(), "bucket": "hour", "team": team,
                          "points": [p.to_dict() for p in points]})

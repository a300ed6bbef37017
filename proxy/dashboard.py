"""The live spend dashboard: its static page, and the JSON it needs beyond the spend report.

The page (``/dashboard``, files in ``proxy/static``) holds no data and needs no key to load; it asks for a key
once and reads ``/v1/spend/report`` and ``/v1/spend/teams`` (the finance API, so numbers agree to the cent) and the
three endpoints here, which read raw records: output-token percentiles, single requests by cost, spend per hour.
They are scoped like the spend report: a team key sees its own team, an admin key every team or ``team=``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from weakref import WeakKeyDictionary

from starlette.requests import Request
from starlette.responses import Response

from metering.ledger import Ledger
from metering.ledger.insights import Insights
from proxy.endpoints import json_response, runtime
from proxy.errors import bad_request
from proxy.spend import _day, _scope

_STATIC = Path(__file__).resolve().parent / "static"
_ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
# Nothing outside the proxy may be loaded or contacted by the page.
_HEADERS = {
    "content-security-policy": ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
    "referrer-policy": "no-referrer",
}
_MAX_REQUESTS = 200
_MAX_HOURS = 24 * 31
_insights: WeakKeyDictionary[Ledger, Insights] = WeakKeyDictionary()


@cache
def _read(name: str) -> bytes:
    return (_STATIC / name).read_bytes()


async def page(request: Request) -> Response:
    return Response(_read("dashboard.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _ASSETS:
        return Response(b"not found", status_code=404, media_type="text/plain")
    return Response(_read(name), media_type=_ASSETS[name], headers=_HEADERS)


async def _ledger_insights(request: Request) -> Insights:
    """This worker's ledger, flushed (a response finished before the call is in the answer), and its queries."""
    ledger = runtime(request).meter.inner.ledger
    await ledger.flush()
    found = _insights.get(ledger)
    if found is None:
        found = _insights[ledger] = Insights(ledger)
    return found


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise bad_request(f"'{name}' must be an integer from {low} to {high}, got {raw!r}", param=name)
    return int(raw)


async def percentiles(request: Request) -> Response:
    """``GET /v1/spend/percentiles?start=&end=&team=``: P50/P95 output tokens per team and model (end inclusive)."""
    params = request.query_params
    team = _scope(request, params.get("team"))
    today = datetime.now(timezone.utc).date()
    start = _day(params.get("start"), "start", today.replace(day=1))
    end = _day(params.get("end"), "end", today)
    if end < start:
        raise bad_request("'end' is before 'start'", param="end")
    rows = await (await _ledger_insights(request)).output_percentiles(start, end + timedelta(days=1), team)
    return json_response({"start": start.isoformat(), "end": end.isoformat(), "team": team,
                          "rows": [row.to_dict() for row in rows]})


async def expensive_requests(request: Request) -> Response:
    """``GET /v1/spend/requests?limit=20&order=cost|recent&hours=24&team=``: single requests of the last hours."""
    params = request.query_params
    team = _scope(request, params.get("team"))
    limit = _int(request, "limit", 20, 1, _MAX_REQUESTS)
    hours = _int(request, "hours", 24, 1, _MAX_HOURS)
    order = params.get("order", "cost")
    if order not in ("cost", "recent"):
        raise bad_request(f"'order' must be 'cost' or 'recent', got {order!r}", param="order")
    since = datetime.now(timezone.utc) - timedelta(hours=hours)
    rows = await (await _ledger_insights(request)).requests(since, limit, team, "cost" if order == "cost" else "recent")
    return json_response({"since": since.isoformat(), "order": order, "team": team,
                          "requests": [row.to_dict() for row in rows]})


async def timeseries(request: Request) -> Response:
    """``GET /v1/spend/timeseries?bucket=hour&day=&team=``: spend per UTC hour of one day (default today)."""
    params = request.query_params
    team = _scope(request, params.get("team"))
    if params.get("bucket", "hour") != "hour":
        raise bad_request("only bucket=hour is supported (daily spend: /v1/spend/report?group_by=day)",
                          param="bucket")
    day = _day(params.get("day"), "day", datetime.now(timezone.utc).date())
    points = await (await _ledger_insights(request)).hourly(day, team)
    return json_response({"day": day.isoformat(), "bucket": "hour", "team": team,
                          "points": [p.to_dict() for p in points]})

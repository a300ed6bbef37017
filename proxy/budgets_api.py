"""``GET /v1/spend/budgets?team=``: every day and month cap of the policy (team, key, tag) with the ledger's spend
against it today and this month (``metering.finops.caps``); experiments' lifetime caps are
``/v1/spend/experiments``. Access as on the other spend endpoints: an admin key sees every team (or one), a team
key its own (another team is a 403, an unknown one a 404). The ledger is flushed first.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from proxy.endpoints import runtime
from proxy.query_params import visible_team
from proxy.render import json_response


async def budgets(request: Request) -> Response:
    team = await visible_team(request)
    rt = runtime(request)
    today = datetime.now(UTC).date()
    caps = await rt.spend.caps(rt.budgets.of(rt.store.policy), today, team)
    return json_response({"day": today.isoformat(), "month_start": today.replace(day=1).isoformat(), "team": team,
                          "caps": [cap.to_dict() for cap in caps]})

"""``GET /v1/spend/forecast?group_by=team|key|tag|model&team=&as_of=``: each group's projected month-end spend with
its 80% interval, burn rate, budgets and the day each runs out (``metering.finops.outlook``: the same document as
``tiergate forecast --json``).

Access as on the other spend endpoints: an admin key sees every team (or one, with ``team=``), a team key only its
own (another team is a 403), a team neither the policy nor the ledger knows is a 404 naming the known ones. Without
``as_of`` the forecast is made now (today's spend so far included); ``as_of=YYYY-MM-DD`` replays the one made at
00:00 UTC of that day. The ledger is flushed first, so requests that completed before the question count.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from metering.finops.scopes import DIMENSIONS, Dimension
from proxy.body import shown
from proxy.endpoints import runtime
from proxy.errors import bad_request
from proxy.query_params import LAST_DAY, day, visible_team
from proxy.render import json_response


async def forecast(request: Request) -> Response:
    team = await visible_team(request)
    dimension = request.query_params.get("group_by", "team")
    if dimension not in DIMENSIONS:
        raise bad_request(f"'group_by' must be one of {', '.join(DIMENSIONS)}, got {shown(dimension)}",
                          param="group_by")
    group_by: Dimension = dimension  # type: ignore[assignment]  # checked against DIMENSIONS just above
    as_of = day(request.query_params.get("as_of"), "as_of", LAST_DAY) if request.query_params.get("as_of") else None
    rt = runtime(request)
    found = await rt.spend.forecast(group_by, rt.budgets.of(rt.store.policy), team, as_of)
    return json_response(found.to_dict())

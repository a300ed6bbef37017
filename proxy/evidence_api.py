"""``GET /v1/routing/evidence?team=&start=&end=``: what routing saved a team and at what judged quality
(``metering.evidence``), from the ledger's spend rollups and the outcome store.

Access and dates as on the spend endpoints: an admin key names any known team, a team key sees its own (another
team is a 403), a team neither the policy nor the ledger knows is a 404 naming the known ones; ``start`` is
inclusive and ``end`` exclusive (UTC days, default this month so far), a bad date a 400 naming it. The ledger is
flushed first, so requests that completed before the question are in the answer.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.endpoints import runtime
from proxy.errors import bad_request
from proxy.query_params import period, visible_team
from proxy.render import json_response


async def evidence(request: Request) -> Response:
    team = await visible_team(request)
    if team is None:
        raise bad_request("'team' is required: evidence is per team", param="team")
    start, end = period(request)
    rt = runtime(request)
    policy = rt.store.policy
    member = policy.teams.get(team)
    # the counterfactual is priced at the team's ceiling (pipeline.records); a team that left the policy has its
    # ceiling named by its outcome rows
    ceiling = policy.tiers[member.ceiling].name if member is not None else None
    found = await rt.spend.evidence(team, start, end, ceiling)
    return json_response(found.to_dict())

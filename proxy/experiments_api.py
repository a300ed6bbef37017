"""``GET /v1/spend/experiments?team=``: each experiment manifest's owner, purpose, budget, spend from the ledger,
remaining budget, window, status (active, scheduled, expired, over_budget) and the cost projected at its expiry
(``metering.finops.experiments``).

Access as on the spend endpoints: an admin key sees every team's experiments (or one team's), a team key its own
team's (another team is a 403, an unknown one a 404). The ledger is flushed first, so a request that completed
before the question is in the answer, whichever worker served it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from proxy.endpoints import runtime
from proxy.query_params import visible_team
from proxy.render import json_response


async def experiments(request: Request) -> Response:
    team = await visible_team(request)
    rt = runtime(request)
    manifests = [m for m in rt.store.policy.experiments.manifests if team is None or m.team == team]
    now = datetime.now(UTC)
    rows = await rt.spend.experiments(manifests, now)
    return json_response({"now": now.isoformat(), "team": team, "experiments": [row.to_dict() for row in rows]})

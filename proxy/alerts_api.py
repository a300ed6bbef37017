"""``GET /v1/alerts``: the budget alerts that fired and the requests a budget refused, from the ledger's ``alerts``
table (``metering.alerts``), newest first; and ``connect``, which hands the alerter what only the proxy knows.

``?team=&kind=threshold|refusal&since=&until=&limit=``: an admin key sees every team (or one), a team key its own
(another team is a 403, an unknown one a 404, as for the spend endpoints). ``since`` (inclusive) and ``until``
(exclusive) are ISO dates or instants (UTC unless they say otherwise); the default is the last 7 days. Money is
exact decimal strings, like the spend report.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response

from metering.alerts import THRESHOLDS
from metering.budgets.base import Cap
from metering.ledger.alert_log import ALERT_KINDS, AlertQuery
from proxy.body import shown
from proxy.endpoints import runtime
from proxy.errors import bad_request
from proxy.query_params import LATEST, instant, int_param, visible_team
from proxy.render import json_response
from proxy.runtime import Runtime
from router.policy import Policy

DEFAULT_WINDOW = timedelta(days=7)
MAX_LIMIT = 1000


async def alerts(request: Request) -> Response:
    """``GET /v1/alerts``: stored thresholds and refusals matching the query parameters, newest first."""
    team = await visible_team(request)
    kind = request.query_params.get("kind") or None
    if kind is not None and kind not in ALERT_KINDS:
        raise bad_request(f"'kind' must be one of {', '.join(ALERT_KINDS)}, got {shown(kind)}", param="kind")
    now = datetime.now(UTC)
    since = instant(request, "since", now - DEFAULT_WINDOW)
    until = instant(request, "until", LATEST)
    if until <= since:
        raise bad_request(f"'until' must be after 'since' (it is exclusive), got since={since.isoformat()} "
                          f"until={until.isoformat()}", param="until")
    limit = int_param(request, "limit", 100, 1, MAX_LIMIT)
    found = await runtime(request).spend.alerts(AlertQuery(since, until, limit, team, kind))  # type: ignore[arg-type]
    return json_response({"since": since.isoformat(), "until": until.isoformat(), "team": team, "kind": kind,
                          "alerts": [event.to_dict() for event in found]})


def thresholds(policy: Policy, cap: Cap) -> Sequence[int]:
    """A cap's alert thresholds: its team's ``budgets.alert_thresholds`` in the current policy."""
    team = policy.teams.get(cap.team)
    return THRESHOLDS if team is None else team.settings.budgets.alert_thresholds


def connect(rt: Runtime) -> None:
    """Let the alerter read each cap's thresholds from the live policy (a reload applies at once) and count
    refusals in ``/metrics``."""
    alerter = rt.meter.alerter
    if alerter is None:
        return
    alerter.thresholds_for = lambda cap: thresholds(rt.store.policy, cap)
    alerter.refusal_listeners.append(rt.metrics.observe_refusal)

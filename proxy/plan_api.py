"""``POST /v1/spend/plan``: what-if over this proxy's ledger (``pipeline.plan_report``), the admin API of
``tiergate plan``.

Body: ``{"config_yaml": "<the candidate policy's YAML text>", "since": "7d", "until": "<ISO 8601>", "team": "t"}``
(``since`` defaults to 7d, ``until`` to now, ``team`` to every team). The candidate is validated by the loader
that serves (``router.config_loader.parse_policy``): an invalid one is a 400 whose message lists each issue as
``config_yaml:<line>: <field>: <problem>``. The text, not a path: the caller need not share the proxy's file
system, and the proxy reads no file a request names. Admin keys only (a candidate policy describes every team).
The answer is the document ``tiergate plan --json`` prints for the same window.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from pipeline.errors import TiergateError
from pipeline.plan import parse_window
from proxy.body import CONTROL_CHARS, parse_json, shown
from proxy.endpoints import authenticated, read_body, runtime
from proxy.errors import bad_request
from proxy.query_params import MAX_TEAM_CHARS, known_team
from proxy.render import json_response
from router.config_loader import ConfigError, parse_policy

_SOURCE = "config_yaml"  # the "file" name config issues carry


def _text(body: dict[str, Any], name: str, default: str | None) -> str | None:
    value = body.get(name)
    if value is None:  # absent or null: the default
        return default
    if not isinstance(value, str):
        raise bad_request(f"'{name}' must be a string", param=name)
    return value


async def create_plan(request: Request) -> Response:
    if not authenticated(request).admin:
        raise TiergateError("admin_key_required", "what-if plans are made with an admin key")
    rt = runtime(request)
    body = parse_json(await read_body(request, rt.store.policy.config.server.max_body_bytes))
    unknown = sorted(set(body) - {"config_yaml", "since", "until", "team"})
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}; expected config_yaml, since, until, team", param=unknown[0])
    text = _text(body, "config_yaml", None)
    if not text:
        raise bad_request("'config_yaml' is required: the candidate policy's YAML text", param="config_yaml")
    try:
        candidate = parse_policy(text, _SOURCE)
    except ConfigError as exc:
        raise bad_request(f"invalid candidate policy: {'; '.join(str(i) for i in exc.issues)}",
                          param="config_yaml") from None
    since_text = _text(body, "since", "7d")
    assert since_text is not None
    try:
        since, until = parse_window(since_text, _text(body, "until", None), datetime.now(UTC))
    except ValueError as exc:
        raise bad_request(str(exc), param="until" if "'until'" in str(exc) else "since") from None
    team = _text(body, "team", None)
    if team is not None and (not team or len(team) > MAX_TEAM_CHARS or CONTROL_CHARS.search(team)):
        raise bad_request(f"'team' must be a team name (1 to {MAX_TEAM_CHARS} characters, no control characters), "
                          f"got {shown(team)}", param="team")
    if team is not None and team not in candidate.teams:
        await known_team(request, team)  # a team of the ledger's (or the serving policy's) may leave the candidate
    found = await rt.spend.plan(candidate, since, until, team, hashlib.sha256(text.encode()).hexdigest())
    return json_response(found.to_dict())

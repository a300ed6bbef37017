"""``POST /v1/feedback`` (a team says how good an answer was) and ``GET /v1/spend/value`` (what each accepted answer
cost, by team, model and tier): issue 15, item 7, cost per valuable output. Rules and storage: ``metering.feedback``.

Feedback is given with a key of the team whose request it was, naming the request by ``request_id`` (the
``x-request-id`` header) or ``response_id`` (the answer's ``id``: ``chatcmpl-...``, ``resp_...``, ``msg_...``).
Another team's request is a 404 exactly like an unknown one, so ids cannot be probed across teams. Repeated feedback
on one request is stored as history; the latest counts. The value report has the spend endpoints' access and dates
(admin: any team; team key: its own; ``start`` inclusive, ``end`` exclusive) and their JSON or CSV forms.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from metering.feedback import Feedback
from pipeline.errors import TiergateError
from proxy.body import CONTROL_CHARS, parse_json, shown
from proxy.endpoints import authenticated, read_body, runtime
from proxy.errors import bad_request
from proxy.query_params import period, visible_team
from proxy.render import json_response

MAX_ID_CHARS = 256
MAX_LABEL_CHARS = 64
MAX_COMMENT_BYTES = 2048
_FIELDS = ("request_id", "response_id", "score", "label", "comment")


def _text(body: dict[str, Any], name: str, most: int) -> str | None:
    """An optional string field of 1 to ``most`` characters without control characters."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"'{name}' must be a string, got {type(value).__name__}", param=name,
                          code="invalid_request.invalid_type")
    if not 1 <= len(value) <= most or CONTROL_CHARS.search(value):
        raise bad_request(f"'{name}' must be 1 to {most} characters without control characters, got {shown(value)}",
                          param=name)
    return value


def _score(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"'score' must be a number from 0 to 1, got {type(value).__name__}", param="score",
                          code="invalid_request.invalid_type")
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise bad_request(f"'score' must be a number from 0 to 1, got {shown(value)}", param="score")
    return float(value)


def _comment(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"'comment' must be a string, got {type(value).__name__}", param="comment",
                          code="invalid_request.invalid_type")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_COMMENT_BYTES:
        raise bad_request(f"'comment' must be at most {MAX_COMMENT_BYTES} bytes (UTF-8)", param="comment")
    return value


def parse_feedback(body: dict[str, Any]) -> dict[str, Any]:
    """The body's fields, checked; a 400 naming the first field that is wrong."""
    unknown = [k for k in body if k not in _FIELDS]
    if unknown:
        raise bad_request(f"unknown field {shown(unknown[0])}; expected {', '.join(_FIELDS)}", param=str(unknown[0]))
    request_id = _text(body, "request_id", MAX_ID_CHARS)
    response_id = _text(body, "response_id", MAX_ID_CHARS)
    if (request_id is None) == (response_id is None):
        raise bad_request("give exactly one of 'request_id' (the x-request-id header) or 'response_id' (the "
                          "answer's id)", param="request_id" if request_id is None else "response_id",
                          code="invalid_request.missing_field" if request_id is None else
                          "invalid_request.invalid_value")
    score, label = _score(body.get("score")), _text(body, "label", MAX_LABEL_CHARS)
    if score is None and label is None:
        raise bad_request("give a 'score' (0 to 1) or a 'label' ('accepted', 'rejected' or your own)", param="score",
                          code="invalid_request.missing_field")
    return {"request_id": request_id, "response_id": response_id, "score": score, "label": label,
            "comment": _comment(body.get("comment"))}


async def _answer_of(request: Request, team: str, request_id: str | None,
                     response_id: str | None) -> tuple[str, str | None]:
    """(request id, answer id) of this team's answered request; 404 when there is none: unknown, or another team's."""
    found = await runtime(request).spend.answered(team, request_id, response_id)
    if found is None:
        named = f"request_id {shown(request_id)}" if request_id is not None else f"response_id {shown(response_id)}"
        raise TiergateError("not_found", f"no answered request with {named} for this key's team",
                            param="request_id" if request_id is not None else "response_id")
    return found


async def give(request: Request) -> Response:
    """``POST /v1/feedback``: stored, then echoed with whether it counts as accepted."""
    principal = authenticated(request)
    if principal.team is None:
        raise TiergateError("team_key_required", "feedback is given with a key of the team whose request it was")
    limit = runtime(request).store.policy.config.server.max_body_bytes
    given = parse_feedback(parse_json(await read_body(request, limit)))
    request_id, response_id = await _answer_of(request, principal.team, given["request_id"], given["response_id"])
    feedback = Feedback(request_id=request_id, team=principal.team, key_id=principal.key_id,
                        created_at=datetime.now(UTC), response_id=response_id, score=given["score"],
                        label=given["label"], comment=given["comment"])
    await runtime(request).spend.add_feedback(feedback)
    return json_response(feedback.to_dict())


async def value(request: Request) -> Response:
    """``GET /v1/spend/value?group_by=team|model|tier&start=&end=&team=[&format=csv]``."""
    team = await visible_team(request)
    start, end = period(request)
    group_by = request.query_params.get("group_by", "team").split(",")
    try:
        report = await runtime(request).spend.value(start, end, team, group_by)
    except ValueError as exc:
        raise bad_request(str(exc), param="group_by") from None
    if request.query_params.get("format") == "csv" or "text/csv" in request.headers.get("accept", ""):
        return Response(report.to_csv(), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="value-{start}-{end}.csv"'})
    return json_response(report.to_dict())

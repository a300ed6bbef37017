"""OpenAI's wire format for the error taxonomy (``pipeline.errors``): the one table that maps a code to the status,
error type, wire ``code`` and headers a client sees, and the renderer of the error body.

Every status the proxy answers an error with is chosen here. An upstream's rejection of the request
(``upstream_failed.rejected``) keeps the upstream's 4xx status, and its code when the provider explained itself: it is
the client's request the provider refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import orjson

from pipeline.errors import Ending, ErrorCode, TiergateError, error_object


@dataclass(frozen=True, slots=True)
class Wire:
    status: int
    type: str
    code: str | None


_INVALID = "invalid_request_error"
# code -> what an OpenAI client sees. Wire codes are the ones clients saw before the taxonomy existed (tests and
# clients match on them), so they are listed rather than derived from the taxonomy's names.
ERRORS: dict[ErrorCode, Wire] = {
    "invalid_request.invalid_json": Wire(400, _INVALID, "invalid_json"),
    "invalid_request.invalid_value": Wire(400, _INVALID, "invalid_value"),
    "invalid_request.invalid_type": Wire(400, _INVALID, "invalid_type"),
    "invalid_request.missing_field": Wire(400, _INVALID, "missing_field"),
    "invalid_request.too_deep": Wire(400, _INVALID, "too_deep"),
    "invalid_request.invalid_tag": Wire(400, _INVALID, "invalid_tag"),
    "invalid_request.missing_tags": Wire(400, _INVALID, "missing_tags"),
    "invalid_request.body_too_large": Wire(413, _INVALID, "body_too_large"),
    "auth.missing_api_key": Wire(401, "authentication_error", "missing_api_key"),
    "auth.invalid_api_key": Wire(401, "authentication_error", "invalid_api_key"),
    "auth.expired_api_key": Wire(401, "authentication_error", "expired_api_key"),
    "team_key_required": Wire(403, "permission_error", "team_key_required"),
    "admin_key_required": Wire(403, "permission_error", "admin_key_required"),
    "forbidden_team": Wire(403, "permission_error", "forbidden_team"),
    "routing_refused.model_not_found": Wire(404, _INVALID, "model_not_found"),
    "routing_refused.pin_forbidden": Wire(403, "permission_error", "pin_forbidden"),
    "routing_refused.tier_forbidden": Wire(403, "permission_error", "tier_forbidden"),
    "routing_refused.no_capable_tier": Wire(400, _INVALID, "no_capable_tier"),
    "routing_refused.max_tokens_exceeded": Wire(400, _INVALID, "max_tokens_exceeded"),
    # insufficient_quota (not rate_limit_error): OpenAI's type for a spent quota, which SDKs do not retry.
    "budget_exceeded": Wire(429, "insufficient_quota", "budget_exceeded"),
    "budget_store_unavailable": Wire(503, "api_error", "budget_store_unavailable"),
    # An experiment past its TTL: a permission, not a quota (no new period clears it; the policy must change).
    "experiment_expired": Wire(403, "permission_error", "experiment_expired"),
    "upstream_failed.rate_limited": Wire(429, "rate_limit_error", "upstream_rate_limited"),
    "upstream_failed.timeout": Wire(504, "api_error", "upstream_timeout"),
    "upstream_failed.error": Wire(502, "api_error", "upstream_error"),
    "upstream_failed.rejected": Wire(400, _INVALID, "upstream_rejected"),
    "upstream_failed.stream_cut": Wire(502, "api_error", "upstream_stream_error"),  # an SSE event after a 200
    "not_found": Wire(404, _INVALID, "not_found"),
    "previous_response_not_found": Wire(404, _INVALID, "previous_response_not_found"),
    "method_not_allowed": Wire(405, _INVALID, None),
    "ledger_unavailable": Wire(503, "api_error", "ledger_unavailable"),
    "response_store_unavailable": Wire(503, "api_error", "response_store_unavailable"),
    "training_unavailable": Wire(503, "api_error", "training_unavailable"),
    "metrics_token_unset": Wire(503, "api_error", "metrics_token_unset"),
    "internal_error": Wire(500, "api_error", "internal_error"),
    "client_disconnected": Wire(499, _INVALID, None),  # nobody reads it: the status of the ledger's record
}
assert set(ERRORS) == set(get_args(ErrorCode)), "every code of the taxonomy has exactly one row"

_OK = 200
# An upstream's rejection: OpenAI's type for the status it answered.
_TYPE_BY_STATUS = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
# A 429 from an upstream tells the client to come back later: when the upstream did not say when, in a second.
_DEFAULT_RETRY_AFTER_S = 1


def wire(error: TiergateError) -> Wire:
    """Status, type and code of ``error`` on OpenAI's wire."""
    spec = ERRORS[error.code]
    rejection = error.rejection
    if rejection is None:
        return spec
    status = rejection.status or spec.status
    return Wire(status, _TYPE_BY_STATUS.get(status, "api_error" if status >= 500 else _INVALID),
                rejection.code if rejection.relayed else spec.code)


def status_of(ending: Ending | TiergateError) -> int:
    """The status a client gets for a request that ended this way: what the ledger records as its status."""
    if isinstance(ending, TiergateError):
        return wire(ending).status
    return _OK if ending == "ok" else ERRORS[ending].status


def headers_of(error: TiergateError) -> dict[str, str] | None:
    if error.code == "budget_exceeded":
        # Only a new budget period clears it: stop OpenAI SDKs from retrying.
        return {"x-should-retry": "false"}
    if error.code == "upstream_failed.rate_limited":
        return {"retry-after": str(max(_DEFAULT_RETRY_AFTER_S, int(error.retry_after or _DEFAULT_RETRY_AFTER_S)))}
    return None


def error_body(error: TiergateError) -> bytes:
    spec = wire(error)
    return orjson.dumps(error_object(error.message, spec.type, error.param, spec.code))


def bad_request(message: str, param: str | None = None,
                code: ErrorCode = "invalid_request.invalid_value") -> TiergateError:
    return TiergateError(code, message, param=param)

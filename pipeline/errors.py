"""The one error taxonomy: every request tiergate refuses or cannot serve fails with a ``TiergateError`` whose
``code`` says what went wrong, in words no wire format owns (``routing_refused.pin_forbidden``,
``budget_exceeded``, ``upstream_failed.timeout``, ...).

Nothing here knows a status code, a header or a transport: each ingress maps a code onto its own wire format in
one table (``proxy.errors`` for OpenAI's). The module imports nothing of the project, so the edge, the pipeline
and the simulator can all use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ErrorCode = Literal[
    # The request itself: shape, size, tags.
    "invalid_request.invalid_json",
    "invalid_request.invalid_value",
    "invalid_request.invalid_type",
    "invalid_request.missing_field",
    "invalid_request.too_deep",
    "invalid_request.invalid_tag",
    "invalid_request.missing_tags",
    "invalid_request.body_too_large",
    # Who is asking.
    "auth.missing_api_key",
    "auth.invalid_api_key",
    "auth.expired_api_key",
    "team_key_required",
    "admin_key_required",
    "forbidden_team",
    # Routing refused the request (``router.decide.RoutingRefused`` kinds).
    "routing_refused.model_not_found",
    "routing_refused.pin_forbidden",
    "routing_refused.tier_forbidden",
    "routing_refused.no_capable_tier",
    "routing_refused.max_tokens_exceeded",
    # Money.
    "budget_exceeded",
    "experiment_expired",  # outside its manifest's window (expired, or not started): router.experiments
    "budget_store_unavailable",
    # Upstreams.
    "upstream_failed.rate_limited",
    "upstream_failed.timeout",
    "upstream_failed.error",
    "upstream_failed.rejected",
    "upstream_failed.stream_cut",
    # Tiergate itself and everything else the edge answers.
    "not_found",
    "previous_response_not_found",  # a Responses API previous_response_id this team has no stored response for
    "method_not_allowed",
    "ledger_unavailable",
    "response_store_unavailable",  # the Responses API conversation store (kvcache.responses) did not answer
    "training_unavailable",
    "metrics_token_unset",
    "internal_error",
    "client_disconnected",
]

# How a request that was not refused ended, for the records the pipeline writes (their ``status`` is the one the
# client got, which only the edge knows): served, or served and then cut.
Ending = Literal["ok"] | ErrorCode


@dataclass(frozen=True, slots=True)
class Rejection:
    """An upstream's refusal of the request itself (a 4xx other than 429): the status it answered, and whether the
    error's message, ``param`` and ``code`` are the provider's own words, relayed because they are what the client
    needs to fix its request."""

    status: int | None
    relayed: bool
    code: str | None = None


class TiergateError(Exception):
    """A request tiergate refuses or cannot serve. ``message`` is what the client reads (never an upstream's
    address or a secret); ``retry_after`` is seconds a client should wait, when that is known."""

    def __init__(self, code: ErrorCode, message: str, *, param: str | None = None,
                 retry_after: float | None = None, rejection: Rejection | None = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.rejection = rejection

    def __repr__(self) -> str:
        return f"TiergateError({self.code!r}, {self.message!r})"


def error_object(message: str, type: str, param: str | None, code: str | None) -> dict[str, Any]:
    """OpenAI's error body, ``{"error": {message, type, param, code}}``: the one builder behind every OpenAI-wire
    error tiergate sends (the proxy's responses and stream events, the simulator's upstream answers)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}

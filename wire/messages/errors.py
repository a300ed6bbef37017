"""Anthropic's error type for each HTTP status (https://docs.anthropic.com/en/api/errors): the proxy's Messages
routes and the simulator's ``/v1/messages`` render errors in Anthropic's shape with the same table."""

from __future__ import annotations

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


def anthropic_type(status: int) -> str:
    return _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")

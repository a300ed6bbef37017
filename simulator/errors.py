"""Errors in OpenAI's wire format, raised by validation and fault injection and rendered by both transports."""

from __future__ import annotations

from typing import Any

from pipeline.errors import error_object


class SimulatedError(Exception):
    """An error response the simulator answers with instead of a completion (validation or injected failure)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_object(self.message, self.type, self.param, self.code)


def invalid(message: str, param: str | None = None, code: str | None = None) -> SimulatedError:
    """A 400 ``invalid_request_error``, the status OpenAI uses for every malformed request."""
    return SimulatedError(400, message, param=param, code=code)

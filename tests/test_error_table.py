"""The error taxonomy and its one OpenAI table (issue 13, item 2): every code has a row, the rows give clients the
statuses, types, codes and headers they saw before the taxonomy, and the proxy and the simulator build error bodies
with the same function. Pure logic, in process."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import orjson
import pytest

from pipeline.errors import ErrorCode, Rejection, TiergateError, error_object
from proxy.errors import ERRORS, error_body, headers_of, status_of, wire
from simulator.errors import SimulatedError

ROOT = Path(__file__).resolve().parent.parent


def test_every_code_has_one_row() -> None:
    assert set(ERRORS) == set(get_args(ErrorCode))


@pytest.mark.parametrize(("code", "status", "type_", "wire_code"), [
    ("routing_refused.model_not_found", 404, "invalid_request_error", "model_not_found"),
    ("routing_refused.pin_forbidden", 403, "permission_error", "pin_forbidden"),
    ("routing_refused.tier_forbidden", 403, "permission_error", "tier_forbidden"),
    ("routing_refused.no_capable_tier", 400, "invalid_request_error", "no_capable_tier"),
    ("routing_refused.max_tokens_exceeded", 400, "invalid_request_error", "max_tokens_exceeded"),
    ("budget_exceeded", 429, "insufficient_quota", "budget_exceeded"),
    ("budget_store_unavailable", 503, "api_error", "budget_store_unavailable"),
    ("upstream_failed.rate_limited", 429, "rate_limit_error", "upstream_rate_limited"),
    ("upstream_failed.timeout", 504, "api_error", "upstream_timeout"),
    ("upstream_failed.error", 502, "api_error", "upstream_error"),
    ("team_key_required", 403, "permission_error", "team_key_required"),
    ("invalid_request.missing_tags", 400, "invalid_request_error", "missing_tags"),
    ("invalid_request.body_too_large", 413, "invalid_request_error", "body_too_large"),
    ("auth.missing_api_key", 401, "authentication_error", "missing_api_key"),
    ("internal_error", 500, "api_error", "internal_error"),
])
def test_rows_keep_what_clients_saw(code: ErrorCode, status: int, type_: str, wire_code: str) -> None:
    error = TiergateError(code, "why", param="p")
    assert (wire(error).status, wire(error).type, wire(error).code) == (status, type_, wire_code)
    assert status_of(error) == status
    assert orjson.loads(error_body(error)) == {"error": {"message": "why", "type": type_, "param": "p",
                                                         "code": wire_code}}


def test_headers_come_from_the_table() -> None:
    assert headers_of(TiergateError("budget_exceeded", "over")) == {"x-should-retry": "false"}
    slow = TiergateError("upstream_failed.rate_limited", "slow down", retry_after=2.7)
    assert headers_of(slow) == {"retry-after": "2"}
    assert headers_of(TiergateError("upstream_failed.rate_limited", "slow down")) == {"retry-after": "1"}
    assert headers_of(TiergateError("upstream_failed.error", "broken")) is None


def test_a_provider_rejection_keeps_its_status_and_its_code_when_relayed() -> None:
    relayed = TiergateError("upstream_failed.rejected", "bad 'tools'", param="tools",
                            rejection=Rejection(422, True, "invalid_tools"))
    assert (wire(relayed).status, wire(relayed).type, wire(relayed).code) == (422, "invalid_request_error",
                                                                              "invalid_tools")
    plain = TiergateError("upstream_failed.rejected", "upstream rejected the request (a-0 answered 4xx)",
                          rejection=Rejection(403, False))
    assert (wire(plain).status, wire(plain).type, wire(plain).code) == (403, "permission_error", "upstream_rejected")
    unknown = TiergateError("upstream_failed.rejected", "rejected", rejection=Rejection(None, False))
    assert wire(unknown).status == 400


def test_endings_map_to_the_statuses_records_carry() -> None:
    assert status_of("ok") == 200
    assert status_of("client_disconnected") == 499
    assert status_of("upstream_failed.stream_cut") == 502


def test_the_simulator_builds_its_bodies_with_the_same_function() -> None:
    simulated = SimulatedError(429, "Rate limit reached", type_="requests", code="rate_limit_exceeded")
    assert simulated.body() == error_object("Rate limit reached", "requests", None, "rate_limit_exceeded")


def _status_literals(path: Path) -> list[int]:
    tree = ast.parse(path.read_text())
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and type(node.value) is int
            and 400 <= node.value <= 599]


def test_proxy_chooses_error_statuses_only_in_its_table() -> None:
    """An error status written anywhere else in proxy/ would bypass the table; app.py only recognises Starlette's
    own 404 and 405 (it does not choose them)."""
    found = {path.name: literals for path in sorted((ROOT / "proxy").glob("*.py"))
             if path.name not in ("errors.py", "app.py") and (literals := _status_literals(path))}
    assert found == {}
    assert sorted(_status_literals(ROOT / "proxy" / "app.py")) == [404, 405]

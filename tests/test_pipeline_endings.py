"""How a request's ending reaches its one ledger record, in process (``tests/test_pipeline.py``'s harness: the
dispatcher over simulator deployments, a real ``Meter`` over a temporary SQLite ledger).

- A client that hung up while a non-streamed call ran: the call runs to the end (it is paid), the record says 499
  with the tokens billed (issue 11; the fault suite's disconnect scenario checks it through a real proxy).
- A fail-closed team refused because the budget store is down: recorded at $0 with the 503 it got, once.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.budget import BudgetPolicies
from pipeline.errors import TiergateError
from pipeline.result import Served
from tests.test_pipeline import HELLO, harness, policy_text, run


def gone(answer: bool, asked: list[bool]) -> Callable[[], Awaitable[bool]]:
    """The ingress's poll of its connection: says ``answer``, and notes that it was asked."""
    async def client_gone() -> bool:
        asked.append(answer)
        return answer
    return client_gone


def tokens(db: Path, request_id: str) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT prompt_tokens, completion_tokens FROM records WHERE request_id = ?",
                            (request_id,)).fetchone()


@pytest.mark.parametrize("hung_up, status", [(True, 499), (False, 200)])
def test_a_client_that_hung_up_during_the_call_is_recorded_as_499_with_what_it_cost(
        tmp_path: Path, hung_up: bool, status: int) -> None:
    async def go() -> None:
        async with harness(tmp_path, policy_text("    budgets: {team: {daily_usd: '10'}}\n")) as h:
            asked: list[bool] = []
            request = h.request({"model": "small", "messages": HELLO, "max_tokens": 16})
            result = await h.pipeline.run(replace(request, client_gone=gone(hung_up, asked)))
            assert isinstance(result, Served) and result.body["choices"]  # the call ran to its end
            assert asked == [hung_up]  # asked once, with the answer in hand
            [record] = h.records
            assert record.cost_nanos == result.notes.cost_nanos > 0  # paid, so charged
            assert await h.ledger() == [("r1", status, "small-0", record.cost_nanos)]
            prompt, completion = tokens(tmp_path / "ledger.db", "r1")
            assert prompt > 0 and completion > 0
            states = await h.meter.budget_states("t", BudgetPolicies().of(h.policy)["t"])
            assert [(s.spent_nanos, s.reserved_nanos) for s in states] == [(record.cost_nanos, 0)]
    run(go())


def test_a_fail_closed_refusal_while_the_budget_store_is_down_is_recorded_once_at_no_cost(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket is closed: the store is down
    team = "    budgets: {team: {daily_usd: '10'}, redis_failure: closed}\n"

    async def go() -> None:
        async with harness(tmp_path, policy_text(team), redis_url=f"redis://127.0.0.1:{port}/0") as h:
            for rid in ("r1", "r2"):
                with pytest.raises(TiergateError) as refused:
                    await h.pipeline.run(h.request({"model": "small", "messages": HELLO}, request_id=rid))
                assert refused.value.code == "budget_store_unavailable"
            assert await h.ledger() == [("r1", 503, "", 0), ("r2", 503, "", 0)]
            assert [r.status for r in h.records] == [503, 503]
    run(go())

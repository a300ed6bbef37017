"""A 200 whose JSON body is not an object (``[]``, a string) is a failed attempt of the deployment that sent it
(issue 11): the dispatcher tries the next deployment of the plan and the health book counts the failure. Was: the
pipeline found it after dispatch, so the request failed without falling back. Real loopback HTTP upstream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pipeline.result import Served
from router.config_loader import parse_policy
from tests.test_pipeline import HELLO, answering, harness, policy_text
from upstream.dispatch import Dispatcher
from upstream.health import HealthBook
from upstream.pool import UpstreamPool

FALLBACK = "    routing: {allow_downgrade_on_failure: false}\n"  # small fails over to mid


def _small_at(url: str) -> str:
    return f"model: openai/gpt-4o-mini\n        api_base: {url}"


@pytest.mark.parametrize("payload", [b"[]", b'"text"', b"7"])
def test_a_non_object_answer_falls_back_and_counts_against_the_deployment(tmp_path: Path, payload: bytes) -> None:
    async def go() -> None:
        async with answering(payload) as url:
            policy = parse_policy(policy_text(FALLBACK, small=_small_at(url)))
            pool = UpstreamPool(5.0, 5.0)
            health = HealthBook(failures_to_cooldown=1, cooldown_s=60)
            try:
                dispatcher = Dispatcher(pool, health, 3, 30.0, 5.0)
                plan = (policy.tiers[0].deployments[0], policy.tiers[1].deployments[0])
                dep, reply, attempts = await dispatcher.send(
                    plan, lambda d: ("chat/completions", {"model": d.upstream_model, "messages": HELLO}, None))
            finally:
                await pool.close()
            assert dep.id == "mid-0" and reply.body["choices"]
            assert [(a.deployment, a.outcome, a.detail) for a in attempts] == [
                ("small-0", "server", "sent an unusable answer"), ("mid-0", "ok", "")]
            assert not health.snapshot().healthy("small-0")  # the failure was counted (one puts it in cooldown)

        # and through the pipeline: served by the fallback, one record at its price
        async with answering(payload) as url, harness(tmp_path, policy_text(FALLBACK, small=_small_at(url))) as h:
            result = await h.pipeline.run(h.request({"model": "small", "messages": HELLO}))
            assert isinstance(result, Served) and (result.notes.deployment, result.notes.attempts) == ("mid-0", 2)
            assert [(rid, status, dep_id) for rid, status, dep_id, _ in await h.ledger()] == [("r1", 200, "mid-0")]
    asyncio.run(go())

"""Unit tests of context planning: tool pairs, kept turns, stable cut points, fits-the-budget."""

from __future__ import annotations

from router.context import plan_context, split_turns
from text.tokens import count_messages

SYSTEM = {"role": "system", "content": "You are a support agent. " * 200}


def _conversation(turns: int) -> list[dict]:
    messages = [SYSTEM]
    for n in range(turns):
        messages.append({"role": "user", "content": f"question {n} " + "about my order " * 50})
        if n % 3 == 1:  # a tool round trip inside the turn
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": f"c{n}", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]})
            messages.append({"role": "tool", "tool_call_id": f"c{n}", "content": "status: shipped " * 20})
        messages.append({"role": "assistant", "content": f"answer {n} " + "words " * 120})
    return messages


def test_split_keeps_tool_calls_with_their_results() -> None:
    head, turns = split_turns(_conversation(6))
    assert head == (SYSTEM,)
    for turn in turns:
        assert turn[0]["role"] == "user"
        for i, message in enumerate(turn):
            if message["role"] == "tool":
                assert turn[i - 1].get("tool_calls"), "a tool result must follow its call in the same turn"


def test_no_plan_when_the_conversation_fits() -> None:
    assert plan_context("t", _conversation(2), budget=100_000, keep_last_turns=4) is None


def test_plan_keeps_system_and_last_turns_and_falls_below_budget() -> None:
    messages = _conversation(20)
    plan = plan_context("t", messages, budget=4000, keep_last_turns=4)
    assert plan is not None and plan.trims
    trimmed = plan.messages("a short summary")
    assert trimmed[0] == SYSTEM
    assert trimmed[1]["role"] == "system" and "a short summary" in trimmed[1]["content"]
    _, turns = split_turns(messages)
    kept = [m for t in turns[-4:] for m in t]
    assert trimmed[-len(kept):] == kept
    assert count_messages(trimmed) < count_messages(messages) / 2
    assert count_messages(trimmed) <= 4000 + 200


def test_cut_points_are_stable_as_the_conversation_grows() -> None:
    """Turn N+1 reuses turn N's summaries: its steps extend turn N's steps, keys unchanged."""
    previous = None
    changes = 0
    for turns in range(8, 30):
        plan = plan_context("t", _conversation(turns), budget=4000, keep_last_turns=4)
        if plan is None:
            continue
        if previous is not None:
            assert plan.steps[: len(previous.steps)] == previous.steps
            changes += plan.cut != previous.cut
        previous = plan
    # hysteresis: the prefix moves in large steps, not on every turn
    assert 0 < changes <= 22 // 3


def test_cache_breakpoint_stays_on_the_clients_system_prompt() -> None:
    from router.config_loader import parse_policy
    from router.prefix import prefix_key, provider_caching

    policy = parse_policy("tiers:\n  - name: s\n    deployments:\n"
                          "      - {model: anthropic/claude-sonnet-4-5-20250929}\n"
                          "teams:\n  x:\n    keys:\n      - {id: k, sha256: '" + "0" * 64 + "'}\n")
    dep = policy.tiers[0].deployments[0]
    plan = plan_context("t", _conversation(20), budget=4000, keep_last_turns=4)
    assert plan is not None
    body = {"model": "m", "messages": plan.messages("the summary")}
    marked = provider_caching(body, dep, "x", prefix_key(body))["messages"]
    assert marked[0]["content"][-1]["cache_control"] == {"type": "ephemeral"}  # the client's system prompt
    assert marked[1] == body["messages"][1]  # the summary after it is left unmarked

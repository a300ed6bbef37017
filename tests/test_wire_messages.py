"""Anthropic Messages <-> canonical chat translation (``wire.messages``), without HTTP: what the mapping sends
upstream, the Message and events a client gets back, parsed by the anthropic SDK's own models."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import TiergateError
from proxy.body import check_chat
from router.prefix import conversation_key, prefix_key
from tests.anthropic_sdk import GROUP
from wire.messages.events import ChatToMessages
from wire.messages.request import native_body, to_chat
from wire.messages.response import to_message
from wire.messages.tokens import count_tokens

BILLING = "x-anthropic-billing-header: cc_version=2.1.37.0d9; cc_entrypoint=cli; cch={};"
TOOLS = [{"name": "get_weather", "description": "Weather by city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def messages_body(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_full_request_maps_to_a_valid_chat_body() -> None:
    body = messages_body(
        system=[{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be brief."}],
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "Look:", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "text", "text": "And tomorrow?"}]},
        ],
        tools=TOOLS, tool_choice={"type": "any", "disable_parallel_tool_use": True}, stop_sequences=["END"],
        temperature=0.5, top_p=0.9, top_k=5, metadata={"user_id": "u-1"}, stream=True,
        thinking={"type": "enabled", "budget_tokens": 1024})
    chat = to_chat(body)
    check_chat(chat)  # the pipeline's invariants hold
    assert chat["messages"] == [
        {"role": "system", "content": "You are Claude Code.\n\nBe brief."},
        {"role": "user", "content": [{"type": "text", "text": "Look:"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": TOOLS[0]["input_schema"], "description": "Weather by city"}}]
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False
    assert chat["stop"] == ["END"] and chat["temperature"] == 0.5 and chat["top_p"] == 0.9
    assert "top_k" not in chat and "thinking" not in chat  # native only
    assert chat["user"] == "u-1" and chat["max_tokens"] == 64
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}  # the client's body (native) is untouched


@pytest.mark.parametrize(("choice", "mapped"), [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice(choice: dict[str, Any], mapped: Any) -> None:
    assert to_chat(messages_body(tools=TOOLS, tool_choice=choice))["tool_choice"] == mapped


def test_an_empty_final_assistant_turn_is_allowed_elsewhere_refused() -> None:
    prefill = messages_body(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}])
    assert to_chat(prefill)["messages"] == [{"role": "user", "content": "hi"}]
    with pytest.raises(TiergateError, match="messages.0.content: messages must have non-empty content"):
        to_chat(messages_body(messages=[{"role": "user", "content": []}, {"role": "assistant", "content": "x"}]))


def test_a_system_message_inside_messages_stays_in_place() -> None:
    """Claude Code 2.1 (beta mid-conversation-system-2026-04-07) lists its agents in a system message after the first
    user turn, with adaptive thinking, output_config and context_management beside: all accepted."""
    body = messages_body(messages=[
        {"role": "user", "content": [{"type": "text", "text": "Say hello.", "cache_control": {"type": "ephemeral"}}]},
        {"role": "system", "content": "Available agent types: claude."},
        {"role": "system", "content": [{"type": "text", "text": "Skills: none."}]}],
        thinking={"type": "adaptive"}, output_config={"effort": "high"},
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]})
    chat = to_chat(body)
    check_chat(chat)
    assert chat["messages"][1:] == [{"role": "system", "content": "Available agent types: claude."},
                                    {"role": "system", "content": "Skills: none."}]
    assert native_body(body)["messages"][1]["role"] == "system"  # a native deployment gets it as sent
    with pytest.raises(TiergateError, match="messages.0.role: Input should be 'user', 'assistant' or 'system'"):
        to_chat(messages_body(messages=[{"role": "tool", "content": "x"}]))


def test_server_tool_turns_from_a_native_answer_are_left_out() -> None:
    chat = to_chat(messages_body(messages=[
        {"role": "user", "content": "news?"},
        {"role": "assistant", "content": [
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "news"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
            {"type": "text", "text": "Here is the news."}]},
        {"role": "user", "content": "thanks"}]))
    assert chat["messages"][1] == {"role": "assistant", "content": "Here is the news."}


def test_server_tools_and_long_user_ids_stay_native() -> None:
    chat = to_chat(messages_body(tools=[{"type": "web_search_20250305", "name": "web_search"}],
                                 tool_choice={"type": "auto"}, metadata={"user_id": "u" * 200}))
    assert "tools" not in chat and "tool_choice" not in chat  # chat completions refuses tool_choice without tools
    assert len(chat["user"]) == 64


@pytest.mark.parametrize(("body", "message", "status_code"), [
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens: Field required",
     "invalid_request.missing_field"),
    (messages_body(max_tokens="8"), "max_tokens: Input should be a valid integer", "invalid_request.invalid_type"),
    (messages_body(max_tokens=0), "max_tokens: Input should be greater than or equal to 1", None),
    (messages_body(messages=[]), "messages: List should have at least 1 item", None),
    (messages_body(messages=[{"role": "tool", "content": "x"}]), "messages.0.role: Input should be", None),
    (messages_body(messages=[{"role": "system", "content": "x"}]), "messages: the messages hold no user or", None),
    (messages_body(messages=[{"role": "user", "content": [{"type": "video"}]}]), "messages.0.content.0.type", None),
    (messages_body(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]),
     "messages.0.content.0.source.type", None),
    (messages_body(temperature=1.5), "temperature: Input should be between 0.0 and 1.0", None),
    (messages_body(tool_choice={"type": "sometimes"}), "tool_choice.type", None),
    (messages_body(tools=[{"name": "x"}]), "tools.0.input_schema: Input should be an object", None),
    (messages_body(system=[{"type": "image"}]), "system.0.type", None),
    (messages_body(stop_sequences="END"), "stop_sequences: Input should be a valid list", None),
    ({"max_tokens": 5, "messages": []}, "model: Field required", "invalid_request.missing_field"),
])
def test_bad_requests_name_the_field(body: dict[str, Any], message: str, status_code: str | None) -> None:
    with pytest.raises(TiergateError) as error:
        to_chat(body)
    assert error.value.message.startswith(message)
    assert error.value.param == message.split(":")[0]
    if status_code is not None:
        assert error.value.code == status_code


def test_attribution_line_is_dropped_and_keys_ignore_it() -> None:
    """Claude Code's system block 0 (a billing line whose cch differs per request) neither reaches a translated
    upstream nor moves the prefix or conversation key: two sessions' requests with the same prompt share both."""
    prompt = [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
              {"type": "text", "text": "Long instructions ..."}]
    one = to_chat(messages_body(system=[{"type": "text", "text": BILLING.format("fa690")}, *prompt], tools=TOOLS))
    two = to_chat(messages_body(system=[{"type": "text", "text": BILLING.format("36ee5")}, *prompt], tools=TOOLS))
    assert one["messages"][0]["content"].startswith("You are Claude Code")
    assert one == two
    # the same in OpenAI's own format (a client that puts the line in a chat system message): keys ignore it
    chat = [{"role": "system", "content": BILLING.format("aaaaa") + "\nYou are a helper."},
            {"role": "user", "content": "hi"}]
    other = [{"role": "system", "content": BILLING.format("bbbbb") + "\nYou are a helper."},
             {"role": "user", "content": "hi"}]
    plain = [{"role": "system", "content": "You are a helper."}, {"role": "user", "content": "hi"}]
    assert prefix_key({"messages": chat}) == prefix_key({"messages": other}) == prefix_key({"messages": plain})
    assert conversation_key("t", {"messages": chat}) == conversation_key("t", {"messages": other})
    parts = [{"role": "system", "content": [{"type": "text", "text": BILLING.format("ccccc")},
                                            {"type": "text", "text": "You are a helper."}]}]
    parts_other = [{"role": "system", "content": [{"type": "text", "text": BILLING.format("ddddd")},
                                                  {"type": "text", "text": "You are a helper."}]}]
    assert prefix_key({"messages": parts}) == prefix_key({"messages": parts_other})
    # without the fix the keys differ: measured on the same bodies with the line kept by another name
    kept = [{"role": "system", "content": "x-other-header: cch=aaaaa;\nYou are a helper."}]
    kept_other = [{"role": "system", "content": "x-other-header: cch=bbbbb;\nYou are a helper."}]
    assert prefix_key({"messages": kept}) != prefix_key({"messages": kept_other})


def test_session_keys_the_conversation() -> None:
    first = {"messages": [{"role": "system", "content": "p"}, {"role": "user", "content": "turn 1 <reminder a>"}]}
    later = {"messages": [{"role": "system", "content": "p"}, {"role": "user", "content": "turn 1 <reminder b>"}]}
    assert conversation_key("t", first, "s-1") == conversation_key("t", later, "s-1")
    assert conversation_key("t", first, "s-1") != conversation_key("t", first, "s-2")
    assert conversation_key("t", first) != conversation_key("t", later)  # without a session: the text decides
    side_call = {"messages": [{"role": "system", "content": "write a title"}, {"role": "user", "content": "x"}]}
    assert conversation_key("t", side_call, "s-1") != conversation_key("t", first, "s-1")


def chat_answer(**message: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1200, "completion_tokens": 30,
                      "prompt_tokens_details": {"cached_tokens": 1024}}}


@GROUP
def test_answer_becomes_an_sdk_message_with_exclusive_input_usage() -> None:
    from anthropic.types import Message

    answer = chat_answer(content="Hello", tool_calls=[
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}])
    answer["choices"][0]["finish_reason"] = "tool_calls"
    message = Message.model_validate(to_message(answer, "msg_abc", (), lambda: 0, "gpt-4o-mini"))
    assert message.id == "msg_abc" and message.role == "assistant" and message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"city": "Paris"} and message.content[1].id == "call_1"
    assert message.usage.input_tokens == 1200 - 1024  # Anthropic's input excludes cache reads
    assert message.usage.cache_read_input_tokens == 1024 and message.usage.cache_creation_input_tokens == 0
    assert message.usage.output_tokens == 30


@pytest.mark.parametrize(("finish", "matched", "reason", "sequence"), [
    ("stop", None, "end_turn", None), ("length", None, "max_tokens", None), ("content_filter", None, "refusal", None),
    ("stop", "END", "stop_sequence", "END"), ("stop", 50256, "end_turn", None)])
def test_stop_reasons(finish: str, matched: Any, reason: str, sequence: str | None) -> None:
    answer = chat_answer(content="x")
    answer["choices"][0].update(finish_reason=finish, stop_reason=matched)
    message = to_message(answer, "msg_1", ("END",), lambda: 0, "m")
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, sequence)


def test_cache_writes_count_as_creation_not_input() -> None:
    answer = chat_answer(content="x")
    answer["usage"] = {"prompt_tokens": 3000, "completion_tokens": 5, "cache_creation_input_tokens": 2000,
                       "prompt_tokens_details": {"cached_tokens": 500}}
    usage = to_message(answer, "msg_1", (), lambda: 0, "m")["usage"]
    assert usage == {"input_tokens": 500, "cache_creation_input_tokens": 2000, "cache_read_input_tokens": 500,
                     "output_tokens": 5}


def parse_frames(frames: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in frames:
        head, data = frame.decode().rstrip("\n").split("\n")
        assert head.startswith("event: ") and data.startswith("data: ")
        payload = json.loads(data[6:])
        assert payload["type"] == head[7:]  # the SDK dispatches on the event line: it must match the payload
        out.append((head[7:], payload))
    return out


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": choices,
            "usage": usage}


@GROUP
def test_stream_events_accumulate_to_the_final_message_in_the_sdk() -> None:
    from anthropic._models import construct_type
    from anthropic.lib.streaming._messages import accumulate_event
    from anthropic.types import RawMessageStreamEvent

    translator = ChatToMessages("msg_s", "gpt-4o-mini", 1180, ())
    frames = translator.start()
    for c in [chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "think"}),
              chunk({"content": "Hel"}), chunk({"content": "lo"}),
              chunk({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                                     "function": {"name": "get_weather", "arguments": ""}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
              chunk({}, "tool_calls"),
              chunk(None, usage={"prompt_tokens": 1200, "completion_tokens": 12,
                                 "prompt_tokens_details": {"cached_tokens": 1024}})]:
        frames += translator.feed(c)
    frames += translator.finish(123_000_000, "small")
    events = parse_frames(frames)
    kinds = [k for k, _ in events]
    assert kinds[:2] == ["message_start", "ping"] and kinds[-2:] == ["message_delta", "message_stop"]
    assert events[0][1]["message"]["usage"]["input_tokens"] == 1180  # the estimate, before usage is known
    snapshot = None
    for _, data in events:
        if data["type"] == "ping":
            continue
        snapshot = accumulate_event(event=construct_type(type_=RawMessageStreamEvent, value=data),
                                    current_snapshot=snapshot, json_bufs={})
    assert snapshot is not None
    assert [b.type for b in snapshot.content] == ["thinking", "text", "tool_use"]
    assert snapshot.content[0].thinking == "think" and snapshot.content[1].text == "Hello"
    assert snapshot.stop_reason == "tool_use" and snapshot.id == "msg_s"
    # message_delta's exact counts replace message_start's estimate
    assert (snapshot.usage.input_tokens, snapshot.usage.cache_read_input_tokens,
            snapshot.usage.cache_creation_input_tokens, snapshot.usage.output_tokens) == (176, 1024, 0, 12)
    delta = events[-2][1]
    assert delta["x_tiergate"] == {"cost_usd": "0.123000000", "tier": "small"}


def test_tool_arguments_stream_as_input_json_deltas() -> None:
    translator = ChatToMessages("msg_t", "m", 10, ())
    frames = translator.feed(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f",
                                                                                        "arguments": '{"a"'}}]}))
    frames += translator.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}))
    deltas = [d["delta"]["partial_json"] for k, d in parse_frames(frames) if k == "content_block_delta"]
    assert "".join(deltas) == '{"a": 1}'


def test_stream_without_usage_reports_the_estimate_the_ledger_bills() -> None:
    translator = ChatToMessages("msg_u", "gpt-4o-mini", 42, ())
    frames = translator.feed(chunk({"content": "one two three"}, "stop"))
    frames += translator.finish(None, None)
    delta = parse_frames(frames)[-2][1]
    assert delta["usage"]["input_tokens"] == 42 and delta["usage"]["output_tokens"] == 3
    assert "x_tiergate" not in delta


def test_count_tokens_counts_the_canonical_prompt() -> None:
    small = count_tokens({"model": "m", "messages": [{"role": "user", "content": "hello"}]})
    bigger = count_tokens({"model": "m", "messages": [{"role": "user", "content": "hello"}], "tools": TOOLS,
                           "system": "You are a helpful assistant."})
    assert 0 < small < bigger
    assert orjson.dumps({"input_tokens": small})  # a plain int


def test_the_relays_cost_note_on_the_usage_chunk_is_passed_on() -> None:
    translator = ChatToMessages("msg_x", "m", 10, ())
    note = {"cost_usd": "0.000001000", "tier": "small", "score": 0.2, "model": "m"}
    translator.feed({**chunk(None, usage={"prompt_tokens": 10, "completion_tokens": 1}), "x_tiergate": note})
    delta = parse_frames(translator.finish(999, "other"))[-2][1]
    assert delta["x_tiergate"] == note  # the relay's (the settled cost), not rebuilt here


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                  max_size=3), max_leaves=8)
_BLOCK = st.fixed_dictionaries({"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking",
                                                         "document", "video", None])},
                               optional={"text": _JSON, "source": _JSON, "id": _JSON, "name": _JSON, "input": _JSON,
                                         "tool_use_id": _JSON, "content": _JSON})
_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                                  "content": st.text(max_size=5) | st.lists(_BLOCK, max_size=3) | _JSON})


# Example counts: at 200 and 150 every run reached as many lines of wire/, proxy/ and pipeline/ as at 400 and 300
# (coverage.py, three runs each; the few lines only some runs reach differ from run to run at either count), at half
# the CPU, which goes to generating the bodies; hypothesis replays any failing example from its database.
@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({"model": st.sampled_from(["m", ""]) | _JSON, "max_tokens": st.integers(0, 9) | _JSON,
                              "messages": st.lists(_MESSAGE, max_size=3) | _JSON},
                             optional={"system": _JSON | st.lists(_BLOCK, max_size=2), "tools": _JSON,
                                       "tool_choice": _JSON, "stop_sequences": _JSON, "temperature": _JSON,
                                       "metadata": _JSON, "stream": _JSON, "top_k": _JSON, "thinking": _JSON}))
def test_any_body_is_mapped_or_refused_with_a_named_field(body: dict[str, Any]) -> None:
    """Whatever the client sends: a 4xx naming a field, or a canonical body that passes the chat checks the
    pipeline relies on. Never another exception (a 500). (Mostly refusals: the next test maps well-formed ones.)"""
    try:
        chat = to_chat(body)
    except TiergateError as error:
        assert error.param and error.code.startswith("invalid_request.")
        return
    check_chat(chat)


_TEXT = st.text(min_size=1, max_size=8)
_VALID_USER_BLOCK = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _TEXT),
    st.builds(lambda d: {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": d}}, _TEXT),
    st.builds(lambda i, c: {"type": "tool_result", "tool_use_id": i, "content": c}, _TEXT,
              _TEXT | st.lists(st.builds(lambda t: {"type": "text", "text": t}, _TEXT), max_size=2)),
    st.builds(lambda t: {"type": "thinking", "thinking": t, "signature": "s"}, _TEXT))
_VALID_ASSISTANT_BLOCK = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _TEXT),
    st.builds(lambda i, n, a: {"type": "tool_use", "id": i, "name": n, "input": a}, _TEXT, _TEXT,
              st.dictionaries(_TEXT, _JSON, max_size=2)))
_VALID_MESSAGE = st.one_of(
    st.builds(lambda c: {"role": "user", "content": c}, _TEXT | st.lists(_VALID_USER_BLOCK, min_size=1, max_size=3)),
    st.builds(lambda c: {"role": "assistant", "content": c},
              _TEXT | st.lists(_VALID_ASSISTANT_BLOCK, min_size=1, max_size=3)))


@settings(max_examples=150, deadline=None)
@given(st.lists(_VALID_MESSAGE, min_size=1, max_size=4).filter(lambda ms: any(
           not isinstance(m["content"], list) or any(b["type"] not in ("thinking",) for b in m["content"])
           for m in ms)),
       st.none() | _TEXT | st.lists(st.builds(lambda t: {"type": "text", "text": t}, _TEXT), max_size=2),
       st.booleans(), st.integers(1, 100_000))
def test_well_formed_bodies_always_map_to_valid_chat(messages: list[dict[str, Any]], system: Any, stream: bool,
                                                     max_tokens: int) -> None:
    body = {"model": "claude-sonnet-4-6", "max_tokens": max_tokens, "messages": messages, "stream": stream,
            "tools": TOOLS, "tool_choice": {"type": "auto"}}
    if system is not None:
        body["system"] = system
    chat = to_chat(body)
    check_chat(chat)
    calls = sum(len(m.get("tool_calls") or ()) for m in chat["messages"])
    uses = sum(1 for m in messages if isinstance(m["content"], list) for b in m["content"] if b["type"] == "tool_use")
    assert calls == uses  # every tool_use became a tool call
    results = sum(1 for m in messages if isinstance(m["content"], list) for b in m["content"]
                  if b["type"] == "tool_result")
    assert sum(1 for m in chat["messages"] if m["role"] == "tool") == results


def test_native_body_drops_only_the_unsigned_thinking_a_translated_answer_gave() -> None:
    signed = {"type": "thinking", "thinking": "a", "signature": "EqQB..."}
    ours = {"type": "thinking", "thinking": "b", "signature": ""}
    body = messages_body(messages=[{"role": "user", "content": "q"},
                                   {"role": "assistant", "content": [ours, {"type": "text", "text": "t1"}]},
                                   {"role": "user", "content": "q2"},
                                   {"role": "assistant", "content": [signed, {"type": "text", "text": "t2"}]},
                                   {"role": "user", "content": "q3"}])
    native = native_body(body)
    assert native["messages"][1]["content"] == [{"type": "text", "text": "t1"}]
    assert native["messages"][3]["content"] == [signed, {"type": "text", "text": "t2"}]
    assert body["messages"][1]["content"][0] is ours  # the client's body is not edited in place
    plain = messages_body()
    assert native_body(plain) is plain

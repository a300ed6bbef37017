"""The Responses API translators (``wire.responses``), pure: request checks and the mapping to chat completions, a
chat completion as a Response object, a chat chunk stream as Responses events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from pipeline.errors import TiergateError
from router.config_loader import parse_policy
from wire.responses.events import ChatToResponses, frame
from wire.responses.request import (
    chat_body,
    conversation,
    native_body,
    parse,
    serves_natively,
    to_messages,
)
from wire.responses.response import echo, from_chat
from wire.responses.tool_names import ToolNames

RID = "resp_" + "ab" * 24
EVENT = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
PATCH_TOOL = {"type": "custom", "name": "apply_patch", "description": "Edit files.",
              "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}


def _chat(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    request = parse(body)
    return chat_body(request, conversation(history or [], request))


def _refused(body: dict[str, Any]) -> TiergateError:
    with pytest.raises(TiergateError) as caught:
        parse(body)
    return caught.value


# ---- request -----------------------------------------------------------------------------------------------

def test_string_input_maps_to_one_user_message_after_the_instructions() -> None:
    request = parse({"model": "auto", "input": "hi", "instructions": "be brief"})
    assert request.input_items == [{"type": "message", "role": "user", "content": [{"type": "input_text",
                                                                                     "text": "hi"}]}]
    assert request.store and not request.stream and request.native_only == ()
    assert chat_body(request, request.input_items)["messages"] == [{"role": "system", "content": "be brief"},
                                                                   {"role": "user", "content": "hi"}]


def test_every_mapped_parameter() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    chat = _chat({
        "model": "auto", "input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False, "temperature": 0.2, "top_p": 0.9, "max_output_tokens": 99,
        "reasoning": {"effort": "low", "summary": "auto"}, "metadata": {"team": "x"}, "user": "u1", "store": True,
        "text": {"format": {"type": "json_schema", "name": "s", "schema": schema, "strict": True}},
        "stream": True, "include": ["reasoning.encrypted_content"], "truncation": "auto",
    })
    assert chat == {
        "model": "auto", "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
                                                                                          "properties": {}}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False,
        "temperature": 0.2, "top_p": 0.9, "max_tokens": 99, "reasoning_effort": "low", "metadata": {"team": "x"},
        "user": "u1", "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema,
                                                                                 "strict": True}},
        "stream": True, "stream_options": {"include_usage": True},
    }


def test_parallel_tool_calls_only_with_tools_and_allowed_tools_choice() -> None:
    assert "parallel_tool_calls" not in _chat({"model": "m", "input": "x", "parallel_tool_calls": True})
    chat = _chat({"model": "m", "input": "x", "tools": [WEATHER], "tool_choice": {
        "type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_weather"}]}})
    assert chat["tool_choice"] == {"type": "allowed_tools", "allowed_tools": {
        "mode": "required", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}}
    assert _chat({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}})["response_format"] == {
        "type": "json_object"}
    assert "response_format" not in _chat({"model": "m", "input": "x", "text": {"format": {"type": "text"}}})


def test_items_to_messages_join_tool_calls_and_drop_what_chat_cannot_carry() -> None:
    items = [
        {"role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"}, {"type": "input_image", "image_url": "data:x", "detail": "low"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Calling.",
                                                              "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"a\":1}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        {"type": "function_call", "call_id": "c3", "name": "f", "arguments": "{}"},
    ]
    request = parse({"model": "m", "input": items})
    assert request.native_only == ("input[8]",)  # a hosted tool's call: only a native deployment can take it
    assert to_messages(request.input_items) == [
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:x", "detail": "low"}}]},
        {"role": "assistant", "content": "Calling.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{\"a\":1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c3", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    ]


def test_history_comes_before_this_turn_and_native_body_carries_it_instead_of_the_id() -> None:
    history = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]},
               {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "answer", "annotations": []}]}]
    request = parse({"model": "auto", "input": "second", "previous_response_id": "resp_x",
                     "tools": [{"type": "web_search"}]})
    items = conversation(history, request)
    assert [m["content"] for m in chat_body(request, items)["messages"]] == ["first", "answer", "second"]
    native = native_body(request, items)
    assert "previous_response_id" not in native and native["input"] == items
    assert native["tools"] == [{"type": "web_search"}]  # the hosted tool reaches a native deployment only
    assert "tools" not in chat_body(request, items)
    assert request.native_only == ("tools[0]",)
    assert parse({"model": "m", "previous_response_id": "resp_x"}).input_items == []  # "continue" alone is valid


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"input": "x"}, "model", "invalid_request.missing_field"),
    ({"model": "m"}, "input", "invalid_request.missing_field"),
    ({"model": "m", "input": []}, "input", "invalid_request.invalid_value"),
    ({"model": "m", "input": "x", "messages": []}, "messages", "invalid_request.invalid_value"),
    ({"model": "m", "input": "x", "max_output_tokens": True}, "max_output_tokens", "invalid_request.invalid_type"),
    ({"model": "m", "input": "x", "top_p": 2}, "top_p", "invalid_request.invalid_value"),
    ({"model": "m", "input": "x", "store": "yes"}, "store", "invalid_request.invalid_type"),
    ({"model": "m", "input": "x", "metadata": {"k": 1}}, "metadata.k", "invalid_request.invalid_type"),
    ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name", "invalid_request.missing_field"),
    ({"model": "m", "input": "x", "tool_choice": "sometimes"}, "tool_choice", "invalid_request.invalid_value"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type",
     "invalid_request.invalid_value"),
    ({"model": "m", "input": "x", "reasoning": {"effort": 3}}, "reasoning.effort", "invalid_request.invalid_type"),
    ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments",
     "invalid_request.missing_field"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
     "input[0].content[0].file_id", "invalid_request.invalid_value"),
    ({"model": "m", "input": [{"type": "telepathy"}]}, "input[0].type", "invalid_request.invalid_value"),
    ({"model": "m", "input": "x", "conversation": "conv_1"}, "conversation", "invalid_request.invalid_value"),
])
def test_bad_requests_name_the_param(body: dict[str, Any], param: str, code: str) -> None:
    error = _refused(body)
    assert (error.param, error.code) == (param, code), error.message


def test_native_only_parameters_are_collected_not_refused() -> None:
    request = parse({"model": "m", "input": "x", "prompt": {"id": "pmpt_1"}, "tools": [WEATHER, {"type": "mcp"}],
                     "tool_choice": {"type": "web_search_preview"}})
    assert request.native_only == ("prompt", "tools[1]", "tool_choice")
    assert "tool_choice" not in chat_body(request, request.input_items)


POLICY = f"""
tiers:
  - name: small
    deployments:
      - {{id: s-chat, model: simulated/gpt-4o-mini}}
      - {{id: s-native, model: simulated/gpt-4o-mini, apis: [chat, responses]}}
  - name: big
    deployments:
      - {{id: b-native, model: simulated/gpt-4o, apis: [chat, responses]}}
teams:
  mixed:
    keys: [{{id: k1, sha256: '{"0" * 64}'}}]
  native:
    keys: [{{id: k2, sha256: '{"1" * 64}'}}]
    tiers: {{floor: big, ceiling: big}}
"""


def test_serves_natively_only_when_every_reachable_deployment_does() -> None:
    policy = parse_policy(POLICY)
    assert not serves_natively(policy, "mixed", "responses")  # s-chat could be chosen (or be a fallback)
    assert serves_natively(policy, "native", "responses")
    assert not serves_natively(policy, "native", "messages")


# ---- response ----------------------------------------------------------------------------------------------

USAGE = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
         "prompt_tokens_details": {"cached_tokens": 1024}, "completion_tokens_details": {"reasoning_tokens": 128}}


def _completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
            "usage": USAGE}


def test_from_chat_text_and_tool_calls_parse_as_the_sdks_response() -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]
    settings_ = echo({"model": "auto", "input": "x", "tools": [WEATHER], "instructions": "be"})
    body = from_chat(_completion({"content": "Let me check.", "tool_calls": calls}, "tool_calls"), RID, 10,
                     settings_, 11)
    response = Response.model_validate(body)
    assert response.id == RID and response.status == "completed" and response.output_text == "Let me check."
    message, call = response.output
    assert message.type == "message" and message.id != call.id and call.call_id == "call_1"
    assert (call.name, call.arguments, call.status) == ("f", "{\"x\":1}", "completed")
    assert response.usage.input_tokens == 1200 and response.usage.input_tokens_details.cached_tokens == 1024
    assert response.usage.output_tokens_details.reasoning_tokens == 128 and response.usage.total_tokens == 1500
    assert response.tools[0].name == "get_weather" and response.instructions == "be"
    assert response.tool_choice == "auto" and response.parallel_tool_calls is True and response.completed_at == 11


def test_from_chat_length_is_incomplete_with_the_reason() -> None:
    body = from_chat(_completion({"content": "cut sho"}, "length"), RID, 10, echo({"max_output_tokens": 7}), 11)
    response = Response.model_validate(body)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete" and response.completed_at is None
    assert response.max_output_tokens == 7
    assert echo({}, max_output_tokens=512)["max_output_tokens"] == 512  # the limit the team's policy applied


# ---- events ------------------------------------------------------------------------------------------------

def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": choices,
            "usage": usage}


def _run(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    stream = ChatToResponses(RID, 10, "gpt-4o", echo({}))
    events = stream.start()
    for chunk in chunks:
        events += stream.feed(chunk)
    events += stream.close_items()
    events += stream.finish(11)
    for event in events:  # every event is one the SDK parses
        EVENT.validate_python(orjson.loads(orjson.dumps(event)))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def test_text_then_tool_call_stream_in_openais_order() -> None:
    events = _run([
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hel"}), _chunk({"content": "lo"}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                "function": {"name": "f", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
        _chunk({}, "tool_calls"),
        _chunk(None, usage=USAGE),
    ])
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert events[2]["item"]["content"] == []  # as it was then, not as it ended
    assert events[6]["text"] == "Hello" and events[12]["arguments"] == "{\"a\":1}"
    assert events[9]["item"]["call_id"] == "call_1" and events[9]["item"]["arguments"] == ""
    done = Response.model_validate(events[-1]["response"])
    assert done.status == "completed" and done.output_text == "Hello"
    assert done.output[1].arguments == "{\"a\":1}" and done.usage.input_tokens_details.cached_tokens == 1024


def test_stream_cut_by_the_output_limit_ends_incomplete() -> None:
    events = _run([_chunk({"content": "cut"}), _chunk({}, "length"), _chunk(None, usage=USAGE)])
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


def test_upstream_failure_mid_stream_ends_with_error_and_response_failed() -> None:
    stream = ChatToResponses(RID, 10, "gpt-4o", echo({}))
    events = [*stream.start(), *stream.feed(_chunk({"content": "par"})), *stream.fail("upstream broke", "x")]
    kinds = [e["type"] for e in events]
    assert kinds[-5:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "error", "response.failed"]
    failed = Response.model_validate(events[-1]["response"])
    assert failed.status == "failed" and failed.error.message == "upstream broke"
    assert failed.output[0].status == "incomplete" and failed.output_text == "par"
    assert events[-2]["code"] == "x" and failed.error.code == "server_error"


def test_refusal_streams_as_a_refusal_part() -> None:
    events = _run([_chunk({"refusal": "I can"}), _chunk({"refusal": "not."}), _chunk({}, "stop")])
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added", "response.content_part.added", "response.refusal.delta",
        "response.refusal.delta", "response.refusal.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert events[3]["part"] == {"type": "refusal", "refusal": ""} and events[6]["refusal"] == "I cannot."
    (message,) = Response.model_validate(events[-1]["response"]).output
    assert message.content[0].type == "refusal" and message.content[0].refusal == "I cannot."


def test_frame_is_an_sse_event_named_by_its_type() -> None:
    event = {"type": "response.output_text.delta", "sequence_number": 3, "delta": "hi"}
    assert frame(event) == b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",' \
                           b'"sequence_number":3,"delta":"hi"}\n\n'


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=30),
       st.lists(st.text(max_size=6), max_size=10))
def test_streamed_text_and_arguments_add_up(pieces: list[str], arguments: list[str]) -> None:
    chunks = [_chunk({"content": p}) for p in pieces]
    chunks += [_chunk({"tool_calls": [{"index": 0, "id": "call_9", "function": {"name": "f", "arguments": a}}]})
               for a in arguments or [""]]
    events = _run([*chunks, _chunk({}, "stop")])
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "".join(pieces)
    assert final["output"][1]["arguments"] == "".join(arguments)
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == pieces


# ---- never a 500 -------------------------------------------------------------------------------------------

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                  max_size=3), max_leaves=8)
_TEXT = st.text(max_size=6)
_PARTS = st.one_of(
    st.builds(lambda t: {"type": "input_text", "text": t}, _TEXT),
    st.builds(lambda t: {"type": "output_text", "text": t, "annotations": []}, _TEXT),
    st.builds(lambda u, d: {"type": "input_image", "image_url": "data:image/png;base64," + u, "detail": d}, _TEXT,
              st.sampled_from(["low", "high", "auto"])),
    st.builds(lambda t: {"type": "refusal", "refusal": t}, _TEXT))
_ITEMS = st.one_of(
    st.builds(lambda r, c: {"role": r, "content": c}, st.sampled_from(["user", "assistant", "system", "developer"]),
              _TEXT | st.lists(_PARTS, min_size=1, max_size=3)),
    st.builds(lambda c, n, a: {"type": "function_call", "call_id": c, "name": n, "arguments": a}, _TEXT, _TEXT,
              _TEXT),
    st.builds(lambda c, o: {"type": "function_call_output", "call_id": c, "output": o}, _TEXT,
              _TEXT | st.lists(_PARTS, max_size=2)),
    st.builds(lambda c, i: {"type": "custom_tool_call", "call_id": c, "name": "apply_patch", "input": i}, _TEXT,
              _TEXT),
    st.builds(lambda c, o: {"type": "custom_tool_call_output", "call_id": c, "output": o}, _TEXT, _TEXT),
    st.just({"type": "reasoning", "id": "rs_1", "summary": []}))
_SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}}
_VALID = st.fixed_dictionaries({"model": st.just("auto"), "input": _TEXT | st.lists(_ITEMS, min_size=1, max_size=5)},
                               optional={
    "instructions": _TEXT,
    "tools": st.lists(st.builds(lambda n: {"type": "function", "name": n, "parameters": _SCHEMA}, _TEXT)
                      | st.just(PATCH_TOOL), max_size=2),
    "tool_choice": st.sampled_from(["auto", "none", "required"]),
    "text": st.sampled_from([{"format": {"type": "text"}}, {"format": {"type": "json_object"}},
                             {"format": {"type": "json_schema", "name": "s", "schema": _SCHEMA}}]),
    "reasoning": st.sampled_from([{"effort": "low"}, {"effort": "high", "summary": "auto"}]),
    "metadata": st.dictionaries(st.text(min_size=1, max_size=70), st.text(max_size=300), max_size=3),
    "max_output_tokens": st.integers(1, 5000), "temperature": st.floats(0, 2), "top_p": st.floats(0, 1),
    "stream": st.booleans(), "store": st.booleans(), "parallel_tool_calls": st.booleans(), "user": _TEXT,
    "include": st.just(["reasoning.encrypted_content"]), "truncation": st.sampled_from(["auto", "disabled"]),
})


@st.composite
def _bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body, or one with a field (or a path inside ``input``) replaced by any JSON value."""
    body = draw(_VALID)
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted({*body, "input", "tools", "text", "metadata", "unknown_field"})))
        body[key] = draw(_JSON)
    elif isinstance(body["input"], list) and draw(st.booleans()):
        item = body["input"][draw(st.integers(0, len(body["input"]) - 1))]
        item[draw(st.sampled_from(["type", "role", "content", "call_id", "name", "arguments", "output"]))] = draw(_JSON)
    return body


@settings(max_examples=400, deadline=None)
@given(_bodies())
def test_any_body_is_mapped_or_refused_with_a_named_param(body: dict[str, Any]) -> None:
    """Whatever the client sends: a checked chat body the pipeline may assume well formed, or a TiergateError
    naming a param (the edge's 400), never another exception (a 500)."""
    from proxy.body import check_chat

    try:
        request = parse(body)
        chat = chat_body(request, request.input_items)
        orjson.dumps(chat)
        check_chat(chat)
    except TiergateError as error:
        assert error.code.startswith("invalid_request.") and error.param


# ---- custom (freeform) tools: virtualised as one-string function tools ---------------------------------------


def test_custom_tool_becomes_a_function_taking_its_input_as_one_string() -> None:
    request = parse({"model": "m", "input": "fix it", "tools": [PATCH_TOOL],
                     "tool_choice": {"type": "custom", "name": "apply_patch"}})
    assert request.native_only == () and request.custom_tools == {"apply_patch"}
    chat = chat_body(request, request.input_items)
    (tool,) = chat["tools"]
    assert tool["function"]["name"] == "apply_patch" and tool["function"]["parameters"]["required"] == ["input"]
    assert "Edit files." in tool["function"]["description"] and "start: /.+/" in tool["function"]["description"]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "apply_patch"}}
    history = to_messages([{"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "*** x"},
                           {"type": "custom_tool_call_output", "call_id": "c1", "output": "done"}])
    assert history == [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "apply_patch", "arguments": '{"input":"*** x"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"}]


def test_custom_tool_calls_come_back_as_custom_tool_call_items() -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "apply_patch",
                                                               "arguments": '{"input": "*** Begin Patch"}'}},
             {"id": "call_2", "type": "function", "function": {"name": "apply_patch", "arguments": "not json"}}]
    body = from_chat(_completion({"content": None, "tool_calls": calls}, "tool_calls"), RID, 10,
                     echo({"tools": [PATCH_TOOL]}), 11, ToolNames.of([(None, "apply_patch", True)]))
    first, second = Response.model_validate(body).output
    assert (first.type, first.call_id, first.input) == ("custom_tool_call", "call_1", "*** Begin Patch")
    assert second.input == "not json"  # the model ignored the schema: what it wrote is kept, not lost

    stream = ChatToResponses(RID, 10, "gpt-4o", echo({}), ToolNames.of([(None, "apply_patch", True)]))
    events = [*stream.start()]
    for piece in ['{"in', 'put": "*** Be', 'gin"}']:
        call = {"index": 0, "function": {"arguments": piece}}
        if piece.startswith('{"in'):
            call.update(id="call_1", type="function", function={"name": "apply_patch", "arguments": piece})
        events += stream.feed(_chunk({"tool_calls": [call]}))
    events += [*stream.feed(_chunk({}, "tool_calls")), *stream.close_items(), *stream.finish(11)]
    for event in events:
        EVENT.validate_python(event)
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added", "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done", "response.output_item.done", "response.completed"]
    assert events[3]["delta"] == events[4]["input"] == "*** Begin"
    (item,) = Response.model_validate(events[-1]["response"]).output
    assert item.type == "custom_tool_call" and item.input == "*** Begin" and item.call_id == "call_1"

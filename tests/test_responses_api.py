"""``POST /v1/responses`` end to end: the official openai SDK (and openai-agents, LangChain) unchanged, against a
real proxy process on the demo config, whose tiers are the in-process simulator speaking chat completions only, so
every answer here is translated (the pipeline is told the client's format, the simulator sees chat)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import DEMO_KEYS, ROOT, Server, free_port, mock_config, start_server
from tests.proxy_metering_helpers import sqlite_records
from tests.waiting import eventually

# A conversation opener past STICKY_MIN_TOKENS (1,024) on its own: prose the tokenizer counts ~1 token a word.
LONG_OPENER = " ".join(f"The lighthouse keeper wrote entry {i} about the tide, the fog and the ships."
                       for i in range(90))


@pytest.fixture
def client(demo_proxy: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=demo_proxy.url + "/v1", api_key=DEMO_KEYS["research"], max_retries=0)


def _ledger_row(proxy: Server, request_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The ledger record of one request (the demo proxy's SQLite ledger sits next to its log); streams settle
    after their last byte and the ledger commits in batches, so wait for it."""
    def recorded() -> list[dict[str, Any]]:
        return [r for r in sqlite_records(proxy.log.parent / "ledger.db", "research") if r["request_id"] == request_id]

    return eventually(recorded, f"the ledger record of {request_id}", timeout_s)[0]


def _nanos(usd: str) -> int:
    return int(Decimal(usd) * 10**9)


def test_create_plain_usage_and_cost_match_the_ledger(client: openai.OpenAI, demo_proxy: Server) -> None:
    raw = client.responses.with_raw_response.create(model="auto", input="What is the capital of France?",
                                                    instructions="Answer briefly.", metadata={"feature": "faq"})
    response = raw.parse()
    assert response.id.startswith("resp_") and len(response.id) == 53
    assert response.object == "response" and response.status == "completed"
    assert response.output_text and response.output[0].type == "message"
    assert response.output[0].content[0].annotations == []
    assert response.model == raw.headers["x-tiergate-model"]
    assert response.instructions == "Answer briefly." and response.metadata == {"feature": "faq"}
    assert response.max_output_tokens == 512  # research's default limit, applied and echoed
    usage = response.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    row = _ledger_row(demo_proxy, raw.headers["x-request-id"])
    assert row["api"] == "responses" and row["status"] == 200
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.input_tokens, usage.output_tokens)
    assert row["cached_tokens"] == usage.input_tokens_details.cached_tokens
    assert row["cost_nanos"] == _nanos(raw.headers["x-tiergate-cost-usd"]) > 0
    assert json.loads(row["tags"])["feature"] == "faq"  # metadata became a ledger tag
    assert row["response_id"] == response.id  # support finds the request by the id the client has


def test_stream_events_in_order_with_usage_and_cost(client: openai.OpenAI, demo_proxy: Server) -> None:
    with client.responses.stream(model="auto", input="Tell me a short story.") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    head = ["response.created", "response.in_progress", "response.output_item.added",
            "response.content_part.added", "response.output_text.delta"]
    tail = ["response.output_text.done", "response.content_part.done", "response.output_item.done",
            "response.completed"]
    assert kinds[:5] == head and kinds[-4:] == tail
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and final.output_text == text and events[-4].text == text
    assert events[0].response.id == final.id and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens > 0


def test_stream_usage_and_cost_match_the_ledger(client: openai.OpenAI, demo_proxy: Server) -> None:
    raw = client.responses.with_raw_response.create(model="auto", input="Tell me a story.", stream=True)
    events = list(raw.parse())
    done = events[-1]
    assert done.type == "response.completed"
    usage = done.response.usage
    # the cost of a stream is known at its end: response.completed carries it next to usage
    extra = done.response.model_extra["x_tiergate"]
    assert extra["tier"] == raw.headers["x-tiergate-tier"] and extra["model"] == raw.headers["x-tiergate-model"]
    row = _ledger_row(demo_proxy, raw.headers["x-request-id"])
    assert row["api"] == "responses" and row["status"] == 200 and row["usage_estimated"] == 0
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.input_tokens, usage.output_tokens)
    assert row["cost_nanos"] == _nanos(extra["cost_usd"]) > 0
    # stored before response.completed was sent: the next turn, sent the moment the client has it, finds it
    follow = client.responses.create(model="auto", input="Shorter.", previous_response_id=done.response.id)
    assert follow.usage.input_tokens > usage.input_tokens + usage.output_tokens


def test_stream_true_raw_sse_framing(demo_proxy: Server) -> None:
    body = {"model": "small", "input": "hi", "stream": True, "max_output_tokens": 5}
    with httpx.stream("POST", demo_proxy.url + "/v1/responses", json=body, timeout=30,
                      headers={"authorization": f"Bearer {DEMO_KEYS['research']}"}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(resp.iter_raw()).decode()
    frames = [f for f in raw.split("\n\n") if f]
    for f in frames:
        event_line, data_line = f.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        assert json.loads(data_line[6:])["type"] == event_line[7:]
    last = json.loads(frames[-1].split("\n")[1][6:])
    # five output tokens cannot finish an answer: incomplete, as OpenAI reports a cut answer
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert last["response"]["usage"]["output_tokens"] == 5


def test_incomplete_when_max_output_tokens_cuts(client: openai.OpenAI) -> None:
    response = client.responses.create(model="small", input="Write a long essay about rivers.", max_output_tokens=16)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 16 and response.max_output_tokens == 16


WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_function_tool_round_trip(client: openai.OpenAI) -> None:
    first = client.responses.create(model="auto", input="What is the weather in Paris?", tools=[WEATHER])
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    assert "city" in json.loads(call.arguments) and call.id.startswith("fc_")
    second = client.responses.create(model="auto", previous_response_id=first.id, tools=[WEATHER],
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": "sunny, 21 C"}])
    assert second.status == "completed" and second.output_text and second.output[0].type == "message"
    # without the store, the same call with the whole history sent by the client
    replay = client.responses.create(model="auto", tools=[WEATHER], store=False, input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
    ])
    assert replay.output_text == second.output_text  # the same conversation reached the (deterministic) model
    with pytest.raises(openai.NotFoundError):  # store=false: nothing to continue from
        client.responses.create(model="auto", input="and tomorrow?", previous_response_id=replay.id)


def test_streamed_function_call_events(client: openai.OpenAI) -> None:
    with client.responses.stream(model="auto", input="Weather in Rome?", tools=[WEATHER],
                                 tool_choice={"type": "function", "name": "get_weather"}) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (call,) = final.output
    assert call.type == "function_call" and call.arguments == args and json.loads(args)["city"]


def test_custom_tool_round_trip_on_a_chat_deployment(client: openai.OpenAI) -> None:
    """Codex CLI's freeform apply_patch tool, on a deployment that only speaks chat completions."""
    patch = {"type": "custom", "name": "apply_patch", "description": "Apply a patch to the repository.",
             "format": {"type": "grammar", "syntax": "lark", "definition": "start: /[\\s\\S]+/"}}
    first = client.responses.create(model="auto", input="Rename foo to bar in main.py.", tools=[patch])
    (call,) = first.output
    assert call.type == "custom_tool_call" and call.name == "apply_patch" and call.input and call.call_id
    done = client.responses.create(model="auto", previous_response_id=first.id, tools=[patch], input=[
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Success. Updated main.py"}])
    assert done.output_text and done.output[0].type == "message"
    with client.responses.stream(model="auto", input="Rename foo to bar in main.py.", tools=[patch]) as stream:
        kinds = [event.type for event in stream]
        streamed = stream.get_final_response()
    assert "response.custom_tool_call_input.done" in kinds
    assert streamed.output[0].type == "custom_tool_call" and streamed.output[0].input == call.input


def test_previous_response_id_across_three_turns_and_retrieve(client: openai.OpenAI) -> None:
    one = client.responses.create(model="auto", input="My name is Ada. Remember it.")
    two = client.responses.create(model="auto", input="What did I tell you?", previous_response_id=one.id)
    three = client.responses.create(model="auto", input="Say it once more.", previous_response_id=two.id)
    assert three.previous_response_id == two.id and two.previous_response_id == one.id
    # each turn sends the whole conversation: prompts grow by at least the previous answer
    assert two.usage.input_tokens > one.usage.input_tokens + one.usage.output_tokens
    assert three.usage.input_tokens > two.usage.input_tokens + two.usage.output_tokens
    items = client.responses.input_items.list(three.id, order="asc").data
    texts = [c.text for item in items if item.type == "message" for c in item.content]
    assert texts == ["My name is Ada. Remember it.", one.output_text, "What did I tell you?", two.output_text,
                     "Say it once more."]
    again = client.responses.retrieve(three.id)
    assert again.id == three.id and again.output_text == three.output_text and again.usage == three.usage


def test_json_schema_output(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    response = client.responses.create(model="auto", input="Invent a person.", text={
        "format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}})
    value = json.loads(response.output_text)
    assert set(value) == {"name", "age"} and isinstance(value["age"], int) and isinstance(value["name"], str)
    assert response.text.format.type == "json_schema" and response.text.format.name == "person"

    class Person(BaseModel):
        name: str
        age: int

    parsed = client.responses.parse(model="auto", input="Invent a person.", text_format=Person)
    assert isinstance(parsed.output_parsed, Person)


def test_errors_are_the_sdks_exception_classes(client: openai.OpenAI, demo_proxy: Server) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": "x", "extra_body": {"frobnicate": 1}}, "frobnicate"),
        ({"input": 42}, "input"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
        ({"input": [{"role": "user", "content": [{"type": "input_video"}]}]}, "input[0].content[0].type"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        # hosted tools: research drops them (responses.hosted_tools), support gets this 400
        # (test_responses_codex_shapes)
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format.schema"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            client.responses.create(model="auto", **kwargs)
        assert bad.value.status_code == 400 and bad.value.param == param, (kwargs, bad.value.body)
        assert bad.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="auto", input="x", previous_response_id="resp_" + "0" * 48)
    assert missing.value.code == "previous_response_not_found" and missing.value.param == "previous_response_id"
    # another team's response is as unknown as one that never existed
    mine = client.responses.create(model="auto", input="hello")
    support = openai.OpenAI(base_url=demo_proxy.url + "/v1", api_key=DEMO_KEYS["support"], max_retries=0)
    with pytest.raises(openai.NotFoundError):
        support.responses.create(model="auto", input="x", previous_response_id=mine.id)
    admin = openai.OpenAI(base_url=demo_proxy.url + "/v1", api_key=DEMO_KEYS["admin"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as no_team:
        admin.responses.create(model="auto", input="x")
    assert no_team.value.code == "team_key_required"
    bad_key = openai.OpenAI(base_url=demo_proxy.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        bad_key.responses.create(model="auto", input="x")
    assert auth.value.status_code == 401
    raw = httpx.post(demo_proxy.url + "/v1/responses", content=b"{not json", timeout=10,
                     headers={"authorization": f"Bearer {DEMO_KEYS['research']}"})
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"


def test_image_input_is_translated_and_served(client: openai.OpenAI) -> None:
    pixel = ("data:image/png;base64,"
             "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=")
    raw = client.responses.with_raw_response.create(model="auto", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is in this image?"},
        {"type": "input_image", "image_url": pixel, "detail": "low"}]}])
    assert raw.parse().output_text and raw.headers["x-tiergate-tier"]


def test_openai_agents_runner_with_a_function_tool(demo_proxy: Server) -> None:
    from agents import (
        Agent,
        Runner,
        function_tool,
        set_default_openai_client,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    set_default_openai_client(openai.AsyncOpenAI(base_url=demo_proxy.url + "/v1", api_key=DEMO_KEYS["research"],
                                                 max_retries=0), use_for_tracing=False)
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"sunny in {city}"

    agent = Agent(name="weather", instructions="Answer weather questions.", tools=[get_weather], model="auto")

    async def run() -> tuple[Any, list[str], Any]:  # one event loop: the client's connection pool lives in it
        result = await Runner.run(agent, "What's the weather in Paris?")
        streamed = Runner.run_streamed(agent, "And in Rome?")
        kinds = [event.type async for event in streamed.stream_events()]
        return result, kinds, streamed.final_output

    result, kinds, final = asyncio.run(run())
    assert len(asked) == 2 and all(asked)
    assert [type(item).__name__ for item in result.new_items] == ["ToolCallItem", "ToolCallOutputItem",
                                                                  "MessageOutputItem"]
    assert isinstance(result.final_output, str) and result.final_output
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds and final


def test_langchain_chat_openai_use_responses_api(demo_proxy: Server) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="auto", base_url=demo_proxy.url + "/v1", api_key=DEMO_KEYS["research"],
                     use_responses_api=True, max_retries=0)
    message = llm.invoke("Hello there")
    assert message.text and message.response_metadata["id"].startswith("resp_")
    assert message.usage_metadata["input_tokens"] > 0 and message.usage_metadata["output_tokens"] > 0
    chunks = list(llm.stream("Hello there"))
    streamed = "".join(c.text for c in chunks)
    assert streamed == message.text  # the simulator is deterministic: same prompt, same answer, whole

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    with_tools = llm.bind_tools([add])
    asked = with_tools.invoke("What is 2 + 3?")
    (call,) = asked.tool_calls
    assert call["name"] == "add" and set(call["args"]) == {"a", "b"}
    answered = with_tools.invoke([HumanMessage("What is 2 + 3?"), asked, ToolMessage("5", tool_call_id=call["id"])])
    assert answered.text and not answered.tool_calls
    # LangChain's own conversation state: it sends only the new turn with previous_response_id
    chained = ChatOpenAI(model="auto", base_url=llm.openai_api_base, api_key=DEMO_KEYS["research"],
                         use_responses_api=True, use_previous_response_id=True, max_retries=0)
    first = chained.invoke([HumanMessage("Hi, I'm Ada.")])
    second = chained.invoke([HumanMessage("Hi, I'm Ada."), first, HumanMessage("Who am I?")])
    assert second.text and second.usage_metadata["input_tokens"] > first.usage_metadata["input_tokens"]


# ---- a continued conversation keeps its tier and deployment ----------------------------------------------------

def _demo_variant(tmp: Path, edits: list[tuple[str, str]]) -> Server:
    """A proxy on configs/demo.yaml with its ledger in ``tmp`` and each ``(old, new)`` edit applied once."""
    text = (ROOT / "configs" / "demo.yaml").read_text()
    for old, new in [("sqlite:///var/tiergate-demo.db", f"sqlite:///{tmp}/ledger.db"), *edits]:
        assert old in text, old
        text = text.replace(old, new, 1)
    config = tmp / "demo.yaml"
    config.write_text(text)
    port = free_port()
    return start_server(["serve", "--config", str(config), "--port", str(port)], port, tmp / "proxy.log", "/readyz")


@pytest.fixture(scope="module")
def sticky_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The demo policy with research's stickiness margin at its maximum (a conversation never leaves its tier)."""
    process = _demo_variant(tmp_path_factory.mktemp("sticky"), [
        ("      provider_prefix_caching: true\n",
         "      provider_prefix_caching: true\n      stickiness_margin: 1.0\n")])
    yield process
    process.stop()


def test_continued_conversation_keeps_its_tier_and_deployment(sticky_proxy: Server) -> None:
    client = openai.OpenAI(base_url=sticky_proxy.url + "/v1", api_key=DEMO_KEYS["research"], max_retries=0)
    # turn 1 is forced to the frontier tier; the follow-ups are routed by score, and stickiness keeps them there
    first = client.responses.with_raw_response.create(model="auto", input=LONG_OPENER,
                                                      extra_headers={"x-tiergate-tier": "frontier"})
    assert first.parse().usage.input_tokens > 1024
    assert first.headers["x-tiergate-tier"] == "frontier"
    previous, deployments, held = first.parse().id, {first.headers["x-tiergate-deployment"]}, []
    for follow_up in ("Thanks.", "ok"):
        raw = client.responses.with_raw_response.create(model="auto", input=follow_up, previous_response_id=previous)
        assert raw.headers["x-tiergate-tier"] == "frontier"
        deployments.add(raw.headers["x-tiergate-deployment"])
        held.append(raw.headers.get("x-tiergate-sticky") == "held" or float(raw.headers["x-tiergate-score"]) >= 0.416)
        previous = raw.parse().id
    assert deployments == {"frontier-sim"} and all(held)
    # control: the same short follow-up without the conversation is routed by its own score, off frontier
    alone = client.responses.with_raw_response.create(model="auto", input="Thanks.")
    assert alone.headers["x-tiergate-tier"] != "frontier"


# ---- a deployment that speaks the Responses API natively: passed through, with our id ----------------------------

@pytest.fixture(scope="module")
def native_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The demo policy with every simulated deployment declared Responses-native (``apis: [chat, responses]``)."""
    process = _demo_variant(tmp_path_factory.mktemp("native"), [
        (f"        model: simulated/{model}\n", f"        model: simulated/{model}\n        apis: [chat, responses]\n")
        for model in ("gpt-4o-mini", "gpt-4o", "o1")])
    yield process
    process.stop()


def _translated_item_id(response_id: str, prefix: str, index: int) -> str:
    return f"{prefix}_{response_id.removeprefix('resp_')}{index:04x}"  # what wire.responses names its items


def test_native_deployment_answers_pass_through_with_our_id(native_proxy: Server) -> None:
    client = openai.OpenAI(base_url=native_proxy.url + "/v1", api_key=DEMO_KEYS["research"], max_retries=0)
    raw = client.responses.with_raw_response.create(model="auto", input="What is the capital of France?")
    one = raw.parse()
    assert one.id.startswith("resp_") and one.status == "completed" and one.output_text
    assert one.output[0].id != _translated_item_id(one.id, "msg", 0)  # the simulator's own item: not translated
    row = _ledger_row(native_proxy, raw.headers["x-request-id"])
    assert row["response_id"] == one.id and row["api"] == "responses"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (one.usage.input_tokens, one.usage.output_tokens)
    assert row["cost_nanos"] == _nanos(raw.headers["x-tiergate-cost-usd"]) > 0
    # the provider keeps no state: the gateway expands previous_response_id, turn after turn
    two = client.responses.create(model="auto", input="And of Germany?", previous_response_id=one.id)
    three = client.responses.create(model="auto", input="And of Spain?", previous_response_id=two.id)
    assert three.previous_response_id == two.id
    assert three.usage.input_tokens > two.usage.input_tokens + two.usage.output_tokens
    assert two.usage.input_tokens > one.usage.input_tokens + one.usage.output_tokens
    assert client.responses.retrieve(three.id).output_text == three.output_text
    # a hosted tool is accepted: every deployment the team may reach takes it untranslated
    hosted = client.responses.create(model="auto", input="Any news?", tools=[{"type": "web_search"}])
    assert hosted.status == "completed"


def test_native_stream_passes_through_with_our_id_and_cost(native_proxy: Server) -> None:
    client = openai.OpenAI(base_url=native_proxy.url + "/v1", api_key=DEMO_KEYS["research"], max_retries=0)
    raw = client.responses.with_raw_response.create(model="auto", input="Tell me a story.", stream=True)
    events = list(raw.parse())
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    ids = {e.response.id for e in events if getattr(e, "response", None) is not None}
    done = events[-1].response
    assert ids == {done.id} and done.id.startswith("resp_")
    assert [e.sequence_number for e in events] == sorted(e.sequence_number for e in events)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == done.output_text and done.output[0].id != _translated_item_id(done.id, "msg", 0)
    extra = done.model_extra["x_tiergate"]
    row = _ledger_row(native_proxy, raw.headers["x-request-id"])
    assert row["response_id"] == done.id and row["usage_estimated"] == 0
    assert (row["prompt_tokens"], row["completion_tokens"]) == (done.usage.input_tokens, done.usage.output_tokens)
    assert row["cost_nanos"] == _nanos(extra["cost_usd"]) > 0
    follow = client.responses.create(model="auto", input="Shorter.", previous_response_id=done.id)
    assert follow.usage.input_tokens > done.usage.input_tokens + done.usage.output_tokens


def test_stream_cut_upstream_ends_with_error_and_response_failed(tmp_path: Path, start_mock, start_proxy) -> None:
    """An upstream that drops the connection half way: the client gets ``error`` then ``response.failed`` (parsed
    by the SDK), the ledger records the cut with what was relayed, and nothing is stored to continue from."""
    from tests.fault_harness import StreamCutter

    mock = start_mock()
    cutter = StreamCutter(mock.port, cut_bytes=1500)
    try:
        proxy = start_proxy(mock_config(tmp_path, {"small": [cutter.url]}))
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0)
        raw = client.responses.with_raw_response.create(model="small", input="Tell me a long story.", stream=True,
                                                        max_output_tokens=400)
        events = list(raw.parse())
    finally:
        cutter.close()
    assert cutter.cuts >= 1
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].code == "upstream_stream_error" and "ended early" in events[-2].message
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.code == "server_error"
    assert failed.output and failed.output[0].status == "incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    request_id = raw.headers["x-request-id"]
    (row,) = eventually(lambda: [r for r in sqlite_records(tmp_path / "ledger.db", "t")
                                 if r["request_id"] == request_id], "the failed stream's ledger record")
    assert row["status"] == 502 and row["api"] == "responses" and row["response_id"] == failed.id
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="small", input="go on", previous_response_id=failed.id)


def test_store_outage_keeps_the_paid_answer_and_says_it_was_not_stored(tmp_path: Path, start_mock,
                                                                        start_proxy) -> None:
    """Redis (the response store here) goes away: the answer, already paid for, is still delivered, with
    ``store: false`` (what happened); continuing from any stored response is a 503, never a 500 or a silent
    conversation without its history."""
    from tests.fault_harness import private_redis

    redis_server = private_redis()
    try:
        config = mock_config(tmp_path, {"small": [start_mock().url]})
        text = config.read_text().replace("metering:\n", f"metering:\n  redis: {redis_server.url}\n", 1)
        config.write_text(text)
        client = openai.OpenAI(base_url=start_proxy(config).url + "/v1", api_key="sk-test", max_retries=0)
        first = client.responses.create(model="small", input="Remember: blue.")
        assert client.responses.retrieve(first.id).output_text == first.output_text  # stored in Redis
        redis_server.stop()
        raw = client.responses.with_raw_response.create(model="small", input="hello again")
        answer = raw.parse()
        assert raw.status_code == 200 and answer.output_text
        assert answer.model_extra["store"] is False
        with pytest.raises(openai.InternalServerError) as down:
            client.responses.create(model="small", input="and?", previous_response_id=first.id)
        assert down.value.status_code == 503 and down.value.code == "response_store_unavailable"
    finally:
        redis_server.stop()

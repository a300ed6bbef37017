"""What Codex CLI sends on /v1/responses, translated for a chat-only deployment (``wire.responses``), pure: namespace
tools flattened to chat functions and their calls mapped back (plain and streamed answers, replayed history), hosted
tools dropped by a team's ``responses.hosted_tools: drop``, and a whole Codex-shaped body (encrypted reasoning
items, ``include``, ``prompt_cache_key``, ``client_metadata``) passing the pipeline's chat checks. Over HTTP: the
demo's research team drops web_search and says so, the support team (default ``refuse``) gets the 400; a
Responses-native (simulated) deployment gets the namespace tool as sent and answers with name and namespace."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter, ValidationError

from pipeline.errors import TiergateError
from proxy.body import check_chat
from router.config import ResponsesSettings
from tests.conftest import DEMO_KEYS, Server, free_port, start_server
from wire.responses.events import ChatToResponses
from wire.responses.request import (
    chat_body,
    parse,
    require_translatable,
    to_messages,
    without_hosted_tools,
)
from wire.responses.response import echo, from_chat
from wire.responses.tool_names import ToolNameClash, ToolNames

RID = "resp_" + "cd" * 24
EVENT = TypeAdapter(ResponseStreamEvent)
CHAT_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
EXEC = {"type": "function", "name": "exec_command", "description": "Run a command.", "strict": False,
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}}
SPAWN = {"type": "function", "name": "spawn_agent", "description": "Start a sub-agent.", "strict": False,
         "parameters": {"type": "object", "properties": {"message": {"type": "string"}}}}
AGENTS = {"type": "namespace", "name": "multi_agent_v1", "description": "Tools for spawning sub-agents.",
          "tools": [SPAWN, {"type": "custom", "name": "note", "description": "Free text."}]}
WEB = {"type": "web_search", "external_web_access": False}


def _completion(calls: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "tool_calls",
                         "message": {"role": "assistant", "content": None, "tool_calls": calls}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def _call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# ---- namespace tools -------------------------------------------------------------------------------------------

def test_a_namespace_becomes_one_chat_function_per_member_named_namespace__name() -> None:
    request = parse({"model": "m", "input": "go", "tools": [EXEC, AGENTS]})
    assert request.native_only == ()
    chat = chat_body(request, request.input_items)
    names = [tool["function"]["name"] for tool in chat["tools"]]
    assert names == ["exec_command", "multi_agent_v1__spawn_agent", "multi_agent_v1__note"]
    spawn = chat["tools"][1]["function"]
    # the flat name loses the namespace's description: it rides along in each member's
    assert spawn["description"].startswith("Start a sub-agent.") and "Tools for spawning sub-agents." in spawn[
        "description"]
    assert spawn["parameters"] == SPAWN["parameters"]
    assert chat["tools"][2]["function"]["parameters"]["required"] == ["input"]  # a custom member: one string
    check_chat(chat)


def test_names_that_do_not_fit_chat_are_hashed_and_still_map_back() -> None:
    long_namespace = {"type": "namespace", "name": "n" * 40, "tools": [{**SPAWN, "name": "s" * 40}]}
    dotted = {"type": "namespace", "name": "crm.v2", "tools": [SPAWN]}
    clash = {"type": "namespace", "name": "multi", "tools": [{**SPAWN, "name": "agent"}]}
    plain_clash = {**EXEC, "name": "multi__agent"}  # a plain tool already has the joined name
    request = parse({"model": "m", "input": "go", "tools": [long_namespace, dotted, clash, plain_clash]})
    chat_names = [tool["function"]["name"] for tool in chat_body(request, request.input_items)["tools"]]
    assert all(CHAT_NAME.fullmatch(name) for name in chat_names), chat_names
    assert len(set(chat_names)) == 4 and "multi__agent" in chat_names
    assert [request.names.responses(name) for name in chat_names] == [
        ("n" * 40, "s" * 40), ("crm.v2", "spawn_agent"), ("multi", "agent"), (None, "multi__agent")]


def test_namespaced_tools_whose_joined_names_meet_get_distinct_chat_names() -> None:
    first = {"type": "namespace", "name": "a__b", "tools": [{**SPAWN, "name": "c"}]}
    second = {"type": "namespace", "name": "a", "tools": [{**SPAWN, "name": "b__c"}]}
    request = parse({"model": "m", "input": "go", "tools": [first, second]})
    chat_names = [tool["function"]["name"] for tool in chat_body(request, request.input_items)["tools"]]
    assert chat_names[0] == "a__b__c" and chat_names[1] != "a__b__c" and CHAT_NAME.fullmatch(chat_names[1])
    assert [request.names.responses(name) for name in chat_names] == [("a__b", "c"), ("a", "b__c")]
    with pytest.raises(ToolNameClash):
        ToolNames.of([(None, "x", False), (None, "x", True)])  # one name, two kinds: no chat name tells them apart
    with pytest.raises(TiergateError) as caught:
        parse({"model": "m", "input": "go", "tools": [EXEC, {**AGENTS, "tools": [SPAWN, SPAWN]}]})
    assert caught.value.param == "tools" and "'multi_agent_v1'.'spawn_agent' is declared twice" in caught.value.message


def test_a_namespace_member_must_be_a_function_or_custom_tool() -> None:
    with pytest.raises(TiergateError) as caught:
        parse({"model": "m", "input": "go", "tools": [{**AGENTS, "tools": [WEB]}]})
    assert caught.value.param == "tools[0].tools[0].type"
    with pytest.raises(TiergateError) as caught:
        parse({"model": "m", "input": "go", "tools": [{"type": "namespace", "name": "x", "tools": "no"}]})
    assert caught.value.param == "tools[0].tools"


def test_namespaced_calls_come_back_with_name_and_namespace() -> None:
    request = parse({"model": "m", "input": "go", "tools": [EXEC, AGENTS]})
    calls = [_call("call_1", "multi_agent_v1__spawn_agent", '{"message": "hi"}'),
             _call("call_2", "multi_agent_v1__note", '{"input": "free text"}'),
             _call("call_3", "exec_command", '{"cmd": "ls"}')]
    body = from_chat(_completion(calls), RID, 10, echo(request.body), 11, request.names)
    spawn, note, run = Response.model_validate(body).output
    assert (spawn.type, spawn.name, spawn.namespace, spawn.call_id) == (
        "function_call", "spawn_agent", "multi_agent_v1", "call_1")
    assert (note.type, note.name, note.namespace, note.input) == (
        "custom_tool_call", "note", "multi_agent_v1", "free text")
    assert (run.name, run.namespace) == ("exec_command", None) and "namespace" not in body["output"][2]


def test_streamed_namespaced_calls_come_back_with_name_and_namespace() -> None:
    request = parse({"model": "m", "input": "go", "tools": [EXEC, AGENTS], "stream": True})
    stream = ChatToResponses(RID, 10, "gpt-4o", echo(request.body), request.names)
    events = [*stream.start()]
    pieces = [{"index": 0, "id": "call_1", "type": "function",
               "function": {"name": "multi_agent_v1__spawn_agent", "arguments": '{"mess'}},
              {"index": 0, "function": {"arguments": 'age": "hi"}'}}]
    for piece in pieces:
        events += stream.feed({"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o",
                               "choices": [{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}]})
    events += [*stream.close_items(), *stream.finish(11)]
    for event in events:
        EVENT.validate_python(event)
    added = next(e for e in events if e["type"] == "response.output_item.added")
    assert (added["item"]["name"], added["item"]["namespace"]) == ("spawn_agent", "multi_agent_v1")
    (item,) = Response.model_validate(events[-1]["response"]).output
    assert (item.name, item.namespace, item.arguments) == ("spawn_agent", "multi_agent_v1", '{"message": "hi"}')


def test_replayed_namespaced_calls_map_to_the_chat_names_the_model_was_offered() -> None:
    history = [{"type": "function_call", "call_id": "call_1", "name": "spawn_agent", "namespace": "multi_agent_v1",
                "arguments": "{}"},
               {"type": "function_call_output", "call_id": "call_1", "output": "agent 7"},
               {"type": "custom_tool_call", "call_id": "call_2", "name": "note", "namespace": "multi_agent_v1",
                "input": "x"}]
    request = parse({"model": "m", "input": [{"role": "user", "content": "go"}, *history],
                     "tools": [EXEC, AGENTS]})
    messages = chat_body(request, request.input_items)["messages"]
    called = [call["function"]["name"] for m in messages for call in m.get("tool_calls") or ()]
    assert called == ["multi_agent_v1__spawn_agent", "multi_agent_v1__note"]
    # a call whose tool is no longer offered is named the same way the table would have named it
    assert to_messages(history[:1], ToolNames())[0]["tool_calls"][0]["function"]["name"] == \
        "multi_agent_v1__spawn_agent"
    with pytest.raises(TiergateError):
        parse({"model": "m", "input": [{**history[0], "namespace": 7}]})


def test_an_output_no_call_produced_becomes_a_user_message_naming_its_tool() -> None:
    """Codex CLI's goals send the objective as a function_call_output with a name and namespace and no call_id
    (the API's standalone outputs): chat's tool messages must answer a call, so it is the user's turn."""
    goal = {"type": "function_call_output", "id": "fco_2", "name": "goal_objective", "namespace": "agent",
            "output": "Ship it"}
    request = parse({"model": "m", "input": [{"role": "user", "content": "go"}, goal,
                                             {**goal, "output": [{"type": "input_text", "text": "Ship it"}]}]})
    messages = chat_body(request, request.input_items)["messages"]
    assert messages[1:] == [
        {"role": "user", "content": "[output of the tool agent.goal_objective]\nShip it"},
        {"role": "user", "content": "[output of the tool agent.goal_objective]\nShip it"}]
    check_chat(chat_body(request, request.input_items))
    with pytest.raises(TiergateError) as caught:  # neither a call it answers nor a tool it names
        parse({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]})
    assert caught.value.param == "input[0].call_id"


# ---- hosted tools: refuse (default) or drop ----------------------------------------------------------------------

def test_drop_leaves_hosted_tools_out_and_says_which() -> None:
    request = parse({"model": "m", "input": "go", "tools": [EXEC, WEB, AGENTS, {"type": "file_search"}, WEB]})
    assert request.native_only == ("tools[1]", "tools[3]", "tools[4]")
    with pytest.raises(TiergateError) as caught:
        require_translatable(request, "t")  # the default: a 400 naming the first
    assert caught.value.param == "tools[1]"
    kept, dropped = without_hosted_tools(request)
    assert dropped == ("web_search", "file_search")
    assert kept.native_only == () and [t["type"] for t in kept.body["tools"]] == ["function", "namespace"]
    require_translatable(kept, "t")
    assert [t["function"]["name"] for t in chat_body(kept, kept.input_items)["tools"]] == [
        "exec_command", "multi_agent_v1__spawn_agent", "multi_agent_v1__note"]
    assert echo(kept.body)["tools"] == kept.body["tools"]  # the Response object echoes what the model was offered


def test_drop_does_not_drop_what_was_asked_rather_than_offered() -> None:
    request = parse({"model": "m", "input": "go", "tools": [WEB], "tool_choice": {"type": "web_search"}})
    kept, dropped = without_hosted_tools(request)
    assert dropped == ("web_search",)
    with pytest.raises(TiergateError) as caught:
        require_translatable(kept, "t")
    assert caught.value.param == "tool_choice"
    untouched, nothing = without_hosted_tools(parse({"model": "m", "input": "go", "tools": [EXEC]}))
    assert nothing == () and untouched.body["tools"] == [EXEC]


def test_hosted_tools_policy_setting() -> None:
    assert ResponsesSettings().hosted_tools == "refuse"
    assert ResponsesSettings(hosted_tools="drop").hosted_tools == "drop"
    with pytest.raises(ValidationError):
        ResponsesSettings(hosted_tools="ignore")  # type: ignore[arg-type]


# ---- a whole Codex turn ------------------------------------------------------------------------------------------

CODEX_BODY: dict[str, Any] = {
    "model": "gpt-5-codex", "stream": True, "store": False, "tool_choice": "auto", "parallel_tool_calls": True,
    "instructions": None, "reasoning": {"summary": "auto"}, "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "01a21d28-d00b-7263-905f-b0d614c28639",
    "client_metadata": {"turn_id": "t1", "x-codex-turn-metadata": "{\"session_id\": \"s\"}"},
    "tools": [EXEC, AGENTS, WEB],
    "input": [
        {"type": "message", "id": "msg_1", "role": "developer", "content": [{"type": "input_text", "text": "Be a "
                                                                               "coding agent."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List the files."}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB..."},
        {"type": "function_call", "id": "fc_1", "status": "completed", "call_id": "call_1", "name": "exec_command",
         "arguments": "{\"cmd\":\"ls\"}"},
        {"type": "function_call_output", "id": "fco_1", "call_id": "call_1", "output": "a.txt\n"},
    ],
}


def test_a_codex_turn_translates_to_a_chat_body_the_pipeline_accepts() -> None:
    kept, dropped = without_hosted_tools(parse(CODEX_BODY))
    assert dropped == ("web_search",)
    chat = chat_body(kept, kept.input_items)
    check_chat(chat)
    assert [m["role"] for m in chat["messages"]] == ["developer", "user", "assistant", "tool"]  # reasoning left out
    assert chat["prompt_cache_key"] == CODEX_BODY["prompt_cache_key"]
    assert chat["stream_options"] == {"include_usage": True} and "client_metadata" not in chat


# ---- over HTTP: the demo's policy ----------------------------------------------------------------------------------

def test_the_demo_research_team_drops_web_search_and_support_refuses_it(demo_proxy: Server) -> None:
    body = {"model": "auto", "input": "Say hi.", "tools": [WEB, EXEC], "tool_choice": "none"}
    research = httpx.post(demo_proxy.url + "/v1/responses", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {DEMO_KEYS['research']}"})
    assert research.status_code == 200, research.text
    assert research.headers["x-tiergate-dropped-tools"] == "web_search"
    assert [t["type"] for t in research.json()["tools"]] == ["function"]
    support = openai.OpenAI(base_url=demo_proxy.url + "/v1", api_key=DEMO_KEYS["support"], max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:  # no deployment of support's speaks Responses natively
        support.responses.create(**body)
    assert refused.value.status_code == 400 and refused.value.param == "tools[0]"
    assert refused.value.type == "invalid_request_error" and "natively" in refused.value.message
    assert "x-tiergate-dropped-tools" not in refused.value.response.headers


def test_a_native_responses_deployment_gets_the_namespace_and_answers_with_it(tmp_path: Path) -> None:
    """Passthrough: the simulator's own /v1/responses reads the namespace tool and names its call as the client
    named the tool (name + namespace), as OpenAI does; the call and its output replayed get a text answer."""
    config = tmp_path / "native.yaml"
    config.write_text(f"""
metering:
  ledger: sqlite:///{tmp_path}/ledger.db
classifier:
  model: default
tiers:
  - name: native
    deployments:
      - {{id: native-sim, model: simulated/gpt-4o-mini, apis: [chat, responses], simulator: {{ttft_ms: 1}}}}
teams:
  t:
    keys:
      - {{id: t-key, sha256: {hashlib.sha256(b"sk-native").hexdigest()}}}
""")
    port = free_port()
    proxy = start_server(["serve", "--config", str(config), "--port", str(port)], port, tmp_path / "proxy.log",
                          "/readyz")
    try:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-native", max_retries=0)
        namespace = {**AGENTS, "tools": [SPAWN]}
        raw = client.responses.with_raw_response.create(model="auto", input="Start a helper.", store=False,
                                                        tools=[namespace, WEB])  # type: ignore[list-item]
        assert "x-tiergate-dropped-tools" not in raw.headers  # a native deployment runs hosted tools itself
        (call,) = raw.parse().output
        assert (call.type, call.name, call.namespace) == ("function_call", "spawn_agent", "multi_agent_v1")
        second = client.responses.create(
            model="auto", store=False, tools=[namespace],  # type: ignore[list-item]
            input=[{"role": "user", "content": "Start a helper."}, call.model_dump(exclude_none=True),  # type: ignore[list-item]
                   {"type": "function_call_output", "call_id": call.call_id, "output": "agent 7 started"}])
        assert second.output_text.strip()
    finally:
        proxy.stop()

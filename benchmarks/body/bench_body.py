"""Body parsing and validation at the edge: the hand-written ``proxy.body`` against msgspec and pydantic-core.

Every variant does the same job: turn the request bytes into the dict the pipeline passes through (unknown fields
kept, for the upstream) and refuse what ``proxy.body`` refuses (checked on the issue's reproductions before timing).
``before`` is ``proxy/body.py`` as it was at ``--baseline`` (it checked less: no tool calls, parts, tags or depth).

    .venv/bin/python benchmarks/body/bench_body.py [--baseline REV] [--repeat 7] [--number 20000]

msgspec is not a dependency of tiergate: ``pip install msgspec`` into .venv to include it (skipped otherwise).
"""


import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import timeit
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks" / "proxy")]

from bench import chat_body  # noqa: E402  (benchmarks/proxy/bench.py: the body wrk sends)

from pipeline.errors import TiergateError  # noqa: E402
from proxy import body as edge  # noqa: E402

_NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"
ROLE = Literal["system", "developer", "user", "assistant", "tool", "function"]

# A second body: what an agent sends (tools, a tool call and its result, a multi-part user turn, tags).
AGENT_BODY = {
    **chat_body(max_tokens=256),
    "metadata": {"owner": "billing-bot", "env": "prod"},
    "tools": [{"type": "function", "function": {"name": f"tool_{i}", "description": "Look a shipment up.",
                                                "parameters": {"type": "object", "properties": {
                                                    "ref": {"type": "string"}, "postcode": {"type": "string"}},
                                                    "required": ["ref"]}}} for i in range(4)],
}
AGENT_BODY["messages"] = [*AGENT_BODY["messages"],
                          {"role": "assistant", "content": None, "tool_calls": [
                              {"id": "call_1", "type": "function",
                               "function": {"name": "tool_0", "arguments": '{"ref": "MSKU7781204"}'}}]},
                          {"role": "tool", "tool_call_id": "call_1", "content": "held: missing T1 document"},
                          {"role": "user", "content": [{"type": "text", "text": "And this scan?"},
                                                       {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]

# Bodies every variant must refuse: the issue's reproductions and the tags that poisoned the PostgreSQL ledger.
_HI = {"role": "user", "content": "hi"}
BAD_BODIES = [
    {"model": "auto", "messages": [{"role": [], "content": "x"}]},
    {"model": "auto", "messages": [{"role": {"a": 1}, "content": "x"}]},
    {"model": "auto", "messages": [_HI, {"role": "assistant", "tool_calls": 5}]},
    {"model": "auto", "messages": [_HI, {"role": "assistant", "tool_calls": True}]},
    {"model": "auto", "messages": [_HI, {"role": "assistant", "tool_calls": [{"function": "abc"}]}]},
    {"model": "auto", "messages": [{"role": "user", "content": [{"type": []}]}]},
    {"model": "auto", "messages": [_HI], "metadata": {"owner": "a\x00b"}},
    {"model": "auto", "messages": [_HI], "metadata": {"owner": "x" * 9000}},
    {"model": "auto", "messages": [_HI], "n": 129},
]


# ---- msgspec: typed Structs, decoded straight from the bytes -------------------------------------------------------

def msgspec_variants() -> dict[str, Callable[[bytes], Any]]:
    try:
        import msgspec
    except ImportError:
        return {}
    from msgspec import Meta, Struct

    Tag = Annotated[str, Meta(max_length=edge.MAX_TAG_VALUE_CHARS, pattern=_NO_CONTROL)]
    TagKey = Annotated[str, Meta(min_length=1, max_length=edge.MAX_TAG_KEY_CHARS, pattern=_NO_CONTROL)]

    class Text(Struct, tag_field="type", tag="text"):
        text: str

    class InputText(Struct, tag_field="type", tag="input_text"):
        text: str

    class Refusal(Struct, tag_field="type", tag="refusal"):
        refusal: str

    class ImageRef(Struct):
        url: str
        detail: str | None = None

    class ImageUrl(Struct, tag_field="type", tag="image_url"):
        image_url: str | ImageRef

    class InputImage(Struct, tag_field="type", tag="input_image"):
        image_url: str

    class Image(Struct, tag_field="type", tag="image"):
        source: dict[str, Any]

    class InputAudio(Struct, tag_field="type", tag="input_audio"):
        input_audio: dict[str, Any]

    class File(Struct, tag_field="type", tag="file"):
        file: dict[str, Any]

    Part = Text | InputText | Refusal | ImageUrl | InputImage | Image | InputAudio | File

    class Function(Struct):
        name: str
        arguments: str

    class ToolCall(Struct):
        id: str
        function: Function
        type: Literal["function"] = "function"

    class Message(Struct):
        role: ROLE
        content: str | list[Part] | None = None
        name: str | None = None
        tool_call_id: str | None = None
        tool_calls: list[ToolCall] | None = None
        function_call: Function | None = None

        def __post_init__(self) -> None:
            if self.content is None and self.role != "assistant":
                raise ValueError("content is required")

    class ToolFunction(Struct):
        name: str
        description: str | None = None
        parameters: dict[str, Any] | None = None

    class Tool(Struct):
        function: ToolFunction
        type: Literal["function"] = "function"

    class StreamOptions(Struct):
        include_usage: bool | None = None

    class ResponseFormat(Struct):
        type: str

    class ChatRequest(Struct):
        model: Annotated[str, Meta(min_length=1)]
        messages: Annotated[list[Message], Meta(min_length=1)]
        stream: bool | None = None
        stream_options: StreamOptions | None = None
        metadata: Annotated[dict[TagKey, Tag], Meta(max_length=edge.MAX_TAGS)] | None = None
        user: str | None = None
        max_tokens: Annotated[int, Meta(ge=1)] | None = None
        max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
        n: Annotated[int, Meta(ge=1, le=edge.MAX_N)] | None = None
        temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
        top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
        tools: list[Tool] | None = None
        functions: list[ToolFunction] | None = None
        tool_choice: str | dict[str, Any] | None = None
        response_format: ResponseFormat | None = None

    typed = msgspec.json.Decoder(ChatRequest)

    def decode_twice(raw: bytes) -> dict[str, Any]:
        """Typed decode validates (unknown fields skipped); orjson makes the pass-through dict."""
        try:
            typed.decode(raw)
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None
        body = orjson.loads(raw)
        edge.check_depth(body)
        return body

    def convert(raw: bytes) -> dict[str, Any]:
        """orjson makes the dict once; msgspec validates the dict."""
        body = orjson.loads(raw)
        edge.check_depth(body)
        try:
            msgspec.convert(body, ChatRequest)
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None
        return body

    return {"msgspec: typed decode + orjson dict": decode_twice, "msgspec: orjson dict + convert": convert}


# ---- pydantic-core: one JSON pass that validates and returns the dict (extra fields kept) --------------------------

def pydantic_core_variant() -> dict[str, Callable[[bytes], Any]]:
    from typing import NotRequired

    from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
    from typing_extensions import TypedDict

    allow = ConfigDict(extra="allow", strict=True)
    Tag = Annotated[str, Field(max_length=edge.MAX_TAG_VALUE_CHARS, pattern=_NO_CONTROL)]
    TagKey = Annotated[str, Field(min_length=1, max_length=edge.MAX_TAG_KEY_CHARS, pattern=_NO_CONTROL)]

    def part(kind: str, field: str, value: Any) -> Any:
        cls = TypedDict(f"Part_{kind}", {"type": Literal[kind], field: value})  # type: ignore[misc]
        cls.__pydantic_config__ = allow  # type: ignore[attr-defined]
        return cls

    class ImageRef(TypedDict):
        __pydantic_config__ = allow  # type: ignore[misc]
        url: str
        detail: NotRequired[str | None]

    Part = Annotated[part("text", "text", str) | part("input_text", "text", str) | part("refusal", "refusal", str)
                     | part("image_url", "image_url", str | ImageRef) | part("input_image", "image_url", str)
                     | part("image", "source", dict[str, Any]) | part("input_audio", "input_audio", dict[str, Any])
                     | part("file", "file", dict[str, Any]),
                     Field(discriminator="type")]

    class Function(TypedDict):
        __pydantic_config__ = allow  # type: ignore[misc]
        name: str
        arguments: str

    class ToolCall(TypedDict):
        __pydantic_config__ = allow  # type: ignore[misc]
        id: str
        type: NotRequired[Literal["function"]]
        function: Function

    class Message(TypedDict):
        __pydantic_config__ = allow  # type: ignore[misc]
        role: ROLE
        content: NotRequired[str | list[Part] | None]
        name: NotRequired[str | None]
        tool_call_id: NotRequired[str | None]
        tool_calls: NotRequired[list[ToolCall] | None]
        function_call: NotRequired[Function | None]

    class ToolFunction(TypedDict):
        __pydantic_config__ = allow  # type: ignore[misc]
        name: str
        description: NotRequired[str | None]
        parameters: NotRequired[dict[str, Any] | None]

    class Tool(TypedDict):
        __pydantic_config__ = allow  # type: ignore[misc]
        type: NotRequired[Literal["function"]]
        function: ToolFunction

    class StreamOptions(TypedDict):
        __pydantic_config__ = allow  # type: ignore[misc]
        include_usage: NotRequired[bool | None]

    class ResponseFormat(TypedDict):
        __pydantic_config__ = allow  # type: ignore[misc]
        type: str

    class ChatRequest(TypedDict):
        __pydantic_config__ = allow  # type: ignore[misc]
        model: Annotated[str, Field(min_length=1)]
        messages: Annotated[list[Message], Field(min_length=1)]
        stream: NotRequired[bool | None]
        stream_options: NotRequired[StreamOptions | None]
        metadata: NotRequired[Annotated[dict[TagKey, Tag], Field(max_length=edge.MAX_TAGS)] | None]
        user: NotRequired[str | None]
        max_tokens: NotRequired[Annotated[int, Field(ge=1)] | None]
        max_completion_tokens: NotRequired[Annotated[int, Field(ge=1)] | None]
        n: NotRequired[Annotated[int, Field(ge=1, le=edge.MAX_N)] | None]
        temperature: NotRequired[Annotated[float, Field(ge=0, le=2)] | None]
        top_p: NotRequired[Annotated[float, Field(ge=0, le=1)] | None]
        tools: NotRequired[list[Tool] | None]
        functions: NotRequired[list[ToolFunction] | None]
        tool_choice: NotRequired[str | dict[str, Any] | None]
        response_format: NotRequired[ResponseFormat | None]

    validator = TypeAdapter(ChatRequest).validator  # the pydantic_core.SchemaValidator itself

    def validate(raw: bytes) -> dict[str, Any]:
        try:
            body = validator.validate_json(raw)
        except ValidationError as exc:
            raise ValueError(str(exc)) from None
        for message in body["messages"]:  # the one rule a schema cannot say: content may be absent for assistants
            if message.get("content") is None and message["role"] != "assistant":
                raise ValueError("content is required")
        edge.check_depth(body)
        return body

    return {"pydantic-core: validate_json (dict out)": validate}


# ---- hand-written: before and after --------------------------------------------------------------------------------

def baseline_module(rev: str) -> types.ModuleType:
    source = subprocess.run(["git", "show", f"{rev}:proxy/body.py"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    module = types.ModuleType("body_before")
    exec(compile(source, f"{rev}:proxy/body.py", "exec"), module.__dict__)
    return module


def hand_written(module: types.ModuleType) -> Callable[[bytes], Any]:
    def run(raw: bytes) -> dict[str, Any]:
        body = module.parse_json(raw)
        module.check_chat(body)
        return body
    return run


def _refuses(fn: Callable[[bytes], Any], raw: bytes) -> bool:
    try:
        fn(raw)
    except (TiergateError, ValueError):
        return True
    except Exception:  # a crash is not a refusal: the old code 500ed here  # noqa: BLE001
        return False
    return False


def timings(variants: dict[str, Callable[[bytes], Any]], raw: bytes, repeat: int,
            number: int) -> dict[str, tuple[float, float]]:
    """(best, median) nanoseconds per call for each variant: rounds interleave the variants, so a noisy neighbour
    slows them all alike instead of whichever happened to run at that moment."""
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, fn in variants.items():
            # CPU time of this process: on a shared machine, wall time also counts the moments it was not running
            timer = timeit.Timer(lambda: fn(raw), timer=time.process_time)  # noqa: B023 - run before fn changes
            runs[name].append(timer.timeit(number) / number * 1e9)
    return {name: (min(r), statistics.median(r)) for name, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="71c13ba", help="git revision of proxy/body.py before this change")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()

    variants: dict[str, Callable[[bytes], Any]] = {
        "orjson.loads only (floor)": orjson.loads,
        f"before: proxy/body.py @ {args.baseline}": hand_written(baseline_module(args.baseline)),
        "after: proxy/body.py (hand-written)": hand_written(edge),
        **msgspec_variants(),
        **pydantic_core_variant(),
    }
    bodies = {"benchmark body": json.dumps(chat_body()).encode(), "agent body": json.dumps(AGENT_BODY).encode()}
    bad = [orjson.dumps(b) for b in BAD_BODIES]
    print(f"python {platform.python_version()}, {platform.machine()}; bodies: "
          + ", ".join(f"{name} {len(raw)} B" for name, raw in bodies.items()))
    print(f"{'variant':44} {'refuses':>8}" + "".join(f" {name + ' best/median ns':>34}" for name in bodies))
    measured = [timings(variants, raw, args.repeat, args.number) for raw in bodies.values()]
    for name, fn in variants.items():
        refused = sum(_refuses(fn, raw) for raw in bad) if fn is not orjson.loads else 0
        for raw in bodies.values():
            assert fn(raw) == orjson.loads(raw), f"{name} changed the body"
        cells = [f"{m[name][0]:,.0f} / {m[name][1]:,.0f}" for m in measured]
        print(f"{name:44} {refused:>3}/{len(bad):<4}" + "".join(f" {c:>34}" for c in cells))

if __name__ == "__main__":
    main()

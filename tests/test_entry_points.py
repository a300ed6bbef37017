"""What the in-process harness no longer exercises on the way: the simulator's own entry points as real processes,
``tiergate serve``'s argument checks, and two small rules that only long process runs used to reach.

Most tests now serve the proxy and the simulator in a thread (tests/inprocess.py), which builds the apps directly;
these keep the command-line paths a user runs (``tiergate mock-upstream``, ``python -m simulator``) covered.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from metering.budgets.base import Spend, SpendLog
from proxy.cli import build_parser, main, parse
from tests.conftest import DEMO_KEYS, ROOT, Server, free_port, start_process
from tests.waiting import eventually


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("command", [["mock-upstream"], None], ids=["tiergate-mock-upstream", "python-m-simulator"])
def test_the_simulator_serves_from_its_command_lines(tmp_path: Path, command: list[str] | None) -> None:
    port = free_port()
    if command is None:  # python -m simulator: the same parser without the main CLI
        with (tmp_path / "sim.log").open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "simulator", "--port", str(port), "--latency-ms", "1"],
                                    cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        eventually(lambda: _answers(url), "python -m simulator to answer /healthz", timeout_s=60, proc=proc)
    else:
        server = start_process([*command, "--port", str(port), "--latency-ms", "1"], port, tmp_path / "m.log",
                               "/healthz", fresh=True)  # the command line itself is under test
        url, proc = server.url, server.proc
    try:
        reply = httpx.post(url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "hi"}]}, timeout=10)
        assert reply.status_code == 200 and reply.json()["usage"]["prompt_tokens"] > 0
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) in (0, -15)


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--workers", "two", "not a number: 'two'"),
    ("--port", "70000", "must be between 0 and 65535"),
    ("--shutdown-grace-s", "0", "must be at least 0.1"),
])
def test_serve_refuses_bad_numbers_with_a_usage_error(capsys: pytest.CaptureFixture[str], flag: str, value: str,
                                                      says: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--config", "configs/demo.yaml", flag, value])
    assert exit_.value.code == 2 and says in capsys.readouterr().err


def _parsed(parser: object, argv: list[str]) -> tuple[object, ...]:
    """What parsing ``argv`` leaves behind: the exit status or the namespace (its handler by name), and the output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = parser(argv)  # type: ignore[operator]
        except SystemExit as exit_:
            result: object = exit_.code
        else:
            result = {**vars(args), "func": args.func.__qualname__}
    return result, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv", [
    ["serve", "--config", "c.yaml", "--workers", "2"], ["serve"], ["serve", "-h"], ["serve", "--conf", "c"],
    ["serve", "--config", "c", "--bogus"], ["serve", "--config", "c", "extra"], ["serve", "--config", "c", "--", "x"],
    ["serve", "--config", "c", "--port", "70000"], ["serve", "--config=c", "--log-level", "loud"],
    ["check-config", "x.yaml", "--fail-over-budget"], ["check-config"], ["check-config", "-h"],
    ["check-config", "a", "b"], ["check-config", "a", "--nope"],
    ["mock-upstream", "--port", "5", "--latency-ms", "1"], ["mock-upstream", "-h"], ["mock-upstream", "zzz"],
    ["mock-upstream", "--latency-ms", "-1"],
], ids=" ".join)
def test_a_standalone_command_parses_exactly_as_the_whole_parser_does(argv: list[str]) -> None:
    """``serve``, ``check-config`` and ``mock-upstream`` are parsed without the other commands' parsers: same
    namespace, same help, same usage errors (a left-over argument is reported by the whole parser)."""
    assert _parsed(parse, argv) == _parsed(lambda a: build_parser().parse_args(a), argv)


def test_standalone_commands_start_without_the_other_commands_modules() -> None:
    """Their imports (numpy, onnxruntime, the ledger's readers, ...) cost every ``tiergate serve`` supervisor,
    ``check-config`` and ``mock-upstream`` process ~0.6 s of CPU for nothing."""
    others = ("classifiers.cli", "metering.cli", "proxy.audit_cli", "proxy.experiments_cli", "proxy.models_cli",
              "proxy.plan_cli")
    probe = ("import sys; from proxy.cli import parse\n"
             "for argv in (['serve', '--config', 'c'], ['check-config', 'c'], ['mock-upstream']): parse(argv)\n"
             f"print(sorted(name for name in {others!r} if name in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"serve", "check-config", "mock-upstream", "train", "bill", "audit", "plan"} <= set(sub.choices)


def test_a_spend_log_merges_its_oldest_buckets_into_the_next_never_dropping_spend() -> None:
    log = SpendLog(max_parts=3)
    log.add(Spend(tuple((ms, 10) for ms in (5, 15, 25, 35, 45))))  # five 10 ms buckets, room for three
    frozen = log.freeze()
    assert len(frozen.parts) == 3 and frozen.nanos == log.nanos == 50
    assert frozen.parts[0] == (29, 30)  # the two oldest moved into the third, stamped with its later time


def test_a_user_message_without_content_is_a_400_naming_the_field(demo_proxy: Server) -> None:
    reply = httpx.post(demo_proxy.url + "/v1/chat/completions", timeout=10,
                       headers={"Authorization": f"Bearer {DEMO_KEYS['research']}"},
                       json={"model": "auto", "messages": [{"role": "user", "content": None}]})
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "messages[0].content"

"""The process model with real processes: one server per port, workers listen only once started, bounded shutdown,
restarts that back off, and a serve path that needs nothing from the `train` or `dev` extras."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import DEMO_KEYS, ROOT, demo_config, free_port, mock_config, start_process
from tests.fault_harness import START_TIMEOUT_S
from tests.forked import ForkedProcess, run_cli
from tests.waiting import eventually

AUTH = {"authorization": f"Bearer {DEMO_KEYS['research']}"}
CHAT = {"model": "auto", "max_tokens": 8, "messages": [{"role": "user", "content": "Hello!"}]}
TRAIN_ONLY = ("sklearn", "skl2onnx", "onnx", "scipy")
DEV_ONLY = ("pytest", "hypothesis", "playwright", "mypy", "ruff")
# The length scorer for servers whose classifier a test does not look at: each worker then starts without importing
# onnxruntime and loading the ONNX model (about a second of CPU each).
LIGHT = "length"


def _env(**extra: str) -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [*extra.pop("prepend", "").split(os.pathsep), str(ROOT),
                                               os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, **extra}


def _tiergate(*args: str, env: dict[str, str] | None = None,
              log: Path | None = None) -> subprocess.Popen[bytes] | ForkedProcess:
    if env is None and log is not None:
        return ForkedProcess(list(args), ROOT, log)
    out = log.open("ab") if log is not None else subprocess.PIPE
    return subprocess.Popen([sys.executable, "-m", "proxy.cli", *args], cwd=ROOT, env=env or _env(),
                            stdout=out, stderr=subprocess.STDOUT)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: a PostgreSQL that hangs (start-up stalls in
    ``Meter.open`` until the pool's own timeout)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


def _stalling_config(tmp_path: Path, hole: int) -> Path:
    text = demo_config(tmp_path).read_text()
    text = re.sub(r"ledger: sqlite:///\S+", f"ledger: postgresql://postgres@127.0.0.1:{hole}/test", text)
    path = tmp_path / "stalling.yaml"
    path.write_text(text)
    return path


# -- one server per port ------------------------------------------------------------------------------------------

def _a_second_server_is_refused(config: Path, port: int) -> None:
    """A second server on the port would get part of its traffic, with budgets of its own: it must not start."""
    second = run_cli(["serve", "--config", str(config), "--port", str(port)], cwd=ROOT)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"tiergate serve: 127.0.0.1:{port} is already in use (another tiergate serve or another program); "
        f"stop it or choose another --port"]


def _other_programs_cannot_bind(port: int) -> None:
    for reuse in (False, True):
        with socket.socket() as other:
            if reuse:
                other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", port))


def _port_is_free(port: int) -> None:
    """Stopped, the port is free for the next start."""
    with socket.socket() as after:
        after.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        after.bind(("127.0.0.1", port))


def test_serve_refuses_a_port_another_program_holds(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(8)
        _a_second_server_is_refused(demo_config(tmp_path, classifier=LIGHT), holder.getsockname()[1])


# A tiergate with 2 workers refusing a second server on its port and keeping it from other programs is checked on the
# server of ``test_a_2_worker_server_keeps_its_port_and_lets_a_stream_in_flight_finish_on_sigterm``; a 1-worker
# server keeping its port, on the one of ``test_serving_imports_nothing_from_the_train_or_dev_extras``.


# -- no listening before start-up is done; bounded shutdown -------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_workers_still_starting_refuse_connections_and_sigterm_ends_within_the_grace(
        tmp_path: Path, black_hole: int, workers: int) -> None:
    port = free_port()
    log = tmp_path / "proxy.log"
    proc = _tiergate("serve", "--config", str(_stalling_config(tmp_path, black_hole)), "--port", str(port),
                     "--workers", str(workers), "--shutdown-grace-s", "1", log=log)
    try:
        # Every worker is inside the app's start-up, which waits on the silent database for 10 s.
        eventually(lambda: log.read_text().count("Waiting for application startup.") >= workers,
                   "the workers to enter start-up", 60, proc)
        # Bound but not listening: a client is refused at once instead of queueing on a worker that cannot serve.
        assert _refused(port)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    # The grace (1 s) ended it, not the start-up's own 10 s timeout (that would exit 3 and log its error).
    assert ("shutdown did not finish within the 1s grace" in text) or ("still running after the 1s grace" in text)
    assert "Application startup failed" not in text
    assert code == (1 if workers == 1 else 0)


def test_a_2_worker_server_keeps_its_port_and_lets_a_stream_in_flight_finish_on_sigterm(tmp_path: Path,
                                                                                          start_mock) -> None:
    mock = start_mock("--tokens-per-s", "20")
    config = mock_config(tmp_path, {"small": [mock.url]})
    config.write_text(config.read_text().replace("model: default", f"model: {LIGHT}"))
    port = free_port()
    proxy = start_process(["serve", "--config", str(config), "--port", str(port), "--workers", "2",
                           "--shutdown-grace-s", "30"], port, tmp_path / "proxy.log", "/readyz",
                          timeout_s=START_TIMEOUT_S)
    body = {"model": "small", "max_tokens": 40, "stream": True,
            "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}]}
    lines: list[str] = []
    first = threading.Event()

    def consume() -> None:
        with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, timeout=60,
                          headers={"authorization": "Bearer sk-test"}) as response:
            for line in response.iter_lines():
                lines.append(line)
                first.set()

    reader = threading.Thread(target=consume)
    try:
        _a_second_server_is_refused(config, port)
        _other_programs_cannot_bind(port)
        assert httpx.get(proxy.url + "/readyz", timeout=10).status_code == 200  # the first one is untouched
        reader.start()
        assert first.wait(timeout=60)
        proxy.proc.send_signal(signal.SIGTERM)  # while the stream is still being generated
        reader.join(timeout=60)
        assert proxy.proc.wait(timeout=60) == 0
    finally:
        proxy.stop()
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    assert sum(1 for line in data[:-1] if json.loads(line[6:]).get("choices")) > 2
    assert "still running after" not in proxy.output()
    _port_is_free(port)


# -- start-up failures --------------------------------------------------------------------------------------------

def _broken_model_config(tmp_path: Path) -> Path:
    """Valid to ``check-config``; fails in the worker's start-up (the model file is not a model)."""
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"not an onnx model")
    text = demo_config(tmp_path).read_text().replace("  model: default ", f"  model: {model} ")
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    return path


def test_a_single_worker_that_cannot_start_exits_non_zero_and_frees_the_port(tmp_path: Path) -> None:
    port = free_port()
    config = _broken_model_config(tmp_path)
    result = run_cli(["serve", "--config", str(config), "--port", str(port)], cwd=ROOT)
    assert result.returncode == 3, result.stderr
    with socket.socket() as after:
        after.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        after.bind(("127.0.0.1", port))


def test_the_supervisor_backs_off_restarting_a_worker_that_cannot_start(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "proxy.log"
    proc = _tiergate("serve", "--config", str(_broken_model_config(tmp_path)), "--port", str(port),
                     "--workers", "2", log=log)
    pattern = re.compile(r"worker \d+ exited with 3; starting a new one in (\d+)s")
    try:
        eventually(lambda: len(pattern.findall(log.read_text())) >= 5, "five failed starts", 180, proc)
        assert _refused(port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Each of the two slots doubles its own delay (1, 2, 4, ... s): only a slot's first failure waits 1 s, and
    # five failures over two slots put three on one of them, so a 4 s wait was reached.
    delays = [int(d) for d in pattern.findall(log.read_text())]
    assert delays.count(1) == 2 and max(delays) >= 4


# -- the runtime install suffices to serve ------------------------------------------------------------------------

@pytest.fixture
def without_extras(tmp_path: Path) -> str:
    """A PYTHONPATH entry on which every train-only and dev-only package is missing, as in the runtime install."""
    stubs = tmp_path / "runtime-only"
    for name in TRAIN_ONLY + DEV_ONLY:
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError({f'No module named {name!r}'!r}, name={name!r})\n")
    return str(stubs)


def test_serving_imports_nothing_from_the_train_or_dev_extras(tmp_path: Path, without_extras: str) -> None:
    port = free_port()
    log = tmp_path / "proxy.log"
    proc = _tiergate("serve", "--config", str(demo_config(tmp_path)), "--port", str(port),
                     env=_env(prepend=without_extras), log=log)
    try:
        url = f"http://127.0.0.1:{port}"
        eventually(lambda: _ready(url), "readiness", START_TIMEOUT_S, proc)
        reply = httpx.post(url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-tiergate-score"]  # the classifier ran (onnxruntime, not scikit-learn)
        assert httpx.get(url + "/v1/models", headers=AUTH, timeout=10).status_code == 200
        _other_programs_cannot_bind(port)  # a running server keeps its port
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert "No module named" not in log.read_text()
    _port_is_free(port)


def test_train_without_the_train_extra_is_a_one_line_error(tmp_path: Path, without_extras: str) -> None:
    result = subprocess.run([sys.executable, "-m", "proxy.cli", "train", "--data", str(ROOT / "classifiers" / "data"),
                             "--out", str(tmp_path / "m.onnx")], cwd=ROOT, env=_env(prepend=without_extras),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert re.fullmatch(rf"tiergate train: needs the train extra \(({'|'.join(TRAIN_ONLY)}) is not installed\): "
                        r"bash scripts/install.sh train", line), line
    assert not (tmp_path / "m.onnx").exists()


def test_serve_help_describes_every_flag_with_its_default() -> None:
    from proxy.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    flags = [a for a in serve._actions if a.option_strings and a.dest != "help"]
    assert {a.option_strings[0] for a in flags} >= {"--config", "--host", "--port", "--workers", "--log-level",
                                                     "--shutdown-grace-s"}
    for action in flags:
        assert action.help, action.option_strings
        assert "(default: %(default)s)" in action.help or (action.required and "required" in action.help)
    text = " ".join(serve.format_help().split())
    assert "(default: 4000)" in text and "(default: 127.0.0.1)" in text and "(default: 10.0)" in text


def test_the_supervisor_names_the_metrics_directory_variable_the_workers_read() -> None:
    """``proxy.server`` names it itself so that a supervisor need not import the metrics module."""
    from proxy.metrics import MULTIPROC_ENV
    from proxy.server import MULTIPROC_ENV as SUPERVISOR_MULTIPROC_ENV

    assert SUPERVISOR_MULTIPROC_ENV == MULTIPROC_ENV == "PROMETHEUS_MULTIPROC_DIR"

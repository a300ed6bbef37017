"""``tiergate`` processes forked from a warm interpreter instead of started from scratch.

Why: ``python -m proxy.cli serve`` spends ~2 s of CPU importing the app and building the tokenizer before it listens
(a multi-worker server's supervisor ~0.7 s, a one-shot command ~1 s), and the suite starts dozens of processes that
must be processes: servers that take signals, kill -9, exit statuses, several workers, a network namespace, and the
commands themselves. Forked from multiprocessing's fork server, preloaded once per test process with what
``tiergate serve`` preloads for its own workers (``proxy.preload``), one starts in a few milliseconds of CPU. It is
still its own process, with its own pid, signal handlers, exit status and stdout/stderr files, running
``proxy.cli.main`` with the test's arguments, environment and working directory.

A fresh interpreter is still what a test starts when start-up itself is under test: the command lines, what a
process imports, an environment that modules may read as they are imported.

The forked child imports this module to find its target: it imports nothing of pytest or of the app.
"""

from __future__ import annotations

import atexit
import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from multiprocessing.context import ForkServerContext
from pathlib import Path

# What the fork server imports once: the server's modules and tokenizer, the CLI, and the simulator (mock-upstream).
PRELOAD = ["proxy.preload", "proxy.cli", "simulator.server"]
_CLONE_NEWNET = 0x40000000
ROOT = Path(__file__).resolve().parent.parent

_context: ForkServerContext | None = None
_started: list[ForkedProcess] = []


def _fork_server() -> ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def child_env() -> dict[str, str]:
    """This process's environment with the repository first on ``PYTHONPATH``: what a test's ``tiergate`` process
    runs with (a multi-worker server's own fork server, a fresh interpreter, imports ``proxy.preload`` from it)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _enter_netns(name: str) -> None:
    """What ``ip netns exec`` does that a server needs: this process's sockets live in namespace ``name``."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into network namespace {name}")
    finally:
        os.close(fd)


def _run_cli(args: list[str], env: dict[str, str], cwd: str, stdout: str, stderr: str, netns: str | None) -> None:
    """The child: what ``python -m proxy.cli <args>`` would do, its output appended to the files given."""
    for target, path in ((1, stdout), (2, stderr)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, target)
        os.close(fd)
    if netns is not None:
        _enter_netns(netns)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = [sys.argv[0], *args]
    from proxy.cli import main

    sys.exit(main(args))


class ForkedProcess:
    """The part of ``subprocess.Popen``'s interface the tests use, over a process forked by the fork server (which
    reports its exit status back, as ``waitpid`` would for a child)."""

    def __init__(self, args: list[str], cwd: Path, log: Path, stderr: Path | None = None, netns: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        """``env`` defaults to ``child_env()``."""
        self.args = args
        env = child_env() if env is None else env
        for path in (log, stderr or log):  # as with Popen, the files exist once the process is started
            path.touch()
        target_args = (args, env, str(cwd), str(log), str(stderr or log), netns)
        self._process = _fork_server().Process(target=_run_cli, args=target_args, name=f"tiergate {args[0]}")
        self._process.start()
        assert self._process.pid is not None
        self.pid: int = self._process.pid
        _started.append(self)

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def run_cli(args: list[str], cwd: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``subprocess.run([python, "-m", "proxy.cli", *args], capture_output=True, text=True)``, forked."""
    with tempfile.TemporaryDirectory(prefix="tiergate-run-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        process = ForkedProcess(args, cwd, out, stderr=err)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        return subprocess.CompletedProcess(args, code, out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))


@atexit.register  # before multiprocessing's own exit handler (registered earlier), which joins every child
def _kill_leftovers() -> None:
    for process in _started:
        if process.poll() is None:
            process.kill()
            process.wait(10)

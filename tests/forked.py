"""``tiergate`` server processes forked from a warm interpreter instead of started from scratch.

Why: ``python -m proxy.cli serve`` spends ~2 s of CPU importing the app and building the tokenizer before it listens
(a multi-worker server's supervisor ~0.7 s), and the suite starts a few dozen servers that need a process of their
own: signals, kill -9, exit statuses, several workers. Forked from multiprocessing's fork server, preloaded once per
test process with what ``tiergate serve`` preloads for its own workers (``proxy.preload``), a server process starts
in a few milliseconds of CPU. It is still its own process, with its own pid, signal handlers, exit status and
stdout/stderr file, running ``proxy.cli.main`` with the test's arguments, environment and working directory.

A fresh interpreter is still what a test gets when it is about start-up itself (``start_process(fresh=True)``: the
command lines, what a process imports) or passes an environment that modules may read as they are imported.

This module is imported by the forked child to find its target: it imports nothing of pytest or of the app.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import subprocess
import sys
from multiprocessing.context import ForkServerContext
from pathlib import Path

# What the fork server imports once: the server's modules and tokenizer, the CLI, and the simulator (mock-upstream).
PRELOAD = ["proxy.preload", "proxy.cli", "simulator.server"]

_context: ForkServerContext | None = None
_started: list[ForkedProcess] = []


def _fork_server() -> ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _run_cli(args: list[str], env: dict[str, str], cwd: str, log: str) -> None:
    """The child: what ``python -m proxy.cli <args>`` with stdout and stderr appended to ``log`` would do."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = [sys.argv[0], *args]
    from proxy.cli import main

    sys.exit(main(args))


class ForkedProcess:
    """The part of ``subprocess.Popen``'s interface the tests use, over a process forked by the fork server (which
    reports its exit status back, as ``waitpid`` would for a child)."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.args = args
        self._process = _fork_server().Process(target=_run_cli, args=(args, env, str(cwd), str(log)),
                                               name=f"tiergate {args[0]}")
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


@atexit.register  # before multiprocessing's own exit handler (registered earlier), which joins every child
def _kill_leftovers() -> None:
    for process in _started:
        if process.poll() is None:
            process.kill()
            process.wait(10)

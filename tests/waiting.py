"""``eventually``: the one way tests wait for something another thread or process does.

Why one helper: hand-written poll loops drifted apart (some returned a falsy value on timeout and let the test
fail later with a confusing message, some never checked whether the process they waited on had died, intervals
ranged from 10 ms to 0.5 s). The timeout is hang protection only: no test asserts how fast something happens
(speed targets live in ``benchmarks/``), so it is generous, and the interval starts short and backs off so a
condition that is already true or soon true costs almost nothing.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(predicate: Callable[[], T], what: str, timeout_s: float = 30.0,
               proc: subprocess.Popen[bytes] | None = None, interval_s: float = 0.01,
               max_interval_s: float = 0.2) -> T:
    """The first truthy value of ``predicate()``; ``AssertionError`` naming ``what`` after ``timeout_s``, or at
    once when ``proc`` (the process whose work is awaited) has exited. Exceptions from ``predicate`` propagate:
    wrap the call when "not reachable yet" is an expected state."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)
        interval_s = min(interval_s * 2, max_interval_s)

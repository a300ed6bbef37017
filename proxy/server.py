"""Process model: N uvicorn workers, each with its own SO_REUSEPORT socket, under a small supervisor.

Why not uvicorn's own ``--workers``: its supervisor answers SIGHUP by restarting every worker, which drops
in-flight requests and would fail to start on an invalid file. Ours forwards SIGHUP so each worker reloads its
policy in place (keeping the running one if the new file is invalid), and the kernel balances connections
across the workers' sockets.

Three rules keep the process honest:
- The port is this server's alone: ``claim_port`` binds it exclusively before any worker starts, so a second
  ``tiergate serve`` (or any other program) on the same port fails instead of silently splitting the traffic
  between two processes with separate in-process budgets.
- A worker listens only once its start-up (policy, classifier, ledger spool replay) is done: until then its
  socket is bound but not listening, so the kernel gives its connections to the workers that can serve.
- Shutdown is bounded: SIGTERM/SIGINT drain for most of ``shutdown_grace_s``, then the app closes; a process
  still running at the grace exits anyway (records not yet committed stay in the ledger spool for the next start).
"""

from __future__ import annotations

import ctypes
import errno
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn

log = logging.getLogger("tiergate.server")

# Share of the grace given to in-flight requests; the rest is for the app's own close (ledger flush, clients).
DRAIN_SHARE = 0.75
# A worker that dies is replaced after RESTART_DELAYS_S[n - 1] for its n-th quick death in a row (a worker that
# cannot start must not spin the supervisor); a death after STABLE_AFTER_S of service counts as the first.
RESTART_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_AFTER_S = 60.0
# prometheus_client's multiprocess directory variable (``proxy.metrics.MULTIPROC_ENV``), named here so that a
# supervisor, which serves nothing, does not import the metrics module (Starlette, the ledger's and budgets' types:
# ~0.2 s of CPU) only to set it.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class PortInUse(RuntimeError):
    """The port cannot be claimed; the message is one line meant for the operator."""


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
        stream=sys.stderr,
    )


def _new_socket(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)


def claim_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` for this server only and keep it bound (not listening) while the server runs.

    The bind itself carries no SO_REUSEPORT, so it fails while anything else holds the port, another tiergate's
    workers included. Afterwards the socket switches to SO_REUSEPORT without SO_REUSEADDR: our workers' sockets
    (SO_REUSEPORT, same user) may then join the port, while any later bind without SO_REUSEPORT (another tiergate's
    claim, another program) still fails. SO_REUSEADDR during the bind lets a restart reuse a port whose previous
    connections are in TIME_WAIT; it is cleared because a bound, non-listening socket that keeps it would let
    another SO_REUSEADDR socket bind and listen on the port.
    """
    sock = _new_socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"{host}:{port} is already in use (another tiergate serve or another program); "
                            f"stop it or choose another --port") from None
        raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def _worker_socket(host: str, port: int) -> socket.socket:
    """Bound, not listening: uvicorn calls listen() only after the app's start-up succeeded, so a worker that is
    still starting (or stuck starting) is not in the port's SO_REUSEPORT group and receives no connections."""
    sock = _new_socket(host)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


@dataclass(frozen=True)
class ServeOptions:
    config_path: str
    host: str = "127.0.0.1"
    port: int = 4000
    workers: int = 1
    log_level: str = "info"
    shutdown_grace_s: float = 10.0


class _BoundedServer(uvicorn.Server):
    """uvicorn's server plus a hard stop: the first exit signal arms a timer that ends the process at the grace,
    whatever the app's shutdown is waiting for (a database that does not answer, a start-up that never ends)."""

    def __init__(self, config: uvicorn.Config, grace_s: float) -> None:
        super().__init__(config)
        self._grace_s = grace_s
        self._deadline: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._deadline is None:
            self._deadline = threading.Timer(self._grace_s, _exit_now, args=(self._grace_s,))
            self._deadline.daemon = True
            self._deadline.start()
        super().handle_exit(sig, frame)


def _exit_now(grace_s: float) -> None:
    log.error("shutdown did not finish within the %gs grace; exiting now", grace_s)
    logging.shutdown()
    os._exit(1)


def _return_freed_memory() -> None:
    """Start-up parses YAML, the price table and model files; hand what they freed back to the OS so a worker's
    resident size reflects what it keeps (glibc only; elsewhere a no-op). A server process's step, not the
    runtime's: in a process that holds much else (an embedding application, a test run) a full collection costs
    far more and frees nothing of the runtime's."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_worker(options: ServeOptions) -> None:
    """One worker process: its own event loop, policy, upstream pool and meter."""
    from proxy.app import create_app

    configure_logging(options.log_level)
    # SIGHUP reloads the policy once the app runs (it installs that handler); before then its default action would
    # kill a worker that is still starting, and the file is read at start-up anyway. The supervisor starts workers
    # with SIGHUP blocked, so one sent while this process was booting is ignored here, not fatal there.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    server = _BoundedServer(
        uvicorn.Config(
            create_app(options.config_path, after_start=_return_freed_memory),
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            proxy_headers=False,  # no X-Forwarded-* rewriting on the hot path; put trusted proxies' logic upstream
            log_level=options.log_level,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=max(0.1, options.shutdown_grace_s * DRAIN_SHARE),
            backlog=2048,
            server_header=False,
            date_header=False,
        ),
        options.shutdown_grace_s,
    )
    server.run(sockets=[_worker_socket(options.host, options.port)])  # a failed start-up exits with status 3


def serve(options: ServeOptions) -> int:
    """Claim the port, then run one worker in this process or supervise several; raises ``PortInUse``."""
    configure_logging(options.log_level)
    guard = claim_port(options.host, options.port)
    owned_metrics_dir = _prepare_metrics_dir(options.workers)
    try:
        if options.workers <= 1:
            log.info("tiergate starting on http://%s:%d (1 worker, config %s)", options.host, options.port,
                     options.config_path)
            run_worker(options)
            return 0
        return _supervise(options)
    finally:
        guard.close()
        if owned_metrics_dir is not None:
            shutil.rmtree(owned_metrics_dir, ignore_errors=True)


def _prepare_metrics_dir(workers: int) -> str | None:
    """Prometheus multiprocess mode: the workers' shared directory, empty at start (an earlier run's counters
    would add up). A directory the operator chose (``PROMETHEUS_MULTIPROC_DIR``) is emptied of metric files and
    kept; with several workers and none chosen a fresh temporary one is made, returned to be removed at exit.
    One worker without the variable keeps its metrics in process."""
    chosen = os.environ.get(MULTIPROC_ENV)
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        for stale in Path(chosen).glob("*.db"):
            stale.unlink()
        return None
    if workers <= 1:
        return None
    path = tempfile.mkdtemp(prefix="tiergate-metrics-")
    os.environ[MULTIPROC_ENV] = path  # inherited by the fork server and its workers (read at import)
    return path


@dataclass
class _Slot:
    """One worker position: its current process, when it started, and when a dead one may be replaced."""

    proc: multiprocessing.process.BaseProcess | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float = 0.0


def _supervise(options: ServeOptions) -> int:
    # Workers fork from multiprocessing's fork server, a clean single-threaded child of this process that imported
    # the app and loaded the tokenizer once (``proxy.preload``): a worker, first or replacement, starts in ~0.5 s of
    # CPU instead of ~2 s, while this supervisor stays small. The fork server starts with the first worker, so it
    # and every worker inherit the SIGHUP block below.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["proxy.preload"])
    slots = [_Slot() for _ in range(options.workers)]
    stopping = False

    def live() -> list[multiprocessing.process.BaseProcess]:
        return [s.proc for s in slots if s.proc is not None and s.proc.is_alive()]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if signum == signal.SIGHUP:
            for proc in live():
                os.kill(proc.pid, signal.SIGHUP)  # type: ignore[arg-type]  # a live process has a pid
        else:
            stopping = True  # the loop below ends and sends SIGTERM, also to a worker started meanwhile

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    log.info("tiergate starting on http://%s:%d (%d workers, config %s)", options.host, options.port,
             options.workers, options.config_path)
    while not stopping:
        now = time.monotonic()
        for slot in slots:
            if slot.proc is not None and not slot.proc.is_alive():
                quick = now - slot.started_at < STABLE_AFTER_S
                slot.quick_deaths = slot.quick_deaths + 1 if quick else 1
                delay = RESTART_DELAYS_S[min(slot.quick_deaths, len(RESTART_DELAYS_S)) - 1]
                log.error("worker %s exited with %s; starting a new one in %gs", slot.proc.pid, slot.proc.exitcode,
                          delay)
                slot.proc, slot.restart_at = None, now + delay
            if slot.proc is None and now >= slot.restart_at:
                slot.proc = ctx.Process(target=run_worker, args=(options,), daemon=False)
                blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})  # see ctx above
                try:
                    slot.proc.start()
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                slot.started_at = now
        time.sleep(0.2)
    # SIGTERM, also for SIGINT: a terminal's Ctrl-C already reached the workers, and a second SIGINT would make
    # uvicorn skip the drain.
    deadline = time.monotonic() + options.shutdown_grace_s
    for proc in live():
        os.kill(proc.pid, signal.SIGTERM)  # type: ignore[arg-type]
    for proc in live():
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
    for proc in live():
        log.error("worker %s still running after the %gs grace; killing it", proc.pid, options.shutdown_grace_s)
        proc.kill()
        proc.join()
    return 0

"""Process model: N uvicorn workers, each with its own SO_REUSEPORT socket, under a small supervisor.

Why not uvicorn's own ``--workers``: its supervisor answers SIGHUP by restarting every worker, which drops
in-flight requests and would fail to start on an invalid file. Ours forwards SIGHUP so each worker reloads its
policy in place (keeping the running one if the new file is invalid), and the kernel balances connections
across the workers' sockets.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import uvicorn

log = logging.getLogger("tiergate.server")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
        stream=sys.stderr,
    )


def _socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_worker(config_path: str, host: str, port: int, log_level: str) -> None:
    """One worker process: its own event loop, policy, upstream pool and meter."""
    from proxy.app import create_app

    configure_logging(log_level)
    app = create_app(config_path)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            proxy_headers=False,  # no X-Forwarded-* rewriting on the hot path; put trusted proxies' logic upstream
            log_level=log_level,
            timeout_keep_alive=30,
            server_header=False,
            date_header=False,
        )
    )
    server.run(sockets=[_socket(host, port)])


def serve(config_path: str, host: str = "127.0.0.1", port: int = 4000, workers: int = 1,
          log_level: str = "info") -> int:
    configure_logging(log_level)
    owned_metrics_dir = _prepare_metrics_dir(workers)
    try:
        if workers <= 1:
            log.info("tiergate listening on http://%s:%d (1 worker, config %s)", host, port, config_path)
            run_worker(config_path, host, port, log_level)
            return 0
        return _supervise(config_path, host, port, workers, log_level)
    finally:
        if owned_metrics_dir is not None:
            shutil.rmtree(owned_metrics_dir, ignore_errors=True)


def _prepare_metrics_dir(workers: int) -> str | None:
    """Prometheus multiprocess mode: the workers' shared directory, empty at start (an earlier run's counters
    would add up). A directory the operator chose (``PROMETHEUS_MULTIPROC_DIR``) is emptied of metric files and
    kept; with several workers and none chosen a fresh temporary one is made, returned to be removed at exit.
    One worker without the variable keeps its metrics in process."""
    from proxy.metrics import MULTIPROC_ENV

    chosen = os.environ.get(MULTIPROC_ENV)
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        for stale in Path(chosen).glob("*.db"):
            stale.unlink()
        return None
    if workers <= 1:
        return None
    path = tempfile.mkdtemp(prefix="tiergate-metrics-")
    os.environ[MULTIPROC_ENV] = path  # inherited by the spawned workers, read when they import prometheus_client
    return path


def _supervise(config_path: str, host: str, port: int, workers: int, log_level: str) -> int:
    ctx = multiprocessing.get_context("spawn")
    procs: list[multiprocessing.process.BaseProcess] = []
    stopping = False

    def start_one() -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(target=run_worker, args=(config_path, host, port, log_level), daemon=False)
        proc.start()
        return proc

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if signum in (signal.SIGINT, signal.SIGTERM):
            stopping = True
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    procs.extend(start_one() for _ in range(workers))
    log.info("tiergate listening on http://%s:%d (%d workers, config %s)", host, port, workers, config_path)
    while not stopping:
        time.sleep(0.5)
        for i, proc in enumerate(procs):
            if not proc.is_alive() and not stopping:
                log.error("worker %s exited with %s; starting a new one", proc.pid, proc.exitcode)
                time.sleep(1.0)  # a worker that dies at start must not spin the supervisor
                procs[i] = start_one()
    for proc in procs:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    return 0

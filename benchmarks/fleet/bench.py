"""Fleet capacity benchmark: what each request costs the shared Redis and PostgreSQL, and each replica in CPU and
memory, with 1, 2 and 4 replicas behind HAProxy (``scripts/fleet.sh``). docs/scaling.md turns the numbers into a
capacity model; RESULTS.md records the runs.

    .venv/bin/python benchmarks/fleet/bench.py [--replicas 1,2,4] [--rate 250] [--seconds 20]

The load is paced (a fixed offered rate, not flat out): the machine is shared, and a per-request cost measured at
the same rate for every fleet size is what shows whether the model is linear. Throughput per replica comes from CPU
per request (requests/s one core sustains), which a busy machine distorts far less than a saturation run.

Isolation: the fleet runs on its own ports and run directory; its Redis is a private redis-server (no persistence)
on a free port, so every command MONITOR shows is this fleet's (Lua-internal ones counted apart) and the shared
Redis is neither watched (MONITOR slows a server for all its clients) nor touched; its ledger is the PostgreSQL
database tiergate_fleet_bench on the shared server (pg_stat_database counts commits per database, so no other
test's transactions mix in; the benchmark's own queries are subtracted). Nothing is flushed or reconfigured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp
import psycopg
import redis
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FLEET_SH = REPO / "scripts" / "fleet.sh"
RUN_DIR = REPO / "var" / "bench-fleet"
PORT = 25400
DATABASE = "tiergate_fleet_bench"
KEYS = {"research": "sk-demo-research", "support": "sk-demo-support"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- the fleet -------------------------------------------------------------------------------------------------

def bench_config(classifier: str, redis_port: int, upstream_port: int) -> Path:
    """configs/fleet.yaml with the benchmark's own Redis and ledger database, and its tiers served by a
    mock-upstream process: a replica's CPU is then the proxy's alone, as with a real (remote) provider, rather than
    the proxy's plus the in-process simulator's."""
    config = yaml.safe_load((REPO / "configs" / "fleet.yaml").read_text())
    config["classifier"]["model"] = classifier
    for tier in config["tiers"]:
        for deployment in tier["deployments"]:
            deployment.pop("simulator", None)
            deployment["model"] = "openai/" + deployment["model"].removeprefix("simulated/")
            deployment["api_base"] = f"http://127.0.0.1:{upstream_port}/v1"
    config["metering"]["redis"] = f"redis://127.0.0.1:{redis_port}/0"
    config["metering"]["ledger"] = f"postgresql://postgres@127.0.0.1:5432/{DATABASE}"
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    path = RUN_DIR / "fleet.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fleet(*args: str) -> None:
    env = {**os.environ, "FLEET_CONFIG": str(RUN_DIR / "fleet.yaml"), "FLEET_RUN_DIR": str(RUN_DIR / "run"),
           "FLEET_PORT": str(PORT)}
    subprocess.run(["bash", str(FLEET_SH), *args], env=env, check=True)


def replica_pids() -> list[int]:
    return [int((p.parent / "pid").read_text()) for p in sorted((RUN_DIR / "run" / "replicas").glob("r*/port"))]


def haproxy_pid() -> int:
    return int((RUN_DIR / "run" / "haproxy.pid").read_text())


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ---- Redis: a private server, and every command it runs, from MONITOR -------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A process of the benchmark's own (a private redis-server, the mock upstream), up once its port answers."""

    def __init__(self, argv: list[str], port: int) -> None:
        self.port = port
        env = {**os.environ, "PYTHONPATH": str(REPO)}  # the checkout as it is (see scripts/fleet.sh)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.close()
        raise RuntimeError(f"{argv[0]} did not start on port {port}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class RedisCommands:
    """For one window (a ``with`` block): the commands clients sent (each a round trip, or part of a pipeline) and
    the ones Lua scripts ran inside Redis, by name, from MONITOR. The connection lives only as long as the window:
    feeding a monitor costs Redis CPU, which the unmonitored windows must not pay."""

    def __init__(self, port: int) -> None:
        self.client: Counter[str] = Counter()
        self.lua: Counter[str] = Counter()
        self._port = port
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="redis-monitor")

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._subscribed.wait(5):
            raise RuntimeError("MONITOR did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        # A raw socket: redis-py drops a connection whose read timed out, and the reader must wake up to stop.
        with socket.create_connection(("127.0.0.1", self._port)) as sock:
            sock.sendall(b"MONITOR\r\n")
            sock.settimeout(0.5)
            pending = b""
            while not self._stop.is_set():
                try:
                    chunk = sock.recv(1 << 16)
                except TimeoutError:
                    continue
                if not chunk:
                    raise RuntimeError("the private Redis closed the MONITOR connection")
                *lines, pending = (pending + chunk).split(b"\r\n")
                for line in lines:
                    if line == b"+OK":
                        self._subscribed.set()
                    else:
                        self._count(line)

    def _count(self, line: bytes) -> None:
        # b'+<time> [<db> <client>] "CMD" "arg" ...'
        client, _, args = line.partition(b" [")[2].partition(b"] ")
        if args.startswith(b'"'):
            name = args.split(b'"', 2)[1].decode().upper()
            (self.lua if client.endswith(b" lua") else self.client)[name] += 1


def commandstats(port: int) -> dict[str, tuple[int, int]]:
    """Redis's own accounting, per command: (calls, microseconds executing). It times the command itself, not the
    copy MONITOR gets, so it is the cost without the observer; commands a script runs are inside its time."""
    stats = redis.Redis(port=port).info("commandstats")
    return {name.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for name, v in stats.items()}


def script_cost(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, Any]:
    calls = {k: after[k][0] - before.get(k, (0, 0))[0] for k in after}
    usec = {k: after[k][1] - before.get(k, (0, 0))[1] for k in after}
    scripts = calls.get("evalsha", 0) + calls.get("eval", 0)
    script_usec = usec.get("evalsha", 0) + usec.get("eval", 0)
    return {"calls": {k: v for k, v in calls.items() if v and k not in ("info", "monitor")},
            "script_calls": scripts, "script_usec_total": script_usec,
            "usec_per_script": round(script_usec / scripts, 1) if scripts else None}


# ---- PostgreSQL: this fleet's commits and rows -------------------------------------------------------------------

def pg_stats() -> dict[str, int]:
    """Commits and rows of the benchmark database, fresh (one own transaction, subtracted by the caller)."""
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{DATABASE}", autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        db = conn.execute("SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database "
                          "WHERE datname = current_database()").fetchone()
        tables = dict(conn.execute(
            "SELECT relname, n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE schemaname = 'public'").fetchall())
    return {"xact_commit": db[0], "tup_inserted": db[1], "tup_updated": db[2],
            **{f"rows_{name}": int(n) for name, n in tables.items()}}


def pg_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta["xact_commit"] -= 3  # pg_stats' own: the connection's set-up, the snapshot clear, the query
    return delta


def stats_settled() -> None:
    """Backends report their counters to pg_stat at most once a second (and an idle one when it goes idle)."""
    time.sleep(1.5)


def _upsert_loop(dsn: str, key: int, deadline: float, counts: list[int], i: int) -> None:
    with psycopg.connect(dsn) as conn:
        while time.monotonic() < deadline:
            conn.execute("INSERT INTO bench_hot_rollup VALUES (%s, 1) ON CONFLICT (k) DO UPDATE "
                         "SET n = bench_hot_rollup.n + 1", (key,))
            conn.commit()
            counts[i] += 1


def commit_rates(clients: int, seconds: float) -> dict[str, float]:
    """Commits/s of ``clients`` connections each looping {upsert one rollup-shaped row; COMMIT}: all on one row (every
    replica's writer adding to the same team/model/day rollup) and each on its own row. The gap is the row lock
    each commit holds until its WAL flush: the ceiling on fleet-wide ledger commits while rollups are shared rows."""
    dsn = f"postgresql://postgres@127.0.0.1:5432/{DATABASE}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_hot_rollup (k INT PRIMARY KEY, n BIGINT NOT NULL)")
    out = {}
    for name, shared in (("one_row", True), ("own_rows", False)):
        counts = [0] * clients
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=_upsert_loop, args=(dsn, 0 if shared else i + 1, deadline, counts, i))
                   for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out[name] = round(sum(counts) / seconds, 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE bench_hot_rollup")
    return out


# ---- load ----------------------------------------------------------------------------------------------------------

@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    late_starts: int = 0  # requests the pacer could not start on time (the client or the machine fell behind)


async def paced_load(rate: float, seconds: float, tag: str) -> LoadResult:
    """``rate`` short chats a second through HAProxy for ``seconds``, alternating the two demo teams, each with a
    tag (so both rollups are written, as in production)."""
    result = LoadResult()
    url = f"http://127.0.0.1:{PORT}/v1/chat/completions"
    interval = 1.0 / rate

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        team = "research" if i % 2 else "support"
        headers = {"authorization": f"Bearer {KEYS[team]}", "x-tiergate-tag-feature": f"f{i % 4}",
                   "x-request-id": f"bench-{tag}-{i}"}
        body = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": f"Hello {i}!"}]}
        started = time.perf_counter()
        try:
            async with session.post(url, json=body, headers=headers) as resp:
                await resp.read()
                if resp.status == 200:
                    result.ok += 1
                    result.latencies_ms.append((time.perf_counter() - started) * 1000)
                else:
                    result.failed[str(resp.status)] += 1
        except aiohttp.ClientError as exc:
            result.failed[type(exc).__name__] += 1

    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        tasks = []
        start = time.perf_counter()
        i = 0
        while (now := time.perf_counter()) - start < seconds:
            due = start + i * interval
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 0.05:
                result.late_starts += 1
            tasks.append(asyncio.create_task(one(session, i)))
            i += 1
        result.sent = i
        await asyncio.gather(*tasks)
    return result


async def closed_load(concurrency: int, seconds: float, pids: list[int]) -> dict[str, Any]:
    """Flat out: ``concurrency`` clients back to back through HAProxy. On a shared machine this is what the
    fleet got, not what it can do; CPU per request at saturation is the number that carries over."""
    url = f"http://127.0.0.1:{PORT}/v1/chat/completions"
    body = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "Hello there!"}]}
    ok = failed = 0
    deadline = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal ok, failed
        headers = {"authorization": f"Bearer {KEYS['research' if n % 2 else 'support']}"}
        while time.monotonic() < deadline:
            try:
                async with session.post(url, json=body, headers=headers) as resp:
                    await resp.read()
                    ok, failed = (ok + 1, failed) if resp.status == 200 else (ok, failed + 1)
            except aiohttp.ClientError:
                failed += 1

    cpu0 = sum(cpu_s(pid) for pid in pids)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(client(session, n) for n in range(concurrency)))
    elapsed = time.monotonic() - started
    cpu = sum(cpu_s(pid) for pid in pids) - cpu0
    return {"concurrency": concurrency, "rps": round(ok / elapsed, 1), "failed": failed,
            "replica_cpu_ms_per_request": round(cpu * 1000 / max(1, ok), 3),
            "replica_cores_used": round(cpu / elapsed, 2)}


# ---- one fleet size ------------------------------------------------------------------------------------------------

def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def measure(replicas: int, rate: float, seconds: float, idle_s: float, redis_port: int, redis_pid: int,
            saturate_s: float) -> dict[str, Any]:
    """One fleet size: idle costs, a monitored load window (Redis commands by name, PostgreSQL commits and rows,
    replica and HAProxy CPU), an unmonitored one (Redis's own CPU and script time), optionally a flat-out one."""
    fleet("up", str(replicas))
    try:
        asyncio.run(paced_load(rate, 3.0, f"warm{replicas}"))  # leases, pools, first seeds
        time.sleep(2.0)

        # Idle: what the fleet costs Redis and PostgreSQL with no traffic (heartbeats, pollers).
        pids = replica_pids()
        pg0 = pg_stats()
        idle_cpu0 = sum(cpu_s(pid) for pid in pids)
        with RedisCommands(redis_port) as idle:
            time.sleep(idle_s)
        idle_cpu_per_s = (sum(cpu_s(pid) for pid in pids) - idle_cpu0) / idle_s
        stats_settled()
        idle_pg = pg_delta(pg0, pg_stats())

        # Load, monitored: the window runs on until every lease the load opened has closed and the ledger writers
        # have committed (leases live at most 1 s; group commit lingers 50 ms).
        cpu0 = {pid: cpu_s(pid) for pid in pids}
        hap0 = cpu_s(haproxy_pid())
        pg0 = pg_stats()
        with RedisCommands(redis_port) as monitored:
            started = time.monotonic()
            load = asyncio.run(paced_load(rate, seconds, uuid.uuid4().hex[:6]))
            load_s = time.monotonic() - started
            cpu = {pid: cpu_s(pid) - cpu0[pid] for pid in pids}
            hap = cpu_s(haproxy_pid()) - hap0
            time.sleep(2.0)
            window_s = time.monotonic() - started
        stats_settled()
        pg = pg_delta(pg0, pg_stats())
        rss = [rss_mb(pid) for pid in pids]

        # Load, unmonitored: what Redis itself spends, in CPU time (its wall-clock script timings include being
        # preempted, which on a crowded machine is most of them).
        redis0, stats0 = cpu_s(redis_pid), commandstats(redis_port)
        unmonitored = asyncio.run(paced_load(rate, seconds / 2, uuid.uuid4().hex[:6]))
        time.sleep(2.0)
        redis_cpu, scripts = cpu_s(redis_pid) - redis0, script_cost(stats0, commandstats(redis_port))

        saturated = asyncio.run(closed_load(32 * replicas, saturate_s, pids)) if saturate_s else None
    finally:
        fleet("down")

    client, lua = monitored.client, monitored.lua
    idle_redis = sum(idle.client.values())
    n = load.ok
    idle_per_s = idle_redis / idle_s
    redis_calls = sum(client.values())
    redis_net = redis_calls - idle_per_s * window_s
    return {
        "replicas": replicas,
        "offered_rps": rate,
        "seconds": round(load_s, 2),
        "requests_ok": n,
        "failed": dict(load.failed),
        "late_starts": load.late_starts,
        "achieved_rps": round(n / load_s, 1),
        "latency_ms": {"p50": round(pct(load.latencies_ms, 50), 2), "p99": round(pct(load.latencies_ms, 99), 2),
                       "mean": round(statistics.fmean(load.latencies_ms), 2) if load.latencies_ms else None},
        "redis": {
            "client_commands": dict(client), "lua_commands": dict(lua),
            "client_commands_per_request": round(redis_calls / n, 4),
            "lua_commands_per_request": round(sum(lua.values()) / n, 4),
            "idle_client_commands_per_s": round(idle_per_s, 2),
            "idle_client_commands_per_s_per_replica": round(idle_per_s / replicas, 2),
            "load_client_commands_per_request_net_of_idle": round(redis_net / n, 4),
            "client_commands_per_s_per_replica_under_load": round(redis_calls / window_s / replicas, 2),
            "unmonitored": {**scripts, "requests": unmonitored.ok,
                            "server_cpu_ms_per_request": round(redis_cpu * 1000 / max(1, unmonitored.ok), 4),
                            "server_cpu_us_per_script": round(redis_cpu * 1e6 / max(1, scripts["script_calls"]), 1)},
        },
        "postgres": {
            **pg,
            "idle": idle_pg,
            "commits_per_request": round(pg["xact_commit"] / n, 4),
            "records_per_commit": round(pg.get("rows_records", 0) / max(1, pg["xact_commit"]), 1),
            "rows_written_per_request": round((pg["tup_inserted"] + pg["tup_updated"]) / n, 3),
            "commits_per_s_per_replica": round(pg["xact_commit"] / window_s / replicas, 2),
        },
        "cpu_ms_per_request": {
            "replicas": round(sum(cpu.values()) * 1000 / n, 3),
            "replicas_net_of_idle": round((sum(cpu.values()) - idle_cpu_per_s * load_s) * 1000 / n, 3),
            "haproxy": round(hap * 1000 / n, 3),
        },
        "idle_cpu_share_per_replica": round(idle_cpu_per_s / replicas, 4),
        "saturated": saturated,
        "replica_cpu_share": [round(c / load_s, 3) for c in cpu.values()],
        "rss_mb": [round(r, 1) for r in rss],
    }


def calibration_cpu_s() -> float:
    """CPU seconds a fixed pure-Python loop takes now: on a crowded machine CPU time per unit of work inflates
    (shared caches, SMT siblings), so runs compare by this, not only by their own numbers."""
    started = time.process_time()
    total = 0
    for i in range(10**7):
        total += i
    return round(time.process_time() - started, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--rate", type=float, default=100.0, help="offered requests/s through HAProxy")
    parser.add_argument("--seconds", type=float, default=20.0, help="load per fleet size")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--saturate-seconds", type=float, default=0.0,
                        help="then this long flat out (0: skip; on a shared machine it measures the neighbours)")
    parser.add_argument("--commit-seconds", type=float, default=5.0,
                        help="PostgreSQL commit-rate probe per case, shared rollup row vs own rows (0: skip)")
    parser.add_argument("--classifier", default="default", help="the policy's classifier.model (default: shipped ONNX)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "fleet" / "results.json")
    args = parser.parse_args()

    fleet("down")
    calibration = [calibration_cpu_s()]
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True, check=False).stdout.strip(),
        "settings": {"rate": args.rate, "seconds": args.seconds, "classifier": args.classifier},
        "points": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    private_redis = Server(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                            "--appendonly", "no"], port)
    port = free_port()
    upstream = Server([str(REPO / ".venv" / "bin" / "tiergate"), "mock-upstream", "--port", str(port)], port)
    try:
        bench_config(args.classifier, private_redis.port, upstream.port)
        for n in args.replicas.split(","):
            out["points"].append(measure(int(n), args.rate, args.seconds, args.idle_seconds, private_redis.port,
                                         private_redis.proc.pid, args.saturate_seconds))
            args.out.write_text(json.dumps(out, indent=2) + "\n")  # a later point failing keeps this one
    finally:
        upstream.close()
        private_redis.close()
    if args.commit_seconds:
        out["postgres_commit_rates"] = {"clients": 8, **commit_rates(8, args.commit_seconds)}
    calibration.append(calibration_cpu_s())
    out["machine"].update(load_average_at_end=os.getloadavg(), calibration_loop_cpu_s=calibration)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    points = out["points"]
    print("calibration loop CPU s (before, after):", calibration, "load average:", os.getloadavg())
    print("PostgreSQL commits/s, 8 connections:", out.get("postgres_commit_rates"))
    for p in points:
        print(json.dumps({k: p[k] for k in ("replicas", "achieved_rps", "failed", "latency_ms", "cpu_ms_per_request",
                                            "rss_mb", "saturated")}))
        print("  redis:", json.dumps({k: v for k, v in p["redis"].items() if "commands" in k and "per" in k}))
        print("  postgres:", json.dumps({k: p["postgres"][k] for k in (
            "xact_commit", "commits_per_request", "records_per_commit", "rows_written_per_request",
            "commits_per_s_per_replica")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

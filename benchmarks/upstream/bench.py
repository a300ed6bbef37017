"""Per-call cost of the upstream HTTP client: litellm.acompletion vs a pooled aiohttp / httpx keep-alive POST.

Starts `tiergate mock-upstream` on 127.0.0.1 (pinned to core 1), then in this process (pinned to core 0 by
run.sh) makes sequential non-streaming chat calls with each client, after a warm-up, and reports wall-clock
p50/p99 per call and this process's CPU per call. The body is the proxy benchmark's (~300-token system prompt
plus a user turn). The mock's own service time is in every number; the differences are the clients'.

    benchmarks/upstream/run.sh [--calls 2000] [--warmup 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUT = REPO / "benchmarks" / "out" / "upstream"  # raw results: ignored by git, numbers go to RESULTS.md
sys.path.insert(0, str(REPO / "benchmarks" / "proxy"))
from bench import SYSTEM_PROMPT, USER_MESSAGE, pct, wait_port  # noqa: E402

MESSAGES = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": USER_MESSAGE}]
MODEL = "gpt-4o-mini"


async def measure(calls: dict[str, Callable[[], Awaitable[Any]]], n: int, warmup: int, rounds: int
                  ) -> list[dict[str, Any]]:
    """Warm every client up, then interleave them in `rounds` blocks of n/rounds sequential calls each, so a
    burst of background load on this shared machine hits all of them alike."""
    for call in calls.values():
        for _ in range(warmup):
            await call()
    lat: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, float] = {name: 0.0 for name in calls}
    wall: dict[str, float] = {name: 0.0 for name in calls}
    per_round = max(1, n // rounds)
    for r in range(rounds):
        order = list(calls.items())
        if r % 2:
            order.reverse()
        for name, call in order:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(per_round):
                t0 = time.perf_counter_ns()
                await call()
                lat[name].append((time.perf_counter_ns() - t0) / 1000)
            cpu[name] += time.process_time() - cpu0
            wall[name] += time.perf_counter() - wall0
    out = []
    for name in calls:
        xs = sorted(lat[name])
        res = {"client": name, "calls": len(xs), "p50_us": pct(xs, 50), "p90_us": pct(xs, 90), "p99_us": pct(xs, 99),
               "mean_us": sum(xs) / len(xs), "cpu_us_per_call": cpu[name] * 1e6 / len(xs),
               "calls_per_s": len(xs) / wall[name]}
        print(f"{name:34s} p50 {res['p50_us']:8.0f} us  p99 {res['p99_us']:8.0f} us  "
              f"CPU {res['cpu_us_per_call']:7.0f} us/call", flush=True)
        out.append(res)
    return out


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import aiohttp
    import httpx
    import openai
    import orjson

    url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
    base = f"http://127.0.0.1:{args.port}/v1"
    body = {"model": MODEL, "messages": MESSAGES}
    headers = {"content-type": "application/json", "authorization": "Bearer dummy"}

    # 1. aiohttp, pooled keep-alive session, orjson: what upstream/http.py does
    connector = aiohttp.TCPConnector(limit=1024, limit_per_host=512, keepalive_timeout=60)
    session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))
    timeout = aiohttp.ClientTimeout(total=60)

    async def aiohttp_call() -> Any:
        async with session.post(url, data=orjson.dumps(body), headers=headers, timeout=timeout) as resp:
            raw = await resp.read()
            assert resp.status == 200, resp.status
            return orjson.loads(raw)

    # 2. httpx AsyncClient, pooled keep-alive
    client = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_keepalive_connections=64))

    async def httpx_call() -> Any:
        resp = await client.post(url, content=orjson.dumps(body), headers=headers)
        assert resp.status_code == 200, resp.status_code
        return orjson.loads(resp.content)

    # 3. the openai SDK (httpx underneath; what litellm wraps for OpenAI-compatible upstreams)
    oai = openai.AsyncOpenAI(base_url=base, api_key="dummy", max_retries=0)

    async def openai_call() -> Any:
        return await oai.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]

    # 4. litellm.acompletion with api_base at the mock
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    t0 = time.perf_counter()
    import litellm

    import_s = time.perf_counter() - t0
    litellm.telemetry = False
    litellm.suppress_debug_info = True

    async def litellm_call() -> Any:
        return await litellm.acompletion(model=f"openai/{MODEL}", messages=MESSAGES, api_base=base, api_key="dummy")

    try:
        results = await measure({"aiohttp ClientSession (keep-alive)": aiohttp_call,
                                 "httpx AsyncClient (keep-alive)": httpx_call,
                                 "openai.AsyncOpenAI (httpx inside)": openai_call,
                                 "litellm.acompletion": litellm_call}, args.calls, args.warmup, args.rounds)
    finally:
        await session.close()
        await client.aclose()
        await oai.close()
    results[-1]["import_s_in_this_process"] = import_s
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--rounds", type=int, default=4, help="interleaved blocks per client")
    p.add_argument("--port", type=int, default=18400)
    p.add_argument("--mock-cpus", default="1")
    p.add_argument("--out", default=str(OUT / "results.json"))
    args = p.parse_args()

    tg = str(REPO / ".venv" / "bin" / "tiergate")
    mock = subprocess.Popen(["taskset", "-c", args.mock_cpus, tg, "mock-upstream", "--host", "127.0.0.1",
                             "--port", str(args.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_port(args.port)
        try:
            import uvloop

            uvloop.install()  # the proxy's loop
        except ImportError:
            pass
        results = asyncio.run(run(args))
    finally:
        os.killpg(mock.pid, signal.SIGTERM)
        mock.wait(timeout=10)
    base = results[0]
    for r in results:
        r["added_p50_us_vs_aiohttp"] = r["p50_us"] - base["p50_us"]
        r["added_cpu_us_vs_aiohttp"] = r["cpu_us_per_call"] - base["cpu_us_per_call"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"loadavg": open("/proc/loadavg").read().split()[0], "results": results},
                                         indent=2))
    print("\n| client | p50 µs | p99 µs | CPU µs/call | p50 over aiohttp |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['client']} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['cpu_us_per_call']:.0f} | "
              f"+{r['added_p50_us_vs_aiohttp']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

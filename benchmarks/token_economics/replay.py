"""Token-economics replay: long support chats through a real ``tiergate serve`` against ``tiergate mock-upstream``,
with each lever off and on, billed numbers read back from the proxy's own spend report (the ledger's numbers).

Workload: ``--chats`` support chats of ``--turns`` user turns each (60-150 tokens, varied content, the same across
teams), under a ~1,500-token system prompt; every assistant reply is the mock's answer, appended to the history as a
client would. Requests name the tier (``model: "mid"``, gpt-4o) so routing stays out of the comparison; summaries
are written by the cheapest tier (gpt-4o-mini), as the policy says.

Two phases, one mock each on port 18600 (proxy on 4600), so "provider caching off" means something measurable:

- A: a mock whose prefix cache keeps nothing (``SimulatorOptions(cache_max_entries=0)``): a provider without prompt
  caching, or a prefix that is never byte-stable. Team ``baseline`` only.
- B: the stock ``tiergate mock-upstream``, which caches like OpenAI: automatically, keyed by model and
  ``prompt_cache_key`` (an absent key is its own namespace). Teams ``baseline`` (every lever off), ``summaries``,
  ``prefix``, ``all``.

Each team's system prompt starts with its own name, so teams never share a provider cache entry.

    .venv/bin/python benchmarks/token_economics/replay.py [--chats 20] [--turns 20] [--history-budget 4000]
                                                           [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OUT = REPO / "benchmarks" / "out" / "token_economics"  # raw results: ignored by git, numbers go to RESULTS.md
sys.path.insert(0, str(REPO))

from metering.money import NANOS_PER_USD, format_usd  # noqa: E402
from metering.prices import lookup  # noqa: E402
from router.context import plan_context  # noqa: E402
from simulator.prefix_cache import cacheable_tokens  # noqa: E402
from text.tokens import count_messages, count_text  # noqa: E402

HOST = "127.0.0.1"
PROXY_PORT = 4600
MOCK_PORT = 18600
ADMIN_KEY = "sk-te-admin"
HISTORY_BUDGET = 4000
KEEP_LAST_TURNS = 4
TIER = "mid"  # gpt-4o: a 50% cached-input discount
# team -> context settings: which levers it has on
TEAMS: dict[str, dict[str, Any]] = {
    "baseline": {"provider_prefix_caching": False},
    "summaries": {"provider_prefix_caching": False, "history_budget_tokens": HISTORY_BUDGET},
    "prefix": {"provider_prefix_caching": True},
    "all": {"provider_prefix_caching": True, "history_budget_tokens": HISTORY_BUDGET},
}

_RULES = [
    "Refunds for annual plans are prorated by whole months and go back to the original payment method within {n} "
    "business days; never promise a faster refund and never refund to a different card.",
    "When a customer reports a failed sync, ask for the workspace id (it starts with ws_) and the time of the last "
    "successful sync in their own time zone, then check the status page before escalating; incident {n} is open.",
    "Enterprise customers on contract {n} have a named success manager; route billing disputes to them and copy "
    "the finance alias, but keep answering product questions yourself.",
    "Data exports larger than {n} GB are delivered as a signed link valid for seven days; if the link expired, "
    "a new export must be requested, because old archives are deleted for compliance.",
    "Two-factor resets require a video call with identity verification; do not reset it over chat even if the "
    "customer is an owner, and log the request with tag 2FA-{n}.",
    "For API rate limits, quote the plan's limit ({n} requests per minute on Team) and suggest exponential backoff "
    "with jitter; do not raise limits yourself, the platform team approves exceptions weekly.",
    "Single sign-on problems are almost always clock skew or a rotated certificate: ask for the SAML response "
    "timestamp and the certificate fingerprint before anything else, and link guide {n}.",
    "Never share another customer's name, workspace or usage numbers, even as an example; use the fictional "
    "Acme Ltd with {n} seats when you need an illustration.",
    "If a customer threatens to cancel, acknowledge the problem, summarise what you will do and by when, and offer "
    "a call with a human agent; discounts are only offered by the retention team under code R{n}.",
    "Invoices are issued on the first of the month in the customer's billing currency; VAT ids are validated "
    "against VIES, and a failed validation keeps VAT on the invoice until fixed (ticket queue {n}).",
]
_TOPICS = [
    "our nightly sync to the data warehouse has failed three times this week with a timeout after {n} minutes",
    "the invoice for last month shows {n} seats but we removed four users before the billing date",
    "two of our admins lost access after we rotated the SSO certificate on Monday morning",
    "the export of our audit log is stuck at {n} percent since yesterday evening",
    "we hit the API rate limit during our month-end batch run and lost about {n} webhook deliveries",
    "a contractor still appears in the member list although we offboarded them on the {n}th",
    "our finance team needs the VAT id corrected on invoices from the last {n} months",
    "the mobile app logs everyone out every {n} hours since the latest update",
]
_FOLLOW_UPS = [
    "We are on the Team plan with {n} seats, billed annually, and the workspace id is ws_{m}.",
    "I already tried clearing the cache and reconnecting the integration, which did not help.",
    "Our security team wants to know whether any data left the EU region while this was happening.",
    "Can you tell me what the exact next steps are on your side and on ours, and who owns each?",
    "This is blocking our quarterly close, so please treat it as urgent if you can.",
    "The error message says 'upstream connect error or disconnect/reset before headers' and code {n}.",
    "We changed nothing in our configuration since the last successful run on the {n}th.",
    "If it helps, the request id from the last failure is req_{m}.",
    "Could you also confirm whether this affects the scheduled report that goes to our board?",
    "My colleague opened a ticket about this last week but never heard back; the number was NW-{m}.",
]


def system_prompt(team: str) -> str:
    """~1,500 tokens of support policy; the team's name comes first so teams never share a cache entry."""
    rng = random.Random(7)
    parts = [f"You are the {team} support desk assistant of Cloudlane, a B2B file-sync and analytics SaaS. "
             "Answer customers precisely and briefly, follow every rule below, and ask for missing facts instead "
             "of guessing."]
    i = 0
    while count_text("\n".join(parts), "gpt-4o") < 1450:
        parts.append(f"Rule {i + 1}. " + _RULES[i % len(_RULES)].format(n=rng.randint(2, 9000)))
        i += 1
    return "\n".join(parts)


USER_TOKENS = (60, 150)  # --user-tokens: the range of one user turn's length


def user_turns(chat: int, turns: int) -> list[str]:
    """Varied user turns of USER_TOKENS tokens; the same for every team (seeded by the chat number)."""
    rng = random.Random(1000 + chat)
    out = []
    for turn in range(turns):
        target = rng.randint(*USER_TOKENS)
        opener = (f"Hi, {_TOPICS[chat % len(_TOPICS)].format(n=rng.randint(2, 60))}." if turn == 0 else
                  f"Thanks. Update on turn {turn + 1}: {rng.choice(_TOPICS).format(n=rng.randint(2, 60))}.")
        text = opener
        while count_text(text, "gpt-4o") < target:
            text += " " + rng.choice(_FOLLOW_UPS).format(n=rng.randint(2, 999), m=rng.randint(10_000, 99_999))
        out.append(text)
    return out


def config_text(ledger: Path) -> str:
    def sha(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    lines = [
        "server: {upstream_timeout_s: 60}",
        f"metering: {{ledger: 'sqlite:///{ledger}', redis: null}}",
        "classifier: {model: length}",
        f"admin_keys: [{{id: te-admin, sha256: {sha(ADMIN_KEY)}}}]",
        "tiers:",
    ]
    for tier, model in (("small", "gpt-4o-mini"), ("mid", "gpt-4o"), ("frontier", "o1")):
        lines += [f"  - name: {tier}", "    deployments:",
                  f"      - {{id: {tier}-mock, model: openai/{model}, api_base: 'http://{HOST}:{MOCK_PORT}/v1'}}"]
    lines.append("teams:")
    for team, context in TEAMS.items():
        ctx = ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in context.items())
        lines += [f"  {team}:", f"    keys: [{{id: {team}-key, sha256: {sha('sk-te-' + team)}}}]",
                  "    routing: {thresholds: {mid: 0.35, frontier: 0.6}}",
                  "    max_tokens: {default: 256, cap: 1024}",
                  f"    context: {{{ctx}, keep_last_turns: {KEEP_LAST_TURNS}}}"]
    return "\n".join(lines) + "\n"


# ---- processes ----------------------------------------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) != 0


def start(name: str, args: list[str], ready_url: str, log: Path) -> Proc:
    proc = Proc(name, subprocess.Popen(args, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(ready_url, timeout=1.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"{name} not ready in 60s:\n{log.read_text(errors='replace')}")


def start_mock(cache: bool, log: Path) -> Proc:
    if cache:
        args = [sys.executable, "-m", "proxy.cli", "mock-upstream", "--host", HOST, "--port", str(MOCK_PORT)]
    else:  # the CLI has no switch for it; the same server with a prefix cache that keeps nothing
        args = [sys.executable, "-c", "from simulator.options import SimulatorOptions; from simulator.server import "
                f"serve; serve({HOST!r}, {MOCK_PORT}, SimulatorOptions(cache_max_entries=0))"]
    return start("mock-upstream", args, f"http://{HOST}:{MOCK_PORT}/healthz", log)


def start_proxy(config: Path, log: Path) -> Proc:
    args = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config), "--host", HOST,
            "--port", str(PROXY_PORT), "--log-level", "warning"]
    return start("tiergate serve", args, f"http://{HOST}:{PROXY_PORT}/readyz", log)


# ---- the replay ---------------------------------------------------------------------------------------------------

@dataclass
class TeamRun:
    team: str
    calls: list[dict[str, Any]] = field(default_factory=list)  # chat, turn, prompt, cached, context header
    spans: set[str] = field(default_factory=set)  # distinct aged-out spans the policy asks summaries for
    reply_tokens: int = 0
    seconds: float = 0.0


async def replay_team(team: str, chats: int, turns: int, concurrency: int) -> TeamRun:
    run = TeamRun(team)
    system = {"role": "system", "content": system_prompt(team)}
    budget = TEAMS[team].get("history_budget_tokens")
    gate = asyncio.Semaphore(concurrency)

    async def chat(client: httpx.AsyncClient, index: int) -> None:
        async with gate:
            messages: list[dict[str, Any]] = [system]
            for turn, text in enumerate(user_turns(index, turns)):
                messages.append({"role": "user", "content": text})
                if budget is not None:  # what the proxy will plan: the same pure function, the same settings
                    plan = plan_context(team, messages, budget, KEEP_LAST_TURNS)
                    if plan is not None:
                        run.spans.update(step.key for step in plan.steps)
                response = await client.post("/v1/chat/completions", json={"model": TIER, "messages": messages})
                response.raise_for_status()
                body = response.json()
                reply = body["choices"][0]["message"]["content"]
                usage = body["usage"]
                run.calls.append({"chat": index, "turn": turn, "prompt": usage["prompt_tokens"],
                                  "cached": (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
                                  "context": response.headers.get("x-tiergate-context")})
                run.reply_tokens += usage["completion_tokens"]
                messages.append({"role": "assistant", "content": reply})

    t0 = time.perf_counter()
    headers = {"authorization": f"Bearer sk-te-{team}"}
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{PROXY_PORT}", headers=headers, timeout=60) as client:
        await asyncio.gather(*(chat(client, i) for i in range(chats)))
    run.seconds = time.perf_counter() - t0
    return run


def spend_report() -> list[dict[str, Any]]:
    today = datetime.now(UTC).date()
    response = httpx.get(f"http://{HOST}:{PROXY_PORT}/v1/spend/report",
                         params={"group_by": "team,purpose,model", "start": str(today - timedelta(days=1)),
                                 "end": str(today + timedelta(days=1))},  # end exclusive: today included
                         headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    response.raise_for_status()
    return response.json()["rows"]


def _usd_nanos(text: str) -> int:
    return int(Decimal(text) * NANOS_PER_USD)


def summarize(run: TeamRun, rows: list[dict[str, Any]], provider: str) -> dict[str, Any]:
    """One table row: the ledger's billed numbers plus what the client saw."""
    mine = [r for r in rows if r["team"] == run.team]
    chat = [r for r in mine if r["purpose"] == "chat"]
    summaries = [r for r in mine if r["purpose"] == "summarization"]

    def output_nanos(r: dict[str, Any]) -> int:
        facts = lookup(r["model"])
        assert facts is not None, r["model"]
        return int(r["completion_tokens"] * facts.price.output * NANOS_PER_USD)

    cost = sum(_usd_nanos(r["cost_usd"]) for r in mine)
    input_cost = cost - sum(output_nanos(r) for r in mine)
    sys_tokens = count_messages([{"role": "system", "content": system_prompt(run.team)}], "gpt-4o") - 3
    # OpenAI caches in 128-token steps past 1,024: when what follows the system prompt changes (a new summary),
    # the most any provider can reuse is the last step boundary inside it.
    reusable = cacheable_tokens(sys_tokens)
    eligible = [c for c in run.calls if c["turn"] > 0 and c["prompt"] >= 1024]
    covered = [c for c in eligible if c["cached"] >= reusable]
    price = lookup("gpt-4o").price  # type: ignore[union-attr]
    prefix_full = len(run.calls) * sys_tokens * price.input
    prefix_paid = sum(min(c["cached"], sys_tokens) * price.cached_input
                      + (sys_tokens - min(c["cached"], sys_tokens)) * price.input for c in run.calls)
    return {
        "team": run.team, "provider": provider, "levers": TEAMS[run.team], "seconds": round(run.seconds, 1),
        "chat_calls": sum(r["requests"] for r in chat), "summary_calls": sum(r["requests"] for r in summaries),
        "aged_out_spans": len(run.spans),
        "truncated_fallbacks": sum(1 for c in run.calls if (c["context"] or "").startswith("trimmed;truncated")),
        "billed_input_tokens": sum(r["prompt_tokens"] for r in mine),
        "billed_input_tokens_chat": sum(r["prompt_tokens"] for r in chat),
        "cached_input_tokens": sum(r["cached_tokens"] for r in mine),
        "input_usd": format_usd(input_cost), "total_usd": format_usd(cost),
        "input_nanos": input_cost, "total_nanos": cost,
        "avg_reply_tokens": round(run.reply_tokens / max(1, len(run.calls)), 1),
        "system_prompt_tokens": sys_tokens,
        "eligible_calls": len(eligible), "eligible_covered": len(covered),
        "eligible_covered_whole_system_prompt": sum(1 for c in eligible if c["cached"] >= sys_tokens),
        "uncovered": [c for c in eligible if c["cached"] < reusable],
        "prefix_cost_reduction": float(1 - prefix_paid / prefix_full) if prefix_full else 0.0,
    }


async def phase(cache: bool, teams: list[str], args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    tag = "cache" if cache else "nocache"
    config = work / f"{tag}.yaml"
    config.write_text(config_text(work / f"{tag}.db"))
    started: list[Proc] = []
    try:
        started.append(start_mock(cache, work / f"mock-{tag}.log"))
        started.append(start_proxy(config, work / f"proxy-{tag}.log"))
        runs = []
        for team in teams:
            runs.append(await replay_team(team, args.chats, args.turns, args.concurrency))
            print(f"  [{tag}] {team}: {len(runs[-1].calls)} calls in {runs[-1].seconds:.1f}s", flush=True)
        time.sleep(0.5)  # the spend report flushes the ledger itself; this only lets the last settlements land
        rows = spend_report()
        provider = "OpenAI-style cache" if cache else "no provider cache"
        return [summarize(run, rows, provider) for run in runs]
    finally:
        for proc in reversed(started):
            proc.stop()


def checks(results: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(r["provider"], r["team"]): r for r in results}
    off, summ = by[("OpenAI-style cache", "baseline")], by[("OpenAI-style cache", "summaries")]
    cut = 1 - summ["billed_input_tokens"] / off["billed_input_tokens"]
    history_off = off["billed_input_tokens_chat"] - off["chat_calls"] * off["system_prompt_tokens"]
    history_on = summ["billed_input_tokens_chat"] - summ["chat_calls"] * summ["system_prompt_tokens"]
    out: dict[str, Any] = {
        "summaries_cut_billed_input": {"value": round(cut, 4), "target": ">= 0.50", "met": cut >= 0.5},
        "summaries_cut_history_tokens_only": round(1 - (history_on + summ["billed_input_tokens"]
                                                       - summ["billed_input_tokens_chat"]) / history_off, 4),
    }
    for team in ("baseline", "prefix", "all"):
        r = by[("OpenAI-style cache", team)]
        share = r["eligible_covered"] / r["eligible_calls"] if r["eligible_calls"] else 0.0
        out[f"prefix_covered_share_{team}"] = {"value": round(share, 4), "target": ">= 0.90", "met": share >= 0.9}
    for team in ("summaries", "all"):
        r = by[("OpenAI-style cache", team)]
        out[f"summaries_once_per_span_{team}"] = {
            "summary_calls": r["summary_calls"], "distinct_spans": r["aged_out_spans"],
            "met": r["summary_calls"] <= r["aged_out_spans"]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=20)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4, help="chats in flight at once")
    parser.add_argument("--history-budget", type=int, default=HISTORY_BUDGET,
                        help="history_budget_tokens of the teams with summaries on")
    parser.add_argument("--keep-last-turns", type=int, default=4,
                        help="keep_last_turns of the teams with summaries on")
    parser.add_argument("--user-tokens", default="60-150",
                        help="length range of a user turn, e.g. 250-450 for chats where users paste order details")
    parser.add_argument("--out", type=Path, default=OUT / "results.json")
    args = parser.parse_args()
    global USER_TOKENS, KEEP_LAST_TURNS
    KEEP_LAST_TURNS = args.keep_last_turns
    low, _, high = args.user_tokens.partition("-")
    USER_TOKENS = (int(low), int(high or low))
    for context in TEAMS.values():
        if "history_budget_tokens" in context:
            context["history_budget_tokens"] = args.history_budget
    for port in (PROXY_PORT, MOCK_PORT):
        if not _port_free(port):
            print(f"port {port} is in use; stop what runs there first", file=sys.stderr)
            return 1
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tg-te-") as tmp:
        work = Path(tmp)
        try:
            results = asyncio.run(phase(False, ["baseline"], args, work))
            results += asyncio.run(phase(True, list(TEAMS), args, work))
        except Exception:
            for log in sorted(work.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
    summary = {"chats": args.chats, "turns": args.turns, "history_budget_tokens": args.history_budget,
               "user_tokens": list(USER_TOKENS), "keep_last_turns": KEEP_LAST_TURNS,
               "seconds": round(time.perf_counter() - t0, 1),
               "results": results, "checks": checks(results)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["checks"], indent=2))
    for r in results:
        print(f"{r['provider']:<20} {r['team']:<10} input tok {r['billed_input_tokens']:>8} cached "
              f"{r['cached_input_tokens']:>8} input ${r['input_usd']} total ${r['total_usd']} "
              f"summaries {r['summary_calls']}/{r['aged_out_spans']} covered {r['eligible_covered']}/"
              f"{r['eligible_calls']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

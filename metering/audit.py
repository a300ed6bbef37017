"""``tiergate audit``: where the tokens go and what each token-economics lever is worth, read from the ledger.

The ledger's raw ``records`` table is aggregated in the database (``Ledger.usage_audit``: grouped queries over one
``started_at`` range, ``metering.ledger.audit_reads``), so the audit's cost grows with the window's rows inside the
database, not in Python. Output percentiles come from a per-(team, model) histogram of ``completion_tokens``: its
size is bounded by the distinct output lengths (at most the largest ``max_tokens``), and it gives the exact
nearest-rank percentile and the exact number of tokens above it, which a ``percentile_cont`` would not.

The policy knows what the ledger does not (tier order, thresholds, caps); the caller passes it in as ``TeamRules``
so this module stays free of policy parsing. Money is Decimal nano-dollars until one half-even rounding per figure.

What counts: requests that reached a provider and were billed, as the spend report counts them: completed ones
(``status < 400``) and those cut short after tokens flowed (a client that disconnected, 499, or a broken stream:
``cost_nanos > 0``); not the response cache's answers. So lever (a) plus the response cache's savings is the spend
report's ``savings_usd`` for the same records. Output lengths (the P50/P95 table, lever (d)) come from completed
requests only: a cut-short answer's length says nothing about what the model needs. Lever (d) assumes a cap at
P95 truncates the longer answers there; it is an upper bound (a truncated answer may be asked for again).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from metering.ledger.audit_reads import UsageAuditRows
from metering.ledger.base import Ledger
from metering.money import NANOS_PER_USD, format_usd
from metering.percentile import nearest_rank
from metering.prices import Price, lookup

COUNTED = ("billed requests, client-aborted (499) and cut streams included, as in the spend report; output "
           "lengths (P50/P95, lever d) from completed requests only")
SYSTEM_PROMPT_FLAG_TOKENS = 500  # a static prompt above this is resent (and paid for) on every call
OUTPUT_PERCENTILE = 95
MONTH = timedelta(days=30)
LEVERS = ("routing", "prefix_caching", "rolling_summaries", "max_tokens_p95")

PriceOf = Callable[[str], Price | None]


@dataclass(frozen=True, slots=True)
class TeamRules:
    """What the policy says about one team.

    ``frontier_tier`` is its most capable tier (None when it has a single tier: nothing to overspend on);
    ``simple_below`` the score under which the classifier sends a request to its cheapest tier (None: every score
    does, as no threshold lifts a request above the floor); ``max_tokens_cap`` its configured cap.
    """

    frontier_tier: str | None
    simple_below: float | None
    max_tokens_cap: int | None


@dataclass(frozen=True, slots=True)
class SystemPrompt:
    team: str
    key_id: str | None  # None: the team's row, over all its keys
    requests: int
    total_tokens: int
    max_tokens: int

    @property
    def average(self) -> float:
        return self.total_tokens / self.requests if self.requests else 0.0

    @property
    def flagged(self) -> bool:
        """The average request carries a system prompt over the threshold (integer comparison, no rounding)."""
        return self.total_tokens > SYSTEM_PROMPT_FLAG_TOKENS * self.requests

    def to_dict(self) -> dict[str, Any]:
        return {"team": self.team, "key_id": self.key_id, "requests": self.requests,
                "avg_system_tokens": round(self.average, 1), "max_system_tokens": self.max_tokens,
                "flagged": self.flagged}


@dataclass(frozen=True, slots=True)
class OutputLengths:
    team: str
    model: str
    requests: int
    p50: int
    p95: int
    max: int
    cap: int | None  # the team's max_tokens cap, if configured
    tokens_above_p95: int  # what a cap at P95 would have cut

    def to_dict(self) -> dict[str, Any]:
        return {"team": self.team, "model": self.model, "requests": self.requests, "p50_output_tokens": self.p50,
                "p95_output_tokens": self.p95, "max_output_tokens": self.max, "max_tokens_cap": self.cap,
                "tokens_above_p95": self.tokens_above_p95}


@dataclass(frozen=True, slots=True)
class FrontierOnSimple:
    team: str
    frontier_tier: str
    simple_requests: int  # scored below the team's lowest threshold
    on_frontier: int  # ... yet served by its most capable tier

    @property
    def share(self) -> float | None:
        return self.on_frontier / self.simple_requests if self.simple_requests else None

    def to_dict(self) -> dict[str, Any]:
        return {"team": self.team, "frontier_tier": self.frontier_tier, "simple_requests": self.simple_requests,
                "on_frontier": self.on_frontier,
                "share": None if self.share is None else round(self.share, 4)}


@dataclass(frozen=True, slots=True)
class Lever:
    name: str
    window_nanos: int
    monthly_nanos: int
    teams: dict[str, tuple[int, int]]  # team -> (window, monthly) nano-dollars

    def to_dict(self) -> dict[str, Any]:
        return {"window_usd": format_usd(self.window_nanos), "monthly_usd": format_usd(self.monthly_nanos),
                "teams": {t: {"window_usd": format_usd(w), "monthly_usd": format_usd(m)}
                          for t, (w, m) in sorted(self.teams.items())}}


@dataclass(frozen=True)
class AuditReport:
    start: datetime
    end: datetime
    system_prompts: list[SystemPrompt]  # team rows (key_id None) first within each team, then its keys
    outputs: list[OutputLengths]
    frontier: list[FrontierOnSimple]
    levers: dict[str, Lever]
    summarization_cost_nanos: int  # what the summaries themselves cost: lever (c) is gross of it
    response_cache_savings_nanos: int  # the report's savings_usd is lever (a) plus this
    unpriced_models: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": {"start": self.start.isoformat(), "end": self.end.isoformat(),
                       "days": round((self.end - self.start) / timedelta(days=1), 4)},
            "system_prompts": {"flag_over_tokens": SYSTEM_PROMPT_FLAG_TOKENS,
                               "rows": [r.to_dict() for r in self.system_prompts]},
            "output_tokens": [r.to_dict() for r in self.outputs],
            "frontier_on_simple": [r.to_dict() for r in self.frontier],
            "levers": {name: lever.to_dict() for name, lever in self.levers.items()},
            "summarization_cost_usd": format_usd(self.summarization_cost_nanos),
            "response_cache_savings_usd": format_usd(self.response_cache_savings_nanos),
            "report_savings_usd": format_usd(self.levers["routing"].window_nanos + self.response_cache_savings_nanos),
            "counted": COUNTED,
            "unpriced_models": self.unpriced_models,
        }


# ---- the pure parts: pricing, projection (percentiles: metering.percentile) ------------------------------------

def _nanos(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_HALF_EVEN))


def monthly(window_nanos: Decimal | int, window: timedelta) -> int:
    """An amount over ``window`` scaled to 30 days, rounded once."""
    return _nanos(Decimal(window_nanos) * Decimal(MONTH // timedelta(microseconds=1))
                  / Decimal(window // timedelta(microseconds=1)))


def price_from_table(model: str) -> Price | None:
    facts = lookup(model)
    return facts.price if facts is not None else None


def _per_token_nanos(dollars: Decimal) -> Decimal:
    return dollars * NANOS_PER_USD


# ---- from the ledger's grouped rows ------------------------------------------------------------------------------

def _system_prompts(rows: UsageAuditRows) -> list[SystemPrompt]:
    keys = sorted((SystemPrompt(t, k, n, s, m) for t, k, n, s, m in rows.system_prompts),
                  key=lambda r: (r.team, r.key_id or ""))
    out: list[SystemPrompt] = []
    for team in sorted({k.team for k in keys}):
        mine = [k for k in keys if k.team == team]
        out.append(SystemPrompt(team, None, sum(k.requests for k in mine), sum(k.total_tokens for k in mine),
                                max(k.max_tokens for k in mine)))
        out.extend(mine)
    return out


def _outputs(rows: UsageAuditRows, rules: Mapping[str, TeamRules]) -> list[OutputLengths]:
    histograms: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    for team, model, tokens, count in rows.outputs:
        histograms[(team, model)][tokens] = count
    out = []
    for (team, model), hist in sorted(histograms.items()):
        p95 = nearest_rank(hist, OUTPUT_PERCENTILE)
        rule = rules.get(team)
        out.append(OutputLengths(
            team, model, sum(hist.values()), nearest_rank(hist, 50), p95, max(hist),
            rule.max_tokens_cap if rule is not None else None,
            sum((v - p95) * n for v, n in hist.items() if v > p95),
        ))
    return out


def _frontier(rows: UsageAuditRows, teams: Mapping[str, TeamRules]) -> list[FrontierOnSimple]:
    simple: dict[str, int] = defaultdict(int)
    frontier: dict[str, int] = defaultdict(int)
    for team, tier, count in rows.frontier:
        simple[team] += count
        if tier == teams[team].frontier_tier:
            frontier[team] += count
    return [FrontierOnSimple(t, str(r.frontier_tier), simple[t], frontier[t]) for t, r in teams.items()]


async def audit(ledger: Ledger, start: datetime, end: datetime, rules: Mapping[str, TeamRules],
                price_of: PriceOf = price_from_table) -> AuditReport:
    """Audit the records that started in ``[start, end)``; ``ledger`` must be started."""
    if end <= start:
        raise ValueError("the audit window is empty")
    frontier_teams = {t: r for t, r in sorted(rules.items()) if r.frontier_tier is not None}
    rows = await ledger.usage_audit(start, end, {t: r.simple_below for t, r in frontier_teams.items()})
    outputs = _outputs(rows, rules)

    window: dict[str, dict[str, Decimal]] = {name: defaultdict(Decimal) for name in LEVERS}
    unpriced: set[str] = set()
    summarization = 0
    prices: dict[str, Price | None] = {}

    def price(model: str) -> Price | None:
        if model not in prices:
            prices[model] = price_of(model)
            if prices[model] is None:
                unpriced.add(model)
        return prices[model]

    for team, model, purpose, cost, counterfactual, cached, saved in rows.money:
        window["routing"][team] += counterfactual - cost
        if purpose == "summarization":
            summarization += cost
        if not (cached or saved) or (p := price(model)) is None:
            continue
        window["prefix_caching"][team] += cached * _per_token_nanos(p.input - p.cached_input)
        window["rolling_summaries"][team] += saved * _per_token_nanos(p.input)
    for row in outputs:
        if row.tokens_above_p95 and (p := price(row.model)) is not None:
            window["max_tokens_p95"][row.team] += row.tokens_above_p95 * _per_token_nanos(p.output)

    span = end - start
    levers = {
        name: Lever(name, _nanos(sum(per_team.values(), Decimal(0))), monthly(sum(per_team.values(), Decimal(0)), span),
                    {t: (_nanos(v), monthly(v, span)) for t, v in per_team.items()})
        for name, per_team in window.items()
    }
    cache_savings = rows.cache_hit_nanos[0] - rows.cache_hit_nanos[1]
    return AuditReport(start, end, _system_prompts(rows), outputs, _frontier(rows, frontier_teams), levers,
                       summarization, cache_savings, sorted(unpriced))


# ---- text form ----------------------------------------------------------------------------------------------------

def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    cells = [tuple(str(c) for c in header)] + [tuple("-" if c is None else str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def render_text(report: AuditReport) -> str:
    days = (report.end - report.start) / timedelta(days=1)
    lines = [f"tiergate audit: {report.start.isoformat()} .. {report.end.isoformat()} ({days:g} days)",
             f"Counts {COUNTED}.", ""]
    lines.append(f"System prompt tokens per chat request (flag: average over {SYSTEM_PROMPT_FLAG_TOKENS})")
    lines += _table(("team", "key", "requests", "avg", "max", "flag"), [
        (r.team, r.key_id or "(all keys)", r.requests, f"{r.average:.1f}", r.max_tokens,
         "OVER" if r.flagged else "") for r in report.system_prompts])
    lines += ["", f"Output tokens per completed chat request (P{OUTPUT_PERCENTILE}: nearest rank; client-aborted "
                  "and failed answers left out, their lengths were cut short)"]
    lines += _table(("team", "model", "requests", "p50", "p95", "max", "cap", "tokens>p95"), [
        (r.team, r.model, r.requests, r.p50, r.p95, r.max, r.cap, r.tokens_above_p95) for r in report.outputs])
    lines += ["", "Frontier-tier calls among requests scored simple (below the team's lowest threshold)"]
    lines += _table(("team", "frontier", "simple", "on frontier", "share"), [
        (r.team, r.frontier_tier, r.simple_requests, r.on_frontier,
         None if r.share is None else f"{100 * r.share:.1f}%") for r in report.frontier])
    lines += ["", "Savings by lever, USD (in window -> projected per 30 days)"]
    labels = {"routing": "(a) routing (counterfactual - actual)",
              "prefix_caching": "(b) prefix caching (cached x (input - cached price))",
              "rolling_summaries": "(c) rolling summaries (saved x input price, gross)",
              "max_tokens_p95": "(d) max_tokens at P95 (tokens above P95 x output price)"}
    lines += _table(("lever", "window", "monthly"), [
        (labels[name], format_usd(lever.window_nanos), format_usd(lever.monthly_nanos))
        for name, lever in report.levers.items()])
    lines.append(f"  summaries cost {format_usd(report.summarization_cost_nanos)} in the window (net of (c): "
                 f"{format_usd(report.levers['rolling_summaries'].window_nanos - report.summarization_cost_nanos)})")
    lines.append(f"  (a) + response-cache hits ({format_usd(report.response_cache_savings_nanos)}) = "
                 f"{format_usd(report.levers['routing'].window_nanos + report.response_cache_savings_nanos)}, the "
                 "spend report's savings_usd for the same records")
    if report.unpriced_models:
        lines.append(f"  not priced (left out of (b)-(d)): {', '.join(report.unpriced_models)}")
    return "\n".join(lines) + "\n"

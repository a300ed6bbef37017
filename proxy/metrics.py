"""Prometheus metrics: per-request counters and histograms, budget utilisation, and the ``GET /metrics`` endpoint.

Several workers: the supervisor (``proxy.server``) points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before
it starts them, so every worker's counters live in its own memory-mapped file and ``/metrics``, whichever worker
answers, sums all of them (``MultiProcessCollector``). One worker without that variable uses a private registry.

Money is counted in integer nano-dollars (a float holds integers exactly up to 2**53, ~9 million USD per series)
and divided into USD only when a scrape is rendered, so ``round(value * 1e9)`` of a scraped ``*_usd_total`` is
the ledger's exact sum; adding fractional USD floats request by request would drift off the nano-dollar.

Budget utilisation is not kept per process: each scrape reads the team's day and month spend from the ledger
(the shared bill, the same numbers ``/v1/spend/teams`` shows) and divides it by the team's cap, so every worker
answers the same value and no gauge needs a ``multiprocess_mode``.

``/metrics`` shows team, tier and model names and every team's spend (never a key or a key id), which no team key
may see: by default it needs an admin key, or the policy's ``server.metrics`` names a scrape token or opens it
(``router.config.MetricsAccess``). Prometheus sends either with its ``authorization`` scrape setting.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from metering.budgets.policy import BudgetPolicy
from metering.ledger import TeamSpend
from metering.ledger.alert_log import AlertEvent
from metering.money import NANOS_PER_USD, usd_to_nanos
from metering.record import UsageRecord
from pipeline.errors import TiergateError
from pipeline.prefix_affinity import HeldCosts
from proxy.auth import authenticate, presented_key
from router.config import MetricsAccess
from router.policy import Policy

log = logging.getLogger("tiergate.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LABELS = ("team", "tier", "model")
# Counters whose stored value is nano-dollars; scrapes show them in USD.
_MONEY = frozenset({"tiergate_cost_usd", "tiergate_baseline_cost_usd", "tiergate_savings_usd",
                    "tiergate_prefix_held_cost_usd", "tiergate_prefix_held_baseline_cost_usd",
                    "tiergate_prefix_held_warm_baseline_cost_usd"})
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class _Series:
    """The children of one label set, looked up once: observing is then only increments."""

    requests: Counter
    input_tokens: Counter
    output_tokens: Counter
    cached_tokens: Counter
    cost: Counter
    baseline: Counter
    savings: Counter
    latency: Histogram
    ttft: Histogram
    sticky: Counter
    prefix_held: Counter
    prefix_cached: Counter
    prefix_cost: Counter
    prefix_baseline: Counter
    prefix_warm_baseline: Counter


class Metrics:
    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        # A private registry (not the global one): tests may build several runtimes in one process.
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self._requests = Counter("tiergate_requests", "Requests settled, by outcome status.",
                                 (*_LABELS, "status"), registry=r)
        self._input = Counter("tiergate_input_tokens", "Prompt tokens billed.", _LABELS, registry=r)
        self._output = Counter("tiergate_output_tokens", "Completion tokens billed.", _LABELS, registry=r)
        self._cached = Counter("tiergate_cached_tokens", "Prompt tokens served from the provider's prompt cache.",
                               _LABELS, registry=r)
        self._cost = Counter("tiergate_cost_usd", "Cost in USD (exact: summed in nano-dollars).", _LABELS, registry=r)
        self._baseline = Counter("tiergate_baseline_cost_usd",
                                 "What the same usage would have cost on the team's most capable tier (USD).",
                                 _LABELS, registry=r)
        self._savings = Counter("tiergate_savings_usd",
                                "Savings against the team's ceiling tier (USD); a request that cost more than its "
                                "baseline adds nothing, so net savings are baseline_cost - cost.", _LABELS, registry=r)
        self._latency = Histogram("tiergate_request_duration_seconds", "Request latency to the last byte.", _LABELS,
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self._ttft = Histogram("tiergate_time_to_first_token_seconds", "Time to the first streamed token.", _LABELS,
                               buckets=_TTFT_BUCKETS, registry=r)
        self._sticky = Counter("tiergate_sticky_held_requests",
                               "Requests kept on their conversation's tier (prompt caching) against the score.",
                               ("team", "tier"), registry=r)
        # Prefix affinity (pipeline.prefix_affinity): what holding requests on a warm cheaper tier did. The usage
        # record carries no flag for it, so these counters are the only account. Saved lies between
        # warm_baseline - cost and baseline - cost (``HeldCosts``).
        self._prefix_held = Counter("tiergate_prefix_held_requests", "Requests kept on the cheaper tier where their "
                                    "long prompt prefix is cached (other conversations warmed it) against the score.",
                                    ("team", "tier"), registry=r)
        self._prefix_cached = Counter("tiergate_prefix_held_cached_tokens", "Prompt tokens the provider's cache "
                                      "served on prefix-held requests.", ("team", "tier"), registry=r)
        self._prefix_cost = Counter("tiergate_prefix_held_cost_usd", "What prefix-held requests cost (USD).",
                                    ("team", "tier"), registry=r)
        self._prefix_baseline = Counter("tiergate_prefix_held_baseline_cost_usd",
                                        "What prefix-held requests would have cost on the tier their score chose, "
                                        "every prompt token at the uncached input price (USD): saved at most this "
                                        "- tiergate_prefix_held_cost_usd.", ("team", "tier"), registry=r)
        self._prefix_warm_baseline = Counter("tiergate_prefix_held_warm_baseline_cost_usd",
                                             "What prefix-held requests would have cost on the tier their score "
                                             "chose with as many cached tokens (USD): saved at least this - "
                                             "tiergate_prefix_held_cost_usd.", ("team", "tier"), registry=r)
        self._refusals = Counter("tiergate_budget_refusals", "Requests a budget cap refused (429), by the cap's scope "
                                 "(team, key, tag); each is also listed by GET /v1/alerts?kind=refusal.",
                                 ("team", "scope"), registry=r)
        self._series: dict[tuple[str, str, str, int], _Series] = {}

    def _children(self, team: str, tier: str, model: str, status: int) -> _Series:
        labels = (team, tier, model)
        series = _Series(
            requests=self._requests.labels(*labels, str(status)),
            input_tokens=self._input.labels(*labels),
            output_tokens=self._output.labels(*labels),
            cached_tokens=self._cached.labels(*labels),
            cost=self._cost.labels(*labels),
            baseline=self._baseline.labels(*labels),
            savings=self._savings.labels(*labels),
            latency=self._latency.labels(*labels),
            ttft=self._ttft.labels(*labels),
            sticky=self._sticky.labels(team, tier),
            prefix_held=self._prefix_held.labels(team, tier),
            prefix_cached=self._prefix_cached.labels(team, tier),
            prefix_cost=self._prefix_cost.labels(team, tier),
            prefix_baseline=self._prefix_baseline.labels(team, tier),
            prefix_warm_baseline=self._prefix_warm_baseline.labels(team, tier),
        )
        self._series[(team, tier, model, status)] = series
        return series

    def observe(self, record: UsageRecord, sticky_held: bool = False, prefix_held: HeldCosts | None = None) -> None:
        """Count one settled request (called once per usage record, on the request path: increments only).
        ``prefix_held`` is given when prefix affinity held the request: its cost on the score's tier."""
        s = (self._series.get((record.team, record.tier, record.model, record.status))
             or self._children(record.team, record.tier, record.model, record.status))
        s.requests.inc()
        if record.prompt_tokens:
            s.input_tokens.inc(record.prompt_tokens)
        if record.completion_tokens:
            s.output_tokens.inc(record.completion_tokens)
        if record.cached_tokens:
            s.cached_tokens.inc(record.cached_tokens)
        if record.cost_nanos:
            s.cost.inc(record.cost_nanos)
        if record.counterfactual_cost_nanos:
            s.baseline.inc(record.counterfactual_cost_nanos)
        if record.counterfactual_cost_nanos > record.cost_nanos:
            s.savings.inc(record.counterfactual_cost_nanos - record.cost_nanos)
        s.latency.observe(record.latency_ms / 1000)
        if record.ttft_ms is not None:
            s.ttft.observe(record.ttft_ms / 1000)
        if sticky_held:
            s.sticky.inc()
        if prefix_held is not None:
            s.prefix_held.inc()
            s.prefix_cached.inc(record.cached_tokens)
            s.prefix_cost.inc(record.cost_nanos)
            s.prefix_baseline.inc(prefix_held.cold_nanos)
            s.prefix_warm_baseline.inc(prefix_held.warm_nanos)

    def observe_refusal(self, refusal: AlertEvent) -> None:
        """Count one budget refusal (an ``Alerter`` refusal listener: called on the request path)."""
        self._refusals.labels(refusal.team, refusal.scope).inc()

    def render(self, budgets: Iterable[Metric] = ()) -> bytes:
        """The text exposition: every worker's counters (multiprocess) or this one's, plus ``budgets``."""
        source: Collector = (MultiProcessCollector(None, self.multiprocess_dir) if self.multiprocess_dir
                             else self.registry)
        return generate_latest(_Scrape(source, list(budgets)))


class _Scrape(Collector):
    """One scrape's view: nano-dollar counters shown in USD, and the budget gauges computed for it."""

    def __init__(self, source: Collector, extra: list[Metric]) -> None:
        self._source = source
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        for metric in self._source.collect():
            if metric.name in _MONEY:
                metric.samples = [s._replace(value=s.value / NANOS_PER_USD) if s.name.endswith("_total") else s
                                  for s in metric.samples]
            yield metric
        yield from self._extra


def budget_gauges(spent: Iterable[TeamSpend], policies: Mapping[str, BudgetPolicy]) -> list[Metric]:
    """``tiergate_budget_utilisation_ratio{team, period}``: the team's day or month spend divided by its cap."""
    gauge = GaugeMetricFamily("tiergate_budget_utilisation_ratio",
                              "Team spend this UTC day or month divided by its budget cap (1 = cap reached).",
                              labels=("team", "period"))
    by_team = {s.team: s for s in spent}
    for team, policy in sorted(policies.items()):
        s = by_team.get(team)
        for period, cap, nanos in (("day", policy.team.daily_usd, s.day_nanos if s else 0),
                                   ("month", policy.team.monthly_usd, s.month_nanos if s else 0)):
            if cap is None:
                continue
            cap_nanos = usd_to_nanos(cap)
            ratio = nanos / cap_nanos if cap_nanos else (math.inf if nanos else 0.0)
            gauge.add_metric((team, period), ratio)
    return [gauge]


def config_gauges(sha256: str, reload_rejected: bool) -> list[Metric]:
    """Which policy this worker runs and whether its last reload was refused: a fleet whose replicas disagree on
    ``sha256``, or keep a rejected file, shows it in one query (alert on ``tiergate_config_reload_rejected == 1``)."""
    info = GaugeMetricFamily("tiergate_config_info", "The active policy file's sha256 (always 1).",
                             labels=("sha256",))
    info.add_metric((sha256,), 1)
    rejected = GaugeMetricFamily("tiergate_config_reload_rejected",
                                 "1 when the last reload was rejected (the previous policy stays in force), else 0.")
    rejected.add_metric((), 1 if reload_rejected else 0)
    return [info, rejected]


def rollback_counters(counts: Mapping[tuple[str, str], int]) -> list[Metric]:
    """``tiergate_routing_model_rollbacks_total{team, by}``: a team's routing-model versions rolled back, by the
    watch (a promoted model worse than the one it replaced on later judged rows) or an admin. Counted from the
    version history in the ledger (``pipeline.team_model_admin.TeamModelAdmin.rollbacks``), so every worker and
    replica shows the fleet's count; alert on ``increase(...{by="watch"}[1d]) > 0``."""
    counter = CounterMetricFamily("tiergate_routing_model_rollbacks",
                                  "Routing-model versions rolled back, by the watch or an admin (version history).",
                                  labels=("team", "by"))
    for (team, by), n in sorted(counts.items()):
        counter.add_metric((team, by), n)
    return [counter]


def check_access(access: MetricsAccess, policy: Policy, headers: Mapping[str, str]) -> None:
    """Raises the OpenAI-shaped 401/403 a scraper without the configured credential gets."""
    if access.auth == "none":
        return
    if access.auth == "admin_key":
        if not authenticate(policy, headers).admin:
            raise TiergateError("admin_key_required", "/metrics shows every team's spend: it needs an admin key")
        return
    assert access.token_env is not None  # the config model requires it with bearer_token
    presented = presented_key(headers)
    if presented is None:
        raise TiergateError("auth.missing_api_key", "missing scrape token: send 'Authorization: Bearer <token>'")
    expected = os.environ.get(access.token_env)
    if not expected:
        log.error("server.metrics.auth is bearer_token but %s is not set: every scrape is refused", access.token_env)
        raise TiergateError("metrics_token_unset", "the proxy has no metrics token configured; see its log")
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise TiergateError("auth.invalid_api_key", "invalid scrape token")


async def endpoint(request: Request) -> Response:
    """``GET /metrics``, for the credential ``server.metrics`` asks for (see the module docstring)."""
    rt = request.app.state.runtime
    policy = rt.store.policy
    check_access(policy.config.server.metrics, policy, request.headers)
    today = datetime.now(UTC).date()
    spent = await rt.spend.committed_by_team(today)
    learning = [name for name, team in policy.teams.items() if team.settings.learning is not None]
    gauges = [*budget_gauges(spent, rt.budgets.of(policy)),
              *config_gauges(policy.sha256, rt.store.last_error is not None),
              *rollback_counters(await rt.team_models.rollbacks(learning))]
    return Response(rt.metrics.render(gauges), media_type=CONTENT_TYPE_LATEST)

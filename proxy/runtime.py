"""Process-wide state a request reads: the current policy (swapped atomically on reload) and shared clients.

Handlers take ``runtime.store.policy`` once at the start of a request and use that object to the end, so a reload
never changes the rules under an in-flight request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from kvcache.responses import ResponseStore, open_response_store
from kvcache.store import KeyValueCache, open_cache
from metering.ledger.base import Ledger
from metering.prices import release_table
from metering.service import Meter
from pipeline.budget import BudgetPolicies
from pipeline.pipeline import Pipeline
from pipeline.retrain_schedule import RetrainSchedule
from pipeline.routing import Routing
from pipeline.spend import Spend
from pipeline.team_model_admin import TeamModelAdmin
from pipeline.telemetry import Tracing
from proxy.errors import status_of
from proxy.metrics import Metrics
from router.config import Config, ServerSettings
from router.config_loader import ConfigError, load_policy
from router.policy import Policy
from router.scoring import Scorer, TeamScorers, load_scorer
from text.tokens import count_text
from upstream.dispatch import Dispatcher
from upstream.health import HealthBook
from upstream.pool import UpstreamPool

log = logging.getLogger("tiergate.reload")


# Read once when a worker starts (the ledger, Redis, spool, alerts, the classifier model): a reload cannot change
# them in a running worker, so a change there waits for a restart and says so.
RESTART_ONLY = ("metering.", "classifier.")


def changed_settings(old: Config, new: Config) -> list[str]:
    """What a reload changes, by name: a section's fields one by one (``server.max_attempts``), other top-level
    entries whole (``teams``)."""
    changed: list[str] = []
    for name in Config.model_fields:
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if isinstance(before, BaseModel):
            changed += [f"{name}.{field}" for field in type(before).model_fields
                        if getattr(before, field) != getattr(after, field)]
        else:
            changed.append(name)
    return changed


@dataclass
class PolicyStore:
    """Holds the active policy; ``reload`` swaps it only for a valid file, then hands it to ``on_reload``
    listeners, which apply the settings that live outside the policy object (timeouts, retries, cooldowns)."""

    path: Path
    policy: Policy
    started: Config  # the start-up-only settings in force are this config's
    last_error: str | None = None
    on_reload: list[Callable[[Policy], None]] = field(default_factory=list)
    _stamp: tuple[float, int] = field(default=(0.0, 0))

    @classmethod
    def open(cls, path: str | Path) -> PolicyStore:
        path = Path(path)
        policy = load_policy(path)
        store = cls(path=path, policy=policy, started=policy.config)
        release_table()
        store._stamp = store._file_stamp()
        for warning in store.policy.warnings:
            log.warning("config %s: %s", path, warning)
        return store

    @property
    def pending_restart(self) -> list[str]:
        """Start-up-only settings whose value in the running policy is not the one in force."""
        return [name for name in changed_settings(self.started, self.policy.config) if name.startswith(RESTART_ONLY)]

    def _file_stamp(self) -> tuple[float, int]:
        try:
            st = os.stat(self.path)
        except OSError:
            return (0.0, 0)
        return (st.st_mtime, st.st_size)

    def reload(self) -> bool:
        """Load the file again; on any error keep the running policy and remember why."""
        self._stamp = self._file_stamp()
        try:
            policy = load_policy(self.path)
        except ConfigError as exc:
            release_table()
            self.last_error = str(exc)
            log.error("config reload rejected, keeping policy %s:\n%s", self.policy.sha256[:12], exc)
            return False
        release_table()
        if policy.sha256 == self.policy.sha256:
            if self.last_error is not None:
                log.info("config %s is the running policy again (sha256 %s); the rejected reload no longer applies",
                         self.path, policy.sha256[:12])
                self.last_error = None
            return True
        changed = changed_settings(self.policy.config, policy.config)
        self.policy = policy
        self.last_error = None
        for listener in self.on_reload:
            listener(policy)
        live = [name for name in changed if not name.startswith(RESTART_ONLY)]
        later = [name for name in changed if name.startswith(RESTART_ONLY)]
        log.info("config reloaded: %s (sha256 %s); applied: %s", self.path, policy.sha256[:12],
                 ", ".join(live) or "no setting changed")
        if later:
            log.warning("config %s: %s changed and requires restart; the values the worker started with stay in "
                        "force until then", self.path, ", ".join(later))
        for warning in policy.warnings:
            log.warning("config %s: %s", self.path, warning)
        return True

    def changed_on_disk(self) -> bool:
        return self._file_stamp() != self._stamp

    async def watch(self, interval_s: float = 1.0) -> None:
        """Poll the file (cheap stat) and reload on change; SIGHUP triggers the same reload at once."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests) or no signals on this platform: polling still works
        while True:
            await asyncio.sleep(interval_s)
            if self.changed_on_disk():
                self.reload()


def apply_server_settings(settings: ServerSettings, pool: UpstreamPool, dispatcher: Dispatcher,
                          health: HealthBook) -> None:
    """The ``server`` settings held by long-lived objects, (re)applied at start-up and on every reload; requests
    already under way keep the bounds they started with."""
    pool.set_timeouts(settings.upstream_timeout_s, settings.connect_timeout_s)
    dispatcher.retune(settings.max_attempts, settings.retry_budget_s, settings.upstream_timeout_s)
    health.failures_to_cooldown = settings.cooldown_after_failures
    health.cooldown_s = settings.cooldown_s


async def open_meter(policy: Policy) -> Meter:
    """The worker's one meter (ledger, budget store, alerts), from the policy's ``metering`` settings: read at
    start-up only, so a change there waits for a restart."""
    settings = policy.config.metering
    return await Meter.open(settings.ledger, settings.redis, webhook_url=settings.alert_webhook,
                            spool_dir=settings.spool_dir or "", ledger_schema=settings.ledger_schema,
                            lease_share=settings.budget_lease_share, lease_ttl_s=settings.budget_lease_ttl_s)


# How often each worker asks the ledger which team models are active: a promotion or rollback reaches every worker
# within this, at the cost of one small query per worker per period. A deployment sets it with the environment
# variable TIERGATE_TEAM_MODELS_POLL_S (seconds, > 0; read when a worker starts): shorter for promotions that must
# reach the workers sooner, longer for fewer queries from many workers.
TEAM_MODELS_POLL_S = 10.0
TEAM_MODELS_POLL_ENV = "TIERGATE_TEAM_MODELS_POLL_S"


def team_models_poll_s() -> float:
    """The period of the team-model poll: ``TIERGATE_TEAM_MODELS_POLL_S`` when set, else ``TEAM_MODELS_POLL_S``;
    raises ``ValueError`` naming the variable when it is not a positive number of seconds."""
    raw = os.environ.get(TEAM_MODELS_POLL_ENV, "").strip()
    if not raw:
        return TEAM_MODELS_POLL_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < math.inf:  # also false for nan
        raise ValueError(f"{TEAM_MODELS_POLL_ENV} must be a positive number of seconds, not {raw!r}")
    return value


async def _poll_team_models(scorers: TeamScorers, ledger: Ledger, period_s: float) -> None:
    while True:
        try:
            await scorers.refresh(ledger)
        except Exception as exc:  # noqa: BLE001 -- a database hiccup keeps the models this worker has
            log.warning("team models: refresh failed (%s); keeping the loaded ones", type(exc).__name__)
        await asyncio.sleep(period_s)


@dataclass
class Runtime:
    """Everything a worker process shares between requests; built once at start-up."""

    store: PolicyStore
    pipeline: Pipeline
    scorer: Scorer
    scorers: TeamScorers  # per team: its active learned model (polled from the ledger), else ``scorer``
    pool: UpstreamPool
    meter: Meter
    budgets: BudgetPolicies  # every team's budget policy, derived once per policy version
    cache: KeyValueCache
    metrics: Metrics
    spend: Spend  # the finance and ops endpoints' reads of the ledger, each after a bounded flush
    team_models: TeamModelAdmin  # the admin API's list / retrain / rollback of per-team routing models
    responses: ResponseStore  # the Responses API conversation store (Redis, else the ledger's database)
    health: HealthBook  # this worker's view of each deployment (cooldowns, latency): GET /v1/upstreams
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, config_path: str | Path) -> Runtime:
        store = PolicyStore.open(config_path)
        config = store.policy.config
        team_models_period_s = team_models_poll_s()  # a bad value stops the start here, before anything is opened
        scorer = load_scorer(config.classifier.model)
        # Load the tokenizer and run the model once now, so the first request does not pay for it.
        scorer.score([{"role": "user", "content": "warm up"}])
        count_text("warm up")
        pool = UpstreamPool(config.server.upstream_timeout_s, config.server.connect_timeout_s)
        health = HealthBook(failures_to_cooldown=config.server.cooldown_after_failures,
                            cooldown_s=config.server.cooldown_s)
        tracing = Tracing.configure()
        dispatcher = Dispatcher(pool, health, config.server.max_attempts, config.server.retry_budget_s,
                                config.server.upstream_timeout_s, tracing.tracer)
        store.on_reload.append(lambda policy: apply_server_settings(policy.config.server, pool, dispatcher, health))
        meter = await open_meter(store.policy)
        budgets = BudgetPolicies()
        cache = open_cache(config.metering.redis)
        responses = await open_response_store(config.metering.ledger, config.metering.redis,
                                              config.metering.ledger_schema)
        metrics = Metrics()
        scorers = TeamScorers(scorer)
        pipeline = Pipeline(dispatcher, Routing(scorers, health, tracing), meter, budgets, cache, tracing,
                            metrics.observe, status_of)
        runtime = cls(store=store, pipeline=pipeline, scorer=scorer, scorers=scorers, pool=pool, meter=meter,
                      budgets=budgets, cache=cache, metrics=metrics, spend=Spend(meter),
                      team_models=TeamModelAdmin(meter.ledger, scorers), responses=responses,
                      health=health)
        runtime.tasks.append(asyncio.get_running_loop().create_task(store.watch()))
        poll = _poll_team_models(scorers, meter.ledger, team_models_period_s)
        runtime.tasks.append(asyncio.get_running_loop().create_task(poll))
        # Teams with learning.retrain_every_h: every worker runs the schedule, a claim in the ledger picks one.
        runtime.tasks.append(asyncio.get_running_loop().create_task(
            RetrainSchedule(meter.ledger, lambda: store.policy, scorers).run()))
        return runtime

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.pipeline.drain()
        await self.pool.close()
        await self.meter.close()
        await self.cache.close()
        await self.responses.close()

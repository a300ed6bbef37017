"""Scheduled retraining: each team with ``learning.retrain_every_h`` gets its routing model refitted from the outcome
store on that schedule and promoted through the gate (``pipeline.team_models.retrain``), once per fleet.

Why a claim in the ledger's database: every worker of every replica runs this loop, and a fit costs seconds of CPU,
so exactly one of them must do each slot's work. Time is cut into slots of ``retrain_every_h`` hours since the epoch
(``slot = floor(epoch_hours / retrain_every_h)``); the process whose ``retrain_claims`` INSERT wins a (team, slot)
fits, the others see the conflict and skip. A slot is only claimed when judged rows came in after the team's last
registered model (a refused candidate counts: refitting the same rows gives the same verdict) and after the team's
latest rollback, so an idle team costs one small read per slot and no claim.

The watch (``pipeline.team_models.watch``) runs first in a claimed slot: the team's promoted model against the
version it replaced, on the judged rows that came after its promotion, with the gate's bootstrap. When it rolls the
model back, the slot ends there (action ``rolled_back``): the rows that condemned the model are the newest, and a
refit on them next to the rollback is what flapping looks like; the next slot with rows after the rollback fits.

CPU: a process fits one team at a time, in a thread (``retrain`` hands the fit to ``asyncio.to_thread``), so the
event loop keeps serving. The training path (onnx export) belongs to the ``train`` install layer: without it the
loop logs one WARNING per team saying what to install and keeps serving.

The clock is injected (epoch seconds), so tests move between slots without sleeping.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Literal

from classifiers.learn import LearnError
from metering.ledger.base import Ledger
from metering.routing_models import latest_rollback
from router.config import LearningSettings
from router.policy import Policy
from router.scoring import TeamScorers

log = logging.getLogger("tiergate.retrain")

Clock = Callable[[], float]  # epoch seconds
Action = Literal["retrained", "rolled_back", "no_new_rows", "claimed_elsewhere", "no_training", "unfit", "failed"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TICK_S = 60.0  # how late a slot may start at most; shorter schedules are checked 10 times per slot
MIN_TICK_S = 1.0


def slot_of(now_s: float, every_h: float) -> int:
    """The schedule slot an instant falls in: the same number on every host whose clock agrees to the slot."""
    return math.floor(now_s / 3600.0 / every_h)


def training_path() -> ModuleType | str:
    """``pipeline.team_models`` when the fit can run here, else the name of the missing train-layer module."""
    try:
        importlib.import_module("classifiers.export")  # onnx: what a runtime-only install lacks
        from pipeline import team_models
    except ModuleNotFoundError as exc:
        return exc.name or "onnx"
    return team_models


@dataclass(frozen=True)
class Pass:
    """What one process did for one team in one slot."""

    team: str
    slot: int
    action: Action
    promoted: bool = False
    version: int | None = None  # the version registered (retrained) or rolled back (rolled_back)
    reason: str = ""


class RetrainSchedule:
    """One per worker. ``run`` loops until cancelled; ``run_once`` is one pass over the teams (what tests drive)."""

    def __init__(self, ledger: Ledger, policy: Callable[[], Policy], scorers: TeamScorers | None = None,
                 clock: Clock = time.time, training: Callable[[], ModuleType | str] = training_path) -> None:
        self._ledger = ledger
        self._policy = policy  # read at every pass: a reload that changes a schedule applies at the next one
        self._scorers = scorers
        self._clock = clock
        self._training = training
        self._handled: dict[str, int] = {}  # team -> the last slot this process dealt with
        self._quiet: dict[str, str] = {}  # team -> what the last "no new rows" log line counted from
        self._warned: set[str] = set()

    def _scheduled(self) -> list[tuple[str, LearningSettings]]:
        out = []
        for name, team in sorted(self._policy().teams.items()):
            learning = team.settings.learning
            if learning is not None and learning.retrain_every_h is not None:
                out.append((name, learning))
        return out

    def tick_s(self) -> float:
        """How long the loop sleeps between passes: a tenth of the shortest schedule, within [1 s, 60 s]."""
        shortest = min((s.retrain_every_h or math.inf for _, s in self._scheduled()), default=math.inf)
        return max(MIN_TICK_S, min(MAX_TICK_S, shortest * 3600.0 / 10))

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # noqa: BLE001 -- a database hiccup: the slot is retried at the next tick
                log.warning("scheduled retraining: pass failed (%s); retrying", type(exc).__name__)
            await asyncio.sleep(self.tick_s())

    async def run_once(self) -> list[Pass]:
        """Every scheduled team whose current slot this process has not dealt with yet, one after the other."""
        done = []
        for team, learning in self._scheduled():
            slot = slot_of(self._clock(), learning.retrain_every_h or math.inf)
            if self._handled.get(team) == slot:
                continue
            done.append(await self._slot(team, slot, learning))
            self._handled[team] = slot  # not reached when the database failed: the next tick tries again
        return done

    async def _slot(self, team: str, slot: int, learning: LearningSettings) -> Pass:
        training = self._training()
        if isinstance(training, str):
            if team not in self._warned:
                self._warned.add(team)
                log.warning("team %s: scheduled retraining needs the train layer (%s is not installed): "
                            "bash scripts/install.sh train", team, training)
            return Pass(team, slot, "no_training")
        models = await self._ledger.routing_models(team)
        last = models[0] if models else None
        since = last.created_at if last is not None else _EPOCH
        what = f"model v{last.version}" if last is not None else "the epoch"
        rolled = latest_rollback(models)  # no refit from the rows that condemned a model
        if rolled is not None and rolled > since:
            since, what = rolled, f"the rollback at {rolled.isoformat(timespec='seconds')}"
        if not any(o.created_at > since for o in await self._ledger.outcomes(since, team)):
            if self._quiet.get(team) != what:
                self._quiet[team] = what
                log.info("team %s: no judged rows since %s; scheduled retraining skipped until there are", team, what)
            return Pass(team, slot, "no_new_rows")
        if not await self._ledger.claim_retrain(team, slot):
            return Pass(team, slot, "claimed_elsewhere")
        try:
            watched = await training.watch(self._ledger, team, margin=learning.promote_margin,
                                           min_holdout=learning.min_holdout, confidence=learning.promote_confidence)
            if watched is not None and watched.rolled_back:  # logged (WARNING) by the watch
                if self._scorers is not None:
                    await self._scorers.refresh(self._ledger)
                return Pass(team, slot, "rolled_back", version=watched.version, reason=watched.reason)
            data = await training.team_outcomes(self._ledger, team)
            done = await training.retrain(self._ledger, team, data, margin=learning.promote_margin,
                                          min_holdout=learning.min_holdout, confidence=learning.promote_confidence)
        except LearnError as exc:
            log.info("team %s: scheduled retraining fitted nothing: %s", team, exc)
            return Pass(team, slot, "unfit", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 -- this slot is lost (claimed); the next one retries
            log.warning("team %s: scheduled retraining failed (%s)", team, type(exc).__name__)
            return Pass(team, slot, "failed", reason=type(exc).__name__)
        if watched is not None:
            log.info("team %s: watch of v%d: %s", team, watched.version, watched.reason)
        log.info("team %s: retrained v%d, %s: %s", team, done.model.version,
                 "promoted" if done.promoted else "kept as a candidate", done.reason)
        if done.promoted and self._scorers is not None:
            await self._scorers.refresh(self._ledger)  # this worker at once; the others at their next poll
        return Pass(team, slot, "retrained", done.promoted, done.model.version, done.reason)

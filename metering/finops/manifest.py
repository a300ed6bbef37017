"""An experiment manifest as metering needs it: who runs it, why, its budget and window, and how requests are
attributed to it. The router compiles the policy's ``experiments`` into these (``router.experiments``); the
experiment report (``metering.finops.experiments``) and the budget gate read them. Plain data, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from metering.budgets.policy import ExperimentBudget


@dataclass(frozen=True, slots=True)
class Manifest:
    budget: ExperimentBudget  # name, team, lifetime cap, window
    owner: str
    purpose: str
    production: bool
    tags: Mapping[str, str] = field(default_factory=dict)  # all must match to attribute by tags
    keys: tuple[str, ...] = ()  # key ids of the team attributed whatever their tags
    index: int = 0  # position in the policy's ``experiments`` list (the first of several tag matches wins)

    @property
    def name(self) -> str:
        return self.budget.name

    @property
    def team(self) -> str:
        return self.budget.team

    @property
    def starts_at(self) -> datetime | None:
        return self.budget.starts_at

    @property
    def expires_at(self) -> datetime | None:
        return self.budget.expires_at

    def refusal(self, now: datetime) -> str | None:
        """Why a request at ``now`` may not run in this experiment (outside its window), else None (the request
        path's case: nothing is formatted for it)."""
        if self.expires_at is not None and now >= self.expires_at:
            return (f"{self._who()} expired at {self.expires_at.isoformat()}: its requests are refused; extend its "
                    "'expires_at' or 'ttl' in the policy, or end the experiment")
        if self.starts_at is not None and now < self.starts_at:
            return f"{self._who()} has not started: it runs from {self.starts_at.isoformat()}"
        return None

    def _who(self) -> str:
        return f"experiment {self.name!r} of team {self.team!r} (owner {self.owner})"

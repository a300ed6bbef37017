"""What a forecast or an anomaly is about: a team, a key of a team, a tag of a team, or a model (across teams).

Key ids and tags are only unique within a team (two teams may both have a key ``ci``), so those scopes carry the
team; models are shared by every team, so a model scope does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Dimension = Literal["team", "key", "tag", "model"]
DIMENSIONS: tuple[Dimension, ...] = ("team", "key", "tag", "model")


@dataclass(frozen=True, slots=True, order=True)
class Scope:
    dimension: Dimension
    team: str  # "" for model scopes
    name: str  # the team's name, a key id, "k=v", or a model

    @classmethod
    def of_team(cls, team: str) -> Scope:
        return cls("team", team, team)

    def labels(self) -> dict[str, str]:
        """The scope as report columns (the same names ``group_by`` uses)."""
        if self.dimension == "team":
            return {"team": self.team}
        if self.dimension == "model":
            return {"model": self.name}
        return {"team": self.team, self.dimension: self.name}

    def describe(self) -> str:
        if self.dimension == "team":
            return f"team {self.team}"
        if self.dimension == "model":
            return f"model {self.name}"
        return f"{self.dimension} {self.name} of team {self.team}"

    @property
    def ident(self) -> str:
        """Stable text id (alert dedupe keys): ``key:research:ci``."""
        return f"{self.dimension}:{self.team}:{self.name}"

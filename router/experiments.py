"""Experiment manifests compiled for the request path: which experiment a request belongs to, by dictionary
lookups built once per policy (no scan of the manifests per request), and whether it may run now.

Attribution, within the request's team, first match wins:

1. its key is one of an experiment's ``keys``;
2. the request carries the tag ``experiment: <name>`` naming one of the team's experiments (a client may opt in);
3. its tags include every one of an experiment's ``tags`` (several matching: the first in the policy's list).

The request then carries ``experiment: <name>`` (the pipeline writes it into its tags), which is what the ledger
records, what reports group by (``group_by=experiment``) and what the budget gate counts against the experiment's
cap. A key attributed to one experiment that also sends ``experiment: <another>`` is a conflict (400), not a silent
choice. A tag ``experiment`` naming no experiment of the team stays a plain tag. Pure: ``now`` is passed in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from metering.budgets.policy import ExperimentBudget
from metering.finops.manifest import Manifest
from metering.money import usd_to_nanos
from router.config import Config, Experiment

TAG = "experiment"  # the tag attribution writes, and the one a client may send to opt in
DEFAULT_TTL = timedelta(hours=24)  # the seed's governance: auto-expire after a day unless production
_TTL = re.compile(r"^([1-9][0-9]*)([hd])$")


class ExperimentConfigError(Exception):
    """A manifest the policy cannot hold; ``loc`` is its config path (the loader names the line)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


class AttributionConflict(Exception):
    """The request's key belongs to one experiment and its ``experiment`` tag names another."""


def parse_ttl(text: str) -> timedelta:
    match = _TTL.match(text)
    if match is None:
        raise ValueError(f"expected a duration like 24h or 7d, got {text!r}")
    return timedelta(**{"hours" if match[2] == "h" else "days": int(match[1])})


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def expiry(spec: Experiment) -> datetime | None:
    """``expires_at``, or ``starts_at`` + ``ttl`` (default 24h unless production); None: never expires."""
    if spec.expires_at is not None:
        return _utc(spec.expires_at)
    start = _utc(spec.starts_at)
    if start is None:  # the model allows that only with production: true
        return None
    if spec.ttl is not None:
        return start + parse_ttl(spec.ttl)
    return None if spec.production else start + DEFAULT_TTL


@dataclass(frozen=True, slots=True)
class Experiments:
    """Every manifest, and the lookups attribution needs."""

    manifests: tuple[Manifest, ...] = ()
    by_name: Mapping[tuple[str, str], Manifest] = field(default_factory=dict)  # (team, name)
    by_key: Mapping[tuple[str, str], Manifest] = field(default_factory=dict)  # (team, key id)
    # (team, tag, value) of each manifest's first tag (sorted) -> the manifests whose tags start there, in order
    by_tag: Mapping[tuple[str, str, str], tuple[Manifest, ...]] = field(default_factory=dict)
    teams: frozenset[str] = frozenset()  # teams with at least one experiment: every other request skips all this

    def of_team(self, team: str) -> tuple[Manifest, ...]:
        return tuple(m for m in self.manifests if m.team == team)

    def attribute(self, team: str, key_id: str, tags: Mapping[str, str]) -> Manifest | None:
        """The experiment a request of ``team`` with key ``key_id`` and ``tags`` belongs to, or None. Raises
        ``AttributionConflict`` when its key and its ``experiment`` tag disagree."""
        if team not in self.teams:
            return None
        by_key = self.by_key.get((team, key_id))
        named = tags.get(TAG)
        if by_key is not None:
            if named is not None and named != by_key.name:
                raise AttributionConflict(f"key {key_id!r} belongs to experiment {by_key.name!r}; its requests may "
                                          f"not be tagged {TAG}={named!r}")
            return by_key
        if named is not None:
            found = self.by_name.get((team, named))
            if found is not None:
                return found
        best: Manifest | None = None
        for k, v in tags.items():  # a request has a handful of tags: one lookup each
            for candidate in self.by_tag.get((team, k, v), ()):
                if (best is None or candidate.index < best.index) and all(
                        tags.get(ck) == cv for ck, cv in candidate.tags.items()):
                    best = candidate
                    break  # candidates are in policy order: the first that matches is this tag's best
        return best


def _manifest(spec: Experiment, index: int) -> Manifest:
    budget = ExperimentBudget(name=spec.name, team=spec.team, limit_nanos=usd_to_nanos(spec.budget_usd),
                              starts_at=_utc(spec.starts_at), expires_at=expiry(spec))
    return Manifest(budget=budget, owner=spec.owner, purpose=spec.purpose, production=spec.production,
                    tags=dict(spec.tags), keys=tuple(spec.keys), index=index)


def compile_experiments(config: Config) -> Experiments:
    """Check the manifests against the teams and each other, and index them. Raises ``ExperimentConfigError``."""
    manifests: list[Manifest] = []
    by_name: dict[tuple[str, str], Manifest] = {}
    by_key: dict[tuple[str, str], Manifest] = {}
    by_tag: dict[tuple[str, str, str], list[Manifest]] = {}
    names: dict[str, int] = {}
    tag_sets: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
    for i, spec in enumerate(config.experiments):
        loc: tuple[str | int, ...] = ("experiments", i)
        team = config.teams.get(spec.team)
        if team is None:
            raise ExperimentConfigError(loc + ("team",), f"unknown team {spec.team!r} (teams: {sorted(config.teams)})")
        if spec.name in names:
            # names are unique across teams: group_by=experiment alone must not merge two teams' experiments
            raise ExperimentConfigError(loc + ("name",), f"experiment name {spec.name!r} is used twice (first at "
                                                         f"experiments.{names[spec.name]})")
        names[spec.name] = i
        start, end = _utc(spec.starts_at), expiry(spec)
        if start is not None and end is not None and end <= start:
            raise ExperimentConfigError(loc + ("expires_at",), f"the experiment expires ({end.isoformat()}) before "
                                                               f"it starts ({start.isoformat()})")
        manifest = _manifest(spec, i)
        key_ids = {key.id for key in team.keys}
        for j, key_id in enumerate(spec.keys):
            if key_id not in key_ids:
                raise ExperimentConfigError(loc + ("keys", j), f"key {key_id!r} is not a key of team {spec.team!r} "
                                                               f"(its keys: {sorted(key_ids)})")
            other = by_key.get((spec.team, key_id))
            if other is not None:
                raise ExperimentConfigError(loc + ("keys", j), f"key {key_id!r} already belongs to experiment "
                                                               f"{other.name!r}")
            by_key[(spec.team, key_id)] = manifest
        if spec.tags:
            pairs = tuple(sorted(spec.tags.items()))
            other_name = tag_sets.get((spec.team, pairs))
            if other_name is not None:
                raise ExperimentConfigError(loc + ("tags",), f"experiment {other_name!r} has the same tags: a "
                                                             "request could not tell them apart")
            tag_sets[(spec.team, pairs)] = spec.name
            by_tag.setdefault((spec.team, *pairs[0]), []).append(manifest)
        by_name[(spec.team, spec.name)] = manifest
        manifests.append(manifest)
    return Experiments(tuple(manifests), by_name, by_key, {k: tuple(v) for k, v in by_tag.items()},
                       frozenset(m.team for m in manifests))

"""Experiment attribution at admission: the request's experiment (``router.experiments``) becomes its tag
``experiment: <name>``, before anything is routed, cached or metered, so every record the request writes carries
it (summaries, cache hits and shadows included) and the budget gate counts it against the experiment's cap.

A request attributed to an experiment outside its window is refused here (403 ``experiment_expired``) and writes no
record, like an expired key: nothing was routed. Teams without experiments pay one set lookup.
"""

from __future__ import annotations

from datetime import datetime

from pipeline.errors import TiergateError
from router.experiments import TAG, AttributionConflict
from router.policy import Policy, Principal


def experiment_tags(policy: Policy, team: str, principal: Principal, tags: dict[str, str],
                    now: datetime) -> dict[str, str]:
    """``tags`` with ``experiment`` set to the request's experiment, if any; raises ``TiergateError``."""
    experiments = policy.experiments
    if team not in experiments.teams:
        return tags
    try:
        manifest = experiments.attribute(team, principal.key_id, tags)
    except AttributionConflict as exc:
        raise TiergateError("invalid_request.invalid_tag", str(exc), param="metadata") from None
    if manifest is None:
        return tags
    why = manifest.refusal(now)
    if why is not None:
        raise TiergateError("experiment_expired", why)
    return tags if tags.get(TAG) == manifest.name else {**tags, TAG: manifest.name}

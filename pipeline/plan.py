"""What-if, one record at a time: where a recorded request would go under another policy, and what it would cost.

``tiergate plan`` and ``POST /v1/spend/plan`` ask this of every record in a window (``pipeline.plan_report`` sums
the answers). The new tier comes from ``router.decide.decide`` itself, so the plan routes exactly as serving would
with the new file; the price is the chosen deployment's from the compiled policy, in integer nano-dollars
(``metering.usage.cost_nanos``), on the record's own token counts.

What the ledger holds is not the whole request, so some things are assumed (``ASSUMPTIONS`` says them in the
output, in words): the answer another model would have written is unknown, so the observed completion length is
used, cut to the new ``max_tokens.cap``; the capabilities a request needed (tools, JSON schema, vision) and the
client's own max_tokens are not recorded, so none are assumed; the score is the one recorded (prompts are not
stored, so a different classifier cannot be re-run).

How each kind of record is treated (``Treatment``):

- ``scored``: chat with ``model: auto`` and a recorded score: decided afresh from the score.
- ``client_tier``: the client chose a tier (``model: <tier>``, or ``x-tiergate-tier``, which the ledger records only
  as an unscored ``auto`` request on that tier): the same choice is put to the new policy, which may refuse it.
- ``unscored``: a legacy ``/v1/completions`` request with ``model: auto`` (``api: completions``): never scored, so
  the router sends it to the team's floor; decided afresh (the new floor).
- ``pinned``: ``model: <a concrete model>``: the same pin under the new policy (refused if it no longer allows it).
- ``embedding``: kept on its deployment at its recorded cost: embeddings are not scored, so thresholds, tiers and
  caps do not move them.
- ``cache_hit``: answered by the response cache (``deployment: response-cache``): still a hit, $0 before and
  after, but decided (a policy that refuses the request refuses it before the cache is asked).
- ``summary``: a rolling summary, written by the team's cheapest tier: re-priced at the new floor's deployment with
  the same tokens (a changed history budget, which would change how many summaries there are, is not modelled).
- ``measuring``: shadow and judge calls (``pipeline.shadow``): kept at their recorded cost while the team keeps a
  ``learning`` block, $0 without one (a changed shadow share is not modelled).
- ``failed``: an error status with nothing billed: left out of costs and tier shares, only counted (a client that
  hung up after the provider's usage came back was billed, and is re-priced like any other request).

A request the new policy refuses (a pin it forbids, a tier outside the new floor/ceiling, a team it drops) costs
$0 after: its client would get the error instead of an answer. Plans count those apart.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from metering.record import UsageRecord
from metering.usage import Usage, cost_nanos
from router.decide import Decision, RouteRequest, RoutingRefused, decide
from router.features import RequestFeatures
from router.health_snapshot import HealthSnapshot
from router.policy import DeploymentSpec, Policy, TeamPolicy

Treatment = Literal["scored", "client_tier", "unscored", "pinned", "embedding", "cache_hit", "summary", "measuring",
                    "failed"]
TREATMENTS: tuple[Treatment, ...] = ("scored", "client_tier", "unscored", "pinned", "embedding", "cache_hit",
                                     "summary", "measuring", "failed")
# What a client asked for: the requests whose tier shares a plan compares (not the calls tiergate made itself).
CLIENT_TREATMENTS = frozenset({"scored", "client_tier", "unscored", "pinned", "embedding", "cache_hit"})
CACHE_DEPLOYMENT = "response-cache"  # pipeline.records.cached

ASSUMPTIONS: tuple[str, ...] = (
    "Output length cannot be known from the ledger: another model would have written another answer. The plan "
    "uses each request's observed completion tokens, cut to the new policy's max_tokens.cap where that is lower "
    "(a raised cap cannot lengthen an answer here; n > 1 is not recorded, so the cap bounds the request's total "
    "output; a changed max_tokens.default is not modelled because the ledger does not say which clients sent "
    "max_tokens).",
    "Routing uses the real router (router.decide) on the recorded score and prompt tokens, as a first attempt on "
    "healthy deployments: fallbacks, conversation stickiness and budget downgrades are not replayed, and scores "
    "are not recomputed (prompts are not stored).",
    "Capability needs (tools, JSON schema, vision) are not recorded: none are assumed, so a request that needed "
    "one may be placed on a tier that lacks it.",
    "A request keeps its deployment when the new tier still has it; otherwise it goes to the deployment the "
    "router's prefix affinity picks for its request id. Cached prompt tokens are priced as recorded, at that "
    "deployment's cached price (as the ledger's counterfactual cost is).",
    "Pinned requests keep their pin and requests that chose a tier keep that choice (an unscored 'auto' request "
    "is read as having forced the tier it was served on with x-tiergate-tier, except legacy /v1/completions ones, "
    "which are never scored and go to the new floor); the new policy may refuse either: refused requests cost $0 "
    "after and are counted apart.",
    "Embeddings keep their deployment and recorded cost (they are not scored). Response-cache hits stay hits at "
    "$0. Summaries are re-priced at the new floor tier with the same tokens. "
    "Shadow and judge calls keep their cost while the team keeps a learning block, else $0. Failed requests "
    "(nothing billed) are left out.",
)

_NO_HEALTH = HealthSnapshot()
# With an affinity key and every deployment healthy, ordering is by rendezvous hash: the router never draws from it.
_UNUSED_RNG = random.Random(0)
_DURATION = re.compile(r"^([1-9][0-9]{0,5})([hd])$")
_FIRST = datetime(2000, 1, 1, tzinfo=UTC)  # the spend API's date range
_LAST = datetime(9998, 12, 31, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Repriced:
    """One record under the new policy."""

    treatment: Treatment
    tier_after: str | None  # None: refused, or a failed request
    deployment_after: str | None
    cost_after: int  # nano-dollars
    refused: str | None = None  # the router's refusal kind (``team_missing`` when the policy has no such team)
    output_cut: int = 0  # completion tokens the new cap removes


def treatment_of(record: UsageRecord, policy: Policy) -> Treatment:
    """Which kind of request ``record`` was (see the module's docstring)."""
    # Failed records carry their error; a client that hung up after usage came back was billed (cost > 0).
    if not record.model or (record.error is not None and record.cost_nanos == 0):
        return "failed"
    if record.purpose in ("shadow", "judge"):
        return "measuring"
    if record.purpose == "summarization":
        return "summary"
    if record.deployment == CACHE_DEPLOYMENT:
        return "cache_hit"
    if record.purpose == "embedding":
        return "embedding"
    if record.requested_model == "auto":
        if record.score is not None:
            return "scored"
        return "client_tier" if _forced_tier(record) else "unscored"
    return "client_tier" if record.requested_model in policy.tier_by_name or record.requested_model == record.tier \
        else "pinned"


def _forced_tier(record: UsageRecord) -> bool:
    """An unscored ``auto`` request forced its tier with x-tiergate-tier, unless it came in on the legacy completions
    API, which is never scored (the floor serves it)."""
    return record.requested_model == "auto" and record.score is None and record.api != "completions"


def _route(record: UsageRecord, policy: Policy, team: TeamPolicy, treatment: Treatment) -> Decision:
    """The new policy's decision for the request, through the real router (raises ``RoutingRefused``)."""
    features = RequestFeatures(needs=frozenset(), prompt_tokens=record.prompt_tokens, max_output_tokens=None,
                               system_tokens=record.system_tokens)
    model, score, header = record.requested_model or "auto", None, None
    if treatment == "summary":
        model = policy.tiers[team.floor].name  # the pipeline asks the team's cheapest tier for summaries
    elif model == "auto" and record.score is not None:
        score = record.score
    elif model == "auto" and _forced_tier(record):
        header = record.tier
    # affinity makes the deployment choice a function of the request id: the same plan every run, spread by weight
    request = RouteRequest(features, model, score, tier_header=header, affinity=record.request_id)
    return decide(policy, team, request, _NO_HEALTH, _UNUSED_RNG)


def _deployment(record: UsageRecord, decision: Decision) -> DeploymentSpec:
    """The recorded deployment if the new tier still has it (it would have been as likely to be picked), else the
    router's first choice."""
    for dep in decision.plan:
        if dep.id == record.deployment and dep.tier_index == decision.tier.index:
            return dep
    return decision.plan[0]


def reprice(record: UsageRecord, policy: Policy) -> Repriced:
    """``record`` under ``policy``: its tier, deployment and cost there (nano-dollars)."""
    treatment = treatment_of(record, policy)
    if treatment == "failed":
        return Repriced(treatment, None, None, 0)
    team = policy.teams.get(record.team)
    if team is None:
        return Repriced(treatment, None, None, 0, refused="team_missing")
    if treatment == "measuring":
        kept = team.settings.learning is not None
        return Repriced(treatment, record.tier, record.deployment, record.cost_nanos if kept else 0)
    if treatment == "embedding":
        return Repriced(treatment, record.tier, record.deployment, record.cost_nanos)
    try:
        decision = _route(record, policy, team, treatment)
    except RoutingRefused as exc:
        return Repriced(treatment, None, None, 0, refused=exc.kind)
    dep = _deployment(record, decision)
    if treatment == "cache_hit":
        return Repriced(treatment, decision.tier.name, dep.id, 0)
    completion, cut = record.completion_tokens, 0
    cap = team.settings.max_tokens.cap
    if treatment != "summary" and cap is not None and completion > cap:  # summaries set their own max_tokens
        completion, cut = cap, completion - cap
    usage = Usage(prompt_tokens=record.prompt_tokens, completion_tokens=completion,
                  cached_tokens=record.cached_tokens, cache_write_tokens=record.cache_write_tokens,
                  reasoning_tokens=min(record.reasoning_tokens, completion))
    return Repriced(treatment, decision.tier.name, dep.id, cost_nanos(usage, dep.price), output_cut=cut)


def parse_window(since: str, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    """``since`` a duration before ``until`` (``7d``, ``36h``) or an ISO date/time; ``until`` an ISO date/time or
    None (``now``). Naive times are UTC. ValueError naming the bad value."""
    end = _instant(until, "until") if until else now.astimezone(UTC)
    match = _DURATION.match(since)
    try:
        start = end - timedelta(**{"hours" if match[2] == "h" else "days": int(match[1])}) if match \
            else _instant(since, "since")
    except OverflowError:  # a duration reaching before year 1
        start = datetime.min.replace(tzinfo=UTC)
    if not _FIRST <= start < end <= _LAST:
        raise ValueError(f"the window must run forwards within {_FIRST.date()}..{_LAST.date()}, got since "
                         f"{start.isoformat()} until {end.isoformat()}")
    return start, end


def _instant(text: str, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: an offset that moves year 1 or 9999 out of range
        raise ValueError(f"'{name}' must be a duration like 7d or 36h or an ISO 8601 date/time, got {text[:64]!r}"
                         if name == "since" else f"'{name}' must be an ISO 8601 date/time, got {text[:64]!r}") from None

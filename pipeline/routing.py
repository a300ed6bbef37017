"""Score and decide: the classifier's score (when the client left the choice to tiergate) and ``router.decide``'s
decision, with its refusals as the taxonomy's ``routing_refused.*`` errors."""

from __future__ import annotations

import random
from typing import Any

from pipeline.errors import ErrorCode, TiergateError
from pipeline.request import Request
from pipeline.telemetry import Tracing
from router.decide import Decision, RefusalKind, RouteRequest, RoutingRefused, decide
from router.embeddings import route_embedding
from router.features import RequestFeatures
from router.policy import TeamPolicy
from router.scoring import Scorer, TeamScorers
from upstream.health import HealthBook

_REFUSED: dict[RefusalKind, ErrorCode] = {
    "model_not_found": "routing_refused.model_not_found",
    "pin_forbidden": "routing_refused.pin_forbidden",
    "tier_forbidden": "routing_refused.tier_forbidden",
    "no_capable_tier": "routing_refused.no_capable_tier",
    "max_tokens_exceeded": "routing_refused.max_tokens_exceeded",
}


class Routing:
    def __init__(self, scorer: Scorer | TeamScorers, health: HealthBook, tracing: Tracing,
                 rng: random.Random | None = None) -> None:
        # The team's learned model, else the default (a plain scorer serves every team).
        self._scorers = scorer if isinstance(scorer, TeamScorers) else TeamScorers(scorer)
        self._health = health
        self._tracing = tracing
        self._rng = rng or random.Random()  # one per process: a new Random per request showed in the profile

    @property
    def classifier(self) -> str:
        return self._scorers.default.model_id

    def decide(self, request: Request, team: TeamPolicy, features: RequestFeatures, model: str,
               messages: list[Any] | None, affinity: str | None = None, sticky_tier: int | None = None,
               prefix_tier: int | None = None) -> Decision:
        """The tier and the deployments to try. ``messages`` are scored when ``model`` is ``auto`` and no tier is
        forced; ``affinity`` keeps a static prefix on one deployment; ``sticky_tier`` is the conversation's tier,
        ``prefix_tier`` the one its long static prefix was last served on (by any conversation)."""
        score: float | None = None
        scorer_id: str | None = None
        # A name the team aliases to auto (model_aliases) is scored like auto itself.
        if team.aliases.resolve(model) == "auto" and messages is not None and not request.tier_header:
            with self._tracing.span("tiergate.classify") as span:
                scorer = self._scorers.for_team(team.name)
                score, scorer_id = scorer.score(messages), scorer.model_id
                if span is not None:
                    span.set_attribute("tiergate.score", score)
        with self._tracing.span("tiergate.route") as span:
            try:
                route = RouteRequest(features, model, score, request.tier_header, affinity, sticky_tier, prefix_tier,
                                     scorer_id)
                decision = decide(request.policy, team, route, self._health.snapshot(), self._rng)
            except RoutingRefused as exc:
                raise TiergateError(_REFUSED[exc.kind], exc.message, param=exc.param) from None
            if span is not None:
                span.set_attributes({"tiergate.tier": decision.tier.name, "tiergate.reasons": list(decision.reasons)})
            return decision

    def embedding(self, request: Request, team: TeamPolicy, features: RequestFeatures, model: str) -> Decision:
        """An embeddings request's deployments (``router.embeddings``): by model name or the team's default,
        never scored and never on a chat tier."""
        with self._tracing.span("tiergate.route") as span:
            try:
                decision = route_embedding(request.policy, team, RouteRequest(features, model),
                                           self._health.snapshot(), self._rng)
            except RoutingRefused as exc:
                raise TiergateError(_REFUSED[exc.kind], exc.message, param=exc.param) from None
            if span is not None:
                span.set_attributes({"tiergate.tier": decision.tier.name, "tiergate.reasons": list(decision.reasons)})
            return decision

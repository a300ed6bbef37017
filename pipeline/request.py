"""The canonical request every ingress hands the pipeline, and the state one request carries through its steps.

An ingress adapter (``proxy.endpoints`` for OpenAI's wire format; Responses and Messages next) parses and checks its
format, authenticates the key and collects the client's tags, then builds a ``Request``: the endpoint kind and an
OpenAI-shaped body, whatever format the client spoke.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from opentelemetry.trace import Span

from pipeline.errors import TiergateError
from pipeline.experiments import experiment_tags
from pipeline.trimming import Trimmed
from router.decide import Decision
from router.features import RequestFeatures
from router.policy import Policy, Principal, TeamPolicy
from upstream.base import Endpoint

# What a call is for, as the ledger records it: the client's request, a summary the pipeline wrote for it, or
# shadow sampling's second answer and its judge's verdict (pipeline.shadow).
Purpose = Literal["chat", "embedding", "summarization", "shadow", "judge"]
# The wire format the client spoke (the ledger's ``api`` column): the ingress maps it to an OpenAI-shaped ``body``.
Api = Literal["chat", "completions", "embeddings", "responses", "messages"]
# Whether the client has hung up, asked once an answer is in hand (an ingress's cheap poll of its connection): a paid
# call is never cancelled for it, but its record says the client never got the answer.
ClientGone = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Request:
    kind: Endpoint
    body: dict[str, Any]  # OpenAI-shaped and checked at the edge: the pipeline assumes well-formed input
    principal: Principal  # who is asking (the key, authenticated at the edge)
    policy: Policy  # one policy object for the whole request, even across a reload
    request_id: str
    tags: dict[str, str]  # the client's own (body metadata, tag headers); the key's tags are merged in by admit()
    tier_header: str | None = None  # a tier the client forces (x-tiergate-tier on OpenAI's wire)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    t0: float = field(default_factory=time.perf_counter)
    span: Span | None = None  # the request's trace span when tracing is on
    client_gone: ClientGone | None = None  # None: the ingress cannot tell (the answer counts as delivered)
    api: Api = "chat"
    # The client's own body in its format ``api`` (Responses, Messages), after the ingress's edits (a stored
    # conversation expanded): what a deployment that speaks that format natively is sent instead of ``body``,
    # so nothing the translation to chat would lose (hosted tools, cache_control) is lost. None: OpenAI's formats.
    native: dict[str, Any] | None = None
    # A conversation key the client sent (Claude Code's X-Claude-Code-Session-Id, or a session header the team
    # configured): tier stickiness and prefix affinity key off it rather than off the prompt's text.
    session: str | None = None
    # Headers passed on unchanged to a deployment answering ``native`` (anthropic-version, anthropic-beta).
    forward_headers: dict[str, str] | None = None
    # The id the client will see for the answer when the ingress mints it (resp_..., msg_...): the ledger records it
    # so support and feedback find the request by it. None: the answer's own id (chatcmpl-...).
    response_id: str | None = None


def admitted_team(request: Request) -> TeamPolicy:
    """The caller's team; an admin key has none and may not make model calls."""
    team = request.principal.team
    if team is None:
        raise TiergateError("team_key_required", "admin keys cannot make model calls; use a team key")
    return request.policy.teams[team]


def admitted_tags(request: Request, team: TeamPolicy) -> dict[str, str]:
    """The key's tags overridden by the client's, plus the experiment they belong to (``pipeline.experiments``);
    every tag the team requires must be among them."""
    tags = {**request.principal.tags, **request.tags}
    tags = experiment_tags(request.policy, team.name, request.principal, tags, request.started_at)
    missing = [t for t in team.settings.required_tags if t not in tags]
    if missing:
        raise TiergateError(
            "invalid_request.missing_tags",
            f"team {team.name!r} requires tags {missing}: send them in 'metadata' or as x-tiergate-tag-<name> "
            "headers",
            param="metadata",
        )
    return tags


@dataclass(slots=True, eq=False)
class RequestState:
    """One request between admission and settlement: what the steps decided so far. Steps fill ``features`` and
    ``decision`` before anything reads them; the records the request ends with are built from it
    (``pipeline.records``)."""

    request: Request
    team: TeamPolicy
    tags: dict[str, str]
    purpose: Purpose
    body: dict[str, Any]  # the request as routed: the client's body, or its trimmed conversation
    features: RequestFeatures = field(init=False)
    decision: Decision = field(init=False)
    trimmed: Trimmed | None = None
    budget_downgraded: bool = False  # over a cap with ``on_exceeded: downgrade``: served by the team's floor

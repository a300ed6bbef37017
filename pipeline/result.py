"""What the pipeline hands back: what happened to a request, in values an ingress renders in its own format
(``proxy.render`` turns them into ``x-tiergate-*`` headers and SSE comments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.relay import StreamRelay
from pipeline.request import Api
from router.decide import Decision
from router.features import RequestFeatures


# Not frozen: a frozen dataclass's __init__ pays a setattr call per field, on every request.
@dataclass(slots=True)
class Notes:
    """What happened to the request."""

    tier: str  # the serving tier (after a fallback, the one that answered)
    model: str | None  # the upstream model; None when the response cache answered
    deployment: str | None
    score: float | None  # the classifier's score, when it was asked
    max_tokens: int | None  # the output limit sent upstream
    max_tokens_note: str | None  # "default" or "clamped" when the team's policy set it
    context: str | None  # how the conversation was trimmed (``Trimmed.note()``)
    cache_hit: bool  # answered from the response cache
    sticky_held: bool  # stickiness kept the conversation on its tier against the score
    prefix_held: bool  # prefix affinity kept the request on the cheaper tier its long prompt prefix is cached on
    budget_downgraded: bool  # over a budget cap with ``on_exceeded: downgrade``
    attempts: int  # upstream calls made, fallbacks included
    cost_nanos: int | None  # None for a stream until it has ended (then ``relay.cost_nanos``)


@dataclass(slots=True)
class Served:
    notes: Notes
    body: dict[str, Any]  # the answer, in format ``api``
    # "chat" (OpenAI-shaped, for the ingress to translate) unless a deployment answered the request's native body
    # (``Request.native``) in the client's own format, which the ingress then passes through.
    api: Api = "chat"


@dataclass(slots=True)
class Streaming:
    notes: Notes
    relay: StreamRelay  # payloads() to send; cost_nanos or error once sent; abandon() if they never will be
    api: Api = "chat"  # the format of the payloads, as ``Served.api``


@dataclass(frozen=True, slots=True)
class Preview:
    """What a chat request would get, without calling anything (``/v1/route``)."""

    decision: Decision
    features: RequestFeatures
    classifier: str

"""Anomaly alert bodies (Slack-compatible, generic JSON, PagerDuty Events v2) and their delivery.

Building a body is pure; sending goes through the budget alerts' webhook sender (``metering.alerts.post_json``:
one HTTP client, one retry policy for every alert tiergate sends). Bodies name scopes, metrics, amounts and
request ids, never prompt text or keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import aiohttp

from metering.alerts import post_json
from metering.finops.anomaly import Episode

Format = Literal["slack", "json", "pagerduty"]
_PD_SUMMARY_MAX = 1024  # Events v2 limits
_PD_DEDUP_MAX = 255


def slack_payload(episode: Episode) -> dict[str, Any]:
    """``text`` for Slack (and anything Slack-compatible), plus the structured ``anomaly``, like budget alerts."""
    text = f":rotating_light: tiergate anomaly: {episode.summary()}"
    if episode.top_request_ids:
        text += f"; costliest requests: {', '.join(episode.top_request_ids)}"
    return {"text": text, "anomaly": generic_payload(episode)}


def generic_payload(episode: Episode) -> dict[str, Any]:
    return {"kind": "spend_anomaly", "source": "tiergate", "summary": episode.summary(), **episode.to_dict()}


def pagerduty_payload(episode: Episode, routing_key: str, action: Literal["trigger", "resolve"] = "trigger",
                      severity: str = "warning") -> dict[str, Any]:
    """An Events v2 event, deduplicated by the episode id: ``trigger`` opens the incident, ``resolve`` closes it."""
    dedup = episode.ident[:_PD_DEDUP_MAX]
    if action == "resolve":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup}
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup,
        "payload": {
            "summary": f"tiergate anomaly: {episode.summary()}"[:_PD_SUMMARY_MAX],
            "source": "tiergate",
            "severity": severity,
            "timestamp": episode.started_at.isoformat(),
            "component": episode.scope.describe(),
            "group": episode.scope.team or "models",
            "class": episode.metric,
            "custom_details": episode.to_dict(),
        },
    }


def payloads(episode: Episode, fmt: Format, routing_key: str | None = None) -> list[dict[str, Any]]:
    """The bodies one episode sends: one, or for PagerDuty a trigger and, if the episode already ended within
    the scan that found it, the resolve (an episode still open when found is resolved by hand: a later scan
    reports only episodes that start in its window)."""
    if fmt == "pagerduty":
        if not routing_key:
            raise ValueError("PagerDuty events need a routing key")
        events = [pagerduty_payload(episode, routing_key)]
        if episode.ended_at is not None:
            events.append(pagerduty_payload(episode, routing_key, "resolve"))
        return events
    return [slack_payload(episode) if fmt == "slack" else generic_payload(episode)]


async def deliver(url: str, episodes: Iterable[Episode], fmt: Format, routing_key: str | None = None,
                  timeout_s: float = 5.0, max_attempts: int = 6, base_delay_s: float = 0.5) -> int:
    """POST each episode's bodies; returns how many episodes the webhook took whole (the sender logs the rest)."""
    sent = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        for episode in episodes:
            results = [await post_json(session, url, body, episode.summary(), max_attempts, base_delay_s)
                       for body in payloads(episode, fmt, routing_key)]
            sent += all(results)
    return sent

"""Anomaly alert bodies (Slack-compatible, generic JSON, PagerDuty Events v2) and their delivery.

Building a body is pure; sending goes through the budget alerts' webhook sender (``metering.alerts.post_json``:
one HTTP client, one retry policy for every alert tiergate sends). Bodies name scopes, metrics, amounts and
request ids, never prompt text or keys.
"""

from __future__ import annotations

from typing import Any, Iterable, Literal

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


def pagerduty_payload(episode: Episode, routing_key: str, severity: str = "warning") -> dict[str, Any]:
    """An Events v2 ``trigger`` (or ``resolve`` once the episode has ended), deduplicated by the episode id."""
    dedup = episode.ident[:_PD_DEDUP_MAX]
    if episode.ended_at is not None:
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


def payload(episode: Episode, fmt: Format, routing_key: str | None = None) -> dict[str, Any]:
    if fmt == "pagerduty":
        if not routing_key:
            raise ValueError("PagerDuty events need a routing key")
        return pagerduty_payload(episode, routing_key)
    return slack_payload(episode) if fmt == "slack" else generic_payload(episode)


async def deliver(url: str, episodes: Iterable[Episode], fmt: Format, routing_key: str | None = None,
                  timeout_s: float = 5.0, max_attempts: int = 6, base_delay_s: float = 0.5) -> int:
    """POST one body per episode; returns how many the webhook accepted (the rest are logged by the sender)."""
    sent = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        for episode in episodes:
            body = payload(episode, fmt, routing_key)
            sent += await post_json(session, url, body, episode.summary(), max_attempts, base_delay_s)
    return sent

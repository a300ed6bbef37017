"""The grouped reads behind ``tiergate audit`` (``metering.audit``), over the ``records`` of one time window.

Aggregated in the database (five grouped queries over one ``started_at`` range, the same SQL on SQLite and
PostgreSQL), so the audit's cost grows with the window's rows inside the database, not in Python; the ledger runs
them (``Ledger.usage_audit``) and hands back plain rows, which the audit prices and projects.

What counts: requests that reached a provider and were billed, as the spend report counts them: completed ones
(``status < 400``) and those cut short after tokens flowed (``cost_nanos > 0``); not the response cache's answers,
which are read on their own. Output lengths come from completed chat requests only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_CHARGED = "deployment <> 'response-cache' AND (status < 400 OR cost_nanos > 0)"
_COMPLETED = "deployment <> 'response-cache' AND status < 400"
_CACHE_HITS = "deployment = 'response-cache'"

Fetch = Callable[[str, Sequence[Any]], Awaitable[list[tuple[Any, ...]]]]


@dataclass(frozen=True, slots=True)
class UsageAuditRows:
    """What the audit reads, as the database grouped it (sums of NULL-free columns are ints, 0 when empty)."""

    outputs: list[tuple[str, str, int, int]]  # team, model, completion_tokens, requests (completed chat)
    money: list[tuple[str, str, str, int, int, int, int]]  # team, model, purpose, cost, counterfactual, cached,
    # context-saved tokens (charged)
    system_prompts: list[tuple[str, str, int, int, int]]  # team, key_id, requests, sum and max system tokens (chat)
    frontier: list[tuple[str, str, int]]  # team, tier, requests of simple-scored chat requests (teams asked about)
    cache_hit_nanos: tuple[int, int]  # the response cache's answers: counterfactual, cost


def _ints(row: Sequence[Any], first: int) -> tuple[Any, ...]:
    return (*row[:first], *(int(v or 0) for v in row[first:]))


async def usage_audit(fetch: Fetch, window: Sequence[Any], simple_below: Mapping[str, float | None]) -> UsageAuditRows:
    """Rows of the records in ``window`` (two bound instants); ``simple_below``: team -> the score under which a
    request counts as simple (None: every score), for the teams whose frontier share is asked."""

    async def grouped(select: str, where: str, group_by: str, params: Iterable[Any] = (),
                      records: str = _CHARGED) -> list[tuple[Any, ...]]:
        sql = (f"SELECT {select} FROM records WHERE started_at >= ? AND started_at < ? AND {records}"
               f"{' AND ' + where if where else ''}{' GROUP BY ' + group_by if group_by else ''}")
        return await fetch(sql, [*window, *params])

    outputs = await grouped("team, model, completion_tokens, COUNT(*)", "purpose = 'chat'",
                            "team, model, completion_tokens", records=_COMPLETED)
    money = await grouped("team, model, purpose, SUM(cost_nanos), SUM(counterfactual_cost_nanos), "
                          "SUM(cached_tokens), SUM(context_saved_tokens)", "", "team, model, purpose")
    prompts = await grouped("team, key_id, COUNT(*), SUM(system_tokens), MAX(system_tokens)", "purpose = 'chat'",
                            "team, key_id")
    frontier: list[tuple[Any, ...]] = []
    if simple_below:
        clauses: list[str] = []
        params: list[Any] = []
        for team, below in sorted(simple_below.items()):
            if below is None:
                clauses.append("team = ?")
                params.append(team)
            else:
                clauses.append("(team = ? AND score < ?)")
                params += [team, below]
        frontier = await grouped("team, tier, COUNT(*)", f"purpose = 'chat' AND score IS NOT NULL AND "
                                 f"({' OR '.join(clauses)})", "team, tier", params)
    hits = (await grouped("SUM(counterfactual_cost_nanos), SUM(cost_nanos)", "", "", records=_CACHE_HITS))[0]
    return UsageAuditRows(
        outputs=[_ints(r, 2) for r in outputs],
        money=[_ints(r, 3) for r in money],
        system_prompts=[_ints(r, 2) for r in prompts],
        frontier=[_ints(r, 2) for r in frontier],
        cache_hit_nanos=(int(hits[0] or 0), int(hits[1] or 0)),
    )

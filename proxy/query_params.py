"""The query parameters the finance and ops endpoints share, parsed once at the edge: UTC days and periods, ISO
instants, bounded integers, and ``team`` (which a key may see). Each bad value is a 400 naming its parameter.

Date ranges are UTC days, ``start`` inclusive and ``end`` exclusive (as ``tiergate bill`` and the ledger's
reports): ``start=2026-11-01&end=2026-12-01`` is November. An admin key sees every team; a team key only its own;
a team neither the policy nor the ledger knows is a 404 naming the known ones (a typo must not read as a $0 bill).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from starlette.requests import Request

from pipeline.errors import TiergateError
from proxy.body import CONTROL_CHARS, shown
from proxy.endpoints import authenticated, runtime
from proxy.errors import bad_request

MAX_TEAM_CHARS = 256
# Dates outside are refused: before any ledger existed, or so close to date.max that adding a day or a month (the
# hourly and forecast queries do) would overflow.
FIRST_DAY = date(2000, 1, 1)
LAST_DAY = date(9998, 12, 31)
EARLIEST = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=UTC)
LATEST = datetime.combine(LAST_DAY, datetime.max.time(), tzinfo=UTC)
_DIGITS = re.compile(r"[0-9]{1,9}")


def day(value: str | None, name: str, default: date) -> date:
    """A date from ``FIRST_DAY`` to ``LAST_DAY``: ``date.max`` + 1 day would overflow (a 500) instead of naming the
    parameter."""
    if not value:
        return default
    try:
        found = date.fromisoformat(value)
    except ValueError:
        raise bad_request(f"'{name}' must be a date like 2026-11-01, got {shown(value)}", param=name) from None
    if not FIRST_DAY <= found <= LAST_DAY:
        raise bad_request(f"'{name}' must be from {FIRST_DAY} to {LAST_DAY}, got {found}", param=name)
    return found


def period(request: Request) -> tuple[date, date]:
    """``start`` (inclusive) and ``end`` (exclusive) query parameters; default this month so far, today included."""
    today = datetime.now(UTC).date()
    start = day(request.query_params.get("start"), "start", today.replace(day=1))
    end = day(request.query_params.get("end"), "end", today + timedelta(days=1))
    if end <= start:
        one_day = f"start={start}&end={start + timedelta(days=1)}"
        raise bad_request(f"'end' must be after 'start' ('end' is exclusive: {one_day} is one day), got "
                          f"start={start}&end={end}", param="end")
    return start, end


def instant(request: Request, name: str, default: datetime) -> datetime:
    """An ISO date or instant (UTC unless it says otherwise) from ``FIRST_DAY`` to the end of ``LAST_DAY``."""
    raw = request.query_params.get(name)
    if not raw:
        return default
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise bad_request(f"'{name}' must be an ISO date or instant like 2026-11-01 or 2026-11-01T09:30:00Z, got "
                          f"{shown(raw)}", param=name) from None
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    if not EARLIEST <= at <= LATEST:
        raise bad_request(f"'{name}' must be from {FIRST_DAY} to {LAST_DAY}, got {shown(raw)}", param=name)
    return at


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter from ``low`` to ``high`` (400 naming it otherwise)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    # ASCII digits only: str.isdigit() also accepts '²' (int() refuses it) and 5,000-digit strings (so does int()).
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise bad_request(f"'{name}' must be an integer from {low} to {high}, got {shown(raw)}", param=name)
    return int(raw)


async def visible_team(request: Request) -> str | None:
    """The team a caller may see: its own for a team key, any known one (or all: None) for an admin key."""
    requested = request.query_params.get("team")
    if requested and (len(requested) > MAX_TEAM_CHARS or CONTROL_CHARS.search(requested)):
        # PostgreSQL refuses NUL in a query parameter: that would be a 500, not an empty answer
        raise bad_request(f"'team' must be a team name (at most {MAX_TEAM_CHARS} characters, no control "
                          f"characters), got {shown(requested)}", param="team")
    principal = authenticated(request)
    if principal.admin:
        if requested:
            await known_team(request, requested)
        return requested or None
    if requested and requested != principal.team:
        raise TiergateError("forbidden_team", f"a key of team {principal.team!r} may only see its own spend")
    return principal.team


async def known_team(request: Request, team: str) -> None:
    """404 for a team neither the policy nor the ledger knows, naming those that are."""
    rt = runtime(request)
    if team in rt.store.policy.teams:
        return
    known = sorted(set(rt.store.policy.teams) | set(await rt.spend.known_teams()))
    if team not in known:
        raise TiergateError("not_found", f"unknown team {shown(team)}; known teams: {_listed(known)}", param="team")


def _listed(names: list[str], most: int = 50) -> str:
    shown_names = ", ".join(names[:most])
    return shown_names + (f" and {len(names) - most} more" if len(names) > most else "") if names else "(none)"

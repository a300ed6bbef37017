"""Is a failed commit the database refusing *these records* or the database being unavailable?

The group commit retries the second forever (the spool keeps the records) but must never retry the first: a record
the database cannot store (a NUL in text, a tag too long for the rollup index, an integer out of range) fails the
same way every time and would stop every later record behind it. Only errors that are certainly about the data
count as refusals; anything unknown is treated as unavailability, because a wrong "unavailable" only delays
commits while a wrong "refused" would set good records aside.
"""

from __future__ import annotations

import sqlite3

# SQLSTATE classes: 22 data exception (NUL, out of range, bad encoding), 23 integrity constraint violation,
# 54 program limit exceeded (index row too large). psycopg files 54 under OperationalError, so the class is
# read from the SQLSTATE, not the exception type.
_REFUSED_SQLSTATE_CLASSES = ("22", "23", "54")
# Raised while adapting one record's values (e.g. an int beyond 64 bits), before any I/O: a property of the data.
_REFUSED_TYPES: tuple[type[BaseException], ...] = (
    TypeError, ValueError, OverflowError, UnicodeError, sqlite3.DataError, sqlite3.IntegrityError,
)


def sqlstate(exc: BaseException) -> str | None:
    """The server's SQLSTATE (psycopg errors carry it; a failed connection has none)."""
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None


def is_refusal(exc: BaseException) -> bool:
    """True when retrying the same records can never succeed."""
    state = sqlstate(exc)
    if state is not None:
        return state.startswith(_REFUSED_SQLSTATE_CLASSES)
    return isinstance(exc, _REFUSED_TYPES)


def label(exc: BaseException) -> str:
    """Class and SQLSTATE only: safe for logs, since server messages and their context may quote record values
    (tags, which can be secrets)."""
    state = sqlstate(exc)
    return f"{type(exc).__name__} [{state}]" if state else type(exc).__name__


def message(exc: BaseException) -> str:
    """The database's own words for a refusal, without the statement context that quotes the whole batch."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if not primary:
        return str(exc)
    detail = getattr(diag, "message_detail", None)
    return f"{primary} ({detail})" if detail else primary

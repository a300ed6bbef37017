"""Money as integer nano-dollars, and its one text form.

Integers add exactly in Python, SQLite (64-bit) and PostgreSQL (``BIGINT``/``NUMERIC`` sums), so a report's total is
the per-record sum to the last nano-dollar. 2**63 nano-dollars is ~9.2 billion USD per counter.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

NANOS_PER_USD = 1_000_000_000


def format_usd(nanos: int) -> str:
    """``123450`` -> ``"0.000123450"``: always 9 decimals, exact (no float on the way)."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(int(nanos)), NANOS_PER_USD)
    return f"{sign}{whole}.{frac:09d}"


def usd_to_nanos(usd: Decimal | int | str) -> int:
    """A configured USD amount (a cap) in nano-dollars, rounded up: sub-nano caps cannot exist in a bill."""
    if isinstance(usd, float):
        raise TypeError("money is never float; pass Decimal or str")
    return int((Decimal(usd) * NANOS_PER_USD).to_integral_value(rounding=ROUND_CEILING))

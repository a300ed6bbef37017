"""The ``retrain_claims`` table: which process retrains a team's routing model in a schedule slot.

Why in the ledger's database: every worker and replica runs the retraining schedule (``pipeline.retrain_schedule``)
and already shares this database, so "once per fleet" is one INSERT per (team, slot) that a primary key lets only
one process win; the others see the conflict and skip. No lock is held while the model is fitted, so a process
that dies mid-fit costs that slot only (the next slot retries).
"""

from __future__ import annotations


def retrain_claims_ddl(ts_type: str, int_type: str) -> list[str]:
    return [f"CREATE TABLE IF NOT EXISTS retrain_claims (team TEXT NOT NULL, slot {int_type} NOT NULL, "
            f"claimed_at {ts_type} NOT NULL, PRIMARY KEY (team, slot))"]


def claim_sql(p: str) -> str:
    """Returns the team's row when this INSERT won the slot, no row when another process holds it (SQLite >= 3.35
    and PostgreSQL both support ``ON CONFLICT DO NOTHING RETURNING``)."""
    return (f"INSERT INTO retrain_claims (team, slot, claimed_at) VALUES ({p}, {p}, {p}) "
            "ON CONFLICT DO NOTHING RETURNING team")

"""Ledger backends behind one interface, chosen by URL (``sqlite:///path.db`` or ``postgresql://...``)."""

from __future__ import annotations

from pathlib import Path

from metering.ledger.base import Ledger, TeamSpend
from metering.ledger.report import Report

__all__ = ["Ledger", "Report", "TeamSpend", "open_ledger"]


def open_ledger(url: str, spool_dir: str | Path | None = "", schema: str = "public") -> Ledger:
    """A ledger for ``url``, not yet started (``await ledger.start()``).

    ``spool_dir=""`` means the default: beside the SQLite file, or ``./tiergate-spool`` for PostgreSQL.
    """
    if url.startswith("sqlite:///"):
        from metering.ledger.sqlite import SqliteLedger

        return SqliteLedger(url[len("sqlite:///"):], spool_dir=spool_dir)
    if url.startswith(("postgresql://", "postgres://")):
        from metering.ledger.postgres import PostgresLedger

        return PostgresLedger(url, spool_dir="tiergate-spool" if spool_dir == "" else spool_dir, schema=schema)
    raise ValueError(f"unsupported ledger URL {url!r}: use sqlite:///PATH or postgresql://...")

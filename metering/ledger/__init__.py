"""Ledger backends behind one interface, chosen by URL (``sqlite:///path.db`` or ``postgresql://...``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from metering.ledger.base import Ledger, TeamSpend
from metering.ledger.group_commit import RecordRefused, WriterOptions
from metering.ledger.report import Report

__all__ = ["Ledger", "RecordRefused", "Report", "TeamSpend", "WriterOptions", "open_ledger"]


def open_ledger(url: str, spool_dir: str | Path | None = "", schema: str = "public",
                options: WriterOptions = WriterOptions()) -> Ledger:
    """A ledger for ``url``, not yet started (``await ledger.start()``).

    ``spool_dir=""`` means the default: beside the SQLite file, or ``var/spool/pg-<hash of URL and schema>`` for
    PostgreSQL.
    """
    if url.startswith("sqlite:///"):
        from metering.ledger.sqlite import SqliteLedger

        return SqliteLedger(url[len("sqlite:///"):], spool_dir=spool_dir, options=options)
    if url.startswith(("postgresql://", "postgres://")):
        from metering.ledger.postgres import PostgresLedger

        # One spool per database and schema: a proxy must never replay another ledger's leftovers.
        default = Path("var") / "spool" / ("pg-" + hashlib.sha256(f"{url}#{schema}".encode()).hexdigest()[:16])
        return PostgresLedger(url, spool_dir=default if spool_dir == "" else spool_dir, schema=schema, options=options)
    raise ValueError(f"unsupported ledger URL {url!r}: use sqlite:///PATH or postgresql://...")

"""The dead-letter file: where a record the database refuses goes, so it neither stops the ledger nor is lost.

One JSON object per line, appended (``O_APPEND``, one ``write`` per line, so several processes may share the file)
and fsynced before the spool segment that held the record is deleted: once set aside, this file is the record's
only copy. Fields:

- ``entry_id``: the ledger's key for the record (``null`` for a spool line that could not be parsed);
- ``request_id``, ``team``, ``cost_nanos``: for triage without parsing the record;
- ``error_class``, ``sqlstate``, ``error``: what the database (or the record's decoding) said;
- ``dead_lettered_at``: UTC ISO time;
- ``record``: the usage record exactly as spooled (``UsageRecord.to_json``), or ``raw``: the unparseable spool line.

To re-import after fixing a record, write ``<entry_id> <record JSON>`` lines to a file ending in ``.spool`` in the
ledger's spool directory; the next start-up replays it, idempotently by entry id.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from metering.ledger.refusal import message, sqlstate
from metering.ledger.schema import Entry


class DeadLetterFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def add(self, entry: Entry, exc: BaseException) -> None:
        entry_id, record = entry
        self._append({
            "entry_id": entry_id, "request_id": record.request_id, "team": record.team,
            "cost_nanos": record.cost_nanos, **_error(exc), "record": orjson.Fragment(record.to_json()),
        })

    def add_raw(self, line: bytes, exc: BaseException) -> None:
        """A spool line that no longer parses as a record (corrupted, or written by another tiergate version)."""
        self._append({"entry_id": None, **_error(exc), "raw": line.decode("utf-8", "backslashreplace")})

    def _append(self, fields: dict[str, Any]) -> None:
        fields["dead_lettered_at"] = datetime.now(UTC).isoformat()
        data = orjson.dumps(fields) + b"\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        """Every entry, oldest first (for inspection and tests)."""
        if not self.path.exists():
            return []
        return [orjson.loads(line) for line in self.path.read_bytes().splitlines() if line]


def _error(exc: BaseException) -> dict[str, Any]:
    return {"error_class": type(exc).__name__, "sqlstate": sqlstate(exc), "error": message(exc)}

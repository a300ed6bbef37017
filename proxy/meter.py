"""Adapter between the gateway and metering/ (interim: records kept in memory until the ledger lands)."""

from __future__ import annotations

from typing import Any


class Meter:
    def __init__(self) -> None:
        self.records: list[Any] = []

    @classmethod
    async def start(cls, store: Any) -> "Meter":
        return cls()

    async def reserve(self, outcome: Any) -> Any:
        return None

    async def settle(self, reservation: Any, record: Any) -> None:
        self.records.append(record)

    async def close(self) -> None:
        pass

"""An append-only local spool: the durability point of a usage record.

``append`` is one ``os.write`` of one line (entry id, space, the record as JSON) to a file opened ``O_APPEND``.
Once it returns the bytes are in the kernel's page cache, which outlives ``kill -9`` of the process (not a power
cut; the promise is about the proxy dying). The background writer then commits records to the database at its
own pace; the spool is cut into segments so a committed segment is simply unlinked, never rewritten.

Each live segment is held under an exclusive ``flock``. A dead process's locks vanish with it, so at start-up any
segment we can lock is an orphan to replay, and several proxies can share one spool directory safely.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SUFFIX = ".spool"


@dataclass(frozen=True, slots=True)
class Segment:
    path: Path
    fd: int


class Spool:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._prefix = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._seq = 0
        self._current: Segment | None = None

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._current = self._new_segment()

    def _new_segment(self) -> Segment:
        self._seq += 1
        path = self.directory / f"{self._prefix}-{self._seq:010d}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return Segment(path, fd)

    def append(self, line: bytes) -> None:
        """Durable against process death once this returns. A line torn by a crash mid-write is never one whose
        ``write()`` returned, and replay skips it."""
        assert self._current is not None, "spool not opened"
        data = line + b"\n"
        view = memoryview(data)
        while view:
            written = os.write(self._current.fd, view)
            view = view[written:]

    def rotate(self) -> Segment:
        """Start a new segment for further appends; the old one is returned for ``discard`` after its commit."""
        assert self._current is not None, "spool not opened"
        old, self._current = self._current, self._new_segment()
        return old

    @staticmethod
    def discard(segment: Segment) -> None:
        """Unlink while still holding the lock, so no start-up replay can pick up a half-deleted segment."""
        segment.path.unlink(missing_ok=True)
        os.close(segment.fd)

    def close(self) -> None:
        """Release the current segment; if it is empty it is removed, otherwise it is left for the next replay."""
        if self._current is None:
            return
        if os.fstat(self._current.fd).st_size == 0:
            self.discard(self._current)
        else:
            os.close(self._current.fd)
        self._current = None

    def foreign_lines(self) -> list[bytes]:
        """The complete lines of every segment other processes (live or dead) have in the directory, each one's in
        the order written: records they acknowledged and may not have committed yet. Read without locks: a segment
        is only ever appended to, and its owner deletes it once its records are committed."""
        lines: list[bytes] = []
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            if path.name.startswith(self._prefix + "-"):
                continue
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # committed meanwhile
                continue
            lines += [ln for ln in data.split(b"\n")[: data.count(b"\n")] if ln]
        return lines

    def orphans(self) -> Iterator[tuple[Segment, list[bytes]]]:
        """Segments no live process holds, with their complete lines; caller discards each after committing."""
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            if self._current is not None and path == self._current.path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            with open(fd, "rb", closefd=False) as f:
                data = f.read()
            # A trailing fragment without newline was never acknowledged; drop it.
            lines = [ln for ln in data.split(b"\n")[: data.count(b"\n")] if ln]
            yield Segment(path, fd), lines

"""Reading an object that the cache cannot hold: ranged GETs straight to the reader.

Owns: `Stream`, one per open file of such an object. It keeps one window of the object in
memory (8 MiB), fetched with one ranged GET pinned to the object's version, so a
sequential reader makes one request per window and memory stays bounded per open file.
Nothing touches the disk. A window that stalls (less than 1 MiB within the store's stall
window) is given up: the reader gets EIO, and its next read asks again.
"""

from __future__ import annotations

import trio

from clearmount.backends.base import ObjectInfo, ObjectStore
from clearmount.transfer import Progress, Transfer

WINDOW = 8 << 20


class Stream:
    def __init__(self, store: ObjectStore, info: ObjectInfo, transfer: Transfer) -> None:
        self.store = store
        self.info = info
        self.transfer = transfer
        self._start = 0
        self._window = b""
        self._lock = trio.Lock()

    async def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.info.size)
        if offset >= end:
            return b""
        async with self._lock:
            if not (self._start <= offset and end <= self._start + len(self._window)):
                window_end = min(max(end, offset + WINDOW), self.info.size)
                deadlines = self.store.deadlines
                url = f"{self.store.base_url}/{self.info.key}"
                progress = Progress(deadlines.stall_window, deadlines.operation, url)
                self._window = await self.transfer.data(
                    self._get, offset, window_end, progress, progress=progress
                )
                self._start = offset
            return self._window[offset - self._start : end - self._start]

    def _get(self, start: int, end: int, progress: Progress) -> bytes:
        chunks = []
        for chunk in self.store.read_range(self.info.key, self.info.version, start, end):
            chunks.append(chunk)
            progress.add(len(chunk))
        return b"".join(chunks)

"""Reading an object that the cache cannot hold: ranged GETs straight to the reader.

Owns: `Stream`, one per open file of such an object. It keeps one window of the object in
memory (8 MiB), fetched with one ranged GET pinned to the object's version, so a
sequential reader makes one request per window and memory stays bounded per open file.
Nothing touches the disk. Each window's bytes are reported to the `FetchEvents` as downloaded.
An object whose server has no byte ranges (`ObjectInfo.ranged` False) is read by one GET
that the windows take their bytes from in turn; a read behind or far ahead of it starts a
new GET from the first byte. A window that stalls (less than 1 MiB within the store's stall
window) is given up: the reader gets EIO, and its next read asks again with a new GET.
"""

from __future__ import annotations

from collections.abc import Iterator

import trio

from clearmount.backends.base import ObjectInfo, ObjectStore
from clearmount.cache.events import FetchEvents, tell
from clearmount.transfer import Progress, Transfer

WINDOW = 8 << 20


class Stream:
    def __init__(
        self,
        store: ObjectStore,
        info: ObjectInfo,
        transfer: Transfer,
        url: str,
        events: FetchEvents | None = None,
    ) -> None:
        self.store = store
        self.info = info
        self.transfer = transfer
        self.url = url
        self.events = events or FetchEvents()
        self._start = 0
        self._window = b""
        self._lock = trio.Lock()
        # without byte ranges: the one GET in progress, the offset of its next byte, and the
        # bytes of its last chunk past the window that asked for it. Only the trio side sets
        # them, once a window has arrived whole: a thread given up midway changes nothing.
        self._body: Iterator[bytes] | None = None
        self._body_at = 0
        self._left = b""

    async def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.info.size)
        if offset >= end:
            return b""
        async with self._lock:
            window_stop = self._start + len(self._window)
            if not (self._start <= offset and end <= window_stop):
                window_end = min(max(end, offset + WINDOW), self.info.size)
                if not self.info.ranged and self._start <= offset < window_stop:
                    # a read across the window's end: the GET in progress goes on from there
                    tail = self._window[offset - self._start :]
                    fetched = await self._fetch(window_stop, window_end)
                    self._window = tail + fetched
                else:
                    fetched = self._window = await self._fetch(offset, window_end)
                self._start = offset
                tell(self.events.stream_received, self.url, len(fetched))
            return self._window[offset - self._start : end - self._start]

    async def _fetch(self, start: int, end: int) -> bytes:
        """Bytes [start, end), watched for stalls like every download."""
        deadlines = self.store.deadlines
        progress = Progress(deadlines.stall_window, deadlines.operation, self.url)
        if self.info.ranged:
            return await self.transfer.data(self._get, start, end, progress, progress=progress)
        body, left = (self._body, self._left) if self._body_at == start else (None, b"")
        # the GET belongs to this window until it returns; one given up is never read again
        self._body = None
        data, body, left = await self.transfer.data(
            self._take, body, left, start, end, progress, progress=progress
        )
        self._body, self._body_at, self._left = body, start + len(data), left
        return data

    def _get(self, start: int, end: int, progress: Progress) -> bytes:
        chunks = []
        for chunk in self.store.read_range(self.info.key, self.info.version, start, end):
            chunks.append(chunk)
            progress.add(len(chunk))
        return b"".join(chunks)

    def _take(
        self,
        body: Iterator[bytes] | None,
        left: bytes,
        start: int,
        end: int,
        progress: Progress,
    ) -> tuple[bytes, Iterator[bytes], bytes]:
        """Bytes [start, end) from the GET `body` (a new one from `start` if None), and the
        GET and its bytes past `end` for the next window (runs in a worker thread)."""
        if body is None:
            # the first window, or a jump: a new GET (the store skips to `start`)
            body = iter(
                self.store.read_range(self.info.key, self.info.version, start, self.info.size)
            )
        pieces, have = [left], len(left)
        while have < end - start:
            chunk = next(body, b"")
            if not chunk:
                break
            progress.add(len(chunk))
            pieces.append(chunk)
            have += len(chunk)
        data = b"".join(pieces)
        return data[: end - start], body, data[end - start :]

"""Reading an object that the cache cannot hold: ranged GETs straight to the reader.

Owns: `Stream`, one per open file of such an object. It keeps one window of the object in
memory (8 MiB), fetched with one ranged GET pinned to the object's version, so a
sequential reader makes one request per window and memory stays bounded per open file.
Nothing touches the disk. Each window's bytes are reported to the `FetchEvents` as downloaded.
An object whose server has no byte ranges (`ObjectInfo.ranged` False) is read by one GET
that the windows take their bytes from in turn; a read behind or far ahead of it starts a
new GET from the first byte.
"""

from __future__ import annotations

from collections.abc import Iterator

import trio

from clearmount.backends.base import ObjectInfo, ObjectStore
from clearmount.cache.events import FetchEvents, tell
from clearmount.transfer import Transfer

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
        # bytes of its last chunk past the window that asked for it
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
                    more = await self.transfer.data(self._get, window_stop, window_end)
                    self._window = tail + more
                else:
                    self._window = await self.transfer.data(self._get, offset, window_end)
                self._start = offset
                tell(self.events.stream_received, self.url, len(self._window))
            return self._window[offset - self._start : end - self._start]

    def _get(self, start: int, end: int) -> bytes:
        if self.info.ranged:
            return b"".join(self.store.read_range(self.info.key, self.info.version, start, end))
        if self._body is None or self._body_at != start:
            # the first window, or a jump: a new GET (the store skips to `start`)
            self._body = iter(
                self.store.read_range(self.info.key, self.info.version, start, self.info.size)
            )
            self._body_at, self._left = start, b""
        pieces, have = [self._left], len(self._left)
        while have < end - start:
            chunk = next(self._body, b"")
            if not chunk:
                break
            pieces.append(chunk)
            have += len(chunk)
        data = b"".join(pieces)
        self._left = data[end - start :]
        self._body_at = start + len(data[: end - start])
        return data[: end - start]

"""Reading one open file: the handle `Fetcher.open` returns, whatever holds the bytes.

Owns: `ObjectReader`, what an open file reads through (`read(offset, size)`, `close()`, and
the `outcome` of the open that made it), and its three kinds:
- `CachedReader`: a complete cache file of the object's version;
- `FetchReader`: the file a `Fetch` is filling, started by this open or joined; each read
  waits only for its own bytes, then reads them from the file. It tells the fetch where
  this file reads and how far ahead: a read that continues the last ones (within
  `_SEQUENTIAL`) asks for a window twice what it has read in a row, once that is more than
  a jump's first GET brings; a jump asks for nothing ahead;
- `StreamReader`: an object too large for the cache, read through a `Stream`.
A file reader holds a shared-locked descriptor (eviction leaves an open file alone) and
`pread`s it on the loop: the bytes are on local disk, mostly in the page cache (a cached
file's open brings its first MiB there first, see `Fetcher`), where a 1 MiB
`pread` takes ~60 µs (p99 ~140 µs; 128 KiB: ~12 µs), less than a thread hop costs. `close`
stays on the loop too (~5 µs: a read-only descriptor, no data to flush). Under load (the
t8 short run) some of these steps take 1-20 ms, but that is the loop waiting to take the GIL
back from the worker threads after the call released it, which a hop would pay as well.

Staleness: an object that changed under its fetch fails the fetch with `Stale`. A
`FetchReader` then calls the `on_stale` its opener gave (the FUSE layer forgets what it knew
of the path, so the next open asks the server) and raises `Stale` to the read. The cache
knows nothing of paths or namespaces: only this callback. (A `StreamReader` passes the
`Stale` of its ranged GET to the read without calling it.)
"""

from __future__ import annotations

import abc
import enum
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from clearmount.cache.stream import Stream
from clearmount.errors import Stale

if TYPE_CHECKING:
    from clearmount.cache.fetch import Fetch

#: The first reader window: bytes fetched from where a reader starts (or jumps to), which
#: the fetch asks for at once. The kernel's own readahead asks for 1-2 MiB past a jump's
#: first read at once: one GET brings it.
FIRST_WINDOW = 4 << 20
#: a read at most this far from where the last one ended continues it
_SEQUENTIAL = 1 << 20


class Outcome(enum.Enum):
    """How an open found the object's bytes (what `clearmount status` counts opens by)."""

    CACHED = "cached"  # a complete cache file
    FETCHED = "fetched"  # this open started a fetch
    JOINED = "joined"  # a fetch of this version was in flight already
    STREAMED = "streamed"  # too large for the cache: ranged GETs straight to the reader
    WRITTEN = "written"  # a file being written through the mount (`cache/upload.py`)


class ObjectReader(abc.ABC):
    """One open file of one object version."""

    outcome: Outcome

    @abc.abstractmethod
    async def read(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes from `offset` (fewer only at the end of the object)."""

    @abc.abstractmethod
    def close(self) -> None:
        """The file was closed: let go of its descriptor (and of its fetch)."""


class _FileReader(ObjectReader):
    """A cache file: `fd` is a shared-locked read descriptor, owned from now on."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def close(self) -> None:
        os.close(self.fd)


class CachedReader(_FileReader):
    """A complete cache file of the object's version."""

    outcome = Outcome.CACHED


class FetchReader(_FileReader):
    """The file `fetch` is filling (its partial file, or the final one once renamed).

    `release` is told once, at `close`, that this file no longer reads `fetch`.
    """

    def __init__(
        self,
        fd: int,
        fetch: Fetch,
        started: bool,
        release: Callable[[Fetch], None],
        on_stale: Callable[[], None],
    ) -> None:
        super().__init__(fd)
        self.fetch = fetch
        self.outcome = Outcome.FETCHED if started else Outcome.JOINED
        self._release = release
        self._on_stale = on_stale
        # where a read continuing this file's reads would start, and where this run of
        # sequential reads began: the window fetched ahead is twice what it has read (once that
        # is more than a jump's first GET brings)
        self._next = -1
        self._streak = 0
        self._window = 0

    async def read(self, offset: int, size: int) -> bytes:
        fetch = self.fetch
        if not fetch.complete:
            # the kernel's readahead may send a few reads at once, slightly out of order
            continues = self._next >= 0 and abs(offset - self._next) <= _SEQUENTIAL
            if continues:
                self._next = max(self._next, offset + size)
                read = self._next - self._streak
                # a jump's own GET brings its first window; past two, the reader reads on
                self._window = min(2 * read, fetch.max_window) if read > 2 * FIRST_WINDOW else 0
            else:
                self._streak, self._next, self._window = offset, offset + size, 0
            try:
                await fetch.wait_for(offset, offset + size, self._window, continues)
            except Stale:
                # the next open must ask the server instead of trusting the old version
                self._on_stale()
                raise
        return os.pread(self.fd, size, offset)

    def close(self) -> None:
        super().close()
        self._release(self.fetch)


class StreamReader(ObjectReader):
    """An object the cache cannot hold: one `Stream` (its window) per open file."""

    outcome = Outcome.STREAMED

    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    async def read(self, offset: int, size: int) -> bytes:
        return await self.stream.read(offset, size)

    def close(self) -> None:
        pass

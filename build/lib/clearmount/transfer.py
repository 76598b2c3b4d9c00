"""The one bridge from the trio loop to blocking SDK calls.

Owns: the thread limiters. Every backend call enters a worker thread here, under an explicit
`CapacityLimiter`: metadata calls (HEAD, LIST) and data transfers (ranged GETs) have separate
budgets, so a few large downloads can never starve `ls`. Retries and timeouts are the SDKs'
own (configured in each adapter); this module only bounds concurrency.

Data slots are held by the trio task, not by its thread: a transfer cancelled to make room
for a reader gives its slot back at once, while its abandoned thread winds down on its own
(at its next progress report, or at the SDK's read timeout when the server has stalled).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")

# Threads given up by their transfers that may still be winding down. Against a server that
# stalls, each keeps its socket until the read timeout; past this many, a new transfer waits.
_ABANDONED_MAX = 256


class Transfer:
    def __init__(self, metadata_concurrency: int, fetch_concurrency: int) -> None:
        self.metadata_limiter = trio.CapacityLimiter(metadata_concurrency)
        self.data_limiter = trio.CapacityLimiter(fetch_concurrency)
        self._data_threads = trio.CapacityLimiter(fetch_concurrency + _ABANDONED_MAX)
        #: called when a transfer somebody reads must wait for a slot; the fetcher sets it to
        #: stop the downloads nobody reads any more
        self.on_reader_waiting: Callable[[], None] = lambda: None
        self.readers_waiting = 0

    async def metadata(self, fn: Callable[..., T], *args: object) -> T:
        """Run a short blocking call (HEAD, LIST, bucket checks) in a worker thread."""
        return await trio.to_thread.run_sync(
            fn, *args, limiter=self.metadata_limiter, abandon_on_cancel=True
        )

    async def data(self, fn: Callable[..., T], *args: object, for_reader: bool = True) -> T:
        """Run a long transfer in a worker thread, in one of the data slots.

        `for_reader`: somebody waits for these bytes. Such a transfer finding every slot busy
        asks for the slots of transfers nobody waits for. On cancellation the thread is
        abandoned: it notices at its next progress report, which fails once its fetch has
        been stopped, and ends.
        """
        if for_reader and self.data_limiter.available_tokens < 1:
            self.readers_waiting += 1
            try:
                self.on_reader_waiting()
                await self.data_limiter.acquire()
            finally:
                self.readers_waiting -= 1
        else:
            await self.data_limiter.acquire()
        try:
            return await trio.to_thread.run_sync(
                fn, *args, limiter=self._data_threads, abandon_on_cancel=True
            )
        finally:
            self.data_limiter.release()

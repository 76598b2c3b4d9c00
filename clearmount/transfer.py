"""The one bridge from the trio loop to blocking SDK calls.

Owns: the thread limiters. Every backend call enters a worker thread here, under an explicit
`CapacityLimiter`: metadata calls (HEAD, LIST) and data transfers (ranged GETs) have separate
budgets, so a few large downloads can never starve `ls`. Retries and timeouts are the SDKs'
own (configured in each adapter); this module only bounds concurrency.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")


class Transfer:
    def __init__(self, metadata_concurrency: int, fetch_concurrency: int) -> None:
        self.metadata_limiter = trio.CapacityLimiter(metadata_concurrency)
        self.data_limiter = trio.CapacityLimiter(fetch_concurrency)

    async def metadata(self, fn: Callable[..., T], *args: object) -> T:
        """Run a short blocking call (HEAD, LIST, bucket checks) in a worker thread."""
        return await trio.to_thread.run_sync(
            fn, *args, limiter=self.metadata_limiter, abandon_on_cancel=True
        )

    async def data(self, fn: Callable[..., T], *args: object) -> T:
        """Run a long transfer in a worker thread.

        On cancellation (shutdown) the thread is abandoned: it notices at its next progress
        report, which fails once the fetch has been aborted, and stops.
        """
        return await trio.to_thread.run_sync(
            fn, *args, limiter=self.data_limiter, abandon_on_cancel=True
        )

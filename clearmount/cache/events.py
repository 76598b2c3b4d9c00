"""What the cache tells whoever keeps count: each fetch's start, bytes and end, as they happen.

Owns: `FetchEvents`, the observer interface the fetch machinery reports to. The composition
root hands the `Fetcher` one (the daemon's `Monitor`); this base class ignores everything, so
the cache runs as well with nobody watching. Every call is made on the trio loop, never from
a worker thread, and a fetch reports exactly one end: completed, failed or stopped.

"Downloaded" bytes are object data received from a store: written into the cache by a fetch
(as each chunk lands, whatever the fetch's end) or returned to a reader by a stream (an
object too large for the cache). Metadata requests (HEAD, LIST) are not data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clearmount.cache.fetch import Fetch
    from clearmount.errors import ClearmountError

log = logging.getLogger(__name__)


class FetchEvents:
    """Told of each fetch event where it happens. Subclass and override what you count."""

    def fetch_started(self, fetch: Fetch) -> None:
        """A fetch into the cache began (once per fetch, before any of its other events)."""

    def fetch_received(self, fetch: Fetch, count: int) -> None:
        """`count` more bytes of `fetch`'s object arrived (may follow its end: a thread left
        winding down at shutdown reports what it still wrote)."""

    def fetch_completed(self, fetch: Fetch) -> None:
        """`fetch` is verified, in place and recorded: its file is a cache hit from now on."""

    def fetch_failed(self, fetch: Fetch, error: ClearmountError) -> None:
        """`fetch` ended without its file; `error` is what its readers got."""

    def fetch_stopped(self, fetch: Fetch) -> None:
        """`fetch` was given up unfinished: nobody read it and a reader needed its slots."""

    def stream_received(self, url: str, count: int) -> None:
        """A stream (an object too large for the cache) received `count` bytes for a reader."""


def tell(event: Callable[..., None], *args: object) -> None:
    """Report one event: a bug in the observer is logged, never the fetch's (or the loop's)
    failure."""
    try:
        event(*args)
    except Exception:
        log.exception("counting %s failed", getattr(event, "__name__", "an event"))

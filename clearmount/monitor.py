"""What a running mount knows about itself: counters, fetch progress, cache use.

Owns: `MountCounters` (plain counters and histograms that the FUSE adapter and the daemon
bump as they work) and `Monitor`, which the fetcher tells of each fetch event as it happens
(`FetchEvents`: start, bytes received, completion, failure, stop; streamed bytes), follows
the fetches in flight (progress and rate, sampled for display only), measures the cache now
and then, and turns it all into the status snapshot (a JSON-able dict) and the one-line
systemd `STATUS=`. Counters are only ever bumped by events, never derived from samples, so a
fetch that starts and ends between two samples is counted like any other. No sockets and no
prometheus_client: control.py serves the snapshot, metrics.py exports the same objects,
sd_notify.py carries the line. Everything here runs on the trio loop except the cache scan,
which runs in a thread.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from clearmount import __version__
from clearmount.cache import evict
from clearmount.cache.events import FetchEvents
from clearmount.cache.fetch import Fetch, Fetcher
from clearmount.cache.upload import Uploads
from clearmount.config import Config
from clearmount.errors import ClearmountError
from clearmount.log import recent_errors
from clearmount.options import MountOptions
from clearmount.transfer import as_worker
from clearmount.units import format_bytes

log = logging.getLogger(__name__)

#: seconds; from a cached read (sub-millisecond) to a multi-GiB fetch
LATENCY_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0, 120.0, 600.0)
# How often fetch progress is sampled while fetches run: the rate shown is over the last
# few samples, so a stalled fetch drops to 0 B/s within seconds.
_SAMPLE_SECONDS = 0.5
_RATE_WINDOW = 10  # samples
# Idle, the monitor wakes for a fetch starting or ending, or this often.
_IDLE_SECONDS = 5.0
# A cache scan stats every file: often enough that the figures are current, rare enough to
# cost nothing on a cache of 100k files.
_SCAN_SECONDS = 30.0
# After a fetch ends the figures are stale: scan again, but never more often than this; after
# a completed one, once fetches have stopped completing for this long (or `_SCAN_SECONDS`):
# at hundreds of small files a second, a scan of the whole cache every 2 s cost the daemon
# ~10 % of its CPU.
_SCAN_SPACING_SECONDS = 2.0
# systemd keeps only the last STATUS=; refreshing it more often only fills its queue.
_STATUS_SECONDS = 2.0


class Histogram:
    """Observations counted into fixed buckets (upper bounds, seconds), plus count and sum."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (inf, count)."""
        total, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


@dataclass
class MountCounters:
    """Monotonic counters of one mount. Bumped on the trio loop only; read anywhere."""

    #: read() calls and the bytes they returned
    reads: int = 0
    read_bytes: int = 0
    #: open() calls by where the bytes come from: "cached" (a hit), "fetched" (a miss that
    #: started a fetch), "joined" (a miss sharing a fetch in flight), "streamed" (too big)
    opens: collections.Counter[str] = field(default_factory=collections.Counter)
    #: user-visible failures by (operation, kind): kind is the error class or errno name
    errors: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    open_seconds: Histogram = field(default_factory=Histogram)
    read_seconds: Histogram = field(default_factory=Histogram)
    #: fetches into the cache started, and how each ended: completed, failed by error kind,
    #: or stopped (closed before their end, their transfer slots given to a reader); the
    #: ones not ended yet are the ones in flight
    fetches_started: int = 0
    fetches_completed: int = 0
    fetches_failed: collections.Counter[str] = field(default_factory=collections.Counter)
    fetches_stopped: int = 0
    #: object data downloaded, counted as it arrives: by fetches into the cache (whatever
    #: their end) and by streams of objects too large for it (`cache/events.py`)
    fetched_bytes: int = 0
    fetch_seconds: Histogram = field(default_factory=Histogram)
    #: cache files removed to keep within the limits, and their bytes
    evictions: int = 0
    evicted_bytes: int = 0
    #: SIGHUP reloads by outcome: "ok" or "failed"
    reloads: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass
class _Tracked:
    fetch: Fetch
    started: float  # monotonic
    started_wall: float
    samples: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=_RATE_WINDOW)
    )

    def sample(self, now: float) -> None:
        self.samples.append((now, self.fetch.bytes_done))

    def rate(self) -> float:
        """Bytes per second over the recent samples (since the start if there are few)."""
        if len(self.samples) >= 2:
            (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
            if t1 > t0:
                return (b1 - b0) / (t1 - t0)
        elapsed = time.monotonic() - self.started
        return self.fetch.bytes_done / elapsed if elapsed > 0 else 0.0


@dataclass
class CacheUse:
    files: int = 0
    bytes: int = 0
    partial_files: int = 0
    partial_bytes: int = 0
    free_bytes: int = 0
    scanned_at: float = 0.0  # wall clock; 0: never scanned


@dataclass
class Reload:
    time: float
    ok: bool
    message: str


class Monitor(FetchEvents):
    """Counts the fetch events of one `Fetcher` and keeps the figures `status` shows.

    The composition root subscribes it (`fetcher.events = monitor`)."""

    def __init__(
        self,
        fetcher: Fetcher,
        counters: MountCounters,
        *,
        mountpoint: Path,
        options: MountOptions,
        config: Callable[[], Config],
    ) -> None:
        self.fetcher = fetcher
        self.counters = counters
        self.mountpoint = mountpoint
        self.options = options
        self._config = config
        self.started_wall = time.time()
        self._started = time.monotonic()
        self.cache = CacheUse()
        #: the mount's uploads (-o writable), set by the composition root
        self.uploads: Uploads | None = None
        self.last_reload: Reload | None = None
        #: the fetches started and not ended yet, in the order they started
        self._tracked: dict[Fetch, _Tracked] = {}
        self._changed = trio.Event()
        self._scan_due = 0.0  # monotonic; 0: at once
        self._scanned = 0.0  # monotonic
        self._completed_at = 0.0  # monotonic: the last fetch completed since the last scan

    # ----- fetch events (FetchEvents), told by the fetcher on the trio loop -----------------

    def fetch_started(self, fetch: Fetch) -> None:
        self.counters.fetches_started += 1
        # a small object's fetch is told once its open's hop has run: it began before that
        since = time.monotonic() - fetch.started
        self._tracked[fetch] = _Tracked(fetch, fetch.started, time.time() - since)
        self._wake()

    def fetch_received(self, fetch: Fetch, count: int) -> None:
        self.counters.fetched_bytes += count

    def fetch_completed(self, fetch: Fetch) -> None:
        tracked = self._tracked.pop(fetch, None)
        self._wake()
        self._completed_at = time.monotonic()
        self.counters.fetches_completed += 1
        if tracked is not None:
            self.counters.fetch_seconds.observe(time.monotonic() - tracked.started)

    def fetch_failed(self, fetch: Fetch, error: ClearmountError) -> None:
        self._ended(fetch)
        self.counters.fetches_failed[type(error).__name__] += 1

    def fetch_stopped(self, fetch: Fetch) -> None:
        self._ended(fetch)
        self.counters.fetches_stopped += 1

    def stream_received(self, url: str, count: int) -> None:
        self.counters.fetched_bytes += count

    def _ended(self, fetch: Fetch) -> _Tracked | None:
        # the cache figures are stale now: measure again soon
        self._scan_due = min(self._scan_due, self._scanned + _SCAN_SPACING_SECONDS)
        self._wake()
        return self._tracked.pop(fetch, None)

    def _wake(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    # ----- following fetches in flight (for display) ----------------------------------------

    def sample(self) -> None:
        """Record the progress of the fetches in flight, for their rates."""
        now = time.monotonic()
        for tracked in self._tracked.values():
            tracked.sample(now)

    @property
    def fetches_in_flight(self) -> int:
        """Fetches started and not ended yet."""
        return len(self._tracked)

    def fetches(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {
                "url": t.fetch.url,
                "size": t.fetch.info.size,
                "bytes_done": t.fetch.bytes_done,
                "rate": round(t.rate(), 1),
                "elapsed": round(now - t.started, 3),
                "started": t.started_wall,
            }
            for t in self._tracked.values()
        ]

    # ----- the loop -------------------------------------------------------------------------

    async def run(self, publish: Callable[[str], None]) -> None:
        """Sample forever; hand `publish` the status line whenever it changed (rate-limited)."""
        last_line, last_sent = "", 0.0
        while True:
            wait = _SAMPLE_SECONDS if self._tracked else _IDLE_SECONDS
            if self._completed_at:  # the scan after a burst of completed fetches
                wait = min(wait, self._completed_at + _SCAN_SPACING_SECONDS - time.monotonic())
            with trio.move_on_after(max(wait, 0.0)):
                await self._changed.wait()
            await self.refresh()
            # the starts and ends of a burst of small files share one refresh
            await trio.sleep(_SAMPLE_SECONDS / 5)
            line = self.status_line()
            now = time.monotonic()
            if line != last_line and now - last_sent >= _STATUS_SECONDS:
                publish(line)
                last_line, last_sent = line, now

    async def refresh(self) -> None:
        """Sample the fetches' progress, and measure the cache if its figures are due."""
        self.sample()
        due = self._scan_due
        if self._completed_at:
            due = min(due, self._completed_at + _SCAN_SPACING_SECONDS)
        if time.monotonic() >= due:
            await self.scan_cache()

    async def scan_cache(self) -> None:
        self._scanned = time.monotonic()
        self._scan_due = self._scanned + _SCAN_SECONDS
        self._completed_at = 0.0
        layout = self.fetcher.layout
        try:
            usage = await trio.to_thread.run_sync(
                as_worker, evict.scan, layout, abandon_on_cancel=True
            )
        except OSError as exc:
            log.warning("cannot measure the cache at %s: %s", layout.root, exc)
            return
        partial = [f for f in usage.files if f.partial]
        self.cache = CacheUse(
            files=len(usage.files) - len(partial),
            bytes=usage.used_bytes - sum(f.size for f in partial),
            partial_files=len(partial),
            partial_bytes=sum(f.size for f in partial),
            free_bytes=usage.free_bytes,
            scanned_at=time.time(),
        )

    def note_reload(self, ok: bool, message: str) -> None:
        self.last_reload = Reload(time.time(), ok, message)
        self.counters.reloads["ok" if ok else "failed"] += 1

    # ----- what is shown --------------------------------------------------------------------

    def status_line(self) -> str:
        """One line for systemd's STATUS= (shown by `systemctl status`)."""
        parts = [f"{self.cache.files} files cached ({format_bytes(self.cache.bytes)})"]
        if self._tracked:
            rate = sum(t.rate() for t in self._tracked.values())
            count = len(self._tracked)
            plural = "es" if count != 1 else ""
            parts.append(f"{count} fetch{plural} in flight ({format_bytes(rate)}/s)")
        else:
            parts.append("no fetches in flight")
        shared = self.fetcher.shared
        if shared is not None:
            st = shared.stats
            parts.append(
                f"L2 {st.hits} hits, {st.publications} published, {st.lease_waits} waits, "
                f"{st.takeovers} takeovers, {format_bytes(max(st.bytes_saved, 0))} saved"
            )
        if recent_errors.total:
            parts.append(f"{recent_errors.total} errors")
        return f"serving {self.mountpoint}: " + ", ".join(parts)

    def _shared(self) -> dict[str, Any] | None:
        """The L2's figures: L1 hits (opens served by this node's cache), L2 hits, ..."""
        shared = self.fetcher.shared
        if shared is None:
            return None
        return {
            "dir": str(shared.data_dir),
            "node": shared.node,
            "l1_hits": self.counters.opens["cached"],
            **dataclasses.asdict(shared.stats),
        }

    def _fetch_processes(self) -> dict[str, int] | None:
        """How many fetch processes take jobs, of how many, and how many were started again
        after one died (`-o fetch_processes`; None without)."""
        processes = self.fetcher.processes
        if processes is None:
            return None
        return {"ready": processes.ready, "count": processes.count, "restarts": processes.restarts}

    def snapshot(self) -> dict[str, Any]:
        """Everything `clearmount status` shows, as plain JSON types."""
        config = self._config()
        counters = self.counters
        limits = self.fetcher.limits
        reload = self.last_reload
        return {
            "version": __version__,
            "pid": os.getpid(),
            "mountpoint": str(self.mountpoint),
            "started": self.started_wall,
            "uptime": round(time.monotonic() - self._started, 3),
            "config_files": [str(path) for path in config.files],
            "cache_dir": str(self.fetcher.layout.root),
            "cache_layout": self.fetcher.layout.kind,
            "shared": self._shared(),
            "options": dataclasses.asdict(self.options),
            "fetches": self.fetches(),
            "uploads": self.uploads.in_flight() if self.uploads is not None else [],
            "fetch_processes": self._fetch_processes(),
            "cache": {
                **dataclasses.asdict(self.cache),
                "max_bytes": limits.max_bytes,
                "min_free_bytes": limits.min_free_bytes,
            },
            "counters": {
                "reads": counters.reads,
                "read_bytes": counters.read_bytes,
                "opens": dict(counters.opens),
                "fetches_started": counters.fetches_started,
                "fetches_completed": counters.fetches_completed,
                "fetches_failed": dict(counters.fetches_failed),
                "fetches_stopped": counters.fetches_stopped,
                "fetched_bytes": counters.fetched_bytes,
                "evictions": counters.evictions,
                "evicted_bytes": counters.evicted_bytes,
                "errors": {f"{op}:{kind}": n for (op, kind), n in counters.errors.items()},
                "reloads": dict(counters.reloads),
                **(self.uploads.counters() if self.uploads is not None else {}),
            },
            "errors": {"total": recent_errors.total, "recent": recent_errors.snapshot()},
            "reload": dataclasses.asdict(reload) if reload is not None else None,
        }

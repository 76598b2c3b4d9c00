"""What a running mount knows about itself: counters, fetch progress, cache use.

Owns: `MountCounters` (plain counters and histograms that the FUSE adapter and the daemon
bump as they work) and `Monitor`, which follows each fetch in flight (bytes, rate, duration,
outcome), measures the cache now and then, and turns it all into the status snapshot (a
JSON-able dict) and the one-line systemd `STATUS=`. No sockets and no prometheus_client:
control.py serves the snapshot, metrics.py exports the same objects, sd_notify.py carries the
line. Everything here runs on the trio loop except the cache scan, which runs in a thread.
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
from clearmount.cache.fetch import Fetch, Fetcher
from clearmount.config import Config
from clearmount.log import recent_errors
from clearmount.options import MountOptions

log = logging.getLogger(__name__)

#: seconds; from a cached read (sub-millisecond) to a multi-GiB fetch
LATENCY_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.25, 1.0, 2.5, 10.0, 30.0, 120.0, 600.0)
# How often fetch progress is sampled while fetches run: the rate shown is over the last
# few samples, so a stalled fetch drops to 0 B/s within seconds.
_SAMPLE_SECONDS = 0.5
_RATE_WINDOW = 10  # samples
# Idle, the monitor wakes for a fetch starting or ending (Fetcher.changed), or this often.
_IDLE_SECONDS = 5.0
# A cache scan stats every file: often enough that the figures are current, rare enough to
# cost nothing on a cache of 100k files.
_SCAN_SECONDS = 30.0
# After a fetch ends the figures are stale: scan again, but never more often than this.
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
    #: fetches seen to finish: completed, failed by error kind, or stopped (closed before
    #: their end, their transfer slots given to a reader)
    fetches_completed: int = 0
    fetches_failed: collections.Counter[str] = field(default_factory=collections.Counter)
    fetches_stopped: int = 0
    #: bytes downloaded by fetches that have finished (those in flight are added on read)
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


class Monitor:
    """Follows the fetches of one `Fetcher` and keeps the figures `status` shows."""

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
        self.last_reload: Reload | None = None
        self._tracked: dict[int, _Tracked] = {}
        self._scan_due = 0.0  # monotonic; 0: at once
        self._scanned = 0.0  # monotonic

    # ----- following fetches ----------------------------------------------------------------

    def sample(self) -> None:
        """Notice new fetches, record progress, and account for the ones that ended."""
        now = time.monotonic()
        current = {id(fetch): fetch for fetch in self.fetcher.in_flight.values()}
        for key, fetch in current.items():
            if key not in self._tracked:
                self._tracked[key] = _Tracked(fetch, now, time.time())
        for key, tracked in list(self._tracked.items()):
            fetch = tracked.fetch
            if key in current and not (fetch.complete or fetch.error):
                tracked.sample(now)
                continue
            del self._tracked[key]
            counters = self.counters
            counters.fetched_bytes += fetch.bytes_done
            if fetch.stopped:
                counters.fetches_stopped += 1
            elif fetch.error is not None:
                counters.fetches_failed[type(fetch.error).__name__] += 1
            else:
                counters.fetches_completed += 1
                counters.fetch_seconds.observe(now - tracked.started)
            self._scan_due = min(self._scan_due, self._scanned + _SCAN_SPACING_SECONDS)

    def in_flight_bytes(self) -> int:
        return sum(t.fetch.bytes_done for t in self._tracked.values())

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
            for t in sorted(self._tracked.values(), key=lambda t: t.started)
        ]

    # ----- the loop -------------------------------------------------------------------------

    async def run(self, publish: Callable[[str], None]) -> None:
        """Sample forever; hand `publish` the status line whenever it changed (rate-limited)."""
        last_line, last_sent = "", 0.0
        while True:
            busy = bool(self.fetcher.in_flight) or bool(self._tracked)
            with trio.move_on_after(_SAMPLE_SECONDS if busy else _IDLE_SECONDS):
                await self.fetcher.changed.wait()
            await self.refresh()
            line = self.status_line()
            now = time.monotonic()
            if line != last_line and now - last_sent >= _STATUS_SECONDS:
                publish(line)
                last_line, last_sent = line, now

    async def refresh(self) -> None:
        """Sample the fetches, and measure the cache if its figures are due."""
        self.sample()
        if time.monotonic() >= self._scan_due:
            await self.scan_cache()

    async def scan_cache(self) -> None:
        self._scanned = time.monotonic()
        self._scan_due = self._scanned + _SCAN_SECONDS
        layout = self.fetcher.layout
        try:
            usage = await trio.to_thread.run_sync(evict.scan, layout, abandon_on_cancel=True)
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
        parts = [f"{self.cache.files} files cached ({human_bytes(self.cache.bytes)})"]
        if self._tracked:
            rate = sum(t.rate() for t in self._tracked.values())
            count = len(self._tracked)
            plural = "es" if count != 1 else ""
            parts.append(f"{count} fetch{plural} in flight ({human_bytes(rate)}/s)")
        else:
            parts.append("no fetches in flight")
        if recent_errors.total:
            parts.append(f"{recent_errors.total} errors")
        return f"serving {self.mountpoint}: " + ", ".join(parts)

    def snapshot(self) -> dict[str, Any]:
        """Everything `clearmount status` shows, as plain JSON types."""
        self.sample()
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
            "options": dataclasses.asdict(self.options),
            "fetches": self.fetches(),
            "cache": {
                **dataclasses.asdict(self.cache),
                "max_bytes": limits.max_bytes,
                "min_free_bytes": limits.min_free_bytes,
            },
            "counters": {
                "reads": counters.reads,
                "read_bytes": counters.read_bytes,
                "opens": dict(counters.opens),
                "fetches_started": self.fetcher.fetches_started,
                "fetches_completed": counters.fetches_completed,
                "fetches_failed": dict(counters.fetches_failed),
                "fetches_stopped": counters.fetches_stopped,
                "fetched_bytes": counters.fetched_bytes + self.in_flight_bytes(),
                "evictions": counters.evictions,
                "evicted_bytes": counters.evicted_bytes,
                "errors": {f"{op}:{kind}": n for (op, kind), n in counters.errors.items()},
                "reloads": dict(counters.reloads),
            },
            "errors": {"total": recent_errors.total, "recent": recent_errors.snapshot()},
            "reload": dataclasses.asdict(reload) if reload is not None else None,
        }


def human_bytes(count: float) -> str:
    """1536 -> "1.5 KiB"."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"

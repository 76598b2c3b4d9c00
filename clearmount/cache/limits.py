"""The cache's limits, and every decision made against them.

Owns: `CacheLimits` (a byte limit and a minimum free space on the cache's filesystem), how
they are resolved (command-line sizes over clearml.conf over the defaults: `resolve`), and
the policy the rest of the cache applies:
- `CacheLimits.fits`: can an object be cached at all (else the daemon streams it);
- `CacheLimits.exceeded`: is the cache (with the bytes still to come for the downloads in
  flight) over a limit: the eviction loop's trigger, and `evict`'s stopping rule;
- `waits_for_room`: does a fetch wait for the eviction loop before it downloads (the cache,
  with the other downloads in flight, is over the size limit: eviction fell behind);
- `low_room`: the warning a mount starts with when its filesystem leaves (almost) no room
  for cached files;
- `EVICTION_INTERVAL` / `CHECK_GAP` / `STUCK_PAUSE` / `RESCAN_INTERVAL`, `eviction_due` and
  `eviction_due_by_size`: when the daemon's eviction loop checks and scans.
The numbers these decisions take (bytes used, free, reserved) are measured by their callers,
off the trio loop: `free_bytes` is a `statvfs`, which a busy or network disk can hold for
milliseconds. Nothing here blocks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clearmount.config import Config, parse_size
from clearmount.errors import UserError
from clearmount.units import format_bytes

#: Room for cached files (free space less the minimum kept free) below which a mount starts
#: with a warning: every file larger than that room is streamed, uncached.
LOW_ROOM = 1 << 30
#: Seconds between checks of the cache limits when no fetch starts or ends.
EVICTION_INTERVAL = 5.0
#: Shortest gap between two free-space checks: the fetch starts and ends of a burst of small
#: files (hundreds a second) share one `statvfs` thread hop instead of making two each (the
#: size limit, known without a system call, is checked at every start and end).
CHECK_GAP = 0.1
#: Seconds before the next pass after one that could not get within the limits (the rest is
#: open, pinned or in flight): passes back to back would only scan the cache again.
STUCK_PAUSE = 1.0
#: Seconds at most that a fetch waits for the eviction loop to make room (`waits_for_room`).
ROOM_WAIT = 5.0
#: Seconds between full scans of the cache while the estimate says all is well (the ClearML
#: SDK adds files behind the daemon's back).
RESCAN_INTERVAL = 30.0


@dataclass(frozen=True)
class CacheLimits:
    max_bytes: int | None = None  # None: no byte limit
    min_free_bytes: int = 0
    #: once over a limit, evict down to max_bytes * (1 - margin) and up to
    #: min_free_bytes * (1 + margin) (ClearML 2.x's cleanup_margin_percent; 0 for CacheManager)
    margin: float = 0.0
    #: eviction stops at a file used this recently (ClearML 2.x's cleanup_seconds_threshold)
    recent_seconds: float = 0.0

    def with_margin(self) -> CacheLimits:
        """The limits eviction works down to once it started."""
        if not self.margin:
            return self
        return CacheLimits(
            None if self.max_bytes is None else int(self.max_bytes * (1 - self.margin)),
            int(self.min_free_bytes * (1 + self.margin)),
            recent_seconds=self.recent_seconds,
        )

    def describe(self) -> str:
        limit = "no limit" if self.max_bytes is None else f"{self.max_bytes} bytes"
        return f"max {limit}, keep {self.min_free_bytes} bytes free"

    def fits(self, size: int, free: int | None, used: int, reserved: int) -> bool:
        """Whether an object of `size` bytes can be cached within the limits at all: evicting
        every file (`used` bytes) would make room for it next to the `reserved` bytes still to
        come for the downloads in flight. `free` is the filesystem's free space (None: it
        could not be measured, and then only the byte limit counts)."""
        if self.max_bytes is not None and size > self.max_bytes:
            return False
        if not self.min_free_bytes or free is None:
            return True
        return size <= free - self.min_free_bytes + used - reserved

    def exceeded(self, used: int, free: int | None, reserved: int) -> bool:
        """Whether `used` bytes in the cache, plus `reserved` still to come, break a limit
        (`free` None: the free space could not be measured, which counts as over)."""
        if self.max_bytes is not None and used + reserved > self.max_bytes:
            return True
        if not self.min_free_bytes:
            return False
        return free is None or free - reserved < self.min_free_bytes


def eviction_due(
    limits: CacheLimits,
    since_scan: float,
    used: int,
    free: int | None,
    reserved: int,
) -> bool:
    """Whether the eviction loop should scan (and evict) now: the running estimate (`used` at
    the last scan, `reserved` for the downloads in flight) may be over a limit, or the last
    scan is `RESCAN_INTERVAL` old."""
    return since_scan >= RESCAN_INTERVAL or limits.exceeded(used, free, reserved)


def eviction_due_by_size(limits: CacheLimits, since_scan: float, used: int, reserved: int) -> bool:
    """`eviction_due` as far as it can be told without measuring the free space (no system
    call): the size limit and the rescan age. The loop checks this at every fetch start and
    end, and the free space at most once per `CHECK_GAP`."""
    if since_scan >= RESCAN_INTERVAL:
        return True
    return limits.max_bytes is not None and used + reserved > limits.max_bytes


def waits_for_room(limits: CacheLimits, used: int, reserved: int, size: int) -> bool:
    """Whether a fetch of `size` bytes, counted in `reserved` (the bytes still to come for the
    downloads in flight), waits for the next eviction pass before it downloads: the cache
    (`used` bytes) is over the size limit without it. The eviction loop evicts for the
    downloads in flight as they start, so this holds only while it is behind (a loaded
    machine): waiting then keeps the overshoot within about one download. Only the size limit,
    known without a system call, counts."""
    return limits.max_bytes is not None and used + reserved - size > limits.max_bytes


def free_bytes(root: Path) -> int | None:
    """Free space on `root`'s filesystem for unprivileged users (blocking: a `statvfs`); None
    if it cannot be measured."""
    try:
        vfs = os.statvfs(root)
    except OSError:
        return None
    return vfs.f_bavail * vfs.f_frsize


def low_room(limits: CacheLimits, root: Path) -> str | None:
    """The warning for a cache whose filesystem leaves less than `LOW_ROOM` for cached files
    beyond the free space kept (blocking: a `statvfs`), or None. Such a mount evicts the cache
    down to what it must keep and streams, uncached, every file that does not fit: the
    operator should know at start, not from slow reads later."""
    free = free_bytes(root)
    if not limits.min_free_bytes or free is None:
        return None
    room = free - limits.min_free_bytes
    if room >= LOW_ROOM:
        return None
    left = f"only {format_bytes(room)}" if room > 0 else "no room"
    return (
        f"the cache's filesystem ({root}) has {format_bytes(free)} free and the mount keeps "
        f"{format_bytes(limits.min_free_bytes)} free: {left} left for cached files, so larger "
        "files are streamed without caching (free some space, or lower --cache-min-free)"
    )


def resolve(
    config: Config,
    root: Path,
    max_size: str | None = None,
    min_free: str | None = None,
) -> CacheLimits:
    """The cache limits: command-line sizes over clearml.conf over the defaults (the minimum
    free space defaults to 5 % of the cache's filesystem, as mountpoint-s3 keeps)."""
    max_bytes = config.cache.max_used_bytes
    keep_free = config.cache.min_free_bytes
    try:
        if max_size is not None:
            max_bytes = parse_size(max_size)
        if min_free is not None:
            keep_free = parse_size(min_free)
    except ValueError as exc:
        raise UserError(f"bad size: {exc}", 2) from None
    if keep_free is None:
        vfs = os.statvfs(root)
        keep_free = vfs.f_blocks * vfs.f_frsize // 20
    if config.cache.disk_strategy:
        # ClearML 2.x's eviction: down to the limits less the margin, never a file in use
        return CacheLimits(
            max_bytes,
            keep_free,
            config.cache.cleanup_margin,
            config.cache.cleanup_seconds_threshold,
        )
    return CacheLimits(max_bytes, keep_free)

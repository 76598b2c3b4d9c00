"""Keeping the cache within its limits: usage, least-recently-used eviction, protection.

Owns: the scan that measures what the cache holds, and `evict`, which removes complete files
least recently used first until the limits hold (`cache.limits` says when they do). Never
removes a pinned file, a file in flight (partial files are never candidates) or an open one:
every open handle holds a shared `flock` on its file, and eviction takes the exclusive lock
before unlinking, across every process sharing the cache. Recency is the layout's
(`CacheLayout.recency`): mtime in ClearML's CacheManager layout, atime in the 2.x disk-space
layout, which clearmount and the ClearML SDK both set on every hit. Once over a limit, eviction
goes on to the limits less their margin (`CacheLimits.margin`, the 2.x layout's
cleanup_margin_percent) and stops at a file used in the last `CacheLimits.recent_seconds`.
Synchronous; the daemon runs it in a worker thread and the `clearmount cache` commands call it
directly.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

from clearmount.cache.index import CacheIndex
from clearmount.cache.layout import PARTIAL_SUFFIX, CacheLayout
from clearmount.cache.limits import CacheLimits, free_bytes

log = logging.getLogger(__name__)

#: Seconds between two "still over its limits" warnings: while downloads in flight keep the
#: cache over, every pass would say it again.
_OVER_WARNING_GAP = 60.0
_last_over_warning = -_OVER_WARNING_GAP


@dataclass(frozen=True)
class CachedFile:
    name: str  # the index name (`CacheLayout.name_of`)
    path: Path
    size: int
    last_used: float  # the layout's recency
    partial: bool


@dataclass
class Usage:
    files: list[CachedFile]
    used_bytes: int
    free_bytes: int  # free space on the cache's filesystem, for unprivileged users


def scan(layout: CacheLayout) -> Usage:
    files = []
    for path, stat in layout.files():
        files.append(
            CachedFile(
                layout.name_of(path),
                path,
                stat.st_size,
                layout.recency(stat),
                path.name.endswith(PARTIAL_SUFFIX),
            )
        )
    return Usage(files, sum(f.size for f in files), free_bytes(layout.root) or 0)


def remove_unless_open(path: Path) -> bool:
    """Unlink `path` unless a reader holds it open (its shared flock); True if removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)  # closing releases the lock
    return True


@dataclass
class EvictResult:
    removed: list[CachedFile]
    kept_busy: list[str]  # wanted to remove, but open or pinned
    used_bytes: int
    #: still over a limit: what is left is open, pinned, recent or being downloaded
    over: bool = False
    #: of `used_bytes`, those of partial files (downloads in flight)
    partial_bytes: int = 0


def evict(
    layout: CacheLayout,
    index: CacheIndex,
    limits: CacheLimits,
    reserve: int = 0,
    target_bytes: int | None = None,
    protected: Collection[str] = (),
) -> EvictResult:
    """Remove least recently used files until the cache holds at most `target_bytes` (default:
    the limit) with room for `reserve` more bytes (downloads in flight) and the minimum free
    space left on the disk."""
    usage = scan(layout)
    goal = limits if target_bytes is None else replace(limits, max_bytes=target_bytes)
    used, free = usage.used_bytes, usage.free_bytes

    def over() -> bool:
        return goal.exceeded(used, free, reserve)

    removed: list[CachedFile] = []
    kept: list[str] = []
    partial = sum(f.size for f in usage.files if f.partial)
    if not over():
        return EvictResult(removed, kept, used, partial_bytes=partial)
    goal = goal.with_margin()
    pinned = index.pinned_names()
    now = time.time()
    candidates = sorted((f for f in usage.files if not f.partial), key=lambda f: f.last_used)
    for candidate in candidates:
        if not over():
            break
        if goal.recent_seconds and now - candidate.last_used < goal.recent_seconds:
            break  # ClearML 2.x stops before files in use right now
        if candidate.name in pinned or candidate.name in protected:
            kept.append(candidate.name)
            continue
        if not remove_unless_open(candidate.path):
            kept.append(candidate.name)
            continue
        index.remove(candidate.name)
        removed.append(candidate)
        used -= candidate.size
        free += candidate.size
    if removed:
        log.info(
            "evicted %d file(s), %d bytes (cache now %d bytes; %s)",
            len(removed),
            sum(f.size for f in removed),
            used,
            limits.describe(),
        )
    still_over = over()
    if still_over:
        global _last_over_warning
        now = time.monotonic()
        quiet = now - _last_over_warning < _OVER_WARNING_GAP
        if not quiet:
            _last_over_warning = now
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "cache still over its limits (%d bytes used, %d free): the rest is open, pinned "
            "or being downloaded",
            used,
            free,
        )
    return EvictResult(removed, kept, used, still_over, partial)


def reconcile(layout: CacheLayout, index: CacheIndex) -> None:
    """At start-up: forget rows whose file is gone, and discard files whose size is not the
    size recorded (a torn or foreign write) with a warning."""
    for entry in index.all():
        if not layout.owns(entry.name):
            continue  # the other layout's row: kept for when the config switches back
        path = layout.path_of(entry.name)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            if not entry.pinned:
                index.remove(entry.name)
            continue
        if entry.size >= 0 and size != entry.size:
            log.warning(
                "discarding cache file of %s: %d bytes on disk, %d recorded",
                entry.url,
                size,
                entry.size,
            )
            if remove_unless_open(path):
                index.remove(entry.name)

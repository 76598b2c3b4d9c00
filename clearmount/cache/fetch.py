"""Fetching objects into the cache while readers read them.

Owns: `Fetcher`, the single-flight table (one `Fetch` per URL and object version, however
many opens), and `Fetch`, which streams an object into its `.partially` file with parallel
ranged GETs, tells waiting readers when their bytes are on disk, then verifies the size and
renames the file into place. A reader never waits for more than the bytes it asked for.
`Fetcher.open` decides where an open file's bytes come from (a complete cache file, a fetch
it starts or joins, or a stream) and returns the `cache.reader.ObjectReader` that reads them.
With a shared L2 cache (`cache.shared`), a fetch asks it where its bytes come from before it
runs (`SharedCache.prepare`: the L2 file, or the bucket) and hands it the result after
(`SharedCache.finish`: publication); nothing else here knows the L2.

Threads: each part is downloaded in a worker thread (through `Transfer.in_thread`) that opens its
own descriptor of the partial file, so a thread abandoned at shutdown can only ever write to
that file. Progress goes back to the trio loop without waiting for it (`run_sync_soon`, in
order, before the thread's own completion): the thread reads on while readers wake. The
local blocking work of an open (opening, locking and touching cache files, the index, the
free space) runs in worker threads too, through `Transfer.local`.

Bounded time: each part is downloaded in attempts, each one watched (`Progress`): an attempt
must receive every MiB within the store's stall window, or it is given up. A failed or
stalled attempt is resumed from the last byte received, with jittered exponential backoff,
until the part has gone `Deadlines.operation` seconds (or `_TRIES` tries in a row) without
receiving 1 MiB; then its readers get EIO. The thread of an attempt given up may run on for a
while: its bytes are dropped (`attempts`).

Counting: each fetch reports its start, every chunk that lands and its one end (completed,
failed or stopped) to the `FetchEvents` the composition root gave the `Fetcher`, where they
happen, so no fetch is missed however quickly it ends; streams report their bytes likewise.

A fetch goes on after its files are closed, so that a file opened once ends up cached, but
not at a reader's expense: once no open file reads a fetch, it gives up its transfer slots
(and its partial file) as soon as a transfer somebody reads has to wait for one.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio

from clearmount.backends.base import ObjectInfo, ObjectStore
from clearmount.cache.events import FetchEvents, tell
from clearmount.cache.index import CacheIndex
from clearmount.cache.layout import CacheLayout, LayoutConflict
from clearmount.cache.limits import CacheLimits, free_bytes
from clearmount.cache.reader import CachedReader, FetchReader, ObjectReader, StreamReader
from clearmount.cache.shared import SharedCache
from clearmount.cache.stream import Stream
from clearmount.errors import CacheError, ClearmountError, Unavailable
from clearmount.transfer import Progress, Transfer

log = logging.getLogger(__name__)


#: URLs whose last fetch's source (`Fetcher.sources`) is remembered.
_SOURCES_KEPT = 100_000

#: Attempts of one part in a row that bring no whole MiB, before its readers get EIO.
_TRIES = 8


def _backoff(tries: int) -> float:
    """Seconds to wait before resuming a part after its `tries`-th failure in a row (from 1):
    random, up to 0.25 * 2**(tries - 1), at most 8 (the SDK has already retried each
    request)."""
    return random.uniform(0, min(8.0, 0.25 * 2 ** (tries - 1)))


# At most this long the other parts wait for the first part's first bytes.
_FIRST_BYTES_HEAD_START = 0.05
# Bytes per progress report: small for the first part, so the first read returns early.
_FIRST_PART_CHUNK = 128 << 10
_CHUNK = 1 << 20


def _chunk_size(part: int, object_size: int) -> int:
    if object_size <= _CHUNK:
        # one progress report, not two: the first READ of a small file (1 MiB readahead)
        # wants all of it anyway
        return max(object_size, 1)
    return _FIRST_PART_CHUNK if part == 0 else _CHUNK


class _Aborted(Exception):
    """Raised inside a worker thread when its fetch no longer wants bytes."""


class Fetch:
    def __init__(
        self,
        url: str,
        store: ObjectStore,
        info: ObjectInfo,
        final: Path,
        partial: Path,
        part_size: int,
        parallel: int,
        verify: bool = True,
        events: FetchEvents | None = None,
        name: str | None = None,
    ) -> None:
        self.url = url
        #: the index name of the final file (`CacheLayout.name_of`)
        self.name = final.name if name is None else name
        self.verify = verify
        self.events = events or FetchEvents()
        self.store = store
        self.info = info
        self.final = final
        self.partial = partial
        self.part_size = part_size
        parts = -(-info.size // part_size)
        self.parallel = max(1, min(parallel, parts))
        # fronts[i]: the end of the bytes already on disk in part i (written from its start)
        self.fronts = [i * part_size for i in range(parts)]
        # attempts[i]: the current attempt at part i; the thread of an earlier, abandoned one
        # may still run, and its bytes are dropped
        self.attempts = [0] * parts
        self._pending = collections.deque(range(parts))
        self._changed = trio.Event()
        self.error: ClearmountError | None = None
        self.complete = False
        #: set once `run` is over: `complete`, or `error` says why not
        self.ended = trio.Event()
        # A single-part download is hashed as it arrives; parallel parts are hashed at the
        # end (only S3 ETags of single-part uploads are MD5s).
        self._digest = hashlib.md5() if verify and parts == 1 and _md5_of(info.version) else None
        self.aborted = False
        #: verified, renamed into place and recorded in the index
        self.sealed = False
        #: where `_seal` records the file (given by `run`)
        self._index: CacheIndex
        #: open files reading this fetch
        self.readers = 0
        #: stopped because nobody read it any more and a reader needed its transfer slots
        self.stopped = False
        self._scope: trio.CancelScope | None = None
        self._report: Callable[..., None] = lambda *args: None  # set by run(), on the loop

    @property
    def bytes_done(self) -> int:
        return sum(front - i * self.part_size for i, front in enumerate(self.fronts))

    def has(self, start: int, end: int) -> bool:
        """Whether bytes [start, end) are on disk."""
        if self.complete:
            return True
        end = min(end, self.info.size)
        if start >= end:
            return True
        for i in range(start // self.part_size, (end - 1) // self.part_size + 1):
            if self.fronts[i] < min((i + 1) * self.part_size, end):
                return False
        return True

    async def wait_for(self, start: int, end: int) -> None:
        """Return once bytes [start, end) are on disk; raise the fetch's error if they never
        will be."""
        while not self.has(start, end):
            if self.error is not None:
                raise self.error
            self._prioritize(start // self.part_size)
            await self._changed.wait()

    def _prioritize(self, part: int) -> None:
        # A reader jumped ahead (torch.load reads a zip's directory at the end first): its
        # part goes next instead of waiting behind every part before it.
        if self._pending and self._pending[0] != part and part in self._pending:
            self._pending.remove(part)
            self._pending.appendleft(part)

    def _wake(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def stop(self) -> None:
        """Give up the download, unless every byte is already on disk."""
        if self.error is not None or self.sealed or self.has(0, self.info.size):
            return
        self.stopped = True
        self._fail(Unavailable("download stopped: no open file reads it", self.url), quiet=True)
        if self._scope is not None:
            self._scope.cancel()

    def _advance(self, part: int, front: int, attempt: int, received: int) -> None:
        # Runs as a trio system callback: must never raise.
        if not self.aborted and attempt == self.attempts[part]:
            self.fronts[part] = front
            self._wake()
        tell(self.events.fetch_received, self, received)

    async def run(self, transfer: Transfer, index: CacheIndex) -> None:
        self._index = index
        try:
            self._report = trio.lowlevel.current_trio_token().run_sync_soon
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._worker, transfer, nursery.cancel_scope)
                if self.parallel > 1:
                    # The first part's first bytes go out before the other parts compete for
                    # the link and the CPU: a reader's first read is waiting for them.
                    with trio.move_on_after(_FIRST_BYTES_HEAD_START):
                        while not self.bytes_done and self.error is None:
                            await self._changed.wait()
                for _ in range(self.parallel - 1):
                    nursery.start_soon(self._worker, transfer, nursery.cancel_scope)
            if self.error is None:
                await self._install(transfer)
        except (ClearmountError, OSError) as exc:
            self._fail(exc)
        except Exception as exc:  # a bug must fail this fetch, never the whole mount
            log.exception("unexpected error fetching %s", self.url)
            self._fail(exc)
        except BaseException:
            if self.error is None and self.has(0, self.info.size):
                # every byte is on disk: keep the download rather than fetch it again
                with trio.CancelScope(shield=True), contextlib.suppress(ClearmountError, OSError):
                    await self._install(transfer)
            if not self.complete:
                self._fail(Unavailable("fetch cancelled (daemon stopping)", self.url), quiet=True)
            raise
        finally:
            self.ended.set()
            self._wake()

    async def _worker(self, transfer: Transfer, siblings: trio.CancelScope) -> None:
        try:
            while self._pending and self.error is None:
                part = self._pending.popleft()
                async with transfer.data_slot(for_reader=self.readers > 0):
                    await self._download(transfer, part)
        except (ClearmountError, OSError, _Aborted) as exc:
            if self.error is None:
                self._fail(exc)
            siblings.cancel()

    async def _download(self, transfer: Transfer, part: int) -> None:
        """Download one part, resuming it from the last byte received after a failure or a
        stall, until it has gone `operation` seconds or `_TRIES` tries without a MiB."""
        deadlines = self.store.deadlines
        end = min((part + 1) * self.part_size, self.info.size)
        progress = Progress(deadlines.stall_window, deadlines.operation, self.url)
        tries = 0
        while self.fronts[part] < end:
            start, started = self.fronts[part], time.monotonic()
            self.attempts[part] += 1
            try:
                await transfer.in_thread(
                    self._fetch_range,
                    part,
                    self.attempts[part],
                    start,
                    end,
                    progress,
                    progress=progress,
                )
                return
            except Unavailable as exc:
                if progress.stalled:
                    # the abandoned thread may run on: its bytes (and its seal) no longer count
                    self.attempts[part] += 1
                    self._digest = None
                    if self.fronts[part] >= end:
                        return  # it had every byte: given up just as it ended
                if progress.last_step > started:
                    tries = 0  # it brought a whole step: the budget starts again
                tries += 1
                left = progress.left()
                if tries >= _TRIES or left <= 0 or self.aborted:
                    raise
                log.warning("resuming %s at byte %d: %s", self.url, self.fronts[part], exc)
                await trio.sleep(min(_backoff(tries), left))

    def _fetch_range(
        self, part: int, attempt: int, position: int, end: int, progress: Progress
    ) -> None:
        """One attempt at bytes [position, end) of a part, into the partial file (runs in a
        worker thread)."""
        digest = self._digest
        fd = os.open(self.partial, os.O_WRONLY | os.O_CLOEXEC)
        try:
            chunks = self.store.read_range(
                self.info.key,
                self.info.version,
                position,
                end,
                _chunk_size(part, self.info.size),
            )
            for chunk in chunks:
                if self.aborted or attempt != self.attempts[part]:
                    raise _Aborted
                if digest is not None:
                    digest.update(chunk)
                os.pwrite(fd, chunk, position)
                position += len(chunk)
                progress.add(len(chunk))
                self._report(self._advance, part, position, attempt, len(chunk))
            if len(self.fronts) == 1 and not self.aborted and attempt == self.attempts[part]:
                # the whole object: seal it here, sparing the loop a thread hop and the stat
                # and rename (an ext4 rename in a big folder is ~0.1 ms)
                self._seal()
        finally:
            os.close(fd)

    def _seal(self) -> None:
        """Verify the finished partial file, rename it into place and record its version in
        the index (blocking: runs in a worker thread, never on the trio loop; the thread of a
        one-part fetch does it right after its last byte, sparing the loop two thread hops)."""
        size = os.stat(self.partial).st_size
        if size != self.info.size:
            raise CacheError(
                f"downloaded {size} bytes of {self.url} but the object has {self.info.size}"
            )
        expected = _md5_of(self.info.version) if self.verify else None
        if expected is not None:
            digest = self._digest
            actual = digest.hexdigest() if digest is not None else _file_md5(self.partial)
            if actual != expected:
                raise CacheError(f"{self.url}: MD5 {actual} does not match the ETag {expected}")
        os.rename(self.partial, self.final)
        self.sealed = True
        # never fails: a row the index cannot take now is skipped with a warning, and the
        # next open adopts the file by its MD5 or age
        self._index.put(self.name, self.url, self.info.version, self.info.size)

    async def _install(self, transfer: Transfer) -> None:
        """Seal and record the file, unless its only part's thread already did."""
        if not self.sealed:
            await transfer.local(self._seal)
        self.complete = True
        log.debug("fetched %s (%d bytes)", self.url, self.info.size)

    def _fail(self, exc: BaseException, quiet: bool = False) -> None:
        self.aborted = True
        if isinstance(exc, ClearmountError):
            self.error = exc
        elif isinstance(exc, OSError):
            self.error = CacheError(f"cache write failed for {self.url}: {exc.strerror or exc}")
        else:
            self.error = Unavailable("fetch aborted", self.url)
        if self.stopped:
            log.debug("%s", self.error)
        elif quiet:
            log.info("fetch stopped: %s", self.error)
        else:
            log.error("fetch failed: %s", self.error)
        try:
            self.partial.unlink()
        except OSError:
            pass


@dataclass(frozen=True)
class _Partial:
    """A partial file created for a fetch: its path, the descriptor holding its writer's
    lock, and the first reader's descriptor."""

    path: Path
    lock_fd: int
    read_fd: int

    def discard(self) -> None:
        """Close and remove it, unused (blocking)."""
        _discard(self.path, self.lock_fd, self.read_fd)


class _Lookup:
    """The opens looking for one object version's cache file in a worker thread right now."""

    def __init__(self) -> None:
        self.count = 0
        #: fetches of this version that ended meanwhile
        self.ends = 0


class Fetcher:
    """Finds a cache file for an object version, or starts (or joins) the fetch filling it.

    Blocking calls (opening, locking and touching cache files, the index, `statvfs`) run in
    worker threads (`Transfer.local`): each open makes one such hop to find a cache file, and
    one more to create a partial file or open a fetch's. After each hop the single-flight
    table is looked at again: a fetch of the version may have started or ended meanwhile.
    """

    def __init__(
        self,
        layout: CacheLayout,
        index: CacheIndex,
        transfer: Transfer,
        part_size: int,
        parallel: int,
        limits: CacheLimits,
        verify: bool = True,
        events: FetchEvents | None = None,
        shared: SharedCache | None = None,
    ) -> None:
        self.layout = layout
        #: the shared L2 cache between this cache and the bucket (cache.shared), or None
        self.shared = shared
        #: where the last fetch of each URL found its bytes: "l1", "l2" or "bucket"
        self.sources: dict[str, str] = {}
        self.index = index
        self.transfer = transfer
        self.part_size = part_size
        self.parallel = parallel
        self.in_flight: dict[tuple[str, str], Fetch] = {}
        self.limits = limits
        #: told of every fetch's start, bytes and end (the daemon's monitor counts them)
        self.events = events or FetchEvents()
        self.verify = verify
        #: set whenever a fetch starts or ends: the evictor waits on it
        self.changed = trio.Event()
        #: bytes the cache held at the last eviction pass (for `CacheLimits.fits`)
        self.usage_bytes = 0
        self._nursery: trio.Nursery | None = None
        self._lookups: dict[tuple[str, str], _Lookup] = {}
        transfer.on_reader_waiting = self._stop_unread

    def start(self, nursery: trio.Nursery) -> None:
        """Fetches run in `nursery`, so they outlive the open() that started them."""
        self._nursery = nursery

    def release(self, fetch: Fetch) -> None:
        """An open file reading `fetch` was closed (`FetchReader.close` says so)."""
        fetch.readers -= 1
        if fetch.readers == 0 and self.transfer.readers_waiting:
            self._stop(fetch)

    def _stop_unread(self) -> None:
        # A reader waits for a transfer slot: fetches nobody reads make room.
        for fetch in list(self.in_flight.values()):
            if fetch.readers == 0:
                self._stop(fetch)

    def _stop(self, fetch: Fetch) -> None:
        fetch.stop()
        if fetch.stopped:
            # the next open of this object starts afresh instead of joining a stopped fetch
            self._forget(fetch)
            self._changed()

    def _forget(self, fetch: Fetch) -> None:
        key = (fetch.url, fetch.info.version)
        if self.in_flight.get(key) is fetch:
            del self.in_flight[key]

    async def open(
        self,
        url: str,
        store: ObjectStore,
        info: ObjectInfo,
        on_stale: Callable[[], None] = lambda: None,
    ) -> ObjectReader:
        """A reader of `url` at `info.version`: its cache file, a fetch in flight or a new
        one, or a stream. `on_stale` is called when a read finds the object changed.

        Does not wait for data: each read waits for its own bytes.
        """
        key = (url, info.version)
        final = self.layout.final_path(url)
        verify = self.verify and store.md5_versions
        while True:
            fetch = self.in_flight.get(key)
            if fetch is not None:
                return await self._join(fetch, on_stale)
            lookup = self._lookups.setdefault(key, _Lookup())
            lookup.count += 1
            ends = lookup.ends
            try:
                # one thread hop for a hit and for a miss alike: each hop costs the loop about
                # as much as the file operations themselves (small files: 235 -> 190 files/s
                # with two hops per cold open)
                found = await self.transfer.local(
                    self._find_or_create,
                    final,
                    url,
                    info,
                    verify,
                    self.usage_bytes,
                    self.reserved_bytes(),
                )
            finally:
                lookup.count -= 1
                if not lookup.count:
                    del self._lookups[key]
            if isinstance(found, int):
                self._note_source(url, "l1")
                return CachedReader(found)
            if found is None:
                log.info("streaming %s (%d bytes): more than the cache can hold", url, info.size)
                return StreamReader(Stream(store, info, self.transfer, url, self.events))
            if key in self.in_flight or lookup.ends != ends:
                # a fetch of this version started or ended meanwhile: ours is not the one
                await self.transfer.local(found.discard)
                continue
            return self._start(url, store, info, final, found, on_stale)

    async def _join(self, fetch: Fetch, on_stale: Callable[[], None]) -> FetchReader:
        # counted before the wait: a fetch nobody reads may be stopped meanwhile
        fetch.readers += 1
        try:
            # its partial file, or the final one: the thread of a one-part fetch renames it
            fd = await self.transfer.local(_open_read, fetch.partial, fetch.final)
        except BaseException:
            self.release(fetch)
            raise
        return FetchReader(fd, fetch, False, self.release, on_stale)

    def _note_source(self, url: str, source: str) -> None:
        self.sources.pop(url, None)
        self.sources[url] = source
        if len(self.sources) > _SOURCES_KEPT:
            del self.sources[next(iter(self.sources))]  # the oldest

    def reserved_bytes(self) -> int:
        """Bytes still to come for the fetches in flight."""
        return sum(f.info.size - f.bytes_done for f in self.in_flight.values())

    def _changed(self) -> None:
        changed, self.changed = self.changed, trio.Event()
        changed.set()

    def _find_or_create(
        self, final: Path, url: str, info: ObjectInfo, verify: bool, used: int, reserved: int
    ) -> int | _Partial | None:
        """A shared-locked read descriptor of the complete cache file of `info`'s version,
        touched as a hit; else, when the object fits the limits (`used` bytes cached,
        `reserved` still to come), a new partial file for its fetch; else None (stream it).
        Blocking: runs in a worker thread."""
        fd = self._cached_fd(final, url, info, verify)
        if fd is not None:
            return fd
        free = free_bytes(self.layout.root) if self.limits.min_free_bytes else None
        if not self.limits.fits(info.size, free, used, reserved):
            return None
        try:
            return self._create_partial(final, url)
        except LayoutConflict as exc:
            log.info("streaming %s: the cache layout cannot hold it (%s)", url, exc)
            return None

    def _cached_fd(self, final: Path, url: str, info: ObjectInfo, verify: bool) -> int | None:
        try:
            fd = os.open(final, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"cannot open cache file {final}: {exc.strerror}") from None
        try:
            if not _share_lock(fd):
                os.close(fd)  # being evicted right now: a miss
                return None
            size = os.fstat(fd).st_size
            name = self.layout.name_of(final)
            entry = self.index.get(name)
            if entry is None or not entry.version:
                # Downloaded by the ClearML SDK (or a daemon without an index): adopt it under
                # the version we see now, if it is that version's bytes.
                if size != info.size or not _is_current(fd, info, verify):
                    os.close(fd)
                    return None
                self.index.put(name, url, info.version, info.size)
            elif entry.version != info.version or size != info.size:
                os.close(fd)
                return None
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        self.layout.touch(final)  # a hit, as the SDK marks one (the layout's recency)
        return fd

    def _start(
        self,
        url: str,
        store: ObjectStore,
        info: ObjectInfo,
        final: Path,
        partial: _Partial,
        on_stale: Callable[[], None],
    ) -> FetchReader:
        """Start the one fetch of this version into `partial` and return its first reader."""
        if self._nursery is None:
            partial.discard()
            raise RuntimeError("Fetcher.start() was not called")
        key = (url, info.version)
        # A server without byte ranges is read by one GET: one part, the whole object.
        fetch = Fetch(
            url,
            store,
            info,
            final,
            partial.path,
            self.part_size if info.ranged else max(info.size, 1),
            self.parallel if info.ranged else 1,
            self.verify and store.md5_versions,
            self.events,
            self.layout.name_of(final),
        )
        fetch.readers = 1
        self.in_flight[key] = fetch
        self._nursery.start_soon(self._run, fetch, partial.lock_fd)
        # told once the fetch is sure to run, and so to report its end
        tell(self.events.fetch_started, fetch)
        self._changed()
        return FetchReader(partial.read_fd, fetch, True, self.release, on_stale)

    def _create_partial(self, final: Path, url: str) -> _Partial:
        """A new locked partial file for `final` (blocking: runs in a worker thread)."""
        try:
            path, lock_fd = self.layout.create_partial(final)
        except LayoutConflict:
            raise
        except OSError as exc:
            raise CacheError(f"cannot create a cache file for {url}: {exc.strerror}") from None
        try:
            return _Partial(path, lock_fd, _open_read(path))
        except BaseException:
            _discard(path, lock_fd)
            raise

    async def _run(self, fetch: Fetch, lock_fd: int) -> None:
        try:
            source = "bucket"
            if self.shared is not None:
                # the L2's file, else the bucket (under this node's lease, or after waiting
                # for another node's fetch)
                source = await self.shared.prepare(fetch)
            self._note_source(fetch.url, source)
            await fetch.run(self.transfer, self.index)
            if fetch.complete:
                self.usage_bytes += fetch.info.size
        finally:
            self._forget(fetch)
            lookup = self._lookups.get((fetch.url, fetch.info.version))
            if lookup is not None:
                lookup.ends += 1
            # closing a descriptor nobody wrote through: no I/O (see cache.reader)
            os.close(lock_fd)
            self._report_end(fetch)
            self._changed()
            if self.shared is not None and self._nursery is not None:
                self._nursery.start_soon(self.shared.finish, fetch)

    def _report_end(self, fetch: Fetch) -> None:
        """Tell the observer how `fetch` ended (its one end event)."""
        events = self.events
        if fetch.complete:
            tell(events.fetch_completed, fetch)
        elif fetch.stopped:
            tell(events.fetch_stopped, fetch)
        else:
            error = fetch.error or Unavailable("fetch ended unfinished", fetch.url)
            tell(events.fetch_failed, fetch, error)

    async def cached_bytes(self, url: str, version: str) -> int:
        """How many bytes of this version are on local disk (for `user.clearmount.cached`)."""
        fetch = self.in_flight.get((url, version))
        if fetch is not None:
            return fetch.bytes_done
        return await self.transfer.local(self._cached_size, url, version)

    def _cached_size(self, url: str, version: str) -> int:
        final = self.layout.final_path(url)
        entry = self.index.get(self.layout.name_of(final))
        if entry is None or entry.version != version:
            return 0
        try:
            return final.stat().st_size
        except OSError:
            return 0


def _open_read(*paths: Path) -> int:
    """A shared-locked read descriptor of the first of `paths` that exists (blocking)."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            missing = exc
            continue
        except OSError as exc:
            raise CacheError(f"cannot open cache file {path}: {exc.strerror}") from None
        _share_lock(fd)  # partial files are never evicted; this protects the renamed file
        return fd
    raise CacheError(f"cannot open cache file {paths[0]}: {missing.strerror}")


def _discard(partial: Path, *fds: int) -> None:
    """Close a partial file never used, and remove it (blocking)."""
    for fd in fds:
        os.close(fd)
    with contextlib.suppress(OSError):
        partial.unlink()


def _is_current(fd: int, info: ObjectInfo, verify: bool) -> bool:
    """Whether a cache file nobody recorded holds `info`'s version: its MD5 when the ETag
    states one, else it must be younger than the object (the SDK never revalidates, so its
    copy may predate a replacement of the same size). Blocking: hashes the whole file."""
    expected = _md5_of(info.version) if verify else None
    if expected is not None:
        return _fd_md5(os.dup(fd)) == expected
    return os.fstat(fd).st_mtime >= info.mtime


def _share_lock(fd: int) -> bool:
    """Mark `fd`'s file as open for eviction in every process; False while it is evicted."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _md5_of(version: str) -> str | None:
    """The MD5 an S3 ETag states, when it is one (single-part uploads); else None."""
    etag = version.strip('"').lower()
    if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
        return etag
    return None


def _fd_md5(fd: int) -> str:
    """MD5 of the file behind `fd` (which this closes)."""
    with os.fdopen(fd, "rb") as f:
        f.seek(0)
        return _stream_md5(f)


def _file_md5(path: Path) -> str:
    with open(path, "rb") as f:
        return _stream_md5(f)


def _stream_md5(f: BinaryIO) -> str:
    digest = hashlib.md5()
    while chunk := f.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()

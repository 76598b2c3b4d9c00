"""Fetching objects into the cache while readers read them.

Owns: `Fetcher`, the single-flight table (one `Fetch` per URL and object version, however
many opens), and `Fetch`, which streams an object into its `.partially` file with ranged
GETs in the order its readers ask for the bytes, tells waiting readers when their bytes are
on disk, then verifies the size and renames the file into place. A reader never waits for
more than the bytes it asked for. `Fetcher.open` decides where an open file's bytes come
from (a complete cache file, a fetch it starts or joins, or a stream) and returns the
`cache.reader.ObjectReader` that reads them.
With a shared L2 cache (`cache.shared`), a fetch asks it where its bytes come from before it
runs (`SharedCache.prepare`: the L2 file, or the bucket) and hands it the result after
(`SharedCache.finish`: publication); nothing else here knows the L2.

Order and pace (`Fetch`): the opener's first window (`FIRST_WINDOW`) is asked for at once; a
read elsewhere starts a GET at its own offset at once, whatever else is in flight; a reader
that reads on gets a window ahead of it that doubles with what it has read in a row; a zip
reader that jumps onto a member's header gets the next headers fetched ahead, those close
together in one GET (`cache.zipahead` finds them in the directory it read); the bytes nobody
asked for are fetched by background GETs that give way while readers wait.

Small objects (up to `_SMALL`, one chunk): the open itself fetches them, in the one worker
thread hop it makes anyway (`Fetcher._open_small`), as the fetch's first attempt: a cold
small file costs the loop one hop and no task, where a fetch's runs cost three tasks and a
hop more. A failed or given-up first attempt goes on as any fetch does. With fetch processes
(`clearmount.workers`, `-o fetch_processes=N`), the first attempt of a cold one runs in one
of them instead, and its open makes no thread hop at all (`Fetcher._open_in_process`); so do
the small ranged GETs of a bigger fetch (a zip member's header: `Fetch._fetch_in_process`).

Threads: each run (one GET) is downloaded in a worker thread (through `Transfer.in_thread`)
that opens its own descriptor of the partial file, so a thread abandoned at shutdown can only
ever write to that file. Progress goes back to the trio loop without waiting for it
(`run_sync_soon`, in order, before the thread's own completion), as soon as a waiting
reader's bytes are in, else every `_REPORT_EVERY` bytes: the thread reads on while readers
wake, and a background download costs the loop one wake-up per 4 MiB. The
local blocking work of an open (opening, locking and touching cache files, the index, the
free space) runs in worker threads too, through `Transfer.local`, except the reopen of a
cache file this process sealed or opened and finds unchanged (`Fetcher._open_known`).

Bounded time: each run is downloaded in attempts, each one watched (`Progress`): an attempt
must receive every MiB within the store's stall window, or it is given up. A failed or
stalled attempt is resumed from the last byte received, with jittered exponential backoff,
until the run has gone `Deadlines.operation` seconds (or `_TRIES` tries in a row) without
receiving 1 MiB; then its readers get EIO. The thread of an attempt given up may run on for a
while: its later bytes are dropped (`_Run.attempt`).

Counting: each fetch reports its start, every chunk that lands and its one end (completed,
failed or stopped) to the `FetchEvents` the composition root gave the `Fetcher`, where they
happen, so no fetch is missed however quickly it ends; streams report their bytes likewise.

A fetch goes on after its files are closed, so that a file opened once ends up cached, but
not at a reader's expense: once no open file reads a fetch, it gives up its transfer slots
(and its partial file) as soon as a transfer somebody reads has to wait for one.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import fcntl
import hashlib
import logging
import math
import mmap
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio

from clearmount.backends.base import ObjectInfo, ObjectStore
from clearmount.cache import zipahead
from clearmount.cache.events import FetchEvents, tell
from clearmount.cache.index import CacheIndex
from clearmount.cache.layout import CacheLayout, LayoutConflict
from clearmount.cache.limits import ROOM_WAIT, CacheLimits, free_bytes, waits_for_room
from clearmount.cache.reader import (
    FIRST_WINDOW,
    CachedReader,
    FetchReader,
    ObjectReader,
    StreamReader,
)
from clearmount.cache.shared import SharedCache
from clearmount.cache.stream import Stream
from clearmount.errors import CacheError, ClearmountError, Unavailable
from clearmount.transfer import Progress, Transfer
from clearmount.workers import FetchProcesses, Job, error_from, verify_download

log = logging.getLogger(__name__)


#: URLs whose last fetch's source (`Fetcher.sources`) is remembered, and URLs whose cache
#: file's version is (`Fetcher._known`).
_SOURCES_KEPT = 100_000
_KNOWN_KEPT = 100_000

#: The start of a cached file that an open reads ahead of the loop (`_warm`): the largest
#: read request the kernel sends, what its first read asks for (a whole small file).
_WARM_BYTES = 1 << 20
#: each worker thread's buffer for `_warm`
_warm_buffer = threading.local()

#: Attempts of one part in a row that bring no whole MiB, before its readers get EIO.
_TRIES = 8


def _backoff(tries: int) -> float:
    """Seconds to wait before resuming a part after its `tries`-th failure in a row (from 1):
    random, up to 0.25 * 2**(tries - 1), at most 8 (the SDK has already retried each
    request)."""
    return random.uniform(0, min(8.0, 0.25 * 2 ** (tries - 1)))


#: A reader run this close behind the bytes a reader needs is waited for, not split.
_NEAR = 1 << 20
#: For this long after a reader waited, no background run starts.
_QUIET = 0.5
#: Chunks asked of the store: reader runs get their first bytes early; background runs make
#: fewer, larger steps.
_READER_CHUNK = 256 << 10
_CHUNK = 1 << 20
#: A GET bringing this many bytes a second came over a fast link (a server on the same host
#: or network): there a few GETs at once bring what the daemon can take, and each one more
#: is a worker thread taking the GIL from the FUSE loop, whose reads then wait.
_FAST_GET = 100 << 20
#: The GETs a fetch runs at once for readers' windows and in the background once one of
#: its GETs was fast (a jump still gets its own at once).
_FAST_LANES = 4
#: A GET this short is too short to time the link by.
_TIMED_GET = 1 << 20
#: Objects up to this size are fetched by their open, in its one thread hop
#: (`Fetcher._open_small`): one chunk.
_SMALL = _CHUNK
#: A read of an object's last bytes is fetched from at least this far before its end.
_END_RUN = 64 << 10
#: A zip member's local header is fetched from the start of its page (the kernel reads whole
#: pages) as far past it as the reader's own READ at a header reached, at most this far.
_HEADER_HINT = 1 << 20
#: How many members' headers are fetched ahead of a reader walking them.
_HEADERS_AHEAD = 64
#: Headers at most this far apart are fetched ahead in one GET, with the members between: a
#: small range GET costs the server and the client as much CPU as about a MiB more would
_HEADER_GAP = 256 << 10
#: A read of at most this many bytes can be a header walker's: the kernel asks for a page or
#: two at a header, up to its first readahead window past it
_WALK_READ = 128 << 10
#: A worker thread tells the loop at least every this many bytes (and as soon as a waiting
#: reader's bytes are in, and at the end of its run).
_REPORT_EVERY = 4 << 20


#: A cache file as it was when this process last knew its version: device, inode, size
#: and change time (a rename, a touch or a new file changes it; see `Fetcher._open_known`).
Identity = tuple[int, int, int, int]


def identity(stat: os.stat_result) -> Identity:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_ctime_ns)


@dataclass(frozen=True)
class _Hit:
    """A complete cache file found by `Fetcher._cached_fd`: its shared-locked descriptor."""

    fd: int
    identity: Identity


@dataclass(frozen=True)
class _KnownFile:
    """The object version a cache file held when this process last opened or sealed it."""

    version: str
    identity: Identity
    final: Path  # its cache file (the layout's name for the URL, worked out once)


def _chunk_size(run: _Run, object_size: int) -> int:
    if object_size <= _CHUNK:
        # one chunk, not two: the first READ of a small file (1 MiB readahead) wants it all
        return max(object_size, 1)
    return _READER_CHUNK if run.reader else _CHUNK


class _Aborted(Exception):
    """Raised inside a worker thread when its fetch no longer wants bytes."""


class _Run:
    """The share of one ranged GET (and its resumes): bytes [start, end) of the object, on
    disk from `start` up to `front`. Only the loop changes `end` (lowering it: a reader jumped
    into the run, far ahead of its front) and `front`; the worker thread reads `end` before
    each chunk and stops there."""

    __slots__ = (
        "attempt",
        "end",
        "front",
        "need",
        "progress",
        "reader",
        "start",
        "whole",
        "written",
    )

    def __init__(self, start: int, end: int, reader: bool, whole: bool = False) -> None:
        self.start = start
        self.end = end
        self.front = start
        #: a reader asked for these bytes (they go before background runs)
        self.reader = reader
        #: the current attempt; the thread of an earlier, abandoned one drops its bytes
        self.attempt = 0
        #: a reader waits for the bytes up to here: the thread tells the loop once it has them
        self.need = math.inf
        #: the whole object in one GET: hashed as it arrives, sealed by its thread
        self.whole = whole
        #: bytes on disk up to here, as the worker thread knows before it tells the loop
        self.written = start
        #: the stall watch of its attempts (made by the first one)
        self.progress: Progress | None = None


class Fetch:
    """One object version streaming into its partial file.

    The object is fetched in runs, each one ranged GET (resumed after a stall) of at most
    `part_size` bytes; an object of one part is one run, hashed as it arrives. Readers
    decide the order:
    - the opener's first `FIRST_WINDOW` bytes are asked for at open (most readers start
      there: time to first byte);
    - a read of bytes no run brings starts a run at its own offset (`FIRST_WINDOW` long, the
      kernel's readahead wants that much after a jump) at once, in one slot beyond the
      `parallel` limit; one inside a run whose front is far behind it cuts that run there;
    - a reader that reads on (`FetchReader`) is fetched a window ahead of it, twice what it
      has read in a row, up to `parallel` times `part_size`, in runs of up to `part_size`,
      `lanes` at a time;
    - once readers have read a zip's end and directory, a jump onto a member's local
      header is fetched alone (a page or two, no first window) and has the next `parallel`
      headers fetched ahead in small runs, and each header read after it the next
      `_HEADERS_AHEAD`, like a window, `parallel` at a time (a run shorter than
      `_TIMED_GET` is a round trip more than a stream of bytes: `lanes` does not hold it),
      started in the order the reader will read them; headers at most `_HEADER_GAP` apart
      (a state dict's biases and norms between two weights) share one run, and once the
      reader walks the headers, its small reads (`_WALK_READ`) near its last one that land
      on a header are a walker's, not a reader reading on: they get their own bytes alone;
    - the bytes nobody asked for yet are fetched by background runs, in order from past
      the last reader run: none starts while a reader run is in flight or a reader waited in the
      last `_QUIET` seconds; one at a time while another file's reader does (its bytes get
      the link and the CPU); `lanes` at a time otherwise. So an opened file still ends up
      complete in the cache, and a reader never shares the link with bytes nobody wants yet.
    `lanes` is `parallel` until one of the fetch's GETs brings `_FAST_GET` bytes a second,
    then `_FAST_LANES`: on a fast link more GETs at once add no bytes, only threads.
    """

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
        #: when the fetch was made (monotonic): its duration counts from here
        self.started = time.monotonic()
        #: the open fetching a small object in its one thread hop (`Fetcher._open_small`),
        #: while that hop runs and after; None for the other fetches
        self.first_hop: _FirstHop | None = None
        #: the index name of the final file (`CacheLayout.name_of`)
        self.name = final.name if name is None else name
        self.verify = verify
        self.events = events or FetchEvents()
        self.store = store
        #: the fetch processes that take its small ranged GETs (`_fetch_in_process`), or None
        self.processes: FetchProcesses | None = None
        self.info = info
        self.final = final
        self.partial = partial
        self.part_size = part_size
        parts = -(-info.size // part_size)
        self.parallel = max(1, min(parallel, parts))
        #: window and background runs at once (see the class docstring)
        self.lanes = self.parallel
        self._done = 0
        # the runs, ordered by start, never overlapping; `_starts` their starts (for bisect)
        self._runs: list[_Run] = []
        self._starts: list[int] = []
        # reader runs not started yet, first come first: bytes a reader waits for now (started
        # at once), and bytes ahead of a reader (up to `parallel` at a time)
        self._urgent: collections.deque[_Run] = collections.deque()
        self._queue: collections.deque[_Run] = collections.deque()
        # runs whose tasks are started but not running yet, in the order they were started
        self._starts_due: collections.deque[_Run] = collections.deque()
        self._readers_active = 0
        self._background_active = 0
        # reader runs started that have not received their first bytes yet
        self._starting = 0
        # where background runs go on from: the end of the last reader run
        self._cursor = 0
        #: when a reader last waited for bytes
        self._demand_at = time.monotonic()
        self._changed = trio.Event()
        self._settled = trio.Event()
        self.error: ClearmountError | None = None
        self.complete = False
        #: set once `run` is over: `complete`, or `error` says why not
        self.ended = trio.Event()
        whole = parts <= 1
        # A one-run download is hashed as it arrives; other downloads are hashed at the end
        # (only S3 ETags of single-part uploads are MD5s).
        self._digest = hashlib.md5() if verify and whole and _md5_of(info.version) else None
        self.aborted = False
        #: verified, renamed into place and recorded in the index
        self.sealed = False
        #: the sealed file as `_seal` left it (`identity`), for `Fetcher`'s next open
        self.identity: Identity | None = None
        #: where `_seal` records the file (given by `run`)
        self._index: CacheIndex
        self._transfer: Transfer
        self._nursery: trio.Nursery | None = None
        #: open files reading this fetch
        self.readers = 0
        #: stopped because nobody read it any more and a reader needed its transfer slots
        self.stopped = False
        self._scope: trio.CancelScope | None = None
        self._report: Callable[..., None] = lambda *args: None  # set by run(), on the loop
        #: the most bytes a sequential reader is fetched ahead
        self.max_window = max(FIRST_WINDOW, self.parallel * part_size)
        # A zip's members (`zipahead`): while `_zip_looking`, each read looks whether the
        # archive's end and then its directory are on disk; `_headers` are then the members'
        # local headers, fetched ahead of a reader that walks them (`_hinting`: a jump landed
        # on one), those of indexes [`_hinted_from`, `_hinted_to`) so far.
        self._zip_looking = not whole
        self._tail_seen = info.size
        self._directory: tuple[int, int, int] | None = None
        self._headers: list[int] = []
        self._hinting = False
        self._hinted_from = self._hinted_to = 0
        if info.size:
            # the opener reads from the start, mostly: its first bytes are asked for at once
            first = _Run(0, info.size if whole else min(FIRST_WINDOW, part_size), True, whole)
            self._insert(first)
            self._queue.append(first)

    @property
    def bytes_done(self) -> int:
        return self._done

    # ----- where the bytes are

    def _index_at(self, offset: int) -> int:
        """The index of the run holding `offset`, or -1."""
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0 and offset < self._runs[i].end:
            return i
        return -1

    def _insert(self, run: _Run) -> None:
        i = bisect.bisect_left(self._starts, run.start)
        self._starts.insert(i, run.start)
        self._runs.insert(i, run)

    def has(self, start: int, end: int) -> bool:
        """Whether bytes [start, end) are on disk."""
        return self.complete or self._missing(start, end) is None

    def _missing(self, start: int, end: int) -> tuple[int, _Run | None] | None:
        """The first byte of [start, end) not on disk and the run that will bring it (None:
        no run yet); None when every byte is there."""
        end = min(end, self.info.size)
        at = start
        runs = self._runs
        i = self._index_at(at)
        while at < end:
            if i < 0 or i >= len(runs) or runs[i].start > at:
                return at, None
            run = runs[i]
            if run.front <= at:
                return at, run if at < run.end else None
            at = run.front
            if run.front < run.end:
                return (at, run) if at < end else None
            i += 1
        return None

    # ----- readers

    async def wait_for(self, start: int, end: int, ahead: int = 0, continues: bool = False) -> None:
        """Return once bytes [start, end) are on disk; raise the fetch's error if they never
        will be. `ahead`: how many bytes past `end` the reader will want next (its window);
        `continues`: the read goes on from the reader's last one."""
        missing = self._missing(start, end)
        # a read of bytes no run brings, elsewhere than its reader read last: it jumped here
        jumped = missing is not None and missing[1] is None and not ahead and not continues
        # a read that goes on from the last one (a reader reading the archive in order) reads
        # a header on its way, not onto it; but once a reader walks the headers, its small
        # read near the last one is onto the next header: the members between two headers can
        # be smaller than a READ (a state dict's biases and norms)
        walking = self._hinting and end - start <= _WALK_READ
        onto = bool(self._headers) and (walking or not continues)
        header = self._header_in(start, end) if onto else -1
        if missing is not None and self.error is None:
            self._demand_at = time.monotonic()
            # a jump onto a member's header wants that header, not the member's first window
            self._want(missing[0], end, exact=header >= 0 and (jumped or walking))
        if ahead and self.error is None:
            self._want(end, end + ahead, ahead=True)
        if header >= 0 and (jumped or self._hinting) and self.error is None:
            # before waiting: the next headers' GETs go out right behind this read's own
            self._fetch_headers_after(header, end)
        self._pump()
        while missing is not None:
            if self.error is not None:
                raise self.error
            at, run = missing
            if run is not None:
                # its thread tells the loop as soon as these bytes are in; it may have
                # written them already and not told (it looks at `need` after `written`;
                # a whole-object run tells its last bytes once the file is in place)
                run.need = min(run.need, min(end, run.end))
                if run.written > run.front and not run.whole:
                    self._advance(run, run.written, run.attempt, 0)
                    missing = self._missing(start, end)
                    continue
            elif self.aborted:
                raise self.error or Unavailable("fetch aborted", self.url)
            else:
                self._want(at, end)
                self._pump()
                missing = self._missing(start, end)
                continue
            await self._changed.wait()
            missing = self._missing(start, end)
        if self._zip_looking:
            self._look_for_zip()

    # ----- zip archives

    def _look_for_zip(self) -> None:
        """Find the members of a zip archive once a reader has read its end and then its
        central directory (zip readers read those first); stop looking once they are known or
        the file is not a zip. Reads the partial file on the loop: bytes a reader just read,
        in the page cache, at most `zipahead.TAIL` and then `zipahead.MAX_DIRECTORY` bytes."""
        size = self.info.size
        if self._directory is None:
            start = max(self._on_disk_from(size), size - zipahead.TAIL, 0)
            if start >= self._tail_seen:
                return  # no more of the end on disk than last time
            self._tail_seen = start
            tail = self._read_partial(start, size)
            found = None if tail is None else zipahead.find_directory(tail, start, size)
            if found is None:
                # not a zip, unless its end record lies before the bytes on disk so far
                self._zip_looking = tail is not None and start > max(0, size - zipahead.TAIL)
                return
            if found[1] - found[0] > zipahead.MAX_DIRECTORY:
                self._zip_looking = False
                return
            self._directory = found
        cd_start, cd_end, shift = self._directory
        if not self.has(cd_start, cd_end):
            return
        self._zip_looking = False
        directory = self._read_partial(cd_start, cd_end)
        if directory is not None:
            self._headers = zipahead.member_headers(directory, shift, size)

    def _on_disk_from(self, end: int) -> int:
        """Where the bytes on disk that end at `end` begin (`end`: byte end - 1 is not)."""
        at = end
        while at > 0:
            i = self._index_at(at - 1)
            if i < 0 or self._runs[i].front < at:
                break
            at = self._runs[i].start
        return at

    def _read_partial(self, start: int, end: int) -> bytes | None:
        """Bytes [start, end) of the partial file (on disk), or None once it is renamed."""
        try:
            fd = os.open(self.partial, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.pread(fd, end - start, start)
        except OSError:
            return None
        finally:
            os.close(fd)
        return data if len(data) == end - start else None

    def _header_in(self, start: int, end: int) -> int:
        """The index of the first member whose local header starts in [start, end), or -1."""
        k = bisect.bisect_left(self._headers, start)
        return k if k < len(self._headers) and self._headers[k] < end else -1

    def _fetch_headers_after(self, k: int, end: int) -> None:
        """Once a reader jumps onto a member's local header (the `k`th, read up to `end`) after
        the directory was read, fetch the headers of the members after each header it reads,
        each in a small run: a zip reader that goes from header to header (torch.load(mmap=True)
        reads them one after the other) finds them on disk instead of waiting a GET for each.
        The jump that starts it asks for the next `parallel`, a page or two each (a reader that
        extracts one member stops there), each header read after it for the next
        `_HEADERS_AHEAD`; headers at most `_HEADER_GAP` apart come in one run. A reader that
        reads the archive in order (torch.load without mmap) never jumps onto a header: each
        of its reads goes on from its last one. (A read that
        finds the directory, the first jump of every zip reader, can hold the last members'
        headers: the headers are not known yet then, so it starts nothing.)"""
        headers = self._headers
        # as far past each header as this READ reaches past its own (a buffered read of a
        # 4 KiB page: 1-2 pages); a page or two while the reader may be extracting one member
        # (its READ there can be the kernel's 1 MiB readahead)
        reach = min(end - headers[k], _HEADER_HINT if self._hinting else 2 * mmap.PAGESIZE)
        count = _HEADERS_AHEAD if self._hinting else self.parallel
        self._hinting = True
        last = min(len(headers), k + 1 + count)
        if self._hinted_from <= k + 1 <= self._hinted_to:
            first = self._hinted_to  # on from the headers already asked for
        else:
            first = self._hinted_from = k + 1
        spans: list[list[int]] = []
        for header in headers[first:last]:
            first_page = header - header % mmap.PAGESIZE
            end_page = -(-(header + reach) // mmap.PAGESIZE) * mmap.PAGESIZE
            if spans and first_page - spans[-1][1] <= _HEADER_GAP:
                # the members between are small: one GET for these headers and the bytes
                # between costs less than a GET each
                spans[-1][1] = end_page
            else:
                spans.append([first_page, end_page])
        for span_start, span_end in spans:
            self._want(span_start, min(span_end, self.info.size), ahead=True, exact=True)
        self._hinted_to = max(self._hinted_to, last)

    def _want(self, start: int, end: int, ahead: bool = False, exact: bool = False) -> None:
        """Make sure runs will bring bytes [start, end): new reader runs for the gaps; for
        bytes needed now (not `ahead`), a background run far behind them is cut there. A run
        for bytes needed now brings a first window from there, unless `exact`; bytes `ahead`
        and `exact` (headers) are asked for however small their gap."""
        end = min(end, self.info.size)
        at = start
        while at < end:
            i = self._index_at(at)
            if i < 0:
                j = bisect.bisect_right(self._starts, at)
                gap_end = self._starts[j] if j < len(self._starts) else self.info.size
                stop = min(gap_end, end)
                if (
                    ahead
                    and not exact
                    and stop < self.info.size
                    and stop - at < min(self.part_size, (end - start) // 2)
                ):
                    # a window moving on by a read's size: wait until a whole part is due
                    at = gap_end
                    continue
                if not ahead and gap_end == self.info.size:
                    # a read of the object's last bytes: formats that keep an index there (a
                    # zip's central directory) read the bytes just before them next
                    at = max(self._runs[j - 1].end if j else 0, min(at, gap_end - _END_RUN))
                run = _Run(
                    at,
                    min(
                        gap_end,
                        end if ahead or exact else max(end, at + FIRST_WINDOW),
                        at + self.part_size,
                    ),
                    True,
                )
                self._insert(run)
                (self._queue if ahead else self._urgent).append(run)
                self._cursor = max(self._cursor, run.end)
                at = run.end
                continue
            run = self._runs[i]
            far = at - run.front
            if (
                not ahead
                and at > run.start
                and far > _NEAR
                and not run.whole
                and (not run.reader or far > 2 * _NEAR or run.front == run.start)
            ):
                # a jump into the far part of a run: its own run serves it now
                # (the first window only: the rest is a gap again, for later)
                tail = _Run(at, min(run.end, max(end, at + FIRST_WINDOW)), True)
                run.end = at
                self._insert(tail)
                self._urgent.append(tail)
                self._cursor = max(self._cursor, tail.end)
                at = tail.end
                continue
            if not ahead and run.front == run.start and run in self._queue:
                # a window run not started yet: a reader waits for it now
                self._queue.remove(run)
                self._urgent.append(run)
            at = run.end

    def _pump(self) -> None:
        """Start the runs the priorities allow: the bytes readers wait for at once, then
        their windows up to `lanes` runs (small ones up to `parallel`), then background runs,
        only once readers are quiet (up to `lanes`)."""
        nursery = self._nursery
        if nursery is None or self.error is not None:
            return
        # the bytes a reader waits for get one run more than `parallel`: a jump never waits
        # behind the window runs of a sequential reader
        while (self._urgent and self._readers_active <= self.parallel) or (
            self._queue and self._readers_active < self._lanes_for(self._queue[0])
        ):
            run = (self._urgent or self._queue).popleft()
            if run.front >= run.end:
                continue
            self._readers_active += 1
            self._transfer.reader_runs += 1
            self._starting += 1
            self._start_in_order(nursery, run)
        now = time.monotonic()
        transfer = self._transfer
        # a reader that waits (`wait_for`) stamps this fetch and pumps: the others see it here
        transfer.reader_demand_at = max(transfer.reader_demand_at, self._demand_at)
        if self._starting:
            allowed = 0  # a reader's first bytes go out before the link is shared
        elif self._readers_active or now - self._demand_at < _QUIET:
            allowed = 0  # readers came lately: the link is theirs
        elif transfer.reader_runs or now - transfer.reader_demand_at < _QUIET:
            # another file's reader waits: it gets the link and the CPU, while one run at a
            # time keeps this fill going (and its end pumps again, once they are quiet)
            allowed = 1
        else:
            allowed = self.lanes
        while self._background_active < allowed:
            gap = self._next_gap()
            if gap is None:
                return
            run = _Run(gap[0], min(gap[1], gap[0] + self.part_size), False)
            self._insert(run)
            self._background_active += 1
            self._start_in_order(nursery, run)

    def _start_in_order(self, nursery: trio.Nursery, run: _Run) -> None:
        """Start a task for `run`; the tasks take their runs in the order they were started
        (trio runs a batch of new tasks in either order: the header a reader reads next would
        wait behind the 15 after it)."""
        self._starts_due.append(run)
        nursery.start_soon(self._run_next)

    async def _run_next(self) -> None:
        await self._runner(self._starts_due.popleft())

    def _next_gap(self) -> tuple[int, int] | None:
        """The first bytes no run claims, from the cursor on, else from the start."""
        for origin in (self._cursor, 0):
            at = origin
            i = bisect.bisect_right(self._starts, at) - 1
            while at < self.info.size:
                if i >= 0 and i < len(self._runs) and self._runs[i].start <= at < self._runs[i].end:
                    at = self._runs[i].end
                    i += 1
                    continue
                j = bisect.bisect_right(self._starts, at)
                gap_end = self._starts[j] if j < len(self._starts) else self.info.size
                if gap_end > at:
                    return at, gap_end
                i = j
        return None

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

    def _advance(self, run: _Run, front: int, attempt: int, received: int) -> None:
        # Runs as a trio system callback: must never raise.
        if not self.aborted and attempt == run.attempt:
            front = min(front, run.end)
            if front > run.front:
                if run.front == run.start and run.reader:
                    self._starting -= 1
                    if not self._starting:
                        self._pump()  # background runs may start now
                self._done += front - run.front
                run.front = front
            if run.front >= run.need:
                run.need = math.inf
            self._wake()
        tell(self.events.fetch_received, self, received)

    # ----- the download

    def prepare(self, transfer: Transfer, index: CacheIndex) -> None:
        """Where its runs take their slots and its seal records the file."""
        self._index = index
        self._transfer = transfer

    @property
    def first_run(self) -> _Run:
        return self._runs[0]

    # ----- the first attempt made by an open's thread hop (`Fetcher._open_small`)

    def first_attempt(self) -> None:
        """The first attempt at this one-run fetch, in the thread of its open's hop: the
        object into the partial file, sealed once whole (blocking)."""
        run = self.first_run
        self._fetch_range(run, 1, 0, run.progress or self.progress())

    def first_attempt_ended(self, finished: bool, error: Exception | None) -> bool:
        """From the loop, once the open's hop returned (`finished`, with the `error` that
        ended its attempt, if one did) or was given up: the fetch is complete, or failed, or
        (True) its run goes on from the bytes the hop wrote, as `_download` resumes one."""
        run = self.first_run
        if finished and (self.sealed or not isinstance(error, Unavailable)):
            if self.sealed:
                self._done = run.front = run.written
                self.complete = True
                log.debug("fetched %s (%d bytes)", self.url, self.info.size)
            else:
                if not isinstance(error, ClearmountError | OSError):
                    log.error("unexpected error fetching %s", self.url, exc_info=error)
                self._fail(error or Unavailable("fetch ended unfinished", self.url))
            self.ended.set()
            return False
        self._done = run.front = run.written
        if not finished:
            run.attempt += 1  # its thread may run on: its bytes no longer count
            self._digest = None
        return True

    def hashed_elsewhere(self) -> None:
        """The first attempt hashed its bytes in a fetch process: the rest of the download,
        if any, is hashed from the file at its seal."""
        self._digest = None

    def abandon_first_attempt(self) -> None:
        """The open's hop was cancelled (the daemon stops): its thread writes no more."""
        self.first_run.attempt += 1
        self._fail(Unavailable("fetch cancelled (daemon stopping)", self.url), quiet=True)

    async def run(self, transfer: Transfer, index: CacheIndex) -> None:
        self.prepare(transfer, index)
        try:
            self._report = trio.lowlevel.current_trio_token().run_sync_soon
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                self._nursery = nursery
                self._pump()
                while self.error is None and not self.has(0, self.info.size):
                    quiet_in = self._demand_at + _QUIET - time.monotonic()
                    with trio.move_on_after(quiet_in if quiet_in > 0 else math.inf):
                        await self._settled.wait()
                    self._settled = trio.Event()
                    self._pump()
                self._nursery = None
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
            self._nursery = None
            self.ended.set()
            self._wake()

    async def _runner(self, run: _Run) -> None:
        transfer = self._transfer
        try:
            async with transfer.data_slot(for_reader=self.readers > 0):
                started, front = time.monotonic(), run.front
                await self._download(transfer, run)
                self._timed(run.front - front, time.monotonic() - started)
        except (ClearmountError, OSError, _Aborted) as exc:
            if self.error is None:
                self._fail(exc)
            if self._scope is not None:
                self._scope.cancel()
        except trio.Cancelled:
            self._nursery = None  # start nothing more: the fetch is being cancelled
            raise
        finally:
            if run.reader:
                self._readers_active -= 1
                transfer.reader_runs -= 1
                if run.front == run.start:
                    self._starting -= 1
            else:
                self._background_active -= 1
            if run.front < run.end and self.error is None:
                # cut short: the rest is a gap again
                run.end = run.front
                if run.end <= run.start:
                    i = self._runs.index(run)
                    del self._runs[i], self._starts[i]
            if self.error is None:
                # (a failed fetch wakes its readers once it has ended and been forgotten)
                self._wake()
            settled, self._settled = self._settled, trio.Event()
            settled.set()
            self._pump()

    def _lanes_for(self, run: _Run) -> int:
        """How many reader runs may be in flight for `run` to start: a small one (a zip
        header fetched ahead) is a round trip, not a stream of bytes, and gets `parallel`."""
        return self.parallel if run.end - run.start < _TIMED_GET else self.lanes

    def _timed(self, size: int, seconds: float) -> None:
        """A GET brought `size` bytes in `seconds` (from its request to its last byte)."""
        if size >= _TIMED_GET and size >= _FAST_GET * seconds and self.lanes > _FAST_LANES:
            self.lanes = _FAST_LANES
            log.debug("%s: a fast link, %d GETs at once", self.url, self.lanes)

    async def _download(self, transfer: Transfer, run: _Run) -> None:
        """Download one run, resuming it from the last byte received after a failure or a
        stall, until it has gone `operation` seconds or `_TRIES` tries without a MiB."""
        progress = run.progress or self.progress()
        run.progress = progress
        tries = 0
        # a failed or given-up attempt in a process is resumed in a thread
        in_process = self.processes is not None
        while run.front < run.end:
            started = time.monotonic()
            run.attempt += 1
            try:
                if in_process and await self._fetch_in_process(run, run.attempt, progress):
                    return
                in_process = False
                await transfer.in_thread(
                    self._fetch_range,
                    run,
                    run.attempt,
                    run.front,
                    progress,
                    progress=progress,
                    at_most=run.end - run.front,
                )
                return
            except Unavailable as exc:
                in_process = False
                # the bytes its thread wrote and has not told yet count too
                self._advance(run, run.written, run.attempt, 0)
                if progress.stalled:
                    # the abandoned thread may run on: its bytes (and its seal) no longer count
                    run.attempt += 1
                    self._digest = None
                    if run.front >= run.end:
                        return  # it had every byte: given up just as it ended
                if progress.last_step > started:
                    tries = 0  # it brought a whole step: the budget starts again
                tries += 1
                left = progress.left()
                if tries >= _TRIES or left <= 0 or self.aborted:
                    raise
                log.warning("resuming %s at byte %d: %s", self.url, run.front, exc)
                await trio.sleep(min(_backoff(tries), left))

    async def _fetch_in_process(self, run: _Run, attempt: int, progress: Progress) -> bool:
        """One attempt at a run too small to bring 1 MiB (a zip member's header), in a fetch
        process (`workers`): a thread's GET, in the daemon, costs the loop GIL hand-overs and
        takes the GIL from it. False: the run is not that small, or no process takes the
        fetch's store now (not ready yet, an L2 file); the caller takes a thread. Raises as
        `_fetch_range` does: `Unavailable` once given up at the stall watch's deadline (its
        bytes so far counted), so that the caller resumes the run from there.

        The outcome is the only thing counted, and only for the current attempt of a fetch
        still going (`_advance`): what the process writes after it was given up lands at
        its own offset of the same version, in the same partial file, and nobody counts it.
        """
        processes = self.processes
        if processes is None or run.whole or not processes.takes(self.store):
            return False  # (a whole object's run is hashed as it arrives, in a thread)
        progress.restart()
        deadline = progress.fixed_deadline(run.end - run.front)
        if deadline is None:
            return False
        window = max(0.0, deadline - trio.current_time())
        job = Job(
            self.url,
            self.info.key,
            self.info.version,
            self.info.size,
            str(self.partial),
            final=None,
            md5=None,
            window=window,
            start=run.front,
            end=run.end,
        )
        # the process gives the job up after `window`; this bounds one that stopped answering
        outcome = await processes.fetch(self.store, job, 2 * window + 1)
        received = max(0, outcome.written - run.front)
        progress.add(received)
        if not self.aborted and attempt == run.attempt:
            run.written = max(run.written, outcome.written)
        self._advance(run, outcome.written, attempt, received)
        if outcome.error is not None:
            raise error_from(outcome.error)
        if outcome.stalled:
            progress.stalled = progress.why_stalled()
            raise Unavailable(progress.stalled, self.url)
        return True

    def progress(self) -> Progress:
        """A new stall watch for a run of this fetch (`transfer.Progress`)."""
        deadlines = self.store.deadlines
        return Progress(deadlines.stall_window, deadlines.operation, self.url)

    def _fetch_range(self, run: _Run, attempt: int, position: int, progress: Progress) -> None:
        """One attempt at the bytes of `run` from `position`, into the partial file (runs in a
        worker thread). Stops early where the loop cut the run."""
        digest = self._digest if run.whole else None
        fd = os.open(self.partial, os.O_WRONLY | os.O_CLOEXEC)
        chunks = self.store.read_range(
            self.info.key,
            self.info.version,
            position,
            run.end,
            _chunk_size(run, self.info.size),
        )
        # told after the first chunk (a reader may be about to wait for it), then as above
        told = first = position
        try:
            for chunk in chunks:
                if self.aborted or attempt != run.attempt:
                    raise _Aborted
                end = run.end
                if position + len(chunk) > end:
                    chunk = chunk[: max(0, end - position)]
                if digest is not None:
                    digest.update(chunk)
                if chunk:
                    os.pwrite(fd, chunk, position)
                    position += len(chunk)
                    run.written = position
                    progress.add(len(chunk))
                if position >= end:
                    break
                if told == first or position >= run.need or position - told >= _REPORT_EVERY:
                    self._report(self._advance, run, position, attempt, position - told)
                    told = position
            if (
                run.whole
                and position >= self.info.size
                and not self.aborted
                and attempt == run.attempt
            ):
                # the whole object: seal it here, sparing the loop a thread hop and the stat
                # and rename (an ext4 rename in a big folder is ~0.1 ms), before its last
                # bytes are told: a file read to its end is in place, whatever comes next
                self._seal()
            if position > told:
                self._report(self._advance, run, position, attempt, position - told)
                told = position
        finally:
            if position > told:
                # given up: its bytes were still downloaded (and count as such)
                self._report(self._advance, run, position, attempt, position - told)
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
            os.close(fd)

    def _seal(self) -> None:
        """Verify the finished partial file, rename it into place and record its version in
        the index (blocking: runs in a worker thread, never on the trio loop; the thread of a
        one-part fetch does it right after its last byte, sparing the loop two thread hops)."""
        partial = os.stat(self.partial)
        expected = self.expected_md5
        actual = None
        if expected is not None and partial.st_size == self.info.size:
            digest = self._digest
            actual = digest.hexdigest() if digest is not None else _file_md5(self.partial)
        verify_download(self.url, partial.st_size, self.info.size, actual, expected)
        replacing = os.path.lexists(self.final)
        os.rename(self.partial, self.final)
        self.sealed = True
        with contextlib.suppress(OSError):
            final = os.stat(self.final)
            if final.st_ino == partial.st_ino and final.st_dev == partial.st_dev:
                self.identity = identity(final)
        self.record(replacing)

    @property
    def expected_md5(self) -> str | None:
        """The MD5 its download must have (the ETag's), or None: not checked."""
        return _md5_of(self.info.version) if self.verify else None

    def record(self, replacing: bool, flush: bool = True) -> None:
        """Record the sealed file's version in the index (`flush`: the row of a new file may
        be written here, with others', else only by the daemon's eviction loop)."""
        # never fails: a row the index cannot take now is skipped with a warning, and the
        # next open adopts the file by its MD5 or age. A new file's row is written with other
        # fetches' rows in one transaction (one commit per small file cost about as much as
        # its rename): until then other processes see no row, and adopt the file by checking
        # it. A file replacing another version's is recorded at once, so that no process
        # reads the old version's row beside the new bytes for longer than before.
        row = (self.name, self.url, self.info.version, self.info.size)
        if replacing:
            self._index.put(*row)
        else:
            self._index.put_soon(*row, flush=flush)

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
        _discard(self.path, *{self.lock_fd, self.read_fd})


class _Lookup:
    """The opens looking for one object version's cache file in a worker thread right now."""

    def __init__(self) -> None:
        self.count = 0
        #: fetches of this version that ended meanwhile
        self.ends = 0


#: `_FirstHop.found` until the hop has found a file: nothing handed over yet
_NOTHING = object()


class _FirstHop:
    """The one thread hop of a small object's cold open (`Fetcher._open_small`) and what it
    hands the loop. The loop may give the hop up (stalled, or cancelled) while its thread runs
    on: what the thread found or created is handed over under the lock, so that it is either
    the loop's (`found`) or, once the loop gave up first, the thread's own to close."""

    __slots__ = ("done", "error", "finished", "found", "given_up", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: a cache file's descriptor, a `_Partial`, None (stream it), or `_NOTHING`
        self.found: object = _NOTHING
        self.given_up = False
        #: the thread returned (else it was given up, and may still run)
        self.finished = False
        #: what failed the download, if something did
        self.error: Exception | None = None
        #: set once the loop has dealt with the hop: opens joining its fetch wait for it
        self.done = trio.Event()

    def hand(self, found: object) -> bool:
        """From the thread: hand `found` to the loop; False once the loop gave the hop up."""
        with self.lock:
            if self.given_up:
                return False
            self.found = found
            return True

    def give_up(self) -> object:
        """From the loop: what the thread handed over so far; it hands nothing after this."""
        with self.lock:
            self.given_up = True
            return self.found


class Fetcher:
    """Finds a cache file for an object version, or starts (or joins) the fetch filling it.

    Blocking calls (opening, locking and touching cache files, the index, `statvfs`) run in
    worker threads (`Transfer.local`): each open makes one such hop to find a cache file or
    create a partial file, and a join one to open a fetch's. After each hop the single-flight
    table is looked at again: a fetch of the version may have started or ended meanwhile. An
    open of a small object makes its one hop in a data slot instead, and fetches the object
    there (`_open_small`), or, with fetch processes, creates the partial file on the loop and
    has a fetch process fetch it (`_open_in_process`). A complete cache file this process
    sealed or opened before and finds unchanged is reopened on the loop, no hop, no index
    (`_open_known`).
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
        processes: FetchProcesses | None = None,
    ) -> None:
        self.layout = layout
        #: the fetch processes that take cold small objects (`_open_in_process`), or None
        self.processes = processes
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
        #: how many times `changed` was set: a waiter busy elsewhere meanwhile sees it moved
        self.changes = 0
        #: bytes of complete files the cache held at the last eviction pass, plus the fetches
        #: completed since (for `CacheLimits.fits`; `held_bytes` adds the partial files)
        self.usage_bytes = 0
        #: set after each pass of the daemon's eviction loop (None: no loop runs), and whether
        #: that pass left the cache over its limits (`note_eviction`)
        self._evicted: trio.Event | None = None
        self._eviction_stuck = False
        self._nursery: trio.Nursery | None = None
        self._lookups: dict[tuple[str, str], _Lookup] = {}
        #: complete cache files by URL, as this process last sealed or opened them, while the
        #: index is in its `_known_generation` (a new index needs their rows again)
        self._known: dict[str, _KnownFile] = {}
        self._known_generation = index.generation
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
        known = self._known.get(url)
        final = known.final if known is not None else self.layout.final_path(url)
        verify = self.verify and store.md5_versions
        small = 0 < info.size <= min(_SMALL, self.part_size) and self.shared is None
        while True:
            fetch = self.in_flight.get(key)
            if fetch is not None:
                joined = await self._join(fetch, on_stale)
                if joined is not None:
                    return joined
                continue  # its open found no fetch to make, or it failed: look again
            fd = self._open_known(url, final, info)
            if fd is not None:
                self._note_source(url, "l1")
                return CachedReader(fd)
            if small:
                if self.processes is not None and self.processes.takes(store):
                    reader = await self._open_in_process(url, store, info, final, on_stale)
                    if reader is not None:
                        return reader
                reader = await self._open_small(url, store, info, final, verify, on_stale)
                if reader is not None:
                    return reader
                small = False  # given up before it found a file (a slow disk): the usual way
                continue
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
            if isinstance(found, _Hit):
                self._remember(url, info.version, final, found.identity)
                self._note_source(url, "l1")
                if self.index.pending:
                    # an adopted file's row waits for a batch: the eviction loop writes it
                    # within its check gap, not at its next periodic check
                    self._changed()
                return CachedReader(found.fd)
            if found is None:
                log.info("streaming %s (%d bytes): more than the cache can hold", url, info.size)
                return StreamReader(Stream(store, info, self.transfer, url, self.events))
            if key in self.in_flight or lookup.ends != ends:
                # a fetch of this version started or ended meanwhile: ours is not the one
                await self.transfer.local(found.discard)
                continue
            return self._start(url, store, info, final, found, on_stale)

    async def _join(self, fetch: Fetch, on_stale: Callable[[], None]) -> FetchReader | None:
        """A reader of `fetch`; None when it turned out no fetch, or failed, in its first
        hop (the open looks again)."""
        hop = fetch.first_hop
        if hop is not None and not hop.done.is_set():
            await hop.done.wait()
            if fetch.error is not None or not isinstance(hop.found, _Partial):
                return None
        # counted before the wait: a fetch nobody reads may be stopped meanwhile
        fetch.readers += 1
        try:
            # its partial file, or the final one: the thread of a one-part fetch renames it
            fd = await self.transfer.local(_open_read, fetch.partial, fetch.final)
        except BaseException:
            self.release(fetch)
            raise
        if fd is None:
            self.release(fetch)
            if fetch.complete:
                # its readers closed it and eviction removed it before this open got to
                # it: the open looks again, and fetches it anew
                return None
            raise CacheError(f"cannot open cache file {fetch.partial}: it was removed")
        return FetchReader(fd, fetch, False, self.release, on_stale)

    def _open_known(self, url: str, final: Path, info: ObjectInfo) -> int | None:
        """A shared-locked read descriptor of `url`'s cache file when this process knows it
        holds `info`'s version and it is as it was then (same inode, size and change time,
        so nobody replaced or rewrote it since); else None (`_cached_fd` decides).

        On the loop, no thread hop: a thread hop per open costs the daemon more CPU (thread
        wake-ups, GIL hand-overs) than these few calls on a file whose folder and inode the
        kernel mostly has, and the index is not asked. The file's first bytes are asked of
        the disk now (`POSIX_FADV_WILLNEED` returns at once), so the disk reads of several
        files opened in a row overlap and the loop's read waits less or not at all. All
        this process knew is forgotten once the index was found removed or replaced: the
        next opens go through `_cached_fd`, which records the files in the new one.
        """
        if self.index.generation != self._known_generation:
            self._known.clear()
            self._known_generation = self.index.generation
        known = self._known.get(url)
        if known is None or known.version != info.version:
            return None
        try:
            fd = os.open(final, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            del self._known[url]  # evicted (or unreadable: `_cached_fd` says why)
            return None
        try:
            stat = os.fstat(fd)
            if (
                stat.st_size != info.size
                or identity(stat) != known.identity
                or not _share_lock(fd)  # being evicted right now
            ):
                os.close(fd)
                del self._known[url]
                return None
            self.layout.touch(final)  # a hit: changes the file's change time
            self._remember(url, info.version, final, identity(os.fstat(fd)))
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, min(info.size, _WARM_BYTES), os.POSIX_FADV_WILLNEED)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        return fd

    def _remember(self, url: str, version: str, final: Path, known: Identity) -> None:
        self._known.pop(url, None)
        self._known[url] = _KnownFile(version, known, final)
        if len(self._known) > _KNOWN_KEPT:
            del self._known[next(iter(self._known))]  # the oldest

    def _note_source(self, url: str, source: str) -> None:
        self.sources.pop(url, None)
        self.sources[url] = source
        if len(self.sources) > _SOURCES_KEPT:
            del self.sources[next(iter(self.sources))]  # the oldest

    def reserved_bytes(self) -> int:
        """Bytes still to come for the fetches in flight."""
        return sum(f.info.size - f.bytes_done for f in self.in_flight.values())

    def held_bytes(self) -> int:
        """Bytes in the cache as far as this process knows: `usage_bytes`, and those the
        fetches in flight wrote (a fetch that wrote all its bytes and is being checked or
        renamed is in neither `usage_bytes` nor `reserved_bytes`)."""
        return self.usage_bytes + sum(f.bytes_done for f in self.in_flight.values())

    def _changed(self) -> None:
        self.changes += 1
        changed, self.changed = self.changed, trio.Event()
        changed.set()

    def _find_or_create(
        self,
        final: Path,
        url: str,
        info: ObjectInfo,
        verify: bool,
        used: int,
        reserved: int,
        one_fd: bool = False,
    ) -> _Hit | _Partial | None:
        """A shared-locked read descriptor of the complete cache file of `info`'s version,
        touched as a hit, its start read into the page cache; else, when the object fits the
        limits (`used` bytes cached, `reserved` still to come), a new partial file for its
        fetch (`one_fd`: its lock descriptor is its reader's too); else None (stream it).
        Blocking: runs in a worker thread."""
        fd = self._cached_fd(final, url, info, verify)
        if fd is not None:
            return fd
        free = free_bytes(self.layout.root) if self.limits.min_free_bytes else None
        if not self.limits.fits(info.size, free, used, reserved):
            return None
        try:
            return self._create_partial(final, url, one_fd)
        except LayoutConflict as exc:
            log.info("streaming %s: the cache layout cannot hold it (%s)", url, exc)
            return None

    def _cached_fd(self, final: Path, url: str, info: ObjectInfo, verify: bool) -> _Hit | None:
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
                self.index.put_soon(name, url, info.version, info.size)
            elif entry.version != info.version or size != info.size:
                os.close(fd)
                return None
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        try:
            self.layout.touch(final)  # a hit, as the SDK marks one (the layout's recency)
            _warm(fd, info.size)
            return _Hit(fd, identity(os.fstat(fd)))
        except BaseException:
            os.close(fd)
            raise

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
        fetch = self._new_fetch(url, store, info, final, partial.path)
        self.in_flight[(url, info.version)] = fetch
        self._nursery.start_soon(self._run, fetch, partial.lock_fd)
        # told once the fetch is sure to run, and so to report its end
        tell(self.events.fetch_started, fetch)
        self._changed()
        return FetchReader(partial.read_fd, fetch, True, self.release, on_stale)

    def _new_fetch(
        self, url: str, store: ObjectStore, info: ObjectInfo, final: Path, partial: Path
    ) -> Fetch:
        """The fetch of `info`'s version into `partial`, read by its opener."""
        # A server without byte ranges is read by one GET: one part, the whole object.
        fetch = Fetch(
            url,
            store,
            info,
            final,
            partial,
            self.part_size if info.ranged else max(info.size, 1),
            self.parallel if info.ranged else 1,
            self.verify and store.md5_versions,
            self.events,
            self.layout.name_of(final),
        )
        fetch.readers = 1
        fetch.processes = self.processes
        return fetch

    async def _open_small(
        self,
        url: str,
        store: ObjectStore,
        info: ObjectInfo,
        final: Path,
        verify: bool,
        on_stale: Callable[[], None],
    ) -> ObjectReader | None:
        """The open of an object of one chunk (`_SMALL`), in one thread hop: find its cache
        file, else create the partial file, GET the object, write, hash, seal it and hand
        back the read descriptor. Each hop to a worker thread and each trio task costs the
        loop about as much as the work it carries, and a small file's cold open made four.

        Single flight holds: the fetch is in flight from the start, and an open of the same
        version waits for the hop (`_join`). The hop is the fetch's first attempt, in a data
        slot, given up after the stall window (a small object has less than 1 MiB to bring);
        a failed or stalled attempt is resumed by the fetch's usual machinery (`Fetch.run`),
        under the same deadlines. None: the hop was given up before it found a file.
        """
        reserved = self.reserved_bytes()  # before this fetch counts
        fetch = self._new_fetch(url, store, info, final, final)  # its partial: made by the hop
        fetch.prepare(self.transfer, self.index)
        hop = fetch.first_hop = _FirstHop()
        run = fetch.first_run
        run.progress = progress = fetch.progress()
        run.attempt = 1
        self.in_flight[(url, info.version)] = fetch
        try:
            async with self.transfer.data_slot():
                with trio.move_on_after(progress.window):
                    await self.transfer.in_thread(
                        self._first_hop, fetch, hop, final, verify, self.usage_bytes, reserved
                    )
                    hop.finished = True
            found = hop.found if hop.finished else hop.give_up()
        except BaseException:
            found = hop.give_up()
            if isinstance(found, _Hit):
                os.close(found.fd)
            elif isinstance(found, _Partial):
                tell(self.events.fetch_started, fetch)
                fetch.abandon_first_attempt()
                os.close(found.read_fd)
                self._end(fetch, None)
            self._forget(fetch)
            hop.done.set()
            raise
        if not isinstance(found, _Partial):
            self._forget(fetch)
            hop.done.set()
            if found is _NOTHING:
                return None
            if found is None:
                log.info("streaming %s (%d bytes): more than the cache can hold", url, info.size)
                return StreamReader(Stream(store, info, self.transfer, url, self.events))
            assert isinstance(found, _Hit)
            self._remember(url, info.version, final, found.identity)
            self._note_source(url, "l1")
            if self.index.pending:
                self._changed()  # as in `open`
            return CachedReader(found.fd)
        return self._first_attempt_over(fetch, found, on_stale)

    def _first_attempt_over(
        self, fetch: Fetch, found: _Partial, on_stale: Callable[[], None]
    ) -> FetchReader:
        """The first attempt of a small object's fetch (`_open_small`, `_open_in_process`)
        is over: the fetch is complete or failed, or it goes on in the usual machinery."""
        hop = fetch.first_hop
        assert hop is not None
        url, info, run = fetch.url, fetch.info, fetch.first_run
        tell(self.events.fetch_started, fetch)
        received = run.written
        tell(self.events.fetch_received, fetch, received)
        if not fetch.first_attempt_ended(hop.finished, hop.error):
            if fetch.complete:
                self._note_source(url, "bucket")
                self.usage_bytes += info.size
            self._end(fetch, None)
        else:
            # resumed from its last byte by the usual machinery
            window = fetch.store.deadlines.stall_window
            why = hop.error if hop.finished else f"stalled: less than 1 MiB in {window:g}s"
            log.warning("resuming %s at byte %d: %s", url, received, why)
            assert self._nursery is not None
            # the partial file's lock lasts as long as its writer, not only as its reader
            self._nursery.start_soon(self._run, fetch, os.dup(found.lock_fd))
            self._changed()
        hop.done.set()
        return FetchReader(found.read_fd, fetch, True, self.release, on_stale)

    async def _open_in_process(
        self,
        url: str,
        store: ObjectStore,
        info: ObjectInfo,
        final: Path,
        on_stale: Callable[[], None],
    ) -> ObjectReader | None:
        """The open of a cold object of one chunk through a fetch process (`workers`): the
        loop creates the partial file, a process GETs, writes, checks and renames it, the
        loop records the index row. No thread of the daemon takes part: each costs the loop
        GIL hand-overs, and the fetch work in threads took the GIL from the loop.

        The file operations here (a failed open, `statvfs`, the partial file's creation)
        run on the loop, as `_open_known`'s do: fewer and cheaper than a thread hop. A cache
        file in place (a hit, or a version to check) and anything unusual (a full cache, a
        layout conflict) go the thread way: None. The job is the fetch's first attempt,
        under the same data slot and stall window as `_open_small`'s; a failed or given-up
        one goes on in the daemon's threads."""
        try:
            os.close(os.open(final, os.O_RDONLY | os.O_CLOEXEC))
            return None
        except FileNotFoundError:
            pass
        except OSError:
            return None
        free = free_bytes(self.layout.root) if self.limits.min_free_bytes else None
        if not self.limits.fits(info.size, free, self.usage_bytes, self.reserved_bytes()):
            return None
        try:
            found = self._create_partial(final, url, one_fd=True, absent=True)
        except (ClearmountError, OSError):
            return None
        assert self.processes is not None
        fetch = self._new_fetch(url, store, info, final, found.path)
        fetch.prepare(self.transfer, self.index)
        hop = fetch.first_hop = _FirstHop()
        hop.found = found
        run = fetch.first_run
        run.progress = progress = fetch.progress()
        run.attempt = 1
        self.in_flight[(url, info.version)] = fetch
        job = Job(
            url,
            info.key,
            info.version,
            info.size,
            str(found.path),
            str(final),
            fetch.expected_md5,
            progress.window,
        )
        try:
            async with self.transfer.data_slot():
                # the process gives the job up after the stall window; this bounds a
                # process that stopped answering
                outcome = await self.processes.fetch(store, job, 2 * progress.window + 1)
        except BaseException:
            tell(self.events.fetch_started, fetch)
            fetch.abandon_first_attempt()
            os.close(found.read_fd)
            self._end(fetch, None)
            hop.done.set()
            raise
        run.written = outcome.written
        fetch.hashed_elsewhere()
        if outcome.sealed:
            fetch.sealed = True
            fetch.identity = outcome.identity
            fetch.record(outcome.replacing, flush=False)
        hop.finished = not outcome.stalled
        if outcome.error is not None:
            hop.error = error_from(outcome.error)
        return self._first_attempt_over(fetch, found, on_stale)

    def _first_hop(
        self, fetch: Fetch, hop: _FirstHop, final: Path, verify: bool, used: int, reserved: int
    ) -> None:
        """The thread of `_open_small`: what it finds or creates goes to `hop`."""
        found = self._find_or_create(
            final, fetch.url, fetch.info, verify, used, reserved, one_fd=True
        )
        if isinstance(found, _Partial):
            fetch.partial = found.path
        if not hop.hand(found):
            # the loop gave the open up meanwhile: nobody else will close these
            if isinstance(found, _Hit):
                os.close(found.fd)
            elif isinstance(found, _Partial):
                found.discard()
            return
        if isinstance(found, _Partial):
            try:
                fetch.first_attempt()
            except Exception as exc:  # the loop decides: resume, or fail the fetch
                hop.error = exc

    def _create_partial(
        self, final: Path, url: str, one_fd: bool = False, absent: bool = False
    ) -> _Partial:
        """A new locked partial file for `final` (blocking: runs in a worker thread); with
        `one_fd`, its lock descriptor (shared-locked, readable) is its reader's too;
        `absent`: nothing was found at `final` just now (`CacheLayout.create_partial`)."""
        try:
            path, lock_fd = self.layout.create_partial(final, absent)
        except LayoutConflict:
            raise
        except OSError as exc:
            raise CacheError(f"cannot create a cache file for {url}: {exc.strerror}") from None
        if one_fd:
            return _Partial(path, lock_fd, lock_fd)
        try:
            read_fd = _open_read(path)
            if read_fd is None:
                raise CacheError(f"cannot open cache file {path}: it was removed")
            return _Partial(path, lock_fd, read_fd)
        except BaseException:
            _discard(path, lock_fd)
            raise

    def note_eviction(self, over: bool) -> None:
        """The eviction loop ended a pass; `over`: it could not get within the limits (the
        rest is open, pinned or in flight) or failed, and then no fetch waits for room."""
        self._eviction_stuck = over
        evicted, self._evicted = self._evicted, trio.Event()
        if evicted is not None:
            evicted.set()

    async def _room_for(self, fetch: Fetch) -> None:
        """Hold `fetch` back while the eviction loop is behind (`limits.waits_for_room`),
        until a pass made room, for at most `ROOM_WAIT` seconds; never after a pass that could
        not (so never for good, whatever is open or pinned)."""
        if self.limits.max_bytes is None:
            return  # (no sums over the fetches in flight for a cache without a size limit)
        size = fetch.info.size
        with trio.move_on_after(ROOM_WAIT):
            while (
                self._evicted is not None
                and not self._eviction_stuck
                and waits_for_room(self.limits, self.held_bytes(), self.reserved_bytes(), size)
            ):
                await self._evicted.wait()

    async def _run(self, fetch: Fetch, lock_fd: int) -> None:
        try:
            await self._room_for(fetch)
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
            self._end(fetch, lock_fd)
            if self.shared is not None and self._nursery is not None:
                self._nursery.start_soon(self.shared.finish, fetch)

    def _end(self, fetch: Fetch, lock_fd: int | None) -> None:
        """`fetch` has ended: out of the single-flight table, its end reported, its partial
        file's lock descriptor closed (None: already closed)."""
        self._forget(fetch)
        if fetch.complete and fetch.identity is not None:
            self._remember(fetch.url, fetch.info.version, fetch.final, fetch.identity)
        lookup = self._lookups.get((fetch.url, fetch.info.version))
        if lookup is not None:
            lookup.ends += 1
        if lock_fd is not None:
            # closing a descriptor nobody wrote through: no I/O (see cache.reader)
            os.close(lock_fd)
        self._report_end(fetch)
        self._changed()

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


def _open_read(*paths: Path) -> int | None:
    """A shared-locked read descriptor of the first of `paths` that exists, None if none
    does (blocking)."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CacheError(f"cannot open cache file {path}: {exc.strerror}") from None
        _share_lock(fd)  # partial files are never evicted; this protects the renamed file
        return fd
    return None


def _warm(fd: int, size: int) -> None:
    """Bring the start of a cache file into the page cache (blocking: a worker thread).

    The reads of an open file `pread` on the loop (cache.reader): a cached file whose pages
    were dropped (a DataLoader's next epoch) would make each of them wait for the disk with
    every other request behind it, one file at a time. Read here, the open's worker threads
    wait for the disk side by side and the loop's read finds the pages.
    """
    buffer: bytearray | None = getattr(_warm_buffer, "buffer", None)
    if buffer is None:
        buffer = _warm_buffer.buffer = bytearray(_WARM_BYTES)
    with contextlib.suppress(OSError):  # only a head start: the read reports any error
        os.preadv(fd, [memoryview(buffer)[: min(size, _WARM_BYTES)]], 0)


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

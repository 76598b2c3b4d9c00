"""The one bridge from the trio loop to blocking SDK calls.

Owns: the thread limiters, and the deadlines of whole operations. Every backend call enters a
worker thread here, under an explicit `CapacityLimiter`: metadata calls (HEAD, LIST) and data
transfers (ranged GETs) have separate budgets, so a few large downloads can never starve `ls`.
Local blocking work of the cache (opening, locking and touching cache files, the SQLite
index, `statvfs`) has a budget of its own (`local`): a slow cache disk never takes a slot
from the network, nor the network from it.
Retries and per-request timeouts are the SDKs' own (configured in each adapter from the
store's `Deadlines`); this module bounds what they cannot:

- a metadata call given a `deadline` that has not returned by then raises `Unavailable`
  (however many retries the SDK still had in mind);
- a data transfer given a `Progress` is watched: less than 1 MiB within the stall window,
  and it raises `Unavailable` (a server that trickles bytes never trips the SDK's read
  timeout, nor does one that answers the first bytes of every attempt and then stalls).
  A transfer too small to complete a 1 MiB step (a zip header's GET) has a fixed deadline,
  kept by a cancel scope instead of a watcher task.

The shared (L2) cache on a network filesystem has its own budget (`shared`): a hung NFS
server holds those threads, never the cache disk's or the network's, and every call has a
deadline. `call_with_deadline` does the same for a worker thread already running (the L2 reads
of a fetch part): the call runs in a daemon thread of its own and is given up at its deadline.

The first attempt of a cold small object, and of a big object's run too small to bring
1 MiB, may run in a fetch process instead of a thread (`clearmount.workers`): its SDK calls
are that process's, under the same data slot here.

Threads and the CPU: the trio loop thread answers every FUSE request, while worker threads
download and write; on a busy machine (a download uses the CPU of the daemon and of the
server) a loop that wakes for a request waits for a CPU behind them. `favor_loop` runs the
loop thread `LOOP_PRIORITY` nice levels above the process where the system allows it (root,
or `CAP_SYS_NICE`); worker threads, which inherit the loop's priority when trio starts them,
go back to the process's own on their first call (`as_worker`).

Slots are held by the trio task, not by its thread: a call given up, or cancelled to make room
for a reader, gives its slot back at once, while its abandoned thread winds down on its own
(at its next progress report, or at the SDK's read timeout when the server has stalled).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import trio

from clearmount.config import STALL_BYTES
from clearmount.errors import Unavailable

T = TypeVar("T")

log = logging.getLogger(__name__)

#: How many nice levels the trio loop thread runs above the rest of the process (see
#: `favor_loop`): enough for its wake-ups to preempt a download thread or a local server.
LOOP_PRIORITY = 10


#: the process's nice value, once `favor_loop` has raised the loop thread above it
_process_nice: int | None = None
#: `.reset`: this worker thread has gone back to `_process_nice`
_worker = threading.local()


def favor_loop() -> None:
    """Run the calling thread, the trio loop's, `LOOP_PRIORITY` nice levels above the process
    if the system allows it (root, or `CAP_SYS_NICE`); else leave it as it is."""
    global _process_nice
    tid = threading.get_native_id()
    nice = os.getpriority(os.PRIO_PROCESS, tid)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, max(-20, nice - LOOP_PRIORITY))
    except PermissionError:
        log.debug("the FUSE loop keeps the process's CPU priority (no CAP_SYS_NICE)")
        return
    _process_nice = nice


def worker_nice() -> int | None:
    """The nice value of the process's workers (threads and fetch processes), if
    `favor_loop` raised the loop thread above it; None if it did not."""
    return _process_nice


def as_worker(fn: Callable[..., T], *args: object) -> T:
    """Call `fn(*args)` in a worker thread that first goes back to the process's CPU priority
    (threads inherit the loop's when trio starts them, see `favor_loop`)."""
    nice = _process_nice
    if nice is not None and not getattr(_worker, "reset", False):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        _worker.reset = True
    return fn(*args)


#: Worker threads for the shared (L2) cache's calls (`Transfer.shared`).
SHARED_CONCURRENCY = 16
#: Worker threads for local blocking work (`Transfer.local`): cache-disk calls are short, so a
#: few threads keep up with hundreds of opens, and a stuck disk holds no more than these.
LOCAL_CONCURRENCY = 8

# Threads given up by their calls that may still be winding down. Against a server that
# stalls, each keeps its socket until the read timeout; past this many, a new call waits.
_ABANDONED_MAX = 256


class Progress:
    """A data transfer's heartbeat for the stall watchdog, kept across the attempts (resumes)
    of one download. The worker thread calls `add(n)` for the bytes it receives (plain
    attribute writes: no trio call). Each attempt must bring every `STALL_BYTES` within
    `window` seconds, however the SDK cuts them into chunks; and the download is given up
    once `patience` seconds have passed without a whole `STALL_BYTES` step."""

    def __init__(self, window: float, patience: float = math.inf, url: str = "") -> None:
        self.window = window
        self.patience = patience
        self.url = url
        #: when the last `STALL_BYTES` step was complete, or the download started
        self.last_step = time.monotonic()
        #: when the last step was complete, or this attempt started: the window's origin
        self.last = self.last_step
        #: why the watchdog gave the attempt up ("" while it has not)
        self.stalled = ""
        self._step = 0

    def add(self, size: int) -> None:
        self._step += size
        if self._step >= STALL_BYTES:
            self._step = 0
            self.last = self.last_step = time.monotonic()

    def restart(self) -> None:
        """A new attempt begins: its window starts now (bytes of a step carry over)."""
        self.last = time.monotonic()
        self.stalled = ""

    def left(self) -> float:
        """Seconds until the download is given up, unless a step completes."""
        return self.last_step + self.patience - time.monotonic()

    def fixed_deadline(self, at_most: int) -> float | None:
        """When an attempt that receives at most `at_most` bytes is given up (a trio clock
        time), if that cannot complete a step: its watch never moves then, a cancel scope
        keeps it. None when it can."""
        if self._step + at_most >= STALL_BYTES:
            return None
        now = time.monotonic()
        until = min(self.last + self.window, self.last_step + self.patience)
        return trio.current_time() + (until - now)

    def why_stalled(self) -> str:
        """Why the watch gives the current attempt up, now that it does."""
        if self.left() <= 0:
            return f"less than 1 MiB received in {self.patience:g}s"
        return f"stalled: less than 1 MiB received in {self.window:g}s"


async def _watch(progress: Progress, scope: trio.CancelScope) -> None:
    while True:
        now = time.monotonic()
        if progress.left() <= 0 or now >= progress.last + progress.window:
            progress.stalled = progress.why_stalled()
        if progress.stalled:
            scope.cancel()
            return
        await trio.sleep(min(progress.last + progress.window - now, progress.left()))


class Transfer:
    def __init__(self, metadata_concurrency: int, fetch_concurrency: int) -> None:
        self.metadata_limiter = trio.CapacityLimiter(metadata_concurrency)
        self._metadata_threads = trio.CapacityLimiter(metadata_concurrency + _ABANDONED_MAX)
        self.data_limiter = trio.CapacityLimiter(fetch_concurrency)
        self._data_threads = trio.CapacityLimiter(fetch_concurrency + _ABANDONED_MAX)
        #: called when a transfer somebody reads must wait for a slot; the fetcher sets it to
        #: stop the downloads nobody reads any more
        self.on_reader_waiting: Callable[[], None] = lambda: None
        self.readers_waiting = 0
        #: the GETs readers wait for, of every file (`Fetch`'s reader runs in flight), and
        #: when a reader last waited for bytes (monotonic): meanwhile, the background runs of
        #: the other files go one at a time (`Fetch._pump`)
        self.reader_runs = 0
        self.reader_demand_at = -math.inf
        self.local_limiter = trio.CapacityLimiter(LOCAL_CONCURRENCY)
        self.shared_limiter = trio.CapacityLimiter(SHARED_CONCURRENCY)
        self._shared_threads = trio.CapacityLimiter(SHARED_CONCURRENCY + _ABANDONED_MAX)

    @property
    def requests_at_once(self) -> int:
        """The most store requests the slots let run at once (metadata and data)."""
        return int(self.metadata_limiter.total_tokens + self.data_limiter.total_tokens)

    async def shared(
        self, fn: Callable[..., T], *args: object, deadline: float, what: str = "shared cache"
    ) -> T:
        """Run a call on the shared (L2) cache in a worker thread; given up (its thread
        abandoned) with `Unavailable` after `deadline` seconds: a hung NFS server never
        hangs a read."""
        async with self.shared_limiter:
            with trio.move_on_after(deadline):
                return await trio.to_thread.run_sync(
                    as_worker, fn, *args, limiter=self._shared_threads, abandon_on_cancel=True
                )
        raise Unavailable(f"no answer within {deadline:g}s", what)

    async def local(self, fn: Callable[..., T], *args: object) -> T:
        """Run short local blocking work (cache-file opens, locks, the index, `statvfs`) in a
        worker thread, so a slow disk stalls only its caller, never the loop. Not abandoned
        on cancellation: the call always completes and returns, so what it opened is its
        caller's to close."""
        return await trio.to_thread.run_sync(as_worker, fn, *args, limiter=self.local_limiter)

    async def metadata(
        self, fn: Callable[..., T], *args: object, deadline: float | None = None, url: str = ""
    ) -> T:
        """Run a short blocking call (HEAD, LIST, bucket checks) in a worker thread; given up
        with `Unavailable` (naming `url`) after `deadline` seconds, retries included."""
        async with self.metadata_limiter:
            with trio.move_on_after(math.inf if deadline is None else deadline):
                return await trio.to_thread.run_sync(
                    as_worker, fn, *args, limiter=self._metadata_threads, abandon_on_cancel=True
                )
        raise Unavailable(f"no answer within {deadline:g}s", url)

    async def data(
        self,
        fn: Callable[..., T],
        *args: object,
        for_reader: bool = True,
        progress: Progress | None = None,
    ) -> T:
        """Run a long transfer in a worker thread, in one of the data slots (see `data_slot`
        and `in_thread`)."""
        async with self.data_slot(for_reader):
            return await self.in_thread(fn, *args, progress=progress)

    @contextlib.asynccontextmanager
    async def data_slot(self, for_reader: bool = True) -> AsyncIterator[None]:
        """Hold one of the data slots.

        `for_reader`: somebody waits for these bytes. Such a transfer finding every slot busy
        asks for the slots of transfers nobody waits for.
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
            yield
        finally:
            self.data_limiter.release()

    async def in_thread(
        self,
        fn: Callable[..., T],
        *args: object,
        progress: Progress | None = None,
        at_most: int | None = None,
    ) -> T:
        """Run a transfer that holds a data slot in a worker thread.

        On cancellation the thread is abandoned: it notices at its next progress report, which
        fails once its fetch has been stopped, and ends. With `progress`, a transfer that
        stalls (see `Progress`) is abandoned so and raises `Unavailable`. `at_most`: the
        transfer receives no more bytes than that (a small ranged GET); one too small to
        move the watch is watched by a deadline, without a watcher task.
        """
        run = functools.partial(
            trio.to_thread.run_sync,
            as_worker,
            fn,
            *args,
            limiter=self._data_threads,
            abandon_on_cancel=True,
        )
        if progress is None:
            return await run()
        progress.restart()
        deadline = progress.fixed_deadline(at_most) if at_most is not None else None
        if deadline is not None:
            with trio.move_on_at(deadline):
                return await run()
            progress.stalled = progress.why_stalled()
            raise Unavailable(progress.stalled, progress.url)
        results: list[T] = []
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, progress, nursery.cancel_scope)
            try:
                results.append(await run())
            except Exception as exc:  # raised below: out of a nursery it would be a group
                error = exc
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        if not results:
            raise Unavailable(progress.stalled, progress.url)
        return results[0]


def call_with_deadline(
    fn: Callable[..., T], *args: object, deadline: float, what: str = "shared cache"
) -> T:
    """From a worker thread: run `fn` in a daemon thread of its own and wait at most
    `deadline` seconds for it (`Unavailable` then; the thread is abandoned and never keeps
    the daemon from exiting)."""
    result: list[tuple[bool, object]] = []
    done = threading.Event()

    def run() -> None:
        try:
            result.append((True, fn(*args)))
        except BaseException as exc:  # handed to the caller
            result.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="clearmount-deadline").start()
    if not done.wait(deadline):
        raise Unavailable(f"no answer within {deadline:g}s", what)
    ok, value = result[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]

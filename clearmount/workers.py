"""Worker processes that fetch small objects into the cache, off the daemon's GIL.

Owns: the fetch processes (`FetchProcesses`, `-o fetch_processes=N`), what goes between them
and the daemon, and the worker side (`serve`, run as `python -m clearmount.workers`).

Why: one process has one GIL. A cold small file costs the daemon about 2 ms of CPU, most
of it in worker threads (the SDK building and signing the request, receiving, writing,
hashing) that take the GIL from the FUSE loop. Here that work runs in other processes: the
loop sends a job (about 300 bytes) and later reads its outcome from the process's socket
(`trio.lowlevel.wait_readable`: no thread of the daemon waits for it).

A job is one of two kinds. The first attempt of one small object's fetch
(`cache.fetch.Fetcher`'s `_open_in_process`), into the partial file the loop created: GET,
write, MD5/ETag and size check, rename into place; the loop records the index row. Or one
attempt at a big object's small ranged GET (a run too small to bring 1 MiB, such as a zip
member's header: `cache.fetch.Fetch._fetch_in_process`): bytes [start, end) of the version
into the fetch's partial file at their offset, no hash, no rename. A job is given up after
its stall window (by a watchdog in the worker, which then writes and renames nothing more:
the rename is under the job's lock) and its outcome says how far the bytes are on disk; the
fetch then goes on in the daemon's threads from there, as a stalled thread's does. Bytes a
given-up job's thread still writes land at their own offset of the same version, and
nothing counts them.

Each process builds its stores once (`backends.open_store`, from the frozen config and the
store's URL that the daemon sends it once per store), and runs up to `THREADS` jobs at once.
Before it says it is ready it imports the SDKs and builds the clients the mount's config
uses (`backends.warm_up`, as the daemon does at its start): ~0.15 s of CPU per client,
which its first jobs would otherwise pay while a reader waits.
Processes die with the daemon: they read their socket in their main thread and exit at its
end, and the kernel kills them once the daemon is gone (`PR_SET_PDEATHSIG`). They are
started after the mount is ready, at the lowest CPU priority (`STARTING_NICE`) until they
say they are ready too, and are used from then on; until then, and for stores they cannot
build (`ObjectStore.origin` unset), opens take the daemon's threads.

A process that dies (the OOM killer, an operator's kill) is started again: after
`_RESTART_SECONDS`, doubling up to `_RESTART_MAX_SECONDS` while its successors keep dying,
back to the first delay once one stayed up `_STAYED_UP_SECONDS`. Meanwhile its jobs are given
up and resumed in the daemon's threads, as are new ones if no other process is ready. After
`_START_FAILURES` processes in a row that never got ready (a broken install) no more are
started, and small files use the daemon's threads from then on. The loop never waits for a
process to end: it polls for its exit status.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import heapq
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import trio

from clearmount import errors
from clearmount.backends.base import limit_pools
from clearmount.errors import CacheError, ClearmountError, StoreError, Unexpected
from clearmount.transfer import worker_nice

if TYPE_CHECKING:
    from clearmount.backends.base import ObjectStore
    from clearmount.config import Config

log = logging.getLogger(__name__)

#: Jobs one process runs at once (each one GET in its own thread, as in the daemon).
THREADS = 8
#: A process's CPU priority until it is ready (the lowest): its start (an interpreter, then
#: the SDK's imports and clients, ~0.4 s of CPU each) comes just as a fresh mount's first
#: lookups and reads arrive, and on a small node it took the cores they needed.
STARTING_NICE = 19
#: A process that has not said it is ready after this long is not waited for.
_START_SECONDS = 30.0
#: A process that died is started again after this long, doubled for each successor that dies
#: too, up to `_RESTART_MAX_SECONDS`; back to this once one stayed up `_STAYED_UP_SECONDS`.
_RESTART_SECONDS = 1.0
_RESTART_MAX_SECONDS = 60.0
_STAYED_UP_SECONDS = 60.0
#: Processes in a row that never got ready after which no more are started.
_START_FAILURES = 5
#: How long the loop polls for the exit status of a process it killed (every `_REAP_POLL`).
_REAP_SECONDS = 5.0
_REAP_POLL = 0.01
_PR_SET_PDEATHSIG = 1


class Job(NamedTuple):
    """The first attempt at one small object, into `partial`, renamed to `final` if whole;
    or (`final` None) bytes [start, end) of the object into `partial` at their offset."""

    url: str
    key: str
    version: str
    size: int
    partial: str
    #: None: a ranged GET into a bigger fetch's partial file (not checked, not renamed)
    final: str | None
    #: the MD5 the ETag states (checked), or None
    md5: str | None
    #: the store's stall window: the job is given up after it
    window: float
    start: int = 0
    #: None: the object's size
    end: int | None = None


class Outcome(NamedTuple):
    #: the bytes from the job's start up to here are on disk (the fetch resumes from
    #: there; 0 when nothing is known)
    written: int
    #: renamed into place, checked
    sealed: bool = False
    #: a file of another version was in place and was replaced
    replacing: bool = False
    #: the sealed file's `cache.fetch.Identity`
    identity: tuple[int, int, int, int] | None = None
    #: given up after the stall window (or not answered): resumed in the daemon
    stalled: bool = False
    #: what ended it unsealed (`error_from` rebuilds it)
    error: tuple[str, str, str, str, int] | None = None


def describe_error(exc: BaseException) -> tuple[str, str, str, str, int]:
    """An exception as plain data that crosses a pipe: kind, message, url, entry, errno."""
    if isinstance(exc, StoreError):
        return (type(exc).__name__, exc.args[0] if exc.args else "", exc.url, exc.entry, 0)
    if isinstance(exc, ClearmountError):
        return (type(exc).__name__, str(exc), "", "", exc.errno)
    if isinstance(exc, OSError):
        return ("OSError", exc.strerror or str(exc), exc.filename or "", "", exc.errno or 0)
    return ("Unexpected", f"unexpected {type(exc).__name__} in a fetch process", "", "", 0)


def error_from(described: tuple[str, str, str, str, int]) -> Exception:
    """The clearmount error (or OSError) `describe_error` described."""
    kind, message, url, entry, code = described
    if kind == "OSError":
        return OSError(code or errno.EIO, message, url or None)
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, StoreError):
        return cls(message, url, entry)
    if cls is CacheError:
        return CacheError(message, code or None)
    return Unexpected(message, url, entry)


def verify_download(
    url: str, on_disk: int, size: int, md5: str | None, expected: str | None
) -> None:
    """Raise `CacheError` unless a finished download has the object's size and MD5."""
    if on_disk != size:
        raise CacheError(f"downloaded {on_disk} bytes of {url} but the object has {size}")
    if expected is not None and md5 != expected:
        raise CacheError(f"{url}: MD5 {md5} does not match the ETag {expected}")


_LENGTH = struct.Struct("!I")
#: bytes asked of the socket at once: every message waiting, for a busy daemon
_RECEIVE_BYTES = 1 << 16


class Channel:
    """Messages (plain data, named tuples) both ways over one end of a socket pair: each a
    length and a pickle, written at once. Lighter than `multiprocessing.Connection`, which
    this replaced: no pickler object per message, and one `recv` takes every message that
    is waiting (instead of a `poll` and two reads per message)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self._messages: deque[tuple[Any, ...]] = deque()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(self, message: object) -> None:
        body = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        self.sock.sendall(_LENGTH.pack(len(body)) + body)

    def receive(self) -> list[tuple[Any, ...]]:
        """The messages that came, after one `recv` (blocking until some bytes come; EOFError
        once the other end closed)."""
        data = self.sock.recv(_RECEIVE_BYTES)
        if not data:
            raise EOFError
        buffer = self._buffer
        buffer += data
        messages = []
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            end = start + _LENGTH.size + length
            if end > len(buffer):
                break
            messages.append(pickle.loads(memoryview(buffer)[start + _LENGTH.size : end]))
            start = end
        del buffer[:start]
        return messages

    def next(self) -> tuple[Any, ...]:
        """The next message (blocking; EOFError once the other end closed)."""
        while not self._messages:
            self._messages.extend(self.receive())
        return self._messages.popleft()


# ----- the daemon's side


class _Waiter:
    __slots__ = ("event", "outcome")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.outcome: Outcome | None = None


class _Process:
    def __init__(self, popen: subprocess.Popen[bytes], conn: Channel) -> None:
        self.popen = popen
        self.conn = conn
        self.ready = False
        #: when it said it was ready (trio clock), None if it never did
        self.ready_at: float | None = None
        self.alive = True
        self.waiting: dict[int, _Waiter] = {}
        #: the stores this process was sent (by the daemon's store object)
        self.stores: set[int] = set()


class FetchProcesses:
    """`count` worker processes and the jobs the daemon waits for (see the module docstring)."""

    def __init__(self, count: int) -> None:
        self.count = count
        #: the processes started and not lost yet
        self._processes: list[_Process] = []
        self._store_ids: dict[ObjectStore, int] = {}
        self._next_job = 0
        #: processes started again after one died
        self.restarts = 0
        #: processes in a row that never got ready
        self._start_failures = 0
        self._gave_up = False
        self._announced = False

    @property
    def ready(self) -> int:
        """How many processes take jobs now."""
        return sum(p.ready for p in self._processes)

    def takes(self, store: ObjectStore) -> bool:
        """Whether a job for `store` can go to a process now."""
        return store.origin is not None and any(p.ready for p in self._processes)

    async def run(self, config: Config | None = None) -> None:
        """Start the processes (their SDK clients built from `config` before they say they
        are ready), keep them running and read what they say, until cancelled (then end
        them)."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.count):
                    nursery.start_soon(self._keep, config)
        finally:
            for process in self._processes:
                self._lost(process)
            with trio.CancelScope(shield=True):
                for process in self._processes:
                    await _exit_status(process.popen)

    async def _keep(self, config: Config | None) -> None:
        """Keep one process running: start another after it dies (see the module docstring)."""
        delay = _RESTART_SECONDS
        while True:
            try:
                process = self._spawn(config)
            except OSError as exc:
                what, ready_at = f"not started ({exc})", None
            else:
                self._processes.append(process)
                try:
                    await self._read(process)
                finally:
                    self._lost(process)
                status = await _exit_status(process.popen)
                self._processes.remove(process)
                what, ready_at = f"{process.popen.pid} ended ({status})", process.ready_at
            if ready_at is None:
                self._start_failures += 1
                if self._start_failures >= _START_FAILURES and not self._gave_up:
                    self._gave_up = True
                    log.warning(
                        "fetch process %s: %d in a row never got ready, no more are started: "
                        "small files use threads",
                        what,
                        self._start_failures,
                    )
            elif trio.current_time() - ready_at >= _STAYED_UP_SECONDS:
                delay = _RESTART_SECONDS
            if self._gave_up:
                return
            log.warning(
                "fetch process %s: its files go on in threads; another starts in %gs",
                what,
                delay,
            )
            await trio.sleep(delay)
            delay = min(2 * delay, _RESTART_MAX_SECONDS)
            self.restarts += 1

    def _spawn(self, config: Config | None) -> _Process:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        nice = worker_nice()
        try:
            with _children_start_niced(nice):
                popen = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "clearmount.workers",
                        str(theirs.fileno()),
                        str(os.getpid()),
                        # where it goes once ready (forked from the loop thread, it would
                        # keep the loop's priority)
                        "" if nice is None else str(nice),
                    ],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the process has its own copy
        conn = Channel(ours)
        with contextlib.suppress(OSError):  # (one that died at once is found by `_read`)
            conn.send(("warm", config))  # the socket's buffer holds it while it starts
        return _Process(popen, conn)

    async def _read(self, process: _Process) -> None:
        """Read what `process` says until it is gone (or must be: it did not start)."""
        conn = process.conn
        with trio.move_on_after(_START_SECONDS) as starting:
            await trio.lowlevel.wait_readable(conn.fileno())
        if starting.cancelled_caught:
            log.warning("fetch process %d did not start in %gs", process.popen.pid, _START_SECONDS)
            return
        try:
            while True:
                await trio.lowlevel.wait_readable(conn.fileno())
                for message in conn.receive():
                    if message[0] == "done":
                        waiter = process.waiting.pop(message[1], None)
                        if waiter is not None:
                            waiter.outcome = Outcome._make(message[2])
                            waiter.event.set()
                    elif message[0] == "ready":
                        self._now_ready(process)
        except (EOFError, OSError, trio.ClosedResourceError):
            pass  # it exited: `_keep` says how
        except Exception:  # a bug must cost the mount this process, never the mount
            log.exception("fetch process %d: unreadable answer", process.popen.pid)

    def _now_ready(self, process: _Process) -> None:
        process.ready = True
        process.ready_at = trio.current_time()
        self._start_failures = 0
        if self._announced:
            log.info("fetch process %d ready, in place of one that ended", process.popen.pid)
        elif len(self._processes) == self.count and all(p.ready for p in self._processes):
            self._announced = True
            log.info("%d fetch processes ready", self.count)

    def _lost(self, process: _Process) -> None:
        """The process is gone, or the daemon stops: its waiting jobs are given up, and it is
        killed (`_exit_status` reaps it)."""
        if not process.alive:
            return
        process.alive = process.ready = False
        for waiter in process.waiting.values():
            waiter.event.set()  # no outcome: given up, resumed in the daemon
        process.waiting.clear()
        with contextlib.suppress(OSError):
            trio.lowlevel.notify_closing(process.conn.fileno())  # wakes its reader task
            process.conn.close()
        with contextlib.suppress(OSError):
            process.popen.kill()

    async def fetch(self, store: ObjectStore, job: Job, deadline: float) -> Outcome:
        """Run `job` in the least busy ready process; given up (`stalled`, nothing written
        known) if no outcome comes within `deadline` seconds or the process is lost."""
        ready = [p for p in self._processes if p.ready]
        if not ready:  # lost since the open looked
            return Outcome(0, stalled=True)
        process = min(ready, key=lambda p: len(p.waiting))
        store_id = self._store_ids.setdefault(store, len(self._store_ids))
        job_id = self._next_job = self._next_job + 1
        waiter = process.waiting[job_id] = _Waiter()
        try:
            if store_id not in process.stores:
                process.conn.send(("store", store_id, store.origin))
                process.stores.add(store_id)
            process.conn.send(("job", job_id, store_id, tuple(job)))
            with trio.move_on_after(deadline):
                await waiter.event.wait()
        except OSError:
            self._lost(process)
        finally:
            if process.waiting.pop(job_id, None) is not None and process.alive:
                with contextlib.suppress(OSError):
                    process.conn.send(("cancel", job_id))
        return waiter.outcome or Outcome(0, stalled=True)


async def _exit_status(popen: subprocess.Popen[bytes]) -> str:
    """How a process that was killed (or exited) ended, once reaped; polled, so the loop never
    blocks on it ("not reaped" after `_REAP_SECONDS`: `subprocess` reaps it later)."""
    with trio.move_on_after(_REAP_SECONDS):
        while popen.poll() is None:
            await trio.sleep(_REAP_POLL)
    code = popen.returncode
    if code is None:
        return "not reaped"
    return f"signal {-code}" if code < 0 else f"exit status {code}"


# ----- the worker's side


class _Attempt:
    """One job in a worker process. Its outcome is sent once: by its thread, or by the
    watchdog that gives it up (after which its thread writes and renames nothing more)."""

    __slots__ = ("abandoned", "deadline", "job_id", "lock", "sent", "written")

    def __init__(self, job_id: int, deadline: float, start: int) -> None:
        self.job_id = job_id
        self.deadline = deadline
        self.lock = threading.Lock()
        self.abandoned = False
        self.sent = False
        self.written = start

    def __lt__(self, other: _Attempt) -> bool:
        return self.deadline < other.deadline


class _Worker:
    def __init__(self, conn: Channel) -> None:
        self.conn = conn
        self._send_lock = threading.Lock()
        self.stores: dict[int, ObjectStore] = {}
        self.attempts: dict[int, _Attempt] = {}
        self._watched: list[_Attempt] = []
        self._watch = threading.Condition()
        self._recv_lock = threading.Lock()

    def send(self, message: object) -> None:
        with self._send_lock:
            self.conn.send(message)

    def finish(self, attempt: _Attempt, outcome: Outcome) -> None:
        """Send `outcome`, unless the attempt's was sent (call under its lock)."""
        if attempt.sent:
            return
        attempt.sent = True
        self.attempts.pop(attempt.job_id, None)
        self.send(("done", attempt.job_id, tuple(outcome)))

    def give_up(self, attempt: _Attempt) -> None:
        with attempt.lock:
            attempt.abandoned = True
            self.finish(attempt, Outcome(attempt.written, stalled=True))

    def _watchdog(self) -> None:
        with self._watch:
            while True:
                now = time.monotonic()
                while self._watched and self._watched[0].deadline <= now:
                    self.give_up(heapq.heappop(self._watched))
                timeout = self._watched[0].deadline - now if self._watched else None
                self._watch.wait(timeout)

    def _run(self, job_id: int, store_id: int, job: Job) -> None:
        attempt = _Attempt(job_id, time.monotonic() + job.window, job.start)
        self.attempts[job_id] = attempt
        store = self.stores[store_id]
        with self._watch:
            heapq.heappush(self._watched, attempt)
            if self._watched[0] is attempt:  # else the watchdog wakes up before it is due
                self._watch.notify()
        try:
            outcome = self._fetch(attempt, store, job)
        except Exception as exc:
            if not isinstance(exc, ClearmountError | OSError):
                log.exception("unexpected error fetching %s", job.url)
            outcome = Outcome(attempt.written, error=describe_error(exc))
        if outcome is not None:
            with attempt.lock:
                self.finish(attempt, outcome)

    def _fetch(self, attempt: _Attempt, store: ObjectStore, job: Job) -> Outcome | None:
        end = job.size if job.end is None else job.end
        digest = hashlib.md5() if job.md5 is not None else None
        fd = os.open(job.partial, os.O_WRONLY | os.O_CLOEXEC)
        position = job.start
        try:
            chunks = store.read_range(job.key, job.version, position, end, max(end - position, 1))
            try:
                for chunk in chunks:
                    if attempt.abandoned:
                        return None
                    chunk = chunk[: end - position]
                    if digest is not None:
                        digest.update(chunk)
                    if chunk:
                        os.pwrite(fd, chunk, position)
                        position = attempt.written = position + len(chunk)
                    if position >= end:
                        break
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
            partial = os.fstat(fd)
        finally:
            os.close(fd)
        if job.final is None:  # a range of a bigger fetch: the daemon counts it
            with attempt.lock:
                self.finish(attempt, Outcome(position))
            return None
        verify_download(
            job.url,
            partial.st_size,
            job.size,
            digest.hexdigest() if digest is not None else None,
            job.md5,
        )
        with attempt.lock:
            if attempt.abandoned:
                return None
            replacing = os.path.lexists(job.final)
            os.rename(job.partial, job.final)
            identity = None
            with contextlib.suppress(OSError):
                final = os.stat(job.final)
                if final.st_ino == partial.st_ino and final.st_dev == partial.st_dev:
                    identity = (final.st_dev, final.st_ino, final.st_size, final.st_ctime_ns)
            self.finish(attempt, Outcome(position, True, replacing, identity))
        return None

    def serve(self, nice: int | None) -> None:
        """Warm up, go to CPU priority `nice` (None: stay), then run jobs in `THREADS`
        threads, each reading the next message itself (a thread handing jobs to others would
        cost a wake-up per job), until the daemon is gone."""
        from clearmount import backends

        try:
            kind, config = self.conn.next()
        except (EOFError, OSError):
            return
        if kind == "warm" and config is not None:
            try:
                backends.warm_up(config)
            except Exception:  # the daemon's own warm-up said it; the first job says it again
                log.debug("warm-up failed", exc_info=True)
        if nice is not None:
            os.setpriority(os.PRIO_PROCESS, 0, nice)  # the threads started below inherit it
        threading.Thread(target=self._watchdog, daemon=True).start()
        threads = [threading.Thread(target=self._serve, daemon=True) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        self.send(("ready",))
        for thread in threads:
            thread.join()

    def _serve(self) -> None:
        from clearmount import backends

        while True:
            with self._recv_lock:
                try:
                    message = self.conn.next()
                except (EOFError, OSError):
                    self.conn.close()  # the daemon is gone: the other threads see it too
                    return
                # the rest under the lock: a job after a store's message finds the store
                kind = message[0]
                if kind == "cancel":
                    attempt = self.attempts.get(message[1])
                    if attempt is not None:
                        self.give_up(attempt)
                elif kind == "store":
                    url, config = message[2]
                    self.stores[message[1]] = backends.open_store(url, config)
            if kind == "job":
                self._run(message[1], message[2], Job._make(message[3]))


def _die_with(parent: int) -> None:
    """Be killed when the daemon's process ends, however it ends."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)  # it died before the line above


@contextlib.contextmanager
def _children_start_niced(nice: int | None) -> Iterator[None]:
    """Processes started inside start at `STARTING_NICE` (they inherit the calling thread's
    priority, lowered meanwhile), unless `nice` is None: without the right to raise their
    priority again (see `transfer.favor_loop`), they start as they always did."""
    if nice is None:
        yield
        return
    thread = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, thread)
    os.setpriority(os.PRIO_PROCESS, thread, STARTING_NICE)
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, thread, before)


def serve(fd: int, parent: int, nice: int | None) -> None:
    """The worker process: run the jobs the daemon sends on socket `fd` until it closes, at
    CPU priority `nice` once warmed up (None: as started)."""
    _die_with(parent)
    # the terminal's ^C and the service manager's stop are the daemon's to handle
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # errors only: the daemon built the same stores from the same config, and said their
    # warnings (a credentials entry it cannot use, ...) once already
    logging.basicConfig(level=logging.ERROR, format="clearmount fetch process: %(message)s")
    limit_pools(THREADS)
    _Worker(Channel(socket.socket(fileno=fd))).serve(nice)
    os._exit(0)  # threads still in a GET are not waited for


if __name__ == "__main__":
    # the module's own names, not __main__'s: what it sends is unpickled as clearmount.workers'
    from clearmount import workers

    workers.serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if sys.argv[3] else None)

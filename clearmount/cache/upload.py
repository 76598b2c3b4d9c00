"""Writing through the mount (`-o writable`): files uploaded as they are written.

Owns: `Upload`, the handle of one file opened for writing and the state machine of its
upload, and `Uploads`, the uploads in flight, their crash records and every other change the
mount makes on a server (`rename`: a server-side copy and a delete; `delete`).

One upload, from `open(O_CREAT)` to `close()`:

1. **writing**: each `write` must start where the last one ended (else `BadWrite`, EINVAL,
   and the upload fails). Bytes are gathered in memory up to `_SPILL` and then written to
   the upload's partial cache file (`<cache name>_<time>.clearmount.partially`, locked like a
   fetch's), in a `Transfer.local` thread.
2. **parts**: once `part_size` bytes are on disk beyond the last part, that part is sent
   (`ObjectStore.upload_part`, read back from the cache file in its worker thread under a
   data slot); at most `part_concurrency` parts per upload are in flight, and a `write` that
   would start one more waits for a slot: the writer is slowed down to the network's pace
   and memory stays bounded by `part_concurrency * part_size` per upload, whatever the size.
   The first part starts the server's upload (`start_upload`); from then until it is
   completed or aborted, a record `<cache>/clearmount/uploads/<n>.json` (locked while its
   daemon lives) says what to abort if the daemon dies.
3. **completing** (`finish`: FUSE flush, i.e. `close()`, and `fsync`): the last part is sent,
   then `complete_upload`; a file never streamed (smaller than a part, or a store with
   `multipart` off) goes up in one `put_file`. Only when the server has the whole object does
   `finish` return: the partial file is renamed to the object's cache name and the index
   records the new version, so reading it back makes no request.
4. **failed**: any error (the server's, the cache disk's, a bad write) fails the upload: the
   caller gets its errno, the partial file is removed, and the server-side upload is aborted
   in the background, retried until it succeeds (a server that is down is asked again when it
   is back); its record goes only then.

Bounded time: every store call of an upload is given up after `CALL_SECONDS` (the SDK's own
retries included), so `close()` fails within about that long when the server stops
answering, never 0.

After a kill -9 the next start (`Uploads.recover`) aborts the uploads the records of dead
daemons name (and any unfinished upload to a recorded key whose id was not recorded yet); the
start-up sweep removes their partial files.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from clearmount.backends.base import ObjectInfo, ObjectStore
from clearmount.cache.index import CacheIndex
from clearmount.cache.layout import CacheLayout
from clearmount.cache.reader import ObjectReader, Outcome
from clearmount.errors import (
    BadWrite,
    CacheError,
    ClearmountError,
    NotFound,
    StoreError,
    Unavailable,
    Unexpected,
)
from clearmount.transfer import Transfer

log = logging.getLogger(__name__)

T = TypeVar("T")

#: One store call of an upload (a part, the completion, a PUT, an abort) is given up after
#: this long, the SDK's retries included, plus a second per `_SLOWEST` bytes it sends:
#: `close()` reports a server that stopped answering within about this long (an 8 MiB
#: part: 128 s).
CALL_SECONDS = 120.0
_SLOWEST = 1e6
#: A server-side copy gets this long plus a second per 50 MB copied.
_COPY_BYTES_PER_SECOND = 50e6
#: Bytes gathered in memory before they go to the cache file in one thread hop.
_SPILL = 1 << 20
#: Aborts that fail (the server is down) are tried again, waiting up to this long between.
_ABORT_BACKOFF_MAX = 60.0
#: Parts numbered from here on are twice as large, and so on: S3 takes at most 10 000 parts,
#: and the size of a file being written is not known in advance.
_PARTS_PER_SIZE = 1000

UPLOAD_RECORDS = "uploads"


class UploadState:
    WRITING = "writing"
    COMPLETING = "completing"
    DONE = "done"
    FAILED = "failed"


def part_bytes(part_size: int, number: int) -> int:
    """The size of part `number` (from 1): `part_size`, doubled every `_PARTS_PER_SIZE` parts."""
    return part_size << min((number - 1) // _PARTS_PER_SIZE, 10)


@dataclass
class _Record:
    """An upload's crash record: what to abort if its daemon dies."""

    path: Path
    fd: int

    def write(self, content: dict[str, Any]) -> None:
        data = json.dumps(content).encode()
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Upload(ObjectReader):
    """One file opened for writing: its bytes go to the cache file and, part by part, to
    the server (see the module docstring)."""

    outcome = Outcome.WRITTEN

    def __init__(
        self,
        uploads: Uploads,
        url: str,
        store: ObjectStore,
        key: str,
        parts: tuple[str, ...],
        final: Path,
        partial: Path,
        fd: int,
    ) -> None:
        self.uploads = uploads
        self.url = url
        self.store = store
        self.key = key
        self.mount_parts = parts
        #: the process that created the file (0: unknown)
        self.writer_pid = 0
        self.final = final
        self.partial = partial
        self.fd = fd
        self.started = time.time()
        #: bytes written by the writer; on disk: `on_disk`; handed to parts: `sent`
        self.size = 0
        self.on_disk = 0
        self.sent = 0
        #: bytes the server has acknowledged (parts done, or the whole object)
        self.uploaded = 0
        self.state = UploadState.WRITING
        self.error: ClearmountError | None = None
        #: the error was given to the writer once (later calls fail without a log line)
        self.reported = False
        self.info: ObjectInfo | None = None
        self.upload_id: str | None = None
        self._etags: list[str] = []
        self._buffer = bytearray()
        self._lock = trio.Lock()
        self._slots = trio.Semaphore(max(1, store.part_concurrency))
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._record: _Record | None = None
        #: told once the object is on the server / once the upload failed (the FUSE layer
        #: updates what the mount shows)
        self.on_done: Callable[[ObjectInfo], None] = lambda info: None
        self.on_failed: Callable[[], None] = lambda: None

    # ----- the writer's side ------------------------------------------------------------

    async def write(self, offset: int, data: bytes) -> int:
        async with self._lock:
            self._check_writing()
            if offset != self.size:
                self._fail(
                    BadWrite(
                        f"{self.url}: write at byte {offset} after {self.size} bytes: only "
                        "sequential writes of new files are uploaded (random writes and "
                        "appends are not supported)"
                    ),
                    quiet=True,
                )
                raise self._error()
            self._buffer += data
            self.size += len(data)
            if len(self._buffer) >= _SPILL:
                await self._spill()
            if self.store.multipart:
                # strictly more than a part: whatever the size, the last part is sent by
                # `finish`, which knows it is the last (GCS must be told)
                while self.on_disk - self.sent > self._next_part_bytes():
                    await self._send(self.sent + self._next_part_bytes())
            return len(data)

    async def read(self, offset: int, size: int) -> bytes:
        """What was written so far (a writer that opened the file O_RDWR reads it back)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        data = os.pread(self.fd, max(0, min(end, self.on_disk) - offset), offset)
        if end > self.on_disk:
            start = max(offset, self.on_disk) - self.on_disk
            data += bytes(self._buffer[start : end - self.on_disk])
        return data

    async def finish(self, closing: bool = False) -> ObjectInfo | None:
        """Complete the upload (fsync(), and close(): `closing`): returns once the server has
        the whole object, or raises why it does not; None when a close() is not the last.

        A close() completes the upload only when it is the writer's last descriptor of the
        file (`writer_holds`): the kernel sends the same request when a duplicate is closed
        (a shell's `> file`, a child's exec), and nothing may be written after completion.
        A writer killed by a signal with the file open leaves no object (one that exits
        without closing it completes it, as if it had).
        """
        async with self._lock:
            if self.info is not None:
                return self.info
            self._check_writing(after_close=True)
            if closing:
                holds = await self.uploads.transfer.local(
                    writer_holds, self.writer_pid, "/" + "/".join(self.mount_parts)
                )
                if holds is None:
                    self._fail(
                        Unavailable(
                            "the writing process was killed with the file open: upload abandoned",
                            self.url,
                        ),
                        quiet=True,
                    )
                    raise self._error()
                if holds or self.size == 0:
                    return None
            self.state = UploadState.COMPLETING
            try:
                await self._spill()
                if self.upload_id is None and (self._in_flight == 0 and not self._etags):
                    info = await self._call(
                        self.store.put_file,
                        self.key,
                        str(self.partial),
                        self.size,
                        sending=self.size,
                    )
                    self.uploaded = self.size
                    self.uploads.sent_bytes += self.size
                else:
                    if self.on_disk > self.sent:
                        await self._send(self.on_disk, last=True)
                    await self._idle.wait()
                    if self.error is not None:
                        raise self.error
                    assert self.upload_id is not None
                    info = await self._call(
                        self.store.complete_upload,
                        self.key,
                        self.upload_id,
                        list(self._etags),
                        self.size,
                    )
                await self.uploads.transfer.local(self._seal, info)
            except ClearmountError as exc:
                self._fail(exc, quiet=True)
                raise self._error() from None
            except OSError as exc:
                self._fail(_cache_error(self.url, exc), quiet=True)
                raise self._error() from None
            except trio.Cancelled:
                self._fail(Unavailable("upload cancelled (daemon stopping)", self.url), quiet=True)
                raise
            except Exception as exc:
                log.exception("unexpected error completing the upload of %s", self.url)
                self._fail(Unexpected(f"unexpected {type(exc).__name__}", self.url), quiet=True)
                raise self._error() from None
            self.info = info
            self.state = UploadState.DONE
            self.uploads.finished(self)
            log.info("uploaded %s (%d bytes)", self.url, self.size)
            self.on_done(info)
            return info

    def close(self) -> None:
        """The last descriptor was closed. An upload not completed by then (nothing written:
        `touch`) is completed now in the background; one never flushed is aborted."""
        if self.state is UploadState.WRITING:
            if self.size == 0 and self.error is None:
                self.uploads.spawn(self._finish_quietly)
                return
            self._fail(Unavailable("file released before it was closed", self.url), quiet=False)
        if self.state is UploadState.DONE:
            self._close_fd()

    async def _finish_quietly(self) -> None:
        # released with nothing written (`touch`): the empty object is made
        try:
            await self.finish()
        except ClearmountError as exc:
            log.error("upload of %s failed: %s", self.url, exc)
        finally:
            if self.state is UploadState.DONE:
                self._close_fd()

    def reader(self) -> ObjectReader:
        """A reader of the bytes written so far, for another open of the same file."""
        return _WrittenReader(self, os.dup(self.fd))

    # ----- inside --------------------------------------------------------------------------

    def _check_writing(self, after_close: bool = False) -> None:
        if self.error is not None:
            raise self._error()
        if self.state is not UploadState.WRITING and not after_close:
            raise BadWrite(f"{self.url}: written after close() or fsync() completed it")

    def _error(self) -> ClearmountError:
        assert self.error is not None
        return self.error

    def _next_part_bytes(self) -> int:
        # `_etags` holds a place for every part sent, done or in flight
        return part_bytes(self.store.part_size, len(self._etags) + 1)

    def _close_fd(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    async def _spill(self) -> None:
        if not self._buffer:
            return
        data, offset = bytes(self._buffer), self.on_disk
        self._buffer.clear()
        try:
            await self.uploads.transfer.local(_write_all, self.fd, data, offset)
        except OSError as exc:
            self._fail(_cache_error(self.url, exc), quiet=True)
            raise self._error() from None
        self.on_disk += len(data)

    async def _send(self, end: int, last: bool = False) -> None:
        """Send bytes [sent, end) as the next part, once a slot is free (backpressure)."""
        if self.upload_id is None:
            await self._begin()
        await self._slots.acquire()
        if self.error is not None:
            self._slots.release()
            raise self._error()
        start, self.sent = self.sent, end
        self._etags.append("")
        number = len(self._etags)
        self._in_flight += 1
        self._idle = trio.Event()
        self.uploads.spawn(self._part, number, start, end, last)

    async def _begin(self) -> None:
        self._record = await self.uploads.transfer.local(self.uploads.new_record)
        content = {"url": self.url, "path": list(self.mount_parts), "key": self.key}
        await self.uploads.transfer.local(self._record.write, content)
        try:
            self.upload_id = await self._call(self.store.start_upload, self.key)
        except ClearmountError as exc:
            self._fail(exc, quiet=True)
            raise self._error() from None
        content["upload_id"] = self.upload_id
        await self.uploads.transfer.local(self._record.write, content)

    async def _part(self, number: int, start: int, end: int, last: bool) -> None:
        try:
            assert self.upload_id is not None
            etag = await self._call(
                self._send_part, self.upload_id, number, start, end, last, sending=end - start
            )
            self._etags[number - 1] = etag
            self.uploaded += end - start
            self.uploads.sent_bytes += end - start
        # quiet: the writer's next write, or its close(), gets the error and logs it once
        except ClearmountError as exc:
            self._fail(exc, quiet=True)
        except OSError as exc:
            self._fail(_cache_error(self.url, exc), quiet=True)
        except Exception as exc:
            log.exception("unexpected error uploading a part of %s", self.url)
            self._fail(Unexpected(f"unexpected {type(exc).__name__}", self.url), quiet=True)
        finally:
            self._slots.release()
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    def _send_part(self, upload_id: str, number: int, start: int, end: int, last: bool) -> str:
        """One part, read back from the cache file (blocking: a worker thread)."""
        data = os.pread(self.fd, end - start, start)
        if len(data) != end - start:
            raise CacheError(f"{self.url}: the cache file is shorter than what was written")
        return self.store.upload_part(self.key, upload_id, number, start, data, last)

    async def _call(self, fn: Callable[..., T], *args: object, sending: int = 0) -> T:
        return await self.uploads.call(self.store, self.url, fn, *args, sending=sending)

    def _seal(self, info: ObjectInfo) -> None:
        """The object is on the server: its bytes become its cache file (blocking)."""
        os.rename(self.partial, self.final)
        name = self.uploads.layout.name_of(self.final)
        self.uploads.index.put(name, self.url, info.version, info.size)
        if self._record is not None:
            self._record.remove()
            self._record = None

    def _fail(self, exc: ClearmountError, quiet: bool) -> None:
        """Fail the upload with `exc` (once): remove the partial file, abort on the server."""
        if self.error is not None:
            return
        self.error = exc
        self.state = UploadState.FAILED
        self.uploads.failed(self, exc)
        self.on_failed()
        if not quiet:
            log.error("upload failed: %s", exc)
        with contextlib.suppress(OSError):
            self.partial.unlink()
        self.uploads.spawn(self._abort)

    async def _abort(self) -> None:
        # parts in flight end first (each within CALL_SECONDS): a part landing after the
        # abort could leave a new upload behind on some servers
        await self._idle.wait()
        async with self._lock:  # a write's spill to the file (in a thread) ends first
            self._close_fd()
        record, self._record = self._record, None
        if self.upload_id is not None:
            await self.uploads.abort(self.store, self.url, self.key, self.upload_id)
        if record is not None:
            await self.uploads.transfer.local(record.remove)


class _WrittenReader(ObjectReader):
    """Another open of a file being written: reads what was written so far."""

    outcome = Outcome.WRITTEN

    def __init__(self, upload: Upload, fd: int) -> None:
        self.upload = upload
        self.fd = fd

    async def read(self, offset: int, size: int) -> bytes:
        upload = self.upload
        if upload.state is UploadState.DONE or upload.on_disk >= offset + size:
            return os.pread(self.fd, size, offset)
        return await upload.read(offset, size)

    def close(self) -> None:
        os.close(self.fd)


# PF_EXITING in /proc/PID/stat's flags: the process is exiting (or being killed)
_PF_EXITING = 0x4


def process_of(thread: int) -> int:
    """The process (thread group) of thread `thread`, as FUSE names callers; 0 if gone."""
    try:
        with open(f"/proc/{thread}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def writer_holds(pid: int, suffix: str) -> bool | None:
    """Whether process `pid` still has a descriptor of the mount path ending in `suffix`
    (False also when it is gone, unknown, or exiting normally with the file open); None when
    a signal is ending it (killed mid-write). Blocking: reads /proc."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[6]) & _PF_EXITING:
            # its exit code is set before its files are closed: a signal's number, or
            # the exit status << 8
            code = int(fields[49]) if len(fields) > 49 else 0
            return None if code & 0x7F else False
        folder = f"/proc/{pid}/fd"
        for name in os.listdir(folder):
            with contextlib.suppress(OSError):
                if os.readlink(f"{folder}/{name}").endswith(suffix):
                    return True
    except (OSError, ValueError, IndexError):
        return False
    return False


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _cache_error(url: str, exc: OSError) -> CacheError:
    return CacheError(f"cache write failed for {url}: {exc.strerror or exc}", exc.errno or None)


class Uploads:
    """The uploads in flight and the changes the mount makes on servers."""

    def __init__(self, layout: CacheLayout, index: CacheIndex, transfer: Transfer) -> None:
        self.layout = layout
        self.index = index
        self.transfer = transfer
        self.records = layout.state_dir / UPLOAD_RECORDS
        self.active: dict[int, Upload] = {}
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        #: counters for status and metrics: uploads started, completed (and their bytes),
        #: failed by error kind, and the bytes the servers acknowledged (parts and PUTs)
        self.started = 0
        self.completed = 0
        self.failures: dict[str, int] = {}
        self.sent_bytes = 0
        self.completed_bytes = 0

    def counters(self) -> dict[str, Any]:
        return {
            "uploads_started": self.started,
            "uploads_completed": self.completed,
            "uploads_failed": dict(self.failures),
            "uploaded_bytes": self.sent_bytes,
        }

    def start(self, nursery: trio.Nursery) -> None:
        """Parts, completions and aborts run in `nursery`."""
        self._nursery = nursery

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        if self._nursery is None:
            raise RuntimeError("Uploads.start() was not called")
        self._nursery.start_soon(fn, *args)

    async def open(self, url: str, store: ObjectStore, key: str, parts: tuple[str, ...]) -> Upload:
        """A new upload of `url` (`key` in `store`), empty, with its partial cache file."""
        final = self.layout.final_path(url)
        try:
            partial, fd = await self.transfer.local(self.layout.create_partial, final)
        except OSError as exc:
            raise _cache_error(url, exc) from None
        upload = Upload(self, url, store, key, parts, final, partial, fd)
        self.active[id(upload)] = upload
        self.started += 1
        return upload

    def finished(self, upload: Upload) -> None:
        self.active.pop(id(upload), None)
        self.completed += 1
        self.completed_bytes += upload.size

    def failed(self, upload: Upload, error: ClearmountError) -> None:
        self.active.pop(id(upload), None)
        kind = type(error).__name__
        self.failures[kind] = self.failures.get(kind, 0) + 1

    def in_flight(self) -> list[dict[str, Any]]:
        """The uploads in flight, for `clearmount status`."""
        return [
            {
                "url": u.url,
                "written": u.size,
                "uploaded": u.uploaded,
                "state": u.state,
                "seconds": time.time() - u.started,
            }
            for u in self.active.values()
        ]

    async def call(
        self,
        store: ObjectStore,
        url: str,
        fn: Callable[..., T],
        *args: object,
        sending: int = 0,
    ) -> T:
        """A store call of an upload sending `sending` bytes, in a data slot, given up after
        `CALL_SECONDS` plus a second per `_SLOWEST` bytes."""
        return await self._bounded(CALL_SECONDS + sending / _SLOWEST, store, url, fn, *args)

    async def _bounded(
        self, seconds: float, store: ObjectStore, url: str, fn: Callable[..., T], *args: object
    ) -> T:
        async with self.transfer.data_slot(for_reader=False):
            with trio.move_on_after(seconds):
                return await self.transfer.in_thread(fn, *args)
        raise Unavailable(f"no answer within {seconds:g}s", url, store.entry)

    # ----- records and crash clean-up ----------------------------------------------------

    def new_record(self) -> _Record:
        """A new, locked, empty crash record (blocking)."""
        try:
            self.records.mkdir(mode=self.layout.dir_mode, exist_ok=True)
        except FileNotFoundError:
            self.layout.make_folders()
            self.records.mkdir(mode=self.layout.dir_mode, exist_ok=True)
        while True:
            path = self.records / f"{os.getpid()}-{next(self._ids)}-{time.time_ns()}.json"
            try:
                fd = os.open(
                    path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.layout.file_mode
                )
            except FileExistsError:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return _Record(path, fd)

    def _dead_records(self) -> list[tuple[_Record, dict[str, Any]]]:
        """The records whose daemon is gone, each now locked by this one (blocking)."""
        found = []
        try:
            paths = sorted(self.records.glob("*.json"))
        except OSError:
            return []
        for path in paths:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # its daemon is alive
                continue
            record = _Record(path, fd)
            try:
                with open(path, "rb") as f:
                    content = json.loads(f.read() or b"{}")
            except (OSError, ValueError):
                content = {}
            if not content.get("path") or not content.get("key"):
                record.remove()
                continue
            found.append((record, content))
        return found

    async def recover(
        self, store_for: Callable[[tuple[str, ...]], Awaitable[tuple[ObjectStore, str]]]
    ) -> None:
        """Abort the uploads that dead daemons left unfinished (at start, in the background)."""
        records = await self.transfer.local(self._dead_records)
        for record, content in records:
            url = str(content.get("url", ""))
            key = str(content["key"])
            try:
                store, _ = await store_for(tuple(content["path"]))
                upload_id = content.get("upload_id")
                if upload_id:
                    ids = [str(upload_id)]
                else:
                    ids = await self.call(store, url, store.pending_uploads, key)
            except ClearmountError as exc:
                log.warning("cannot clean up the unfinished upload of %s: %s", url, exc)
                await self.transfer.local(record.remove)
                continue
            for upload_id in ids:
                await self.abort(store, url, key, upload_id)
            log.info("aborted the unfinished upload of %s left by an earlier run", url)
            await self.transfer.local(record.remove)

    async def abort(self, store: ObjectStore, url: str, key: str, upload_id: str) -> None:
        """Abort a server-side upload, trying again (with backoff) until the server takes it."""
        tries = 0
        while True:
            try:
                await self.call(store, url, store.abort_upload, key, upload_id)
                return
            except NotFound:
                return
            except StoreError as exc:
                tries += 1
                wait = random.uniform(0.5, 1.0) * min(_ABORT_BACKOFF_MAX, 2.0**tries)
                if tries == 1 or tries % 10 == 0:
                    log.warning("aborting the upload of %s failed (trying again): %s", url, exc)
            await trio.sleep(wait)

    # ----- other changes -----------------------------------------------------------------

    async def delete(self, store: ObjectStore, url: str, key: str) -> None:
        """Remove the object and its cache file."""
        await self.call(store, url, store.delete, key)
        await self.transfer.local(self._forget_cached, url)

    async def rename(
        self, store: ObjectStore, source_url: str, source: str, url: str, key: str, size: int
    ) -> ObjectInfo:
        """Move an object within a store: a server-side copy, then a delete of the source.
        Its cache file moves along, so the new name is a cache hit."""
        seconds = CALL_SECONDS + size / _COPY_BYTES_PER_SECOND
        info = await self._bounded(seconds, store, url, store.copy, source, key, size)
        await self.call(store, source_url, store.delete, source)
        await self.transfer.local(self._move_cached, source_url, url, info)
        return info

    def _forget_cached(self, url: str) -> None:
        final = self.layout.final_path(url)
        with contextlib.suppress(OSError):
            final.unlink()
        with contextlib.suppress(Exception):
            self.index.remove(self.layout.name_of(final))

    def _move_cached(self, source_url: str, url: str, info: ObjectInfo) -> None:
        """The cache file of `source_url` becomes `url`'s (else it goes: a later miss)."""
        source = self.layout.final_path(source_url)
        final = self.layout.final_path(url)
        entry = self.index.get(self.layout.name_of(source))
        with contextlib.suppress(Exception):
            self.index.remove(self.layout.name_of(source))
        try:
            if entry is None or entry.size != info.size:
                raise FileNotFoundError
            os.rename(source, final)
        except OSError:
            # not recorded, or the new name's folder is missing (ClearML 2.x layout)
            with contextlib.suppress(OSError):
                source.unlink()
            return
        self.index.put(self.layout.name_of(final), url, info.version, info.size)

"""The shared level-2 cache: ClearML's `secondary` cache on a filesystem every node mounts.

Owns: the L2 tier between the node's own cache (L1) and the bucket, and everything it keeps
on the shared filesystem. A fetch (`Fetcher`) asks it, before any byte moves, where its bytes
come from (`SharedCache.prepare`):
- the L2 holds this object version: the fetch reads the L2 file (`L2Source`, a stand-in for
  the bucket's `ObjectStore`) into L1 as it would read the bucket, in parts, readers waiting
  only for their bytes; the bucket sees no GET;
- nobody is fetching it: this node takes the fetch's lease and reads the bucket; once the L1
  file is complete, `finish` publishes it to the L2 (`<final>_<time>.partially`, then an
  atomic rename, in ClearML's relative layout `<l2>/storage/<scheme>/<host>/<path>`, so the
  SDK on any node finds it) and releases the lease;
- another node holds a live lease: this fetch waits for the publication (polling; readers
  wait in `read`, the open has returned), and takes over once the lease expired.

Only primitives that hold on NFSv3/v4, Lustre, EFS and Filestore (close-to-open consistency;
no sqlite, no flock): a lease is a file created with O_EXCL, one per generation,
`<l2>/clearmount/leases/<md5(path)>/<generation>`, holding the node, pid and an expiry that
the holder renews while bytes arrive. Taking over generation n is creating n+1 with O_EXCL
(one winner, no rename races); a holder that finds n+1 has lost its lease and publishes
nothing. On the same node a dead pid is taken over at once. Publication is one rename, so the
L2 never holds a torn file under a final name.

Versions: beside each file, `<l2>/clearmount/versions/<md5(path)[:2]>/<md5(path)>.json`
(outside `storage/`, which the SDK never looks past) records the URL, object version, size,
inode and mtime of the file it was written for. An L2 file is served only when that record
matches both the file and the object's current version; a file without a matching record
(the SDK put it there, or replaced ours) is adopted by L1's rule: its size, and its MD5 when
the ETag is one, else an mtime not older than the object's. The fetch checks the size (and
the MD5) again before L1 keeps the bytes.

Faults degrade, never fail: every L2 call runs in a thread with a deadline
(`Transfer.shared`, `transfer.call_with_deadline`); a missing, read-only, full or hung L2
makes the fetch read the bucket, with one WARNING per minute at most.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import stat as statmod
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import trio

from clearmount.backends.base import ListPage, ObjectInfo, ObjectStore
from clearmount.cache.layout import PARTIAL_SUFFIX, disk_space_relpath
from clearmount.errors import ClearmountError
from clearmount.transfer import Transfer, call_with_deadline

if TYPE_CHECKING:
    from clearmount.cache.fetch import Fetch

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between a waiting node's looks at the L2 (publication, lease expiry): the first
#: wait, growing by half at each look up to the last (file operations on the shared
#: filesystem stay about one per second per waiting fetch).
POLL_SECONDS = 0.1
POLL_MAX_SECONDS = 2.0
#: At most one WARNING about a sick L2 per this many seconds.
WARN_EVERY = 60.0
#: Seconds between a node's looks at the L2's size, unless a round of any node looked since...
EVICT_EVERY = 60.0
#: ...and a publication asks for a round, but rounds start at most once per this many seconds
#: across the fleet (each round walks the whole L2 tree; a round that starts after a node's
#: publication covers it, whichever node holds the evictor lease).
EVICT_SPACING = 5.0
#: Bytes per L2 read.
_CHUNK = 1 << 20


@dataclass
class SharedStats:
    """What the L2 saved and cost, for status, metrics and the STATUS line."""

    hits: int = 0  # fetches served from the L2
    misses: int = 0  # fetches this node made from the bucket for the fleet (lease taken)
    publications: int = 0
    lease_waits: int = 0  # fetches that waited for another node's fetch
    takeovers: int = 0  # expired leases taken over
    bytes_saved: int = 0  # bucket bytes not downloaded thanks to the L2
    faults: int = 0  # L2 operations that failed or timed out (bucket used instead)


@dataclass(frozen=True)
class L2Limits:
    """secondary.size: kept by one evictor at a time across the fleet."""

    max_bytes: int | None = None
    min_free_bytes: int = 0
    margin: float = 0.05
    #: a file published or used this recently is never evicted (secondary's
    #: cleanup_seconds_threshold)
    recent_seconds: float = 60.0


@dataclass(frozen=True)
class Lease:
    folder: Path
    generation: int

    @property
    def path(self) -> Path:
        return self.folder / str(self.generation)


@dataclass(frozen=True)
class Holder:
    """Another node's live lease."""

    node: str
    pid: int
    expires: float


@dataclass
class _Fetching:
    lease: Lease
    rel: str
    renewed_at_bytes: int = -1
    lost: bool = False
    done: bool = False


class SharedCache:
    def __init__(
        self,
        root: Path,
        transfer: Transfer,
        takeover: float = 30.0,
        timeout: float = 5.0,
        node: str | None = None,
        limits: L2Limits | None = None,
    ) -> None:
        self.root = root
        self.limits = limits or L2Limits()
        self.evictor_dir = root / "clearmount" / "evictor"
        #: when the fleet's last eviction round started, and which node ran it
        self.last_round_path = root / "clearmount" / "evictor-round"
        self.data_dir = root / "storage"
        self.leases_dir = root / "clearmount" / "leases"
        self.versions_dir = root / "clearmount" / "versions"
        self.transfer = transfer
        self.takeover = takeover
        self.timeout = timeout
        self.node = node or os.environ.get("CLEARMOUNT_NODE_NAME") or socket.gethostname()
        self.pid = os.getpid()
        self.stats = SharedStats()
        self._fetching: dict[Fetch, _Fetching] = {}
        self._warned = -WARN_EVERY
        self._nursery: trio.Nursery | None = None
        #: set by a publication: the L2 may have gone over its limits
        self._published = trio.Event()
        #: the last eviction round stopped over the limits (files too recent, or leased)
        self.over_limits = False

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def describe(self) -> str:
        return f"{self.data_dir} (takeover {self.takeover:g}s, timeout {self.timeout:g}s)"

    # ----- faults ----------------------------------------------------------------------------

    def fault(self, what: str, exc: BaseException) -> None:
        """An L2 operation failed: the bucket serves; one WARNING a minute at most."""
        self.stats.faults += 1
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            log.warning(
                "shared cache %s unusable (%s: %s): reading from the bucket instead "
                "(this warning is repeated at most once a minute)",
                self.root,
                what,
                reason,
            )
        else:
            log.debug("shared cache %s: %s: %s", self.root, what, exc)

    async def _io(self, fn: Callable[..., T], *args: object, deadline: float | None = None) -> T:
        return await self.transfer.shared(
            fn,
            *args,
            deadline=self.timeout if deadline is None else deadline,
            what=str(self.root),
        )

    # ----- the seam: before and after a fetch ------------------------------------------------

    async def prepare(self, fetch: Fetch) -> str:
        """Decide where `fetch`'s bytes come from: "l2" (its store becomes the L2 file) or
        "bucket" (under this node's lease, or without the L2 when it is sick). May wait for
        another node's fetch of the same object."""
        rel = disk_space_relpath(fetch.url)
        waited = False
        delay = POLL_SECONDS
        while fetch.error is None:
            try:
                # adopting a file without a version record may hash it: 1 s more per 50 MB
                found = await self._io(
                    self._look,
                    rel,
                    fetch.url,
                    fetch.info,
                    fetch.verify,
                    deadline=self.timeout + fetch.info.size / 50e6,
                )
            except (OSError, ClearmountError) as exc:
                self.fault("lookup", exc)
                return "bucket"
            if isinstance(found, Path):
                self.stats.hits += 1
                self.stats.bytes_saved += fetch.info.size
                fetch.store = L2Source(found, fetch.store, fetch.info, self)
                return "l2"
            if isinstance(found, Lease):
                self.stats.misses += 1
                state = _Fetching(found, rel)
                self._fetching[fetch] = state
                if self._nursery is not None:
                    self._nursery.start_soon(self._renew_while_busy, fetch, state)
                return "bucket"
            if not waited:
                waited = True
                self.stats.lease_waits += 1
                log.debug("waiting for %s, fetched by %s", fetch.url, found)
            await trio.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX_SECONDS)
        return "bucket"

    async def finish(self, fetch: Fetch) -> None:
        """After `fetch` ended: publish its complete L1 file to the L2 under this node's
        lease, and release the lease (also when it failed)."""
        state = self._fetching.pop(fetch, None)
        if state is None:
            return
        state.done = True
        try:
            if fetch.complete and not state.lost:
                # a slow shared disk gets 10 s plus 1 s per 20 MB
                deadline = self.timeout + 10 + fetch.info.size / 20e6
                published = await self._io(
                    self._publish, fetch.final, state, fetch.url, fetch.info, deadline=deadline
                )
                if published:
                    self.stats.publications += 1
                    self._published.set()
        except (OSError, ClearmountError) as exc:
            self.fault("publish", exc)
        finally:
            with contextlib.suppress(OSError, ClearmountError):
                await self._io(self._release, state.lease)

    async def _renew_while_busy(self, fetch: Fetch, state: _Fetching) -> None:
        """Renew the lease while bytes arrive: a holder that stalls lets it expire."""
        while True:
            await trio.sleep(self.takeover / 3)
            if state.done:  # set by finish() meanwhile
                return
            progress = fetch.bytes_done
            if progress == state.renewed_at_bytes and not fetch.complete:
                continue
            state.renewed_at_bytes = progress
            try:
                held = await self._io(self._renew, state.lease)
            except (OSError, ClearmountError) as exc:
                self.fault("lease renewal", exc)
                continue
            if not held:
                state.lost = True
                log.info("lost the shared cache lease of %s to another node", fetch.url)
                return

    async def keep_within_limits(
        self, interval: float = EVICT_EVERY, spacing: float = EVICT_SPACING
    ) -> None:
        """After each publication of this node, and every `interval` seconds, see that a
        round evicts the L2 down to its limits: this node's, if it gets the evictor lease
        (one evictor at a time over the fleet), unless a round of any node started since
        (`round_due`). A round that had to leave the L2 over its limits (its files were too
        recent, or leased) is followed by another once they are no longer recent."""
        if self.limits.max_bytes is None and not self.limits.min_free_bytes:
            return
        while True:
            wait = interval
            if self.over_limits:
                wait = min(interval, max(0.0, self.limits.recent_seconds - spacing))
            with trio.move_on_after(wait):
                await self._published.wait()
            published = self._published.is_set()
            self._published = trio.Event()
            # a round that starts after this moment sees the publication; the periodic look
            # is answered by any round that started while this node waited
            since = time.time() - (0.0 if published else wait)
            try:
                while (pause := await self._io(self.round_due, since, spacing)) is not None:
                    if pause <= 0:
                        removed = await self._io(self.evict_once, deadline=self.timeout + 60)
                        if removed:
                            log.info("evicted %d file(s) from the shared cache", removed)
                        break
                    await trio.sleep(pause)
            except (OSError, ClearmountError) as exc:
                self.fault("eviction", exc)
            await trio.sleep(spacing)

    # ----- blocking operations (worker threads, with deadlines) ------------------------------

    def round_due(self, since: float, spacing: float) -> float | None:
        """Whether this node should run an eviction round for a reason dated `since` (epoch
        seconds): None when a round of any node started at or after it (that round saw what
        this node wants seen), else the seconds to wait first (0: now) so that rounds start at
        most once per `spacing` seconds across the fleet. Clocks are compared across nodes as
        the leases' expiries are."""
        try:
            started = float(json.loads(self.last_round_path.read_bytes())["started"])
        except FileNotFoundError:
            return 0.0
        except (ValueError, KeyError, TypeError):
            return 0.0  # torn or foreign: a round now writes a good one
        if started >= since:
            return None
        return max(0.0, started + spacing - time.time())

    def evict_once(self) -> int:
        """Under the evictor lease: remove least recently used L2 files (by atime, as the
        SDK) until `limits` hold less the margin; never a file under a live fetch lease, one
        published or used in the last `recent_seconds`, or a partial file younger than four
        takeover times. Returns how many files were removed (0 without the lease)."""
        lease = self._acquire(self.evictor_dir)
        if not isinstance(lease, Lease):
            self.over_limits = False  # the node that holds it evicts
            return 0
        try:
            started = time.time()
            removed = self._evict_under_lease()
            # written once the walk is done: a round that died midway covers nobody's reason
            record = {"node": self.node, "started": started}
            tmp = self.last_round_path.with_name(f".evictor-round.{self.node}.{self.pid}.tmp")
            tmp.write_bytes(json.dumps(record).encode())
            os.rename(tmp, self.last_round_path)
            return removed
        finally:
            self._release(lease)

    def _evict_under_lease(self) -> int:
        limits = self.limits
        files: list[tuple[float, Path, int, str]] = []
        used = 0
        now = time.time()
        top = str(self.data_dir)
        for folder, _dirs, names in os.walk(top):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if not statmod.S_ISREG(st.st_mode):
                    continue
                used += st.st_size
                if name.endswith(PARTIAL_SUFFIX):
                    if now - st.st_mtime > 4 * self.takeover:  # a dead writer's leftover
                        with contextlib.suppress(OSError):
                            os.unlink(path)
                            used -= st.st_size
                    continue
                files.append((st.st_atime, Path(path), st.st_size, os.path.relpath(path, top)))
        free = _free(self.root)

        def over(margin: float) -> bool:
            if limits.max_bytes is not None and used > limits.max_bytes * (1 - margin):
                return True
            return bool(limits.min_free_bytes) and free < limits.min_free_bytes * (1 + margin)

        self.over_limits = False
        if not over(0.0):
            return 0
        removed = 0
        for _atime, candidate, size, rel in sorted(files):
            if not over(limits.margin):
                break
            try:
                st = os.stat(candidate)
            except OSError:
                continue
            if now - max(st.st_atime, st.st_mtime) < limits.recent_seconds:
                continue  # just published or used
            if os.path.isdir(self.leases_dir / _key(rel)):
                continue  # a fetch of it is under way
            with contextlib.suppress(OSError):
                os.unlink(candidate)
                removed += 1
                used -= size
                free += size
                with contextlib.suppress(OSError):
                    os.unlink(self._record_path(rel))
        self.over_limits = over(0.0)
        return removed

    def _look(self, rel: str, url: str, info: ObjectInfo, verify: bool) -> Path | Lease | Holder:
        """The L2 file of this version; else this node's new lease; else the live holder."""
        final = self.data_dir / rel
        if self._current(final, rel, url, info, verify):
            return final
        folder = self.leases_dir / _key(rel)
        lease = self._acquire(folder)
        if isinstance(lease, Lease) and self._current(final, rel, url, info, verify):
            # published between our two looks
            self._release(lease)
            return final
        return lease

    def _current(self, final: Path, rel: str, url: str, info: ObjectInfo, verify: bool) -> bool:
        try:
            stat = os.stat(final)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not statmod.S_ISREG(stat.st_mode) or stat.st_size != info.size:
            return False
        record = self._record(rel)
        if record is not None and record.get("identity") == _identity(stat):
            current = record.get("version") == info.version and record.get("url") == url
            if current:
                _touch(final, stat)
            return current
        # no record for this file (the SDK placed it, or replaced ours): L1's adoption rule
        expected = _md5_of(info.version) if verify else None
        if expected is not None:
            if _file_md5(final) != expected:
                return False
        elif stat.st_mtime < info.mtime:
            return False
        with contextlib.suppress(OSError):
            self._write_record(rel, url, info, stat)
        return True

    def _record(self, rel: str) -> dict[str, object] | None:
        try:
            data = json.loads(self._record_path(rel).read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _record_path(self, rel: str) -> Path:
        key = _key(rel)
        return self.versions_dir / key[:2] / f"{key}.json"

    def _write_record(self, rel: str, url: str, info: ObjectInfo, stat: os.stat_result) -> None:
        path = self._record_path(rel)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        record = {"url": url, "version": info.version, "size": info.size}
        record["identity"] = _identity(stat)
        tmp = path.with_name(f"{path.name}.{self.node}.{self.pid}.tmp")
        tmp.write_text(json.dumps(record))
        os.rename(tmp, path)

    def _acquire(self, folder: Path) -> Lease | Holder:
        """Take the lease of `folder` (generation 1, or the next one over an expired
        holder); else say who holds it."""
        for _ in range(8):
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                generations = sorted(int(n) for n in os.listdir(folder) if n.isdigit())
            except FileNotFoundError:
                continue  # removed by a releasing holder meanwhile
            newest = generations[-1] if generations else 0
            if newest:
                holder = self._holder(Lease(folder, newest))
                if holder is None:
                    continue  # released meanwhile
                if not self._dead(holder):
                    return holder
            lease = Lease(folder, newest + 1)
            if self._create(lease):
                if newest:
                    self.stats.takeovers += 1
                    log.warning(
                        "took over the shared cache fetch of %s from a dead holder", folder.name
                    )
                    for generation in generations:
                        with contextlib.suppress(OSError):
                            os.unlink(folder / str(generation))
                return lease
        return Holder("?", 0, time.time() + POLL_SECONDS)

    def _holder(self, lease: Lease) -> Holder | None:
        try:
            data = json.loads(lease.path.read_bytes() or b"{}")
            return Holder(str(data["node"]), int(data["pid"]), float(data["expires"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            # torn or foreign content: as old as its mtime says
            try:
                mtime = lease.path.stat().st_mtime
            except OSError:
                return None
            return Holder("?", 0, mtime + self.takeover)

    def _dead(self, holder: Holder) -> bool:
        if holder.expires <= time.time():
            return True
        if holder.node == self.node and holder.pid != self.pid and holder.pid > 0:
            try:
                os.kill(holder.pid, 0)
            except ProcessLookupError:
                return True  # a process of this node that is gone
            except PermissionError:
                return False
        return False

    def _lease_text(self) -> bytes:
        expires = time.time() + self.takeover
        return json.dumps({"node": self.node, "pid": self.pid, "expires": expires}).encode()

    def _create(self, lease: Lease) -> bool:
        try:
            fd = os.open(lease.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        try:
            os.write(fd, self._lease_text())
        finally:
            os.close(fd)
        return True

    def _renew(self, lease: Lease) -> bool:
        """Push the expiry on; False when another node took the lease over."""
        if os.path.exists(lease.folder / str(lease.generation + 1)):
            return False
        tmp = lease.folder / f".{lease.generation}.{self.node}.{self.pid}.tmp"
        tmp.write_bytes(self._lease_text())
        os.rename(tmp, lease.path)  # atomic: a reader sees the old or the new expiry
        return True

    def _release(self, lease: Lease) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lease.path)
        with contextlib.suppress(OSError):
            os.rmdir(lease.folder)

    def _publish(self, source: Path, state: _Fetching, url: str, info: ObjectInfo) -> bool:
        """Copy the complete L1 file into the L2: partial file, version record, rename."""
        if not self._renew(state.lease):
            return False  # taken over: the new holder publishes
        final = self.data_dir / state.rel
        final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = Path(f"{final}_{time.time()}{PARTIAL_SUFFIX}")
        try:
            with open(source, "rb") as src, open(partial, "xb") as dst:
                os.fchmod(dst.fileno(), 0o600)
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            stat = os.stat(partial)
            if stat.st_size != info.size:
                raise OSError(errno.EIO, f"copied {stat.st_size} of {info.size} bytes")
            self._write_record(state.rel, url, info, stat)
            os.rename(partial, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        return True


class L2Source(ObjectStore):
    """The bytes of one L2 file, read as a fetch reads a bucket (`read_range`). Each read has
    the L2's deadline; a read that fails or hangs sends this and every later part of the
    fetch to the bucket, from the byte it stopped at."""

    def __init__(
        self, path: Path, bucket: ObjectStore, info: ObjectInfo, shared: SharedCache
    ) -> None:
        self.path = path
        self.bucket = bucket
        self.info = info
        self.shared = shared
        self.base_url = bucket.base_url
        self.entry = bucket.entry
        self.md5_versions = bucket.md5_versions
        self.deadlines = bucket.deadlines
        self.sick = False

    def exists(self) -> bool:
        return self.bucket.exists()

    def head(self, key: str) -> ObjectInfo:
        return self.bucket.head(key)

    def list_page(self, prefix: str, token: str | None = None, limit: int = 1000) -> ListPage:
        return self.bucket.list_page(prefix, token, limit)

    def read_range(
        self, key: str, version: str, start: int, end: int, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        position = start
        if not self.sick:
            try:
                fd = call_with_deadline(
                    _open_same, self.path, self.info.size, deadline=self.timeout
                )
            except (OSError, ClearmountError) as exc:
                self._fail("open", exc)
            else:
                try:
                    while position < end:
                        size = min(max(chunk_size, 1), end - position)
                        data = call_with_deadline(
                            os.pread, fd, size, position, deadline=self.timeout
                        )
                        if not data:
                            raise OSError(errno.EIO, "the shared cache file is shorter")
                        yield data
                        position += len(data)
                except (OSError, ClearmountError) as exc:
                    self._fail("read", exc)
                finally:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        if position < end:
            self.shared.stats.bytes_saved -= end - position
            yield from self.bucket.read_range(key, version, position, end, chunk_size)

    @property
    def timeout(self) -> float:
        return self.shared.timeout

    def _fail(self, what: str, exc: BaseException) -> None:
        self.sick = True
        self.shared.fault(what, exc)


def _open_same(path: Path, size: int) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if os.fstat(fd).st_size != size:
        os.close(fd)
        raise OSError(errno.ESTALE, "the shared cache file changed")
    return fd


def _touch(path: Path, stat: os.stat_result) -> None:
    """A hit, as the SDK marks one: atime now, mtime kept to the nanosecond (the version
    record's identity includes it)."""
    with contextlib.suppress(OSError):
        os.utime(path, ns=(time.time_ns(), stat.st_mtime_ns))


def _free(root: Path) -> int:
    vfs = os.statvfs(root)
    return vfs.f_bavail * vfs.f_frsize


def _key(rel: str) -> str:
    return hashlib.md5(rel.encode()).hexdigest()


def _identity(stat: os.stat_result) -> list[int]:
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def _md5_of(version: str) -> str | None:
    etag = version.strip('"').lower()
    if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
        return etag
    return None


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

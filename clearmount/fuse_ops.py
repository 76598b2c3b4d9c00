"""The pyfuse3 adapter: translate kernel requests, delegate, map errors to errno.

Owns: the `Operations` handlers, the open-file and open-directory handle tables, and the
conversion of nodes into `EntryAttributes`. Holds no policy: lookups and listings belong to
`Namespace`, bytes to `Fetcher` and the `ObjectReader` it returns for each open file (which
owns waiting for a fetch and noticing a changed object; it tells the namespace through the
`on_stale` callback given at open), and with `-o writable` the `Upload` handles of files
being written (`cache/upload.py`, which also owns rename and delete on the servers).
pyfuse3 ends the whole mount on any exception other than
`FUSEError`, so every handler goes through `_errors`, the clearmount → errno border.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from clearmount.backends.base import ObjectInfo
from clearmount.cache.fetch import Fetcher
from clearmount.cache.reader import ObjectReader
from clearmount.cache.upload import Upload, Uploads, process_of
from clearmount.errors import (
    ClearmountError,
    NotFound,
    WriteRefused,
    WriteUnsupported,
    errno_for,
)
from clearmount.monitor import MountCounters
from clearmount.namespace import Entry, Kind, Namespace, Node
from clearmount.options import MountOptions

log = logging.getLogger(__name__)

#: the I/O size files advertise (st_blksize): as a local disk's, and for files being written
_READ_BLKSIZE = 4096
_WRITE_BLKSIZE = 1 << 20

P = ParamSpec("P")
R = TypeVar("R")

_XATTR_URL = b"user.clearmount.url"
_XATTR_ETAG = b"user.clearmount.etag"
_XATTR_CACHED = b"user.clearmount.cached"
_XATTR_CACHE_DIR = b"user.clearmount.cache_dir"
_XATTR_CACHE_LAYOUT = b"user.clearmount.cache_layout"
_XATTR_SOURCE = b"user.clearmount.source"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC
_RENAME_NOREPLACE = 1
# the version of a file being written until its upload completes
_PROVISIONAL = "writing-"


def _errors(
    handler: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Let only `FUSEError` out of a handler; log each user-visible failure once."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except ClearmountError as exc:
            code = errno_for(exc)
            if not isinstance(exc, NotFound):
                log.error("%s: %s [%s]", handler.__name__, exc, errno.errorcode.get(code, code))
            _count_error(args, handler.__name__, type(exc).__name__)
            raise pyfuse3.FUSEError(code) from None
        except OSError as exc:
            log.error("%s: %s", handler.__name__, exc)
            _count_error(args, handler.__name__, errno.errorcode.get(exc.errno or 0, "OSError"))
            raise pyfuse3.FUSEError(errno_for(exc)) from None
        except Exception:
            log.exception("unexpected error in %s", handler.__name__)
            _count_error(args, handler.__name__, "unexpected")
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _count_error(args: tuple[object, ...], operation: str, kind: str) -> None:
    owner = args[0] if args else None
    if isinstance(owner, Operations):
        owner.counters.errors[(operation, kind)] += 1


def _counted_read(
    handler: Callable[[Operations, int, int, int], Coroutine[Any, Any, bytes]],
) -> Callable[[Operations, int, int, int], Coroutine[Any, Any, bytes]]:
    """Count each answered read, its bytes and how long it took (waiting for a fetch too)."""

    @functools.wraps(handler)
    async def wrapper(self: Operations, fh: int, off: int, size: int) -> bytes:
        started = time.monotonic()
        data = await handler(self, fh, off, size)
        counters = self.counters
        counters.reads += 1
        counters.read_bytes += len(data)
        counters.read_seconds.observe(time.monotonic() - started)
        return data

    return wrapper


@dataclass
class _OpenDir:
    dots: tuple[Node, Node]  # what "." and ".." stand for
    entries: list[tuple[str, Entry]]


_DOTS = (b".", b"..")


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(
        self,
        namespace: Namespace,
        fetcher: Fetcher,
        options: MountOptions,
        uploads: Uploads | None = None,
    ) -> None:
        super().__init__()
        self.namespace = namespace
        self.fetcher = fetcher
        self.options = options
        #: None: the mount is read-only (every write is EROFS)
        self.uploads = uploads if options.writable else None
        self._files: dict[int, ObjectReader] = {}
        #: files being written, by inode (their size grows as they are written)
        self._writing: dict[int, Upload] = {}
        self._provisional = itertools.count(1)
        self._dirs: dict[int, _OpenDir] = {}
        self._handles = itertools.count(1)
        #: read() calls served, for tests and status
        self.reads = 0
        #: what `clearmount status` and the metrics endpoint report
        self.counters = MountCounters()

    # ----- attributes -----------------------------------------------------------------------

    def _attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.inode
        # Buffered readers read st_blksize bytes for the smallest read: a local disk's page
        # makes a small read at a far offset (a zip member's header: torch.load(mmap=True)
        # reads hundreds) one READ of 1-2 pages, fetched in one small GET; the mount's 1 MiB
        # readahead still serves sequential reads
        attrs.st_blksize = _READ_BLKSIZE
        attrs.st_uid = self.options.uid
        attrs.st_gid = self.options.gid
        attrs.attr_timeout = self.options.attr_timeout
        attrs.entry_timeout = self.options.attr_timeout
        if node.target is not None:
            attrs.st_mode = stat.S_IFLNK | 0o777
            attrs.st_nlink = 1
            attrs.st_size = len(os.fsencode(node.target))
            mtime = int(self.namespace.started * 1e9)
        elif node.info is not None:
            attrs.st_mode = stat.S_IFREG | (self.options.file_mode & ~self.options.umask)
            attrs.st_nlink = 1
            upload = self._writing.get(node.inode) if self._writing else None
            size = upload.size if upload is not None else node.info.size
            attrs.st_size = size
            attrs.st_blocks = -(-size // 512)
            if upload is not None:
                attrs.st_blksize = _WRITE_BLKSIZE  # its writer's buffered writes: 1 MiB WRITEs
            mtime = int(node.info.mtime * 1e9)
        else:
            attrs.st_mode = stat.S_IFDIR | (self.options.dir_mode & ~self.options.umask)
            attrs.st_nlink = 2
            mtime = int(self.namespace.started * 1e9)
        attrs.st_mtime_ns = attrs.st_ctime_ns = attrs.st_atime_ns = mtime
        return attrs

    @_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.namespace.get(parent_inode)
        node = await self.namespace.lookup(parent, os.fsdecode(name))
        if node is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self.options.negative_timeout
            return negative
        node.lookups += 1
        return self._attributes(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            self.namespace.forget(inode, count)

    @_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attributes(self.namespace.get(inode))

    @_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        cache = await self.fetcher.transfer.local(os.statvfs, self.fetcher.layout.root)
        data = pyfuse3.StatvfsData()
        data.f_bsize = cache.f_bsize
        data.f_frsize = cache.f_frsize
        data.f_blocks = cache.f_blocks
        data.f_bfree = cache.f_bfree
        data.f_bavail = cache.f_bavail
        data.f_files = self.namespace.node_count
        data.f_ffree = 0
        data.f_favail = 0
        data.f_namemax = 255
        return data

    @_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        target = self.namespace.get(inode).target
        if target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(target)

    # ----- directories ----------------------------------------------------------------------

    @_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self.namespace.get(inode)
        if node.kind is Kind.FILE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        handle = next(self._handles)
        # A snapshot per open directory keeps readdir offsets stable while it is read.
        entries = await self.namespace.listdir(node)
        parent = await self.namespace.lookup(node, "..")
        self._dirs[handle] = _OpenDir((node, parent or node), entries)
        return handle

    @_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # FUSE leaves "." and ".." to the filesystem (`ls -a` shows what we send): offsets 0
        # and 1 are those two, the listing follows. The kernel takes no reference on them,
        # so their lookup counts stay as they are.
        handle = self._dirs[fh]
        for index in range(start_id, len(_DOTS)):
            attributes = self._attributes(handle.dots[index])
            if not pyfuse3.readdir_reply(token, _DOTS[index], attributes, index + 1):
                return
        entries = handle.entries
        for index in range(max(start_id - len(_DOTS), 0), len(entries)):
            name, entry = entries[index]
            node = self.namespace.child(entry)
            if not pyfuse3.readdir_reply(
                token, os.fsencode(name), self._attributes(node), index + len(_DOTS) + 1
            ):
                self.namespace.drop_if_unused(node)
                return
            node.lookups += 1

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    # ----- files ----------------------------------------------------------------------------

    @_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & _WRITE_FLAGS:
            return await self._open_for_writing(inode, flags, ctx)
        started = time.monotonic()
        node = self.namespace.get(inode)
        if node.info is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        writing = self._writing.get(inode)
        if writing is not None:
            # another open of a file being written: the bytes written so far
            handle = next(self._handles)
            self._files[handle] = writing.reader()
            return pyfuse3.FileInfo(fh=handle, keep_cache=False)
        await self.namespace.revalidate(node)
        store, url = await self.namespace.object_of(node)
        # a changed object seen by a read: the next open must ask the server again
        on_stale = functools.partial(self.namespace.invalidate, node)
        reader = await self.fetcher.open(url, store, node.info, on_stale=on_stale)
        self.counters.opens[reader.outcome.value] += 1
        self.counters.open_seconds.observe(time.monotonic() - started)
        handle = next(self._handles)
        self._files[handle] = reader
        # Safe across opens: this inode is one object version, its bytes never change.
        return pyfuse3.FileInfo(fh=handle, keep_cache=True)

    @_errors
    @_counted_read
    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.reads += 1
        return await self._files[fh].read(off, size)

    async def release(self, fh: int) -> None:
        reader = self._files.pop(fh, None)
        # an upload tells the namespace itself how it ended (`_settled`, `_unwritten`)
        if reader is not None:
            reader.close()

    # ----- extended attributes --------------------------------------------------------------

    async def _xattrs(self, node: Node) -> dict[bytes, bytes]:
        if node.kind is Kind.ROOT:
            # lets `clearmount prefetch` and `cache` find the daemon's cache from the mount
            return {
                _XATTR_CACHE_DIR: os.fsencode(self.fetcher.layout.root),
                _XATTR_CACHE_LAYOUT: self.fetcher.layout.kind.encode(),
            }
        url = self.namespace.url_string(node) if node.kind in (Kind.DIR, Kind.FILE) else ""
        values = {_XATTR_URL: url.encode()} if url else {}
        if node.info is not None:
            values[_XATTR_ETAG] = node.info.version.encode()
            cached = await self.fetcher.cached_bytes(url, node.info.version)
            values[_XATTR_CACHED] = str(cached).encode()
            source = self.fetcher.sources.get(url)
            if source is not None:  # where the last fetch of this file found its bytes
                values[_XATTR_SOURCE] = source.encode()
        return values

    @_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not name.startswith(b"user."):
            # "not supported" (not "no such attribute"): `ls -l` then stops asking for
            # SELinux labels and ACLs on this filesystem instead of asking for every file
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        value = (await self._xattrs(self.namespace.get(inode))).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return list(await self._xattrs(self.namespace.get(inode)))

    # ----- writing (-o writable; else every write is EROFS) ----------------------------------

    def _uploads(self) -> Uploads:
        if self.uploads is None:
            raise pyfuse3.FUSEError(errno.EROFS)
        return self.uploads

    async def _writable_store(self, node: Node) -> tuple[Any, str, str]:
        """The store, key and URL a file `node` is written to (a bucket's, never a level
        above: WriteRefused)."""
        parts = node.parts
        if node.kind not in (Kind.FILE, Kind.DIR) or len(parts) <= self.namespace.container_depth(
            parts
        ):
            raise WriteRefused(f"{'/'.join(parts)}: not inside a bucket or container")
        store, key = await self.namespace.store_for(parts)
        url = str(self.namespace.url_of(parts))
        if not store.writable:
            raise WriteUnsupported(f"{url}: this storage does not take writes")
        return store, key, url

    async def _start_upload(self, node: Node, caller: int) -> tuple[int, Upload]:
        store, key, url = await self._writable_store(node)
        uploads = self._uploads()
        upload = await uploads.open(url, store, key, node.parts)
        upload.writer_pid = await uploads.transfer.local(process_of, caller)
        upload.on_done = functools.partial(self._settled, node, upload)
        upload.on_failed = functools.partial(self._unwritten, node, upload)
        handle = next(self._handles)
        self._files[handle] = upload
        self._writing[node.inode] = upload
        return handle, upload

    def _settled(self, node: Node, upload: Upload, info: ObjectInfo) -> None:
        """An upload completed: the file is that object version from now on."""
        if self._writing.get(node.inode) is upload:
            del self._writing[node.inode]
        self.namespace.settle(node, info)

    def _unwritten(self, node: Node, upload: Upload) -> None:
        """An upload failed: a new file disappears, an overwritten one shows its old self."""
        if self._writing.get(node.inode) is upload:
            del self._writing[node.inode]
        if node.info is not None and node.info.version.startswith(_PROVISIONAL):
            self.namespace.removed(node)
            parent = self.namespace.parent_of(node)
            if parent is not None:
                # the kernel was told at create() that the name exists: no longer
                with contextlib.suppress(Exception):
                    pyfuse3.invalidate_entry_async(
                        parent.inode, os.fsencode(node.path.name), ignore_enoent=True
                    )

    @_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._uploads()
        parent = self.namespace.get(parent_inode)
        text = os.fsdecode(name)
        existing = await self.namespace.lookup(parent, text)
        if existing is not None:
            if flags & os.O_EXCL:
                raise pyfuse3.FUSEError(errno.EEXIST)
            existing.lookups += 1
            info = await self._open_for_writing(existing.inode, flags | os.O_TRUNC, ctx)
            return info, self._attributes(existing)
        if parent.kind is not Kind.DIR:
            raise WriteRefused(f"{self.namespace.url_string(parent) or '/'}: not inside a bucket")
        provisional = ObjectInfo(
            key=text, size=0, version=f"{_PROVISIONAL}{next(self._provisional)}", mtime=time.time()
        )
        node = self.namespace.add_local(parent, text, provisional)
        try:
            handle, _ = await self._start_upload(node, ctx.pid)
        except BaseException:
            self.namespace.removed(node)
            raise
        node.lookups += 1
        return pyfuse3.FileInfo(fh=handle, keep_cache=False), self._attributes(node)

    async def _open_for_writing(
        self, inode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        self._uploads()
        node = self.namespace.get(inode)
        if node.info is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        url = self.namespace.url_string(node)
        if inode in self._writing:
            raise WriteUnsupported(f"{url}: already open for writing")
        if not flags & os.O_TRUNC or flags & os.O_APPEND:
            raise WriteUnsupported(
                f"{url}: existing objects cannot be modified or appended to, only replaced "
                "whole (open with O_TRUNC, and mount with -o allow_overwrite)"
            )
        if not self.options.allow_overwrite:
            raise WriteRefused(f"{url}: exists; replacing objects needs -o allow_overwrite")
        handle, _ = await self._start_upload(node, ctx.pid)
        return pyfuse3.FileInfo(fh=handle, keep_cache=False)

    def _upload_of(self, fh: int) -> Upload:
        self._uploads()
        upload = self._files.get(fh)
        if not isinstance(upload, Upload):
            raise pyfuse3.FUSEError(errno.EBADF)
        if upload.reported:
            # its error was logged and given to the writer once already
            raise pyfuse3.FUSEError(errno_for(upload.error or ClearmountError()))
        return upload

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        upload = self._upload_of(fh)
        try:
            return await upload.write(off, buf)
        except ClearmountError:
            upload.reported = True
            raise

    async def _finish(self, fh: int, closing: bool) -> None:
        if not isinstance(self._files.get(fh), Upload):
            return
        upload = self._upload_of(fh)
        try:
            await upload.finish(closing)
        except ClearmountError:
            upload.reported = True
            raise

    @_errors
    async def flush(self, fh: int) -> None:
        if self.uploads is None:
            # Nothing is ever written here: the kernel takes ENOSYS as "no flush on this
            # mount" and stops sending one per close(), a request fewer per file read.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        # close(): the object is complete on the server when this returns 0
        await self._finish(fh, closing=True)

    @_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._finish(fh, closing=False)

    @_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._uploads()
        node = self.namespace.get(inode)
        if fields.update_size:
            upload = self._writing.get(inode)
            current = upload.size if upload is not None else (node.info.size if node.info else 0)
            if attr.st_size != current:
                raise WriteUnsupported(
                    f"{self.namespace.url_string(node)}: truncating to {attr.st_size} bytes is "
                    "not supported (only whole new files are written)"
                )
        # modes, owners and times are the mount's (-o file_mode, uid, ...): accepted, ignored
        return self._attributes(node)

    @_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._uploads()
        parent = self.namespace.get(parent_inode)
        text = os.fsdecode(name)
        if await self.namespace.lookup(parent, text) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        if parent.kind is not Kind.DIR:
            raise WriteRefused(f"{self.namespace.url_string(parent) or '/'}: not inside a bucket")
        node = self.namespace.add_local(parent, text, None)
        node.lookups += 1
        return self._attributes(node)

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._uploads()
        parent = self.namespace.get(parent_inode)
        node = await self.namespace.lookup(parent, os.fsdecode(name))
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if node.kind is not Kind.DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if self.namespace.has_local_children(node) or await self.namespace.listdir(node):
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        self.namespace.removed(node)

    @_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        uploads = self._uploads()
        parent = self.namespace.get(parent_inode)
        node = await self.namespace.lookup(parent, os.fsdecode(name))
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if node.info is None:
            raise pyfuse3.FUSEError(errno.EISDIR if node.kind is Kind.DIR else errno.EPERM)
        store, key, url = await self._writable_store(node)
        if node.inode in self._writing:
            raise pyfuse3.FUSEError(errno.EBUSY)
        if not self.options.allow_delete:
            raise WriteRefused(f"{url}: removing objects needs -o allow_delete")
        await uploads.delete(store, url, key)
        self.namespace.removed(node)

    @_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        uploads = self._uploads()
        old_parent = self.namespace.get(parent_inode_old)
        new_parent = self.namespace.get(parent_inode_new)
        node = await self.namespace.lookup(old_parent, os.fsdecode(name_old))
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if flags & ~_RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # RENAME_EXCHANGE, RENAME_WHITEOUT
        if node.info is None:
            raise WriteUnsupported(
                f"{self.namespace.url_string(node)}: renaming directories is not supported"
            )
        if node.inode in self._writing:
            raise pyfuse3.FUSEError(errno.EBUSY)
        store, key, url = await self._writable_store(node)
        if new_parent.kind is not Kind.DIR:
            raise pyfuse3.FUSEError(errno.EXDEV)
        text = os.fsdecode(name_new)
        target = await self.namespace.lookup(new_parent, text)
        if target is not None:
            if flags & _RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if target.info is None:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if target.inode in self._writing:
                raise pyfuse3.FUSEError(errno.EBUSY)
        new_parts = (*new_parent.parts, text)
        new_store, new_key = await self.namespace.store_for(new_parts)
        if new_store is not store:
            raise pyfuse3.FUSEError(errno.EXDEV)  # mv copies it through the mount instead
        new_url = str(self.namespace.url_of(new_parts))
        if target is not None and not self.options.allow_overwrite:
            raise WriteRefused(f"{new_url}: exists; replacing objects needs -o allow_overwrite")
        info = await uploads.rename(store, url, key, new_url, new_key, node.info.size)
        self.namespace.moved(node, new_parent, text, info)

    @_errors
    async def _refused(self, *_: Any, **__: Any) -> Any:
        self._uploads()
        raise WriteUnsupported("links, device files and extended attributes cannot be written")

    mknod = symlink = link = setxattr = removexattr = _refused

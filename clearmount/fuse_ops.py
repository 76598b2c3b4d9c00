"""The pyfuse3 adapter: translate kernel requests, delegate, map errors to errno.

Owns: the `Operations` handlers, the open-file and open-directory handle tables, and the
conversion of nodes into `EntryAttributes`. Holds no policy: lookups and listings belong to
`Namespace`, bytes to `Fetcher` and the `ObjectReader` it returns for each open file (which
owns waiting for a fetch and noticing a changed object; it tells the namespace through the
`on_stale` callback given at open). pyfuse3 ends the whole mount on any exception other than
`FUSEError`, so every handler goes through `_errors`, the clearmount → errno border.
"""

from __future__ import annotations

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

from clearmount.cache.fetch import Fetcher
from clearmount.cache.reader import ObjectReader
from clearmount.errors import ClearmountError, NotFound, errno_for
from clearmount.monitor import MountCounters
from clearmount.namespace import Entry, Kind, Namespace, Node
from clearmount.options import MountOptions

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_XATTR_URL = b"user.clearmount.url"
_XATTR_ETAG = b"user.clearmount.etag"
_XATTR_CACHED = b"user.clearmount.cached"
_XATTR_CACHE_DIR = b"user.clearmount.cache_dir"
_XATTR_CACHE_LAYOUT = b"user.clearmount.cache_layout"
_XATTR_SOURCE = b"user.clearmount.source"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC


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


async def _read_only(*_: Any, **__: Any) -> Any:
    raise pyfuse3.FUSEError(errno.EROFS)


@dataclass
class _OpenDir:
    dots: tuple[Node, Node]  # what "." and ".." stand for
    entries: list[tuple[str, Entry]]


_DOTS = (b".", b"..")


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, namespace: Namespace, fetcher: Fetcher, options: MountOptions) -> None:
        super().__init__()
        self.namespace = namespace
        self.fetcher = fetcher
        self.options = options
        self._files: dict[int, ObjectReader] = {}
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
            attrs.st_size = node.info.size
            attrs.st_blocks = -(-node.info.size // 512)
            mtime = int(node.info.mtime * 1e9)
        else:
            attrs.st_mode = stat.S_IFDIR | (self.options.dir_mode & ~self.options.umask)
            attrs.st_nlink = 2
            mtime = int(self.namespace.started * 1e9)
        attrs.st_mtime_ns = attrs.st_ctime_ns = attrs.st_atime_ns = mtime
        attrs.st_blksize = 1 << 20
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
            raise pyfuse3.FUSEError(errno.EROFS)
        started = time.monotonic()
        node = self.namespace.get(inode)
        if node.info is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        await self.namespace.revalidate(node)
        parts = node.parts  # one walk up the path, for both
        store, _ = await self.namespace.store_for(parts)
        url = str(self.namespace.url_of(parts))
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

    # ----- everything that would write: the mount is read-only ------------------------------

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only
    create = write = setxattr = removexattr = _read_only

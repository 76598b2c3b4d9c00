"""The FUSE operations without a kernel: the pyfuse3 handlers called as the kernel would call
them (they are plain coroutines; a `RequestContext` is built empty), over a namespace and a
cache served by a bucket in memory. What a user relies on at this layer: the attributes of a
file, errno for every failure, opens counted by how they found their bytes, the extended
attributes, and a changed object answered with ESTALE until it is looked up again.

`readdir` is left to the mount tests: its `ReaddirToken` comes from a kernel request.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from clearmount.fuse_ops import Operations
from clearmount.namespace import ROOT_INODE
from memstore import GatedStore, MemoryStore, make_fetcher, make_namespace

CTX = pyfuse3.RequestContext()
DATA = bytes(range(256)) * 400


def operations(
    tmp_path: Path, nursery: trio.Nursery, store: MemoryStore, **options: Any
) -> Operations:
    namespace = make_namespace(tmp_path, store, **options)
    fetcher = make_fetcher(tmp_path)
    fetcher.start(nursery)
    return Operations(namespace, fetcher, namespace.options)


async def lookup(ops: Operations, path: str) -> pyfuse3.EntryAttributes:
    """Look `path` up as the kernel does, one component at a time."""
    inode = ROOT_INODE
    for name in path.split("/"):
        attrs = await ops.lookup(inode, name.encode(), CTX)
        inode = attrs.st_ino
    return attrs


async def errno_of(call: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as raised:
        await call
    return int(raised.value.errno)


async def until_no_fetch(ops: Operations) -> None:
    with trio.fail_after(10):
        while ops.fetcher.in_flight:
            await ops.fetcher.changed.wait()


async def test_lookup_getattr_and_forget(tmp_path: Path, nursery: trio.Nursery) -> None:
    ops = operations(tmp_path, nursery, MemoryStore({"dir/a.bin": DATA}, base_url="s3://bucket"))
    directory = await lookup(ops, "s3/bucket/dir")
    assert stat.S_ISDIR(directory.st_mode)
    attrs = await lookup(ops, "s3/bucket/dir/a.bin")
    assert attrs.st_mode == stat.S_IFREG | 0o444
    assert attrs.st_size == len(DATA) and attrs.st_uid == os.getuid()
    assert (await ops.getattr(attrs.st_ino, CTX)).st_size == len(DATA)
    missing = await lookup(ops, "s3/bucket/dir/missing")
    assert missing.st_ino == 0  # a negative entry the kernel keeps for negative_timeout
    assert missing.entry_timeout == ops.options.negative_timeout
    await ops.forget([(attrs.st_ino, 1)])
    assert await errno_of(ops.getattr(attrs.st_ino, CTX)) == errno.ENOENT
    assert await errno_of(ops.getattr(12345, CTX)) == errno.ENOENT


async def test_each_open_is_counted_by_how_it_found_the_bytes(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    ops = operations(tmp_path, nursery, MemoryStore({"a.bin": DATA}, base_url="s3://bucket"))
    inode = (await lookup(ops, "s3/bucket/a.bin")).st_ino
    opened: list[pyfuse3.FileInfo] = []

    async def open_one() -> None:
        opened.append(await ops.open(inode, os.O_RDONLY, CTX))

    async with trio.open_nursery() as both:  # the second open comes while the first fetches
        both.start_soon(open_one)
        both.start_soon(open_one)
    first, second = opened
    assert first.keep_cache and second.keep_cache  # the inode is one version
    with trio.fail_after(10):
        assert await ops.read(first.fh, 0, len(DATA) + 10) == DATA
        assert await ops.read(second.fh, 1000, 10) == DATA[1000:1010]
    await ops.release(first.fh)
    await ops.release(second.fh)
    await until_no_fetch(ops)
    third = await ops.open(inode, os.O_RDONLY, CTX)
    assert await ops.read(third.fh, len(DATA) - 1, 10) == DATA[-1:]
    await ops.release(third.fh)
    assert dict(ops.counters.opens) == {"fetched": 1, "joined": 1, "cached": 1}
    assert ops.counters.reads == 3 and ops.counters.read_bytes == len(DATA) + 11


async def test_a_read_only_mount_refuses_flush_so_the_kernel_stops_sending_it(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # ENOSYS is the kernel's "no FLUSH on this mount": a request fewer at every close()
    ops = operations(tmp_path, nursery, MemoryStore({"a.bin": DATA}, base_url="s3://bucket"))
    inode = (await lookup(ops, "s3/bucket/a.bin")).st_ino
    opened = await ops.open(inode, os.O_RDONLY, CTX)
    with trio.fail_after(10):
        assert await ops.read(opened.fh, 0, 10) == DATA[:10]
    assert await errno_of(ops.flush(opened.fh)) == errno.ENOSYS
    assert await ops.read(opened.fh, 10, 10) == DATA[10:20]  # the file stays open and read
    await ops.release(opened.fh)
    assert not ops.counters.errors  # not a failure anyone sees


async def test_writes_and_directories_get_their_errno(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    ops = operations(tmp_path, nursery, MemoryStore({"a.bin": DATA}, base_url="s3://bucket"))
    file = (await lookup(ops, "s3/bucket/a.bin")).st_ino
    bucket = (await lookup(ops, "s3/bucket")).st_ino
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        assert await errno_of(ops.open(file, flags, CTX)) == errno.EROFS
    assert await errno_of(ops.write(1, 0, b"x")) == errno.EROFS
    assert await errno_of(ops.mkdir(bucket, b"new", 0o755, CTX)) == errno.EROFS
    assert await errno_of(ops.open(bucket, os.O_RDONLY, CTX)) == errno.EISDIR
    assert await errno_of(ops.opendir(file, CTX)) == errno.ENOTDIR
    await ops.releasedir(await ops.opendir(bucket, CTX))


async def test_xattrs_say_where_a_file_comes_from_and_how_much_is_local(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    store = MemoryStore({"dir/a.bin": DATA}, base_url="s3://bucket")
    ops = operations(tmp_path, nursery, store)
    inode = (await lookup(ops, "s3/bucket/dir/a.bin")).st_ino
    assert await ops.getxattr(inode, b"user.clearmount.url", CTX) == b"s3://bucket/dir/a.bin"
    etag = store.head("dir/a.bin").version.encode()
    assert await ops.getxattr(inode, b"user.clearmount.etag", CTX) == etag
    assert await ops.getxattr(inode, b"user.clearmount.cached", CTX) == b"0"
    opened = await ops.open(inode, os.O_RDONLY, CTX)
    with trio.fail_after(10):
        await ops.read(opened.fh, 0, len(DATA))
    await ops.release(opened.fh)
    await until_no_fetch(ops)
    assert await ops.getxattr(inode, b"user.clearmount.cached", CTX) == str(len(DATA)).encode()
    assert set(await ops.listxattr(inode, CTX)) == {
        b"user.clearmount.url",
        b"user.clearmount.etag",
        b"user.clearmount.cached",
        b"user.clearmount.source",
    }
    # the last fetch went to the bucket; the next open is a hit in this node's cache
    assert await ops.getxattr(inode, b"user.clearmount.source", CTX) == b"bucket"
    await ops.release((await ops.open(inode, os.O_RDONLY, CTX)).fh)
    assert await ops.getxattr(inode, b"user.clearmount.source", CTX) == b"l1"
    root = await ops.getxattr(ROOT_INODE, b"user.clearmount.cache_dir", CTX)
    assert root == os.fsencode(ops.fetcher.layout.root)
    layout = await ops.getxattr(ROOT_INODE, b"user.clearmount.cache_layout", CTX)
    assert layout == b"storage_manager"
    assert await errno_of(ops.getxattr(inode, b"user.nothing", CTX)) == pyfuse3.ENOATTR
    assert await errno_of(ops.getxattr(inode, b"security.selinux", CTX)) == errno.EOPNOTSUPP


async def test_a_read_meeting_a_changed_object_is_estale_until_looked_up_again(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    old = os.urandom(3 << 20)
    store = GatedStore({"a.bin": old}, base_url="s3://bucket")
    ops = operations(tmp_path, nursery, store, attr_timeout=60.0)
    inode = (await lookup(ops, "s3/bucket/a.bin")).st_ino
    opened = await ops.open(inode, os.O_RDONLY, CTX)
    with trio.fail_after(10):
        assert await ops.read(opened.fh, 0, 10) == old[:10]  # the first chunk, gate closed
    store.put("a.bin", b"the next version")
    store.gate.set()
    with trio.fail_after(10):
        assert await errno_of(ops.read(opened.fh, 2 << 20, 10)) == errno.ESTALE
    assert ops.counters.errors[("read", "Stale")] == 1
    await ops.release(opened.fh)
    # within attr_timeout, yet the next open asks the server: the read told the namespace
    assert await errno_of(ops.open(inode, os.O_RDONLY, CTX)) == errno.ESTALE
    attrs = await lookup(ops, "s3/bucket/a.bin")
    assert attrs.st_ino != inode and attrs.st_size == len(b"the next version")
    reopened = await ops.open(attrs.st_ino, os.O_RDONLY, CTX)
    with trio.fail_after(10):
        assert await ops.read(reopened.fh, 0, 100) == b"the next version"
    await ops.release(reopened.fh)

"""The fetch machinery on its own, with an in-memory store (one module, no server): what
the mount tests cannot easily provoke, such as a server returning bytes that do not match
the ETag it states."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from clearmount import config
from clearmount.backends.base import ListPage, ObjectInfo, ObjectStore
from clearmount.cache.evict import CacheLimits
from clearmount.cache.fetch import Fetch, Fetcher
from clearmount.cache.index import CacheIndex
from clearmount.cache.layout import CacheLayout
from clearmount.errors import CacheError, Unavailable
from clearmount.transfer import Progress, Transfer

T = TypeVar("T")


class MemoryStore(ObjectStore):
    def __init__(self, data: bytes, served: bytes | None = None) -> None:
        self.base_url = "s3://memory"
        self.entry = "test"
        self.data = data
        self.served = data if served is None else served
        self.ranges: list[tuple[int, int]] = []

    def exists(self) -> bool:
        return True

    def head(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, len(self.data), f'"{hashlib.md5(self.data).hexdigest()}"', 0.0)

    def list_page(self, prefix: str, token: str | None = None, limit: int = 1000) -> ListPage:
        return ListPage((), (), None)

    def read_range(
        self, key: str, version: str, start: int, end: int, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        self.ranges.append((start, end))
        for offset in range(start, end, chunk_size):
            yield self.served[offset : min(offset + chunk_size, end)]


def make_fetcher(tmp_path: Path, part_size: int = 1 << 20) -> Fetcher:
    layout = CacheLayout(tmp_path / "cache")
    layout.prepare()
    index = CacheIndex(layout)
    return Fetcher(layout, index, Transfer(4, 4), part_size, 4, CacheLimits())


async def test_bytes_not_matching_the_etag_md5_are_discarded(tmp_path: Path) -> None:
    data = b"the real bytes" * 1000
    store = MemoryStore(data, served=b"x" * len(data))
    fetcher = make_fetcher(tmp_path)
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        source = await fetcher.open("s3://memory/k", store, store.head("k"), parallel=True)
        assert source.fetch is not None
        while not (source.fetch.complete or source.fetch.error):
            await trio.sleep(0.01)
    assert isinstance(source.fetch.error, CacheError)
    assert "MD5" in str(source.fetch.error)
    assert list(fetcher.layout.global_dir.iterdir()) == []


async def test_a_read_far_ahead_moves_its_part_first(tmp_path: Path) -> None:
    data = bytes(range(256)) * (64 * 1024)  # 16 MiB, 16 parts of 1 MiB
    store = MemoryStore(data)
    fetcher = make_fetcher(tmp_path)
    fetcher.parallel = 1  # one part at a time, so the order is observable
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        source = await fetcher.open("s3://memory/k", store, store.head("k"), parallel=True)
        assert source.fetch is not None
        await source.fetch.wait_for(len(data) - 10, len(data))
        assert store.ranges[0] == (15 << 20, 16 << 20)  # before every part ahead of it
        await source.fetch.wait_for(0, len(data))
    final = fetcher.layout.final_path("s3://memory/k")
    assert final.read_bytes() == data
    assert sorted(store.ranges) == [(i << 20, (i + 1) << 20) for i in range(16)]


@pytest.mark.parametrize("size", [0, 1, (1 << 20) + 1])
async def test_sizes_at_part_boundaries(tmp_path: Path, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    store = MemoryStore(data)
    fetcher = make_fetcher(tmp_path)
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        source = await fetcher.open("s3://memory/k", store, store.head("k"), parallel=True)
        if source.fetch is not None:
            await source.fetch.wait_for(0, size)
            while not source.fetch.complete:
                await trio.sleep(0.01)
    assert fetcher.layout.final_path("s3://memory/k").read_bytes() == data


class TricklingStore(MemoryStore):
    """Its first `trickles` GETs send the bytes before `fast` at once, then one byte every
    20 ms (a server that never trips a read timeout); later GETs are served whole."""

    def __init__(self, data: bytes, fast: int, trickles: int) -> None:
        super().__init__(data)
        self.fast = fast
        self.trickles = trickles
        # tiny SDK deadlines: the stall window and patience are the (patched) minimums
        self.deadlines = config.Deadlines(0.1, 0.1)

    def read_range(
        self, key: str, version: str, start: int, end: int, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        if len(self.ranges) >= self.trickles:
            yield from super().read_range(key, version, start, end, chunk_size)
            return
        self.ranges.append((start, end))
        if start < self.fast:
            yield self.data[start : self.fast]
            start = self.fast
        for at in range(start, end):
            time.sleep(0.02)
            yield self.data[at : at + 1]


@pytest.fixture
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stall window of 0.5 s and a patience of 2 s instead of 30 s and 45 s."""
    monkeypatch.setattr(config, "MIN_STALL_WINDOW", 0.5)
    monkeypatch.setattr(config, "MIN_OPERATION_SECONDS", 2.0)


async def fetch_all(tmp_path: Path, store: MemoryStore) -> tuple[Fetch, float]:
    """Fetch `store`'s object to the end; the fetch and the seconds it took."""
    fetcher = make_fetcher(tmp_path)
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        source = await fetcher.open("s3://memory/k", store, store.head("k"), parallel=True)
        assert source.fetch is not None
        with trio.fail_after(30):
            while not (source.fetch.complete or source.fetch.error):
                await fetcher.changed.wait()
        os.close(source.fd)
    return source.fetch, time.monotonic() - started


async def test_a_trickling_body_is_resumed_from_its_last_byte(
    tmp_path: Path, short_deadlines: None
) -> None:
    data = os.urandom(512 << 10)
    store = TricklingStore(data, fast=100 << 10, trickles=1)
    fetch, _ = await fetch_all(tmp_path, store)
    assert fetch.error is None
    assert fetch.final.read_bytes() == data
    assert len(store.ranges) == 2
    assert store.ranges[1][0] > 100 << 10  # the trickled bytes were kept too


async def test_a_body_trickling_on_every_attempt_fails_within_the_patience(
    tmp_path: Path, short_deadlines: None
) -> None:
    data = os.urandom(512 << 10)
    store = TricklingStore(data, fast=100 << 10, trickles=100)
    fetch, seconds = await fetch_all(tmp_path, store)
    assert isinstance(fetch.error, Unavailable)
    assert "less than 1 MiB received" in str(fetch.error)
    assert seconds < 2.0 + 1.0  # the patience, and a little for the loop
    assert 2 <= len(store.ranges) <= 8  # resumed with backoff, then given up
    assert not fetch.partial.exists() and not fetch.final.exists()


class HeldTransfer(Transfer):
    """A Transfer whose data calls, their thread done, return only once `go` is set."""

    def __init__(self) -> None:
        super().__init__(4, 4)
        self.go = trio.Event()

    async def in_thread(
        self, fn: Callable[..., T], *args: object, progress: Progress | None = None
    ) -> T:
        result = await super().in_thread(fn, *args, progress=progress)
        await self.go.wait()
        return result


async def test_an_open_joining_a_fetch_its_thread_just_sealed_reads_the_file(
    tmp_path: Path,
) -> None:
    # A one-part fetch is verified and renamed into place by its own thread; the loop hears
    # of it a moment later. An open in between joins the fetch, whose partial file is gone.
    data = b"sealed by the thread " * 100
    store = MemoryStore(data)
    transfer = HeldTransfer()
    layout = CacheLayout(tmp_path / "cache")
    layout.prepare()
    fetcher = Fetcher(layout, CacheIndex(layout), transfer, 1 << 20, 4, CacheLimits())
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        first = await fetcher.open("s3://memory/k", store, store.head("k"), parallel=True)
        assert first.fetch is not None
        with trio.fail_after(10):
            while not first.fetch.sealed:
                await trio.sleep(0.01)
        second = await fetcher.open("s3://memory/k", store, store.head("k"), parallel=True)
        assert second.fetch is first.fetch
        transfer.go.set()
        await second.fetch.wait_for(0, len(data))
        assert os.pread(second.fd, len(data) + 1, 0) == data
        for source in (first, second):
            os.close(source.fd)
            fetcher.release(first.fetch)
    assert store.ranges == [(0, len(data))]


# ----- the cache index: never a reason to fail or stall a read


def _urls(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return {row[0] for row in db.execute("SELECT url FROM entries")}


@contextlib.contextmanager
def another_writer(path: Path, *statements: str) -> Iterator[None]:
    """A second connection to the index (a `clearmount cache` command, another daemon) that
    holds its write lock while the block runs."""
    other = sqlite3.connect(path, isolation_level=None)
    for statement in statements:
        other.execute(statement)
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def assert_records_again(index: CacheIndex, version: str) -> None:
    """Once the lock is gone, writes land again."""
    index.put("k", "s3://b/k", version, 1)
    entry = index.get("k")
    assert entry is not None and entry.version == version
    index.close()


def test_a_write_locked_index_skips_the_write_instead_of_stalling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = CacheIndex(CacheLayout(tmp_path / "cache"))
    with another_writer(index.path, "BEGIN IMMEDIATE"):
        with caplog.at_level(logging.WARNING):
            started = time.monotonic()
            index.put("k", "s3://b/k", "v1", 10)
            assert time.monotonic() - started < 20  # the short busy timeout, not 30 s
        assert "cannot record s3://b/k in the cache index" in caplog.text
        assert index.get("k") is None  # skipped; reads go on while another process writes
    assert_records_again(index, "v1")


async def test_a_write_locked_index_never_fails_a_reader(tmp_path: Path) -> None:
    data = b"recorded later" * 1000
    store = MemoryStore(data)
    fetcher = make_fetcher(tmp_path)
    url = "s3://memory/k"
    with another_writer(fetcher.index.path, "BEGIN IMMEDIATE"):
        async with trio.open_nursery() as nursery:
            fetcher.start(nursery)
            first = await fetcher.open(url, store, store.head("k"), parallel=True)
            assert first.fetch is not None
            while (url, first.fetch.info.version) in fetcher.in_flight:
                await fetcher.changed.wait()
            assert first.fetch.complete  # installed, though its row could not be written
            os.close(first.fd)
            again = await fetcher.open(url, store, store.head("k"), parallel=True)
            assert again.fetch is None  # adopted by its MD5: no second download
            assert os.pread(again.fd, len(data) + 1, 0) == data
            os.close(again.fd)
    assert store.ranges == [(0, len(data))]
    assert fetcher.index.get(fetcher.layout.final_path(url).name) is None
    fetcher.index.close()


def test_a_removed_index_is_recreated_private(tmp_path: Path) -> None:
    layout = CacheLayout(tmp_path / "cache")
    layout.make_folders()
    index = CacheIndex(layout)
    folder, path = layout.state_dir, index.path
    index.put("before", "s3://b/before", "v1", 1)
    shutil.rmtree(tmp_path / "cache")
    index.put("after", "s3://b/after", "v2", 2)
    assert _urls(path) == {"s3://b/after"}
    assert index.get("before") is None
    for made, mode in ((tmp_path / "cache", 0o700), (folder, 0o700), (path, 0o600)):
        assert stat.S_IMODE(made.stat().st_mode) == mode, made
    # replaced by another database (another process recreated it first): followed as well
    path.unlink()
    CacheIndex(layout).close()
    index.put("third", "s3://b/third", "v3", 3)
    assert _urls(path) == {"s3://b/third"}
    index.close()


def test_an_index_that_cannot_be_reopened_yet_is_unavailable_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = CacheIndex(CacheLayout(tmp_path / "cache"))
    path = index.path
    index.put("k", "s3://b/k", "v1", 1)
    path.unlink()
    # another process recreated the database and holds it exclusively for now
    with another_writer(path, "PRAGMA locking_mode=EXCLUSIVE", "BEGIN EXCLUSIVE"):
        with caplog.at_level(logging.WARNING):
            assert index.get("k") is None  # not the removed file's row
            index.put("k", "s3://b/k", "v2", 1)
        assert "cannot be recreated" in caplog.text
        with pytest.raises(sqlite3.OperationalError):
            index.pinned_names()  # the eviction loop and the CLI report sqlite3 errors
    assert_records_again(index, "v3")

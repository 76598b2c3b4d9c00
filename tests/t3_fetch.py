"""The fetch machinery on its own, with an in-memory store (one module, no server): what
the mount tests cannot easily provoke, such as a server returning bytes that do not match
the ETag it states."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from clearmount import config
from clearmount.cache.events import FetchEvents
from clearmount.cache.evict import remove_unless_open
from clearmount.cache.fetch import _FAST_LANES, FIRST_WINDOW, Fetch
from clearmount.cache.index import CacheIndex
from clearmount.cache.layout import ManagerLayout
from clearmount.cache.limits import CacheLimits
from clearmount.cache.reader import FetchReader, ObjectReader, Outcome, StreamReader
from clearmount.errors import CacheError, ClearmountError, Unavailable
from clearmount.transfer import Transfer
from memstore import GatedStore, HeldTransfer, MemoryStore, make_fetcher


def fetch_of(reader: ObjectReader) -> Fetch:
    """The fetch an open started or joined."""
    assert isinstance(reader, FetchReader), reader
    return reader.fetch


async def ended(fetch: Fetch) -> None:
    with trio.fail_after(10):
        await fetch.ended.wait()


class PacedStore(MemoryStore):
    """Sends each 1 MiB chunk after `pause` seconds, and keeps the most GETs it had in flight
    at once (`most`)."""

    def __init__(self, objects: dict[str, bytes], pause: float) -> None:
        super().__init__(objects)
        self.pause = pause
        self.most = 0
        self._running = 0

    def read_range(
        self, key: str, version: str, start: int, end: int, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        with self._lock:
            self._running += 1
            self.most = max(self.most, self._running)
        try:
            for chunk in super().read_range(key, version, start, end, chunk_size):
                time.sleep(self.pause * len(chunk) / (1 << 20))
                yield chunk
        finally:
            with self._lock:
                self._running -= 1


@pytest.mark.parametrize(
    ("pause", "fast"), [(0.002, True), (0.05, False)], ids=["fast-link", "slow-link"]
)
async def test_a_sequential_reader_gets_as_many_gets_at_once_as_the_link_needs(
    tmp_path: Path, pause: float, fast: bool
) -> None:
    # Where one GET brings hundreds of MB/s, a few at once bring all the daemon can take,
    # and each one more is a thread taking the GIL from the FUSE loop; where each brings
    # 20 MB/s, the window is fetched by as many GETs as configured.
    data = os.urandom(64 << 20)
    store = PacedStore({"k": data}, pause)
    fetcher = make_fetcher(tmp_path, transfer=Transfer(4, 32))
    fetcher.parallel = 16
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        reader = await fetcher.open("s3://memory/k", store, store.head("k"))
        got = bytearray()
        with trio.fail_after(60):
            while len(got) < len(data):
                got += await reader.read(len(got), 1 << 20)
        reader.close()
        await ended(fetch_of(reader))
    assert got == data
    if fast:
        assert store.most <= _FAST_LANES + 1  # and the reader's own GET, if it waits
    else:
        assert store.most > _FAST_LANES + 1


async def test_bytes_not_matching_the_etag_md5_are_discarded(tmp_path: Path) -> None:
    data = b"the real bytes" * 1000
    store = MemoryStore({"k": data}, served={"k": b"x" * len(data)})
    fetcher = make_fetcher(tmp_path)
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        fetch = fetch_of(await fetcher.open("s3://memory/k", store, store.head("k")))
        await ended(fetch)
    assert isinstance(fetch.error, CacheError)
    assert "MD5" in str(fetch.error)
    assert list(fetcher.layout.global_dir.iterdir()) == []


async def test_a_read_far_ahead_is_served_by_its_own_get_at_once(tmp_path: Path) -> None:
    # torch.load reads a zip's directory at the end first: its bytes must not wait behind
    # the parts before them, nor behind GETs of bytes nobody asked for yet
    data = bytes(range(256)) * (64 * 1024)  # 16 MiB, parts of 1 MiB
    store = MemoryStore({"k": data})
    fetcher = make_fetcher(tmp_path)
    fetcher.parallel = 1  # one part at a time: a jump must not wait for it
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        fetch = fetch_of(await fetcher.open("s3://memory/k", store, store.head("k")))
        await fetch.wait_for(len(data) - 10, len(data))
        # asked for: the opener's first window and a GET of the object's end, from the read
        # or from up to 64 KiB before it (a zip's directory, which zip readers read next)
        tail = len(data) - (64 << 10)
        assert (tail, len(data)) in store.ranges[:2]
        assert sum(end - start for start, end in store.ranges) <= FIRST_WINDOW + (64 << 10)
        await ended(fetch)
    # and the rest is still fetched: the file is complete, every byte asked for once
    final = fetcher.layout.final_path("s3://memory/k")
    assert final.read_bytes() == data
    assert sum(end - start for start, end in store.ranges) == len(data)


async def test_bytes_nobody_asked_for_wait_until_readers_are_quiet(tmp_path: Path) -> None:
    # a tensor in the middle of a checkpoint: its read shares the link with nothing but the
    # opener's first window; the rest comes afterwards, and the file ends up whole
    data = os.urandom(32 << 20)
    store = MemoryStore({"k": data})
    fetcher = make_fetcher(tmp_path)
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        reader = await fetcher.open("s3://memory/k", store, store.head("k"))
        with trio.fail_after(10):
            assert await reader.read(20 << 20, 4096) == data[20 << 20 : (20 << 20) + 4096]
        jump = (20 << 20, (20 << 20) + (1 << 20))  # its own GET (of one part, here)
        assert jump in store.ranges
        assert set(store.ranges) <= {(0, 1 << 20), jump}  # and the opener's first part
        reader.close()
        await ended(fetch_of(reader))
    assert fetch_of(reader).complete
    assert fetcher.layout.final_path("s3://memory/k").read_bytes() == data
    assert sum(end - start for start, end in store.ranges) == len(data)  # each byte once


async def test_a_sequential_reader_is_fetched_ahead_in_parts_not_per_read(
    tmp_path: Path,
) -> None:
    data = os.urandom(24 << 20)
    store = MemoryStore({"k": data})
    fetcher = make_fetcher(tmp_path)  # parts of 1 MiB, 4 at a time
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        reader = await fetcher.open("s3://memory/k", store, store.head("k"))
        with trio.fail_after(20):
            for offset in range(0, len(data), 128 << 10):
                assert await reader.read(offset, 128 << 10) == data[offset : offset + (128 << 10)]
        reader.close()
        await ended(fetch_of(reader))
    # 192 reads: no GET per read, no byte twice
    assert len(store.ranges) <= len(data) // (1 << 20) + 1
    assert sum(end - start for start, end in store.ranges) == len(data)


@pytest.mark.parametrize("size", [0, 1, (1 << 20) + 1])
async def test_sizes_at_part_boundaries(tmp_path: Path, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    store = MemoryStore({"k": data})
    fetcher = make_fetcher(tmp_path)
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        reader = await fetcher.open("s3://memory/k", store, store.head("k"))
        if isinstance(reader, FetchReader):
            await reader.fetch.wait_for(0, size)
            await ended(reader.fetch)
            assert reader.fetch.complete
    assert fetcher.layout.final_path("s3://memory/k").read_bytes() == data


class TricklingStore(MemoryStore):
    """Its first `trickles` GETs send the bytes before `fast` at once, then one byte every
    20 ms (a server that never trips a read timeout); later GETs are served whole."""

    def __init__(self, data: bytes, fast: int, trickles: int) -> None:
        super().__init__({"k": data})
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
        data = self.data(key)
        if start < self.fast:
            yield data[start : self.fast]
            start = self.fast
        for at in range(start, end):
            time.sleep(0.02)
            yield data[at : at + 1]


@pytest.fixture
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stall window of 0.5 s and a patience of 2 s instead of 30 s and 45 s."""
    monkeypatch.setattr(config.schema, "MIN_STALL_WINDOW", 0.5)
    monkeypatch.setattr(config.schema, "MIN_OPERATION_SECONDS", 2.0)
    assert config.Deadlines(0.1, 0.1).stall_window == 0.5  # patched where it is read


async def fetch_all(tmp_path: Path, store: MemoryStore) -> tuple[Fetch, float]:
    """Fetch `store`'s object "k" to the end; the fetch and the seconds it took."""
    fetcher = make_fetcher(tmp_path)
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        reader = await fetcher.open("s3://memory/k", store, store.head("k"))
        fetch = fetch_of(reader)
        with trio.fail_after(30):
            await fetch.ended.wait()
        reader.close()
    return fetch, time.monotonic() - started


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


class StallingTailStore(MemoryStore):
    """Its first GET of the object's last `tail` bytes sends nothing more after `fast` bytes
    (a server that stalls mid-body); every other GET is served whole."""

    def __init__(self, data: bytes, tail: int, fast: int) -> None:
        super().__init__({"k": data})
        self.tail_from = len(data) - tail
        self.fast = fast
        self.deadlines = config.Deadlines(0.1, 0.1)
        self.stalled = threading.Event()
        self.release = threading.Event()

    def read_range(
        self, key: str, version: str, start: int, end: int, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        if start < self.tail_from or self.stalled.is_set():
            yield from super().read_range(key, version, start, end, chunk_size)
            return
        with self._lock:
            self.ranges.append((start, end))
        self.stalled.set()
        yield self.data(key)[start : start + self.fast]
        self.release.wait(30)  # the attempt is given up at the stall window, long before


async def test_a_small_get_that_stalls_is_given_up_after_the_window_and_resumed(
    tmp_path: Path, short_deadlines: None
) -> None:
    # A read of an object's last bytes is fetched by a GET of its last 64 KiB, too few bytes
    # to complete a 1 MiB step: its watch is a fixed deadline, and it holds as the watch of
    # a long GET does (given up after the stall window, resumed from its last byte).
    data = os.urandom(4 << 20)
    store = StallingTailStore(data, tail=64 << 10, fast=1000)
    fetcher = make_fetcher(tmp_path)
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        reader = await fetcher.open("s3://memory/k", store, store.head("k"))
        with trio.fail_after(10):
            assert await reader.read(len(data) - 100, 100) == data[-100:]
        fetch = fetch_of(reader)
        with trio.fail_after(30):
            await fetch.ended.wait()
        reader.close()
    store.release.set()
    assert fetch.error is None and fetch.final.read_bytes() == data
    tail = len(data) - (64 << 10)
    # the stalled GET, then its resume from the last byte it brought
    assert [r for r in store.ranges if r[0] >= tail] == [
        (tail, len(data)),
        (tail + 1000, len(data)),
    ]


async def test_an_open_joining_a_fetch_its_thread_just_sealed_reads_the_file(
    tmp_path: Path,
) -> None:
    # A one-part fetch is verified and renamed into place by its own thread; the loop hears
    # of it a moment later. An open in between joins the fetch, whose partial file is gone.
    # (More than one chunk: a smaller object is fetched by its open, which waits for it.)
    data = b"sealed by the thread " * 80_000
    store = MemoryStore({"k": data})
    transfer = HeldTransfer()
    fetcher = make_fetcher(tmp_path, part_size=4 << 20, transfer=transfer)
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        first = await fetcher.open("s3://memory/k", store, store.head("k"))
        with trio.fail_after(10):
            await transfer.returned.wait()  # the thread is done, the loop not told yet
        assert fetch_of(first).sealed
        second = await fetcher.open("s3://memory/k", store, store.head("k"))
        assert fetch_of(second) is fetch_of(first)
        transfer.go.set()
        with trio.fail_after(10):
            assert await second.read(0, len(data) + 1) == data
        for reader in (first, second):
            reader.close()
    assert store.ranges == [(0, len(data))]


async def test_an_open_joining_a_fetch_whose_file_was_since_evicted_fetches_it_again(
    tmp_path: Path,
) -> None:
    # A small object is fetched by its open; a second open of it joins and waits for that.
    # The first reader may read, close, and eviction remove the file before the second open
    # gets to it: the second open must then fetch it again, not fail with EIO.
    data = os.urandom(200_000)
    store = MemoryStore({"k": data})
    transfer = HeldTransfer()
    fetcher = make_fetcher(tmp_path, transfer=transfer)
    url = "s3://memory/k"
    final = fetcher.layout.final_path(url)
    joined: list[bytes] = []

    async def first() -> None:
        reader = await fetcher.open(url, store, store.head("k"))
        # no checkpoint from here on: the joining open has not run yet
        reader.close()
        assert remove_unless_open(final)

    async def second() -> None:
        reader = await fetcher.open(url, store, store.head("k"))
        with trio.fail_after(10):
            joined.append(await reader.read(0, len(data) + 1))
        reader.close()

    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        nursery.start_soon(first)
        with trio.fail_after(10):
            await transfer.returned.wait()  # the first open's thread fetched and sealed it
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()  # the second open waits for the first
        assert len(fetcher.in_flight) == 1
        transfer.go.set()
    assert joined == [data]
    assert store.ranges == [(0, len(data)), (0, len(data))]


# ----- what the fetches report


class Recorder(FetchEvents):
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.received: collections.Counter[str] = collections.Counter()
        self._changed = trio.Event()

    def _append(self, event: tuple[str, ...]) -> None:
        self.events.append(event)
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def fetch_started(self, fetch: Fetch) -> None:
        self._append(("started", fetch.url))

    def fetch_received(self, fetch: Fetch, count: int) -> None:
        self.received[fetch.url] += count

    def fetch_completed(self, fetch: Fetch) -> None:
        self._append(("completed", fetch.url))

    def fetch_failed(self, fetch: Fetch, error: ClearmountError) -> None:
        self._append(("failed", fetch.url, type(error).__name__))

    def fetch_stopped(self, fetch: Fetch) -> None:
        self._append(("stopped", fetch.url))

    def stream_received(self, url: str, count: int) -> None:
        self.received[url] += count

    async def wait_for(self, event: tuple[str, ...]) -> None:
        with trio.fail_after(10):
            while event not in self.events:
                await self._changed.wait()


async def test_each_fetch_reports_its_start_its_bytes_and_one_end(tmp_path: Path) -> None:
    fetcher = make_fetcher(tmp_path)
    recorder = fetcher.events = Recorder()
    fetcher.limits = CacheLimits(max_bytes=4 << 20)
    good = MemoryStore({"good": os.urandom(3 << 20)})  # three parts
    bad = MemoryStore({"bad": b"real" * 1000}, served={"bad": b"fake" * 1000})  # fails its MD5
    big = MemoryStore({"big": os.urandom(5 << 20)})  # more than the cache holds: streamed
    unread = GatedStore({"unread": os.urandom(2 << 20)})
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        opened = {}
        for name, store in (("good", good), ("bad", bad), ("big", big), ("unread", unread)):
            opened[name] = await fetcher.open(f"s3://m/{name}", store, store.head(name))
        assert isinstance(opened["big"], StreamReader)
        assert await opened["big"].read(0, 8 << 20) == big.data("big")
        # the unread fetch, closed while a reader waits for a transfer slot, is given up
        unread_fetch = fetch_of(opened["unread"])
        with trio.fail_after(10):
            await unread_fetch.wait_for(0, 1)  # its first bytes are in
        opened.pop("unread").close()
        fetcher.transfer.on_reader_waiting()
        unread.gate.set()
        ends = {
            "s3://m/good": ("completed", "s3://m/good"),
            "s3://m/bad": ("failed", "s3://m/bad", "CacheError"),
            "s3://m/unread": ("stopped", "s3://m/unread"),
        }
        for end in ends.values():
            await recorder.wait_for(end)
        for reader in opened.values():
            reader.close()
    for url, end in ends.items():  # started first, then one end, nothing twice
        assert [e for e in recorder.events if e[1] == url] == [("started", url), end]
    assert len(recorder.events) == 6  # and no fetch for the stream
    assert recorder.received["s3://m/good"] == len(good.data("good"))
    assert recorder.received["s3://m/bad"] == len(bad.data("bad"))  # downloaded, then refused
    assert recorder.received["s3://m/big"] == len(big.data("big"))
    assert 0 < recorder.received["s3://m/unread"] < len(unread.data("unread"))


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
    index = CacheIndex(ManagerLayout(tmp_path / "cache"))
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
    store = MemoryStore({"k": data})
    fetcher = make_fetcher(tmp_path)
    url = "s3://memory/k"
    with another_writer(fetcher.index.path, "BEGIN IMMEDIATE"):
        async with trio.open_nursery() as nursery:
            fetcher.start(nursery)
            first = await fetcher.open(url, store, store.head("k"))
            fetch = fetch_of(first)
            with trio.fail_after(10):
                while (url, fetch.info.version) in fetcher.in_flight:
                    await fetcher.changed.wait()
            assert fetch.complete  # installed, though its row could not be written
            first.close()
            fetcher.index.flush()  # the batch's write, refused by the lock: skipped
            again = await fetcher.open(url, store, store.head("k"))
            assert again.outcome is Outcome.CACHED  # adopted by its MD5: no second download
            assert await again.read(0, len(data) + 1) == data
            again.close()
            fetcher.index.flush()
    assert store.ranges == [(0, len(data))]
    assert fetcher.index.get(fetcher.layout.final_path(url).name) is None
    fetcher.index.close()


def test_a_removed_index_is_recreated_private(tmp_path: Path) -> None:
    layout = ManagerLayout(tmp_path / "cache")
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
    index = CacheIndex(ManagerLayout(tmp_path / "cache"))
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

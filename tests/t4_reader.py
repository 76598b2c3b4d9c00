"""The handle every open file reads through (`Fetcher.open` → `ObjectReader`), without a
kernel or a server: how an open found its bytes, reads that wait only for their own bytes,
and a changed object reported to the opener."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from clearmount.cache.fetch import Fetch
from clearmount.cache.limits import CacheLimits
from clearmount.cache.reader import FetchReader, ObjectReader, Outcome
from clearmount.errors import Stale
from memstore import GatedStore, MemoryStore, make_fetcher

URL = "s3://memory/k"


def fetch_of(reader: ObjectReader) -> Fetch:
    assert isinstance(reader, FetchReader), reader
    return reader.fetch


async def test_an_open_says_how_it_found_the_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    store = GatedStore({"k": data})
    big = MemoryStore({"big": os.urandom(5 << 20)})
    fetcher = make_fetcher(tmp_path)
    fetcher.limits = CacheLimits(max_bytes=4 << 20)
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        first = await fetcher.open(URL, store, store.head("k"))
        second = await fetcher.open(URL, store, store.head("k"))
        assert (first.outcome, second.outcome) == (Outcome.FETCHED, Outcome.JOINED)
        fetch = fetch_of(first)
        assert fetch_of(second) is fetch and fetch.readers == 2
        store.gate.set()
        with trio.fail_after(10):
            assert await second.read(0, len(data)) == data
            await fetch.ended.wait()
        third = await fetcher.open(URL, store, store.head("k"))
        assert third.outcome is Outcome.CACHED
        assert await third.read(len(data) - 10, 100) == data[-10:]
        streamed = await fetcher.open("s3://memory/big", big, big.head("big"))
        assert streamed.outcome is Outcome.STREAMED
        assert await streamed.read(1 << 20, 10) == big.data("big")[1 << 20 : (1 << 20) + 10]
        for reader in (first, second):
            reader.close()
        assert fetch.readers == 0
        third.close()
        streamed.close()
    assert sum(end - start for start, end in store.ranges) == len(data)  # once, for 3 opens
    assert big.ranges == [(1 << 20, 5 << 20)]  # one window from the read on, nothing cached
    assert not fetcher.layout.final_path("s3://memory/big").exists()


async def test_a_read_waits_only_for_its_own_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    store = GatedStore({"k": data})  # one part: its first 128 KiB, then the gate
    fetcher = make_fetcher(tmp_path, part_size=4 << 20)
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        reader = await fetcher.open(URL, store, store.head("k"))
        with trio.fail_after(10):
            assert await reader.read(0, 4096) == data[:4096]  # the gate is still closed
        far: list[bytes] = []

        async def read_far() -> None:
            far.append(await reader.read(2 << 20, 4096))

        with trio.fail_after(10):
            async with trio.open_nursery() as reads:
                reads.start_soon(read_far)
                await trio.testing.wait_all_tasks_blocked()
                assert far == []  # its bytes are not on disk yet
                store.gate.set()
        assert far == [data[2 << 20 : (2 << 20) + 4096]]
        reader.close()


async def test_a_changed_object_fails_the_waiting_reads_and_tells_each_opener(
    tmp_path: Path,
) -> None:
    data = os.urandom(3 << 20)
    store = GatedStore({"k": data})
    fetcher = make_fetcher(tmp_path, part_size=4 << 20)
    told: list[str] = []
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        info = store.head("k")
        first = await fetcher.open(URL, store, info, on_stale=lambda: told.append("1st"))
        second = await fetcher.open(URL, store, info, on_stale=lambda: told.append("2nd"))
        with trio.fail_after(10):
            assert await first.read(0, 10) == data[:10]
        store.put("k", b"the next version")  # replaced while the fetch is under way
        store.gate.set()
        with trio.fail_after(10), pytest.raises(Stale):
            await first.read(2 << 20, 10)
        assert told == ["1st"]
        with pytest.raises(Stale):
            await second.read(2 << 20, 10)
        assert told == ["1st", "2nd"]
        # bytes already read stay this version's, and the next open does not join the fetch
        assert await first.read(0, 10) == data[:10]
        assert told == ["1st", "2nd"]
        assert (URL, info.version) not in fetcher.in_flight
        first.close()
        second.close()
    assert not fetcher.layout.final_path(URL).exists()


async def test_a_cache_file_open_that_blocks_stalls_only_its_own_open(tmp_path: Path) -> None:
    # A FIFO where the cache file should be: opening it for reading blocks until a writer
    # comes, as a cache file on a stuck disk would. The loop must go on meanwhile.
    data = os.urandom(1 << 20)
    store = MemoryStore({"k": data})
    fetcher = make_fetcher(tmp_path)
    final = fetcher.layout.final_path(URL)
    os.mkfifo(final)
    loop_went_on = threading.Event()
    released_late: list[bool] = []

    def release() -> None:
        # the writer comes once the loop has gone on, or after 5 s (the loop was stuck)
        released_late.append(not loop_went_on.wait(5))
        os.close(os.open(final, os.O_WRONLY))

    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        async with trio.open_nursery() as nursery:
            fetcher.start(nursery)
            opened: list[ObjectReader] = []
            done = trio.Event()

            async def open_it() -> None:
                opened.append(await fetcher.open(URL, store, store.head("k")))
                done.set()

            nursery.start_soon(open_it)
            # every task is blocked: the open waits in a worker thread, not on the loop
            await trio.testing.wait_all_tasks_blocked()
            loop_went_on.set()
            with trio.fail_after(10):
                await done.wait()
            # the FIFO held no bytes of this version: a miss, and the object is fetched
            assert opened[0].outcome is Outcome.FETCHED
            assert await opened[0].read(0, len(data)) == data
            opened[0].close()
    finally:
        loop_went_on.set()
        releaser.join()
    assert released_late == [False]

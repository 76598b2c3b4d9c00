"""The fetch machinery on its own, with an in-memory store (one module, no server): what
the mount tests cannot easily provoke, such as a server returning bytes that do not match
the ETag it states."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from clearmount.backends.base import ListPage, ObjectInfo, ObjectStore
from clearmount.cache.evict import CacheLimits
from clearmount.cache.fetch import Fetcher
from clearmount.cache.index import CacheIndex
from clearmount.cache.layout import CacheLayout
from clearmount.errors import CacheError
from clearmount.transfer import Transfer


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
    index = CacheIndex(layout.state_dir / "index.sqlite3")
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

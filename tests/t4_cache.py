"""Eviction and the version index without a kernel or a server: least recently used first,
never an open, pinned or partial file; what the index records per cache file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

from clearmount.cache.evict import evict, reconcile
from clearmount.cache.index import CacheIndex
from clearmount.cache.layout import ManagerLayout
from clearmount.cache.limits import CacheLimits
from clearmount.cache.reader import Outcome
from memstore import MemoryStore, make_fetcher


def cache(tmp_path: Path) -> tuple[ManagerLayout, CacheIndex]:
    layout = ManagerLayout(tmp_path / "cache")
    layout.prepare()
    return layout, CacheIndex(layout)


def add_files(layout: ManagerLayout, index: CacheIndex, *names: str, size: int = 100) -> None:
    """Complete, recorded cache files, least recently used first."""
    for age, name in enumerate(names):
        path = layout.global_dir / name
        path.write_bytes(b"x" * size)
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
        index.put(name, f"s3://b/{name}", f'"{name}"', size)


def on_disk(layout: ManagerLayout) -> set[str]:
    return {path.name for path in layout.global_dir.iterdir()}


def test_eviction_removes_the_least_recently_used_until_within_the_limit(tmp_path: Path) -> None:
    layout, index = cache(tmp_path)
    add_files(layout, index, "oldest", "old", "recent", "newest")
    assert evict(layout, index, CacheLimits(max_bytes=400)).removed == []  # within: untouched
    result = evict(layout, index, CacheLimits(max_bytes=250))
    assert [f.name for f in result.removed] == ["oldest", "old"]
    assert result.used_bytes == 200
    assert on_disk(layout) == {"recent", "newest"}
    assert {entry.name for entry in index.all()} == {"recent", "newest"}
    # room kept for the downloads in flight
    result = evict(layout, index, CacheLimits(max_bytes=250), reserve=100)
    assert [f.name for f in result.removed] == ["recent"]


def test_pinned_partial_and_protected_files_are_never_evicted(tmp_path: Path) -> None:
    layout, index = cache(tmp_path)
    add_files(layout, index, "pinned", "protected", "plain")
    index.pin("pinned", "s3://b/pinned")
    partial, lock_fd = layout.create_partial(layout.global_dir / "downloading")
    os.close(lock_fd)
    result = evict(layout, index, CacheLimits(max_bytes=0), protected={"protected"})
    assert [f.name for f in result.removed] == ["plain"]
    assert sorted(result.kept_busy) == ["pinned", "protected"]
    assert on_disk(layout) == {"pinned", "protected", partial.name}


async def test_a_file_open_through_the_cache_is_never_evicted(tmp_path: Path) -> None:
    data = b"open while the cache is trimmed" * 100
    store = MemoryStore({"k": data})
    fetcher = make_fetcher(tmp_path)
    url = "s3://memory/k"
    name = fetcher.layout.final_path(url).name
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        fetched = await fetcher.open(url, store, store.head("k"))
        with trio.fail_after(10):
            assert await fetched.read(0, len(data)) == data
            while fetcher.in_flight:
                await fetcher.changed.wait()
        fetched.close()
        reader = await fetcher.open(url, store, store.head("k"))
        assert reader.outcome is Outcome.CACHED
        result = evict(fetcher.layout, fetcher.index, CacheLimits(max_bytes=0))
        assert result.removed == [] and result.kept_busy == [name]
        assert await reader.read(0, len(data)) == data
        reader.close()
        result = evict(fetcher.layout, fetcher.index, CacheLimits(max_bytes=0))
        assert [f.name for f in result.removed] == [name]
    assert fetcher.index.get(name) is None


def test_reconcile_forgets_rows_without_files_and_discards_torn_files(tmp_path: Path) -> None:
    layout, index = cache(tmp_path)
    add_files(layout, index, "gone", "gone-pinned", "torn", "good")
    index.pin("gone-pinned", "s3://b/gone-pinned")
    (layout.global_dir / "gone").unlink()
    (layout.global_dir / "gone-pinned").unlink()
    (layout.global_dir / "torn").write_bytes(b"short")
    reconcile(layout, index)
    assert {entry.name for entry in index.all()} == {"gone-pinned", "good"}
    assert on_disk(layout) == {"good"}


def test_the_index_records_the_version_of_each_file_and_keeps_pins(tmp_path: Path) -> None:
    _, index = cache(tmp_path)
    assert index.get("f") is None
    index.put("f", "s3://b/f", '"v1"', 10)
    entry = index.get("f")
    assert entry is not None
    assert (entry.url, entry.version, entry.size, entry.pinned) == ("s3://b/f", '"v1"', 10, False)
    index.pin("f", "s3://b/f")
    index.put("f", "s3://b/f", '"v2"', 20)  # fetched again: the new version, still pinned
    entry = index.get("f")
    assert entry is not None and (entry.version, entry.size, entry.pinned) == ('"v2"', 20, True)
    index.pin("later", "s3://b/later")  # pinned before it was ever fetched
    later = index.get("later")
    assert later is not None and (later.version, later.size) == ("", -1)
    assert index.pinned_names() == {"f", "later"}
    index.pin("f", "s3://b/f", pinned=False)
    index.remove("later")
    assert index.pinned_names() == set()
    assert [entry.name for entry in index.all()] == ["f"]
    index.close()


def test_two_connections_of_one_process_keep_their_writes_visible(tmp_path: Path) -> None:
    """The daemon holds two index connections; a `clearmount cache` command that opens and
    closes the index meanwhile must not take the daemon's -wal file away (its later writes
    would be seen by no other process)."""
    layout, daemon = cache(tmp_path)
    evictor = CacheIndex(layout)  # the daemon's second connection
    command = (
        "import sys; from pathlib import Path; from clearmount.cache.index import CacheIndex; "
        "from clearmount.cache.layout import ManagerLayout; "
        "index = CacheIndex(ManagerLayout(Path(sys.argv[1]))); "
        "print(sorted(e.name for e in index.all())); index.close()"
    )
    run = [sys.executable, "-c", command, str(layout.root)]
    assert subprocess.run(run, capture_output=True, text=True, check=True).stdout == "[]\n"
    daemon.put("a.bin", "s3://b/a.bin", '"v"', 1)
    seen = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert seen == "['a.bin']\n"
    assert (layout.state_dir / "index.sqlite3-wal").exists()
    evictor.close()
    daemon.close()

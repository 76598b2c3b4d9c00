"""Test doubles every level can use: a bucket in memory and its variants, no server at all.

  MemoryStore   one bucket keeping the `ObjectStore` contract: versions are the MD5 ETags of
                the bytes (as S3 gives single-part uploads), `read_range` pinned to a version
                raises `Stale` once the object was replaced, listings are "/"-delimited and
                paged. Counts the requests it is sent (`.requests["head"]`, `"list"`,
                `"exists"`) and records every range read (`.ranges`). `.served[key]`: bytes
                sent instead of the stored ones, under the stored version (a corrupting server).
  GatedStore    sends the first chunk of each range, then waits for `.gate` before the rest.
  HeldTransfer  a `Transfer` whose data calls, their thread done, return only once `.go` is set.
And the builders of the parts under test around them: `make_fetcher` (a cache in a temporary
folder) and `make_namespace` (a clearml.conf naming one bucket, served by a MemoryStore).

For the tests of the fetch machinery (t3) and of the kernel-free layers (t4); the mount tests
use real servers (the `devkit` package).
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import trio

from clearmount import config
from clearmount.backends.base import ListPage, ObjectInfo, ObjectStore
from clearmount.cache.fetch import Fetcher
from clearmount.cache.index import CacheIndex
from clearmount.cache.layout import ManagerLayout
from clearmount.cache.limits import CacheLimits
from clearmount.direct import DirectAccess
from clearmount.errors import NotFound, Stale
from clearmount.namespace import Namespace
from clearmount.options import MountOptions
from clearmount.transfer import Progress, Transfer
from clearmount.urls import StorageURL

T = TypeVar("T")


class MemoryStore(ObjectStore):
    def __init__(
        self,
        objects: Mapping[str, bytes] | None = None,
        served: Mapping[str, bytes] | None = None,
        base_url: str = "s3://memory",
        page_size: int = 1000,
    ) -> None:
        self.base_url = base_url
        self.entry = "test"
        self.page_size = page_size
        self.served = dict(served or {})
        self.ranges: list[tuple[int, int]] = []
        self.requests: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        for key, data in (objects or {}).items():
            self.put(key, data)

    # ----- what a test does to the bucket

    def put(self, key: str, data: bytes) -> ObjectInfo:
        """Store (or replace) `key`; its version is the MD5 of `data`."""
        info = ObjectInfo(key, len(data), f'"{hashlib.md5(data).hexdigest()}"', time.time())
        with self._lock:
            self._objects[key] = (data, info)
        return info

    def delete(self, key: str) -> None:
        with self._lock:
            del self._objects[key]

    def data(self, key: str) -> bytes:
        with self._lock:
            return self._objects[key][0]

    # ----- the ObjectStore contract

    def exists(self) -> bool:
        self._count("exists")
        return True

    def head(self, key: str) -> ObjectInfo:
        self._count("head")
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise NotFound("no such object", f"{self.base_url}/{key}")
        return found[1]

    def list_page(self, prefix: str, token: str | None = None, limit: int = 1000) -> ListPage:
        self._count("list")
        with self._lock:
            keys = sorted(self._objects)
            infos = {key: self._objects[key][1] for key in keys}
        # one name per entry, in key order: an object, or the prefix of a "directory"
        names: dict[str, ObjectInfo | None] = {}
        for key in keys:
            if not key.startswith(prefix):
                continue
            slash = key.find("/", len(prefix))
            if slash < 0:
                names[key] = infos[key]
            else:
                names.setdefault(key[: slash + 1], None)
        ordered = sorted(names)
        start = ordered.index(token) + 1 if token in names else 0
        page = ordered[start : start + min(limit, self.page_size)]
        more = start + len(page) < len(ordered)
        return ListPage(
            tuple(info for name in page if (info := names[name]) is not None),
            tuple(name for name in page if names[name] is None),
            page[-1] if more else None,
        )

    def read_range(
        self, key: str, version: str, start: int, end: int, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        with self._lock:
            self.ranges.append((start, end))
        self._count("get")
        for i, offset in enumerate(range(start, end, chunk_size)):
            self._before_chunk(i)
            with self._lock:
                found = self._objects.get(key)
            if found is None or found[1].version != version:
                raise Stale(f"version {version} is gone", f"{self.base_url}/{key}")
            data = self.served.get(key, found[0])
            yield data[offset : min(offset + chunk_size, end)]

    def _before_chunk(self, index: int) -> None:
        """Called in the reading thread before the `index`th chunk of a range is sent."""

    def _count(self, request: str) -> None:
        with self._lock:
            self.requests[request] += 1


class GatedStore(MemoryStore):
    """Sends the first chunk of each range, then waits (10 s at most) for `gate`: the rest
    is read (and its version checked) only then."""

    def __init__(
        self, objects: Mapping[str, bytes] | None = None, base_url: str = "s3://memory"
    ) -> None:
        super().__init__(objects, base_url=base_url)
        self.gate = threading.Event()

    def _before_chunk(self, index: int) -> None:
        if index == 1:
            self.gate.wait(10)


class HeldTransfer(Transfer):
    """A Transfer whose data calls, their thread done, return only once `go` is set;
    `returned` is set when the first of those threads is done."""

    def __init__(self) -> None:
        super().__init__(4, 4)
        self.go = trio.Event()
        self.returned = trio.Event()

    async def in_thread(
        self,
        fn: Callable[..., T],
        *args: object,
        progress: Progress | None = None,
        at_most: int | None = None,
    ) -> T:
        result = await super().in_thread(fn, *args, progress=progress, at_most=at_most)
        self.returned.set()
        await self.go.wait()
        return result


# ----- builders


def make_fetcher(
    tmp_path: Path, part_size: int = 1 << 20, transfer: Transfer | None = None
) -> Fetcher:
    """A Fetcher with its cache under `tmp_path`/cache (parallel 4, no limits)."""
    layout = ManagerLayout(tmp_path / "cache")
    layout.prepare()
    index = CacheIndex(layout)
    return Fetcher(layout, index, transfer or Transfer(4, 4), part_size, 4, CacheLimits())


#: the bucket `make_namespace` configures, shown at s3/bucket
BUCKET_CONFIG = 'sdk.aws.s3 { credentials: [ { bucket: "bucket", key: "AK", secret: "SK" } ] }'


def make_namespace(
    tmp_path: Path, store: MemoryStore, opened: list[str] | None = None, **options: Any
) -> Namespace:
    """A Namespace over a clearml.conf naming s3://bucket, which `store` serves (no file/
    level); `options` are MountOptions fields. Any other store asked for fails the test.
    `opened` gets the base URL of each store the namespace opens."""
    path = tmp_path / "clearml.conf"
    path.write_text(BUCKET_CONFIG)
    cfg = config.load(path, {"HOME": str(tmp_path)})

    def open_store(url: StorageURL, _: config.Config) -> ObjectStore:
        assert url.base_url == store.base_url, f"asked for the store of {url}"
        if opened is not None:
            opened.append(url.base_url)
        return store

    mount_options = MountOptions(**{"nofile": True, **options})
    return Namespace(cfg, mount_options, Transfer(4, 4), DirectAccess((), ()), open_store)

"""The data set: its sizes, and seeding a site with it once (checksums kept for the checks)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .common import (
    BIG_KEY,
    GIB,
    KIB,
    MIB,
    ONE_BYTE_KEY,
    READERS,
    log,
    parallel_map,
    small_key,
    tiny_body,
    tiny_key,
)

if TYPE_CHECKING:
    from .sites import Site


@dataclasses.dataclass(frozen=True)
class Sizes:
    big: int
    small_count: int
    small_size: int
    tiny_count: int


FULL = Sizes(big=GIB, small_count=1000, small_size=256 * KIB, tiny_count=10_000)
QUICK = Sizes(big=256 * MIB, small_count=200, small_size=256 * KIB, tiny_count=1000)


@dataclasses.dataclass
class Dataset:
    sizes: Sizes
    big_sha256: str = ""
    big_head: bytes = b""
    small_sha256: dict[str, str] = dataclasses.field(default_factory=dict)

    def human(self, n: int) -> str:
        return f"{n // GIB} GiB" if n >= GIB and n % GIB == 0 else f"{n // MIB} MiB"


def write_big_file(path: Path, size: int) -> tuple[str, bytes]:
    """Random bytes into `path`; returns (sha256, the first 4 KiB)."""
    digest = hashlib.sha256()
    head = b""
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            chunk = os.urandom(min(8 * MIB, remaining))
            if not head:
                head = chunk[: 4 * KIB]
            digest.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
    return digest.hexdigest(), head


def seed(site: Site, sizes: Sizes, scratch: Path) -> Dataset:
    """Upload the data set once: big object, 1-byte object, small and tiny objects."""
    data = Dataset(sizes)
    started = time.monotonic()
    scratch.mkdir(parents=True, exist_ok=True)
    big = scratch / "seed-big.bin"
    data.big_sha256, data.big_head = write_big_file(big, sizes.big)
    site.put_file(BIG_KEY, big)
    big.unlink()
    site.put(ONE_BYTE_KEY, b"x")

    def put_small(i: int) -> tuple[str, str]:
        body = os.urandom(sizes.small_size)
        site.put(small_key(i), body)
        return small_key(i), hashlib.sha256(body).hexdigest()

    data.small_sha256 = dict(parallel_map(put_small, range(sizes.small_count), READERS))
    parallel_map(lambda i: site.put(tiny_key(i), tiny_body(i)), range(sizes.tiny_count), 16)
    log(f"seeded in {time.monotonic() - started:.1f}s")
    return data

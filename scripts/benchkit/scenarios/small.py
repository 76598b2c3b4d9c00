"""The small objects read with READERS threads (sha256 checked), opened by path.

The reference is one SDK GET per object from as many threads.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

from ..common import KIB, READERS, human_count, parallel_map
from ..measure import read_small
from ..session import in_thread
from . import Row, Scenario, register

if TYPE_CHECKING:
    from ..runner import Visit
    from ..seed import Dataset
    from ..sites import Site


def rows(site: Site, data: Dataset) -> list[Row]:
    s = data.sizes
    small = f"{human_count(s.small_count)} x {s.small_size // KIB} KiB files"
    return [
        Row(
            "small",
            f"{small}, {READERS} readers in parallel (sha256 checked)",
            "files/s",
            True,
            f"{site.ref_get_label.split(' GET')[0].removeprefix('one ')} GET, {READERS} threads",
            "ratio>=1.0",
            position=50,
        )
    ]


def reference(v: Visit) -> None:
    with v.step("small"):
        v.page_cache.drop()
        v.site.warm_up()

        def one(key: str) -> None:
            if hashlib.sha256(v.site.get(key)).hexdigest() != v.data.small_sha256[key]:
                raise RuntimeError(f"{key}: wrong bytes from the SDK")

        started = time.perf_counter()
        parallel_map(one, list(v.data.small_sha256), READERS)
        v.add("small", v.sizes.small_count / (time.perf_counter() - started))


def contender(v: Visit) -> None:
    with v.step("small"), v.watchdog(900, "small files"):
        v.page_cache.drop()
        paths = {key: v.root / key for key in v.data.small_sha256}
        with v.profiler("small"):
            seconds = in_thread(read_small, paths, v.data.small_sha256)
        v.add("small", v.sizes.small_count / seconds)


register(Scenario("small", 50, rows, session="files", reference=reference, contender=contender))

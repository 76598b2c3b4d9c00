"""``ls -l`` of the tiny objects' directory twice, on a mount that never listed it.

The reference is the SDK's paginated listing, twice.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..common import TINY_PREFIX, human_count
from ..measure import ls_l
from ..session import in_thread
from . import Row, Scenario, register

if TYPE_CHECKING:
    from ..runner import Visit
    from ..seed import Dataset
    from ..sites import Site


def rows(site: Site, data: Dataset) -> list[Row]:
    tiny = human_count(data.sizes.tiny_count)
    return [
        Row(
            "ls1",
            f"`ls -l` of {tiny} entries, first time",
            "ms",
            False,
            site.ref_list_label + " (page cache dropped)",
            "ratio<=1.5",
            1,
            position=60,
        ),
        Row(
            "ls2",
            f"`ls -l` of {tiny} entries, second time",
            "ms",
            False,
            site.ref_list_label + " again",
            "ratio<=0.15",
            1,
            position=61,
        ),
    ]


def reference(v: Visit) -> None:
    with v.step("ls1"):
        v.page_cache.drop()
        v.site.warm_up()
        for row in ("ls1", "ls2"):
            started = time.perf_counter()
            count = v.site.list_count(TINY_PREFIX)
            v.add(row, (time.perf_counter() - started) * 1e3)
            if count != v.sizes.tiny_count:
                raise RuntimeError(f"listed {count} objects, expected {v.sizes.tiny_count}")


def contender(v: Visit) -> None:
    directory, expected = v.root / TINY_PREFIX, v.sizes.tiny_count
    with v.step("ls1"), v.watchdog(900, "ls -l"):
        v.page_cache.drop()
        with v.profiler("ls"):
            v.add("ls1", in_thread(ls_l, directory, expected) * 1e3)
        v.add("ls2", in_thread(ls_l, directory, expected) * 1e3)


register(Scenario("ls", 40, rows, session="files", reference=reference, contender=contender))

"""Time to first byte of the cold big object: stat, then open + read 1 byte.

Three rows: without the lookups, with them, and the first again against the server's floor
(the SDK's GET of the big object's first byte, off the disk).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..common import BIG_KEY, ONE_BYTE_KEY
from ..measure import WrongBytes, first_byte
from ..session import in_thread
from . import Row, Scenario, register

if TYPE_CHECKING:
    from ..runner import Visit
    from ..seed import Dataset
    from ..sites import Site


def rows(site: Site, data: Dataset) -> list[Row]:
    big = data.human(data.sizes.big)
    return [
        Row(
            "ttfb",
            f"time to first byte of the cold {big} object (open + read 1 byte, after a stat)",
            "ms",
            False,
            site.ref_get_label,
            "ratio<=3",
            1,
            position=20,
        ),
        Row(
            "ttfb_lookup",
            "… the same, including the path lookups (stat) on the fresh mount",
            "ms",
            False,
            site.ref_get_label,
            "",
            1,
            position=21,
        ),
        Row(
            "ttfb_floor",
            "… the first row again, against the server's floor for this object",
            "ms",
            False,
            f"{site.ref_get_label.split(' GET')[0].removeprefix('one ')} GET of its first byte"
            " (page cache dropped: the data comes off the disk)",
            "",
            1,
            position=22,
        ),
    ]


def reference(v: Visit) -> None:
    with v.step("ttfb"):
        v.page_cache.drop()
        v.site.warm_up()
        started = time.perf_counter()
        body = v.site.get(ONE_BYTE_KEY)
        seconds = time.perf_counter() - started
        if body != b"x":
            raise RuntimeError("the 1-byte object has wrong bytes")
        v.add("ttfb", seconds * 1e3)
        v.add("ttfb_lookup", seconds * 1e3)
        # the server's own floor: the big object's first byte, its data off the disk
        v.page_cache.drop()
        v.site.warm_up()
        started = time.perf_counter()
        first = v.site.get_first_byte(BIG_KEY)
        seconds = time.perf_counter() - started
        if first != v.data.big_head[:1]:
            raise RuntimeError("the big object's first byte is wrong")
        v.add("ttfb_floor", seconds * 1e3)


def contender(v: Visit) -> None:
    path = v.root / BIG_KEY
    with (
        v.step("ttfb"),
        v.watchdog(600, "first byte"),
        v.profiler("first-byte", idle=True),
    ):
        v.page_cache.drop()
        started, looked_up, done, first = in_thread(first_byte, path)
        if first != v.data.big_head[:1]:
            raise WrongBytes(f"first byte {first!r}, expected {v.data.big_head[:1]!r}")
        v.add("ttfb", (done - looked_up) * 1e3)
        v.add("ttfb_lookup", (done - started) * 1e3)
        v.add("ttfb_floor", (done - looked_up) * 1e3)


register(Scenario("ttfb", 30, rows, session="first-byte", reference=reference, contender=contender))

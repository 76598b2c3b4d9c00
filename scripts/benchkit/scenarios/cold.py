"""Cold sequential read of the big object (sha256 checked), and the peak RSS meanwhile.

The reference downloads it with the SDK in a subprocess (``benchkit.download``); a contender
reads it through a fresh mount with the page cache dropped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from .. import download
from ..common import BIG_KEY, MIB
from ..session import in_thread
from . import Row, Scenario, register

if TYPE_CHECKING:
    from ..runner import Visit
    from ..seed import Dataset
    from ..sites import Site


def reference_copy(v: Visit) -> Path:
    """Where the reference downloads the big object (the warm row re-reads it)."""
    assert v.scratch is not None
    return v.scratch / "reference-download.bin"


def rows(site: Site, data: Dataset) -> list[Row]:
    big = data.human(data.sizes.big)
    return [
        Row(
            "cold",
            f"cold sequential read of {big} (sha256 checked)",
            "MB/s",
            True,
            site.ref_download_label,
            "ratio>=1.2",
            position=10,
        ),
        Row(
            "rss",
            f"peak RSS (VmHWM) of the mount process while streaming {big}",
            "MiB",
            False,
            "the reference download's process",
            "abs<=120",
            position=90,
        ),
    ]


def reference(v: Visit) -> None:
    local = reference_copy(v)
    with v.step("cold"):
        v.page_cache.drop()
        measured = download.run(v.site, local)
        seconds, done = measured["seconds"], local.stat().st_size
        with open(local, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        if done != v.sizes.big or sha != v.data.big_sha256:
            raise RuntimeError("the reference download has wrong bytes (server problem?)")
        v.add("cold", v.sizes.big / seconds / 1e6)
        v.add("rss", measured["hwm_kib"] / 1024)


def contender(v: Visit) -> None:
    path = v.root / BIG_KEY
    with v.step("cold"):
        v.page_cache.drop()
        timeout = max(900.0, v.sizes.big / (2 * MIB))
        with v.watchdog(timeout, "cold read"), v.profiler("stream"):
            seconds, done = in_thread(v.reader.read, path)
        hwm = v.mount.hwm_kib()
        v.reader.check(path, done, v.data.big_sha256)
        v.add("cold", v.sizes.big / seconds / 1e6)
        if hwm is not None:
            v.add("rss", hwm / 1024)
        v.state["cold read"] = True


register(Scenario("cold", 10, rows, session="stream", reference=reference, contender=contender))

"""Warm re-read of the big object with ``dd bs=1M``, on the mount that just read it cold.

The reference is dd of the SDK's local copy; both time the third read (download or cold
read, checksum, untimed dd or checked read), so both measure a settled page cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import BIG_KEY
from ..measure import dd_seconds
from ..session import in_thread
from . import Row, Scenario, register
from .cold import reference_copy

if TYPE_CHECKING:
    from ..runner import Visit
    from ..seed import Dataset
    from ..sites import Site


def rows(site: Site, data: Dataset) -> list[Row]:
    big = data.human(data.sizes.big)
    return [
        Row(
            "warm",
            f"warm re-read of the {big} object (dd bs=1M)",
            "MB/s",
            True,
            "`dd bs=1M` of a local copy (page cache)",
            "ratio>=0.35",
            position=40,
        )
    ]


def reference(v: Visit) -> None:
    local = reference_copy(v)
    with v.step("warm"):
        if local.exists():
            dd_seconds(local)  # into the page cache
            v.add("warm", v.sizes.big / dd_seconds(local) / 1e6)


def contender(v: Visit) -> None:
    if not v.state.get("cold read"):
        return
    path = v.root / BIG_KEY
    with v.step("warm"), v.watchdog(600, "warm read"):
        # checked first, so that the timed dd is the third read, as the reference's
        # is (download, checksum, untimed dd): both measure a settled page cache
        _, done = in_thread(v.reader.read, path)
        v.reader.check(path, done, v.data.big_sha256)
        seconds = in_thread(dd_seconds, path)
        v.add("warm", v.sizes.big / seconds / 1e6)


register(
    Scenario(
        "warm",
        20,
        rows,
        session="stream",
        reference=reference,
        contender=contender,
        implies=("cold",),
    )
)

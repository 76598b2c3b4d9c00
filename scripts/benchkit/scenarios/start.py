"""Start -> mount ready: measured by the runner for every mount session (no reference)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import Row, Scenario, register

if TYPE_CHECKING:
    from ..seed import Dataset
    from ..sites import Site


def rows(site: Site, data: Dataset) -> list[Row]:
    return [
        Row(
            "start",
            "start → mount ready (stat answered as a FUSE mount)",
            "s",
            False,
            "—",
            "abs<=0.5",
            3,
            position=100,
            measured_reference=False,
        )
    ]


register(Scenario("start", 0, rows, selectable=False))

"""Scenarios: what ``--rows`` selects. One module per scenario, registering a ``Scenario``.

A scenario owns its table rows (``Row``: title, unit, which way is better, the reference's
label, clearmount's target, ``position`` in the table) and two measurements, each given a
``runner.Visit``: ``reference`` (the site's SDK, with a fresh scratch directory) and
``contender`` (a fresh mount). Scenarios with the same ``session`` share one mount, in
``order``; ``implies`` names scenarios that must run first on it (warm needs cold). The
"start" row is measured by the runner for every mount session, whatever is selected.
``seeds`` names the parts of the data set the scenario reads (``seed.seed``); ``proxied``
puts a counting proxy (``devkit.proxy``) between the session's mount and the server, so the
scenario can tell the bytes the bucket sent (``Visit.bucket_bytes``); ``backends`` limits it to
some sites (the ML rows' references are boto3: S3 only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..common import import_all

if TYPE_CHECKING:
    from ..runner import Visit
    from ..seed import Dataset
    from ..sites import Site


@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    title: str
    unit: str
    higher_is_better: bool
    reference: str
    target: str = ""  # for clearmount: "ratio>=1.2", "ratio<=3", "abs<=120"
    digits: int = 0
    position: int = 0  # top to bottom in the table
    measured_reference: bool = True  # False: the reference cell is only its label


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str  # the --rows name
    order: int  # measured in this order (the reference, then each contender)
    rows: Callable[[Site, Dataset], list[Row]]
    session: str = ""  # the mount it shares with other scenarios ("" = no measurement)
    reference: Callable[[Visit], None] | None = None
    contender: Callable[[Visit], None] | None = None
    implies: tuple[str, ...] = ()
    selectable: bool = True  # False: always measured, not a --rows name
    seeds: tuple[str, ...] = ("base",)  # parts of the data set it reads (seed.seed)
    proxied: bool = False  # its session's mount reaches the server through a counting proxy
    backends: tuple[str, ...] = ()  # the sites it runs on (empty: every one)


_REGISTERED: dict[str, Scenario] = {}


def register(scenario: Scenario) -> Scenario:
    _REGISTERED[scenario.name] = scenario
    return scenario


def load() -> list[Scenario]:
    """Every scenario, in measuring order."""
    import_all(__name__, __path__)
    return sorted(_REGISTERED.values(), key=lambda s: s.order)


def selectable() -> dict[str, Scenario]:
    """The --rows names, in measuring order."""
    return {s.name: s for s in load() if s.selectable}

"""Contenders: programs that mount the seeded bucket, measured against the site's reference.

One module per contender, each defining a ``Contender`` subclass decorated with ``@register``;
``order`` places its column in the table. A contender says how to start its mount (argv and
environment, in the foreground), where the bucket appears under the mount point, its version,
why it cannot run here (``unavailable``), and how to install itself when missing (``install``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..common import import_all

if TYPE_CHECKING:
    from ..sites import Site


class Contender:
    name = ""
    label = ""  # the column header
    order = 100  # columns left to right

    def __init__(self, site: Site) -> None:
        self.site = site

    @classmethod
    def install(cls) -> None:
        """Install the program if it is missing (best effort; `unavailable` says the rest)."""

    def unavailable(self) -> str | None:
        """Why this contender cannot run here (None if it can)."""
        return None

    def version(self) -> str:
        raise NotImplementedError

    def command(self, mnt: Path, cache: Path, home: Path) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def root(self, mnt: Path) -> Path:
        """The bucket root under the mount point."""
        return mnt


_REGISTERED: list[type[Contender]] = []


def register(cls: type[Contender]) -> type[Contender]:
    _REGISTERED.append(cls)
    return cls


def load() -> dict[str, type[Contender]]:
    """Every contender by name, in column order."""
    import_all(__name__, __path__)
    return {cls.name: cls for cls in sorted(_REGISTERED, key=lambda cls: cls.order)}

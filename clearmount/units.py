"""Figures as a person reads them: byte counts and progress bars.

Owns: the one byte formatter (`format_bytes`, binary units: "1.5 KiB", as the size options
take them) and the one progress bar (`progress_bar`), shared by `clearmount status`,
`clearmount prefetch`, `clearmount cache` and the daemon's log and systemd status lines.
"""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
BAR_WIDTH = 30


def format_bytes(count: float) -> str:
    """1536 -> "1.5 KiB"; whole bytes below 1 KiB ("512 B"), one decimal above."""
    value = float(count)
    if abs(value) < 1023.5:
        return f"{value:.0f} B"
    for unit in _UNITS[1:-1]:
        value /= 1024
        if abs(value) < 1023.95:  # what would print as "1024.0" is the next unit's "1.0"
            return f"{value:.1f} {unit}"
    value /= 1024
    return f"{value:.1f} {_UNITS[-1]}"


def progress_bar(done: float, total: float, width: int = BAR_WIDTH) -> str:
    """`[#######.......]  45.0%`: `done` of `total` (a total of 0 is complete)."""
    fraction = min(1.0, max(0.0, done / total)) if total > 0 else 1.0
    filled = int(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + f"] {fraction * 100:5.1f}%"

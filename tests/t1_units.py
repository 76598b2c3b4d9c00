"""The one byte formatter and progress bar every command and status line uses."""

from __future__ import annotations

import pytest

from clearmount.units import format_bytes, progress_bar


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1024 * 1024 - 1, "1.0 MiB"),  # not "1024.0 KiB"
        (24 * 1024 * 1024, "24.0 MiB"),
        (10 * 1024**3 + 1, "10.0 GiB"),
        (5 * 1024**4, "5.0 TiB"),
        (3 * 1024**5, "3.0 PiB"),
        (2048 * 1024**5, "2048.0 PiB"),
        (1234.5, "1.2 KiB"),  # a rate
    ],
)
def test_byte_counts_are_shown_in_binary_units(count: float, shown: str) -> None:
    assert format_bytes(count) == shown


@pytest.mark.parametrize(
    ("done", "total", "shown"),
    [
        (0, 100, "[" + "." * 30 + "]   0.0%"),
        (50, 100, "[" + "#" * 15 + "." * 15 + "]  50.0%"),
        (100, 100, "[" + "#" * 30 + "] 100.0%"),
        (150, 100, "[" + "#" * 30 + "] 100.0%"),  # bytes counted twice never overflow it
        (0, 0, "[" + "#" * 30 + "] 100.0%"),  # an empty file is complete
    ],
)
def test_the_progress_bar_shows_the_fraction_done(done: int, total: int, shown: str) -> None:
    assert progress_bar(done, total) == shown

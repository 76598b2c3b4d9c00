"""The samples every step records, its failures, and ``step``: a failure is a result too."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
from collections.abc import Iterator

from .common import log
from .measure import WrongBytes
from .session import MountFailed


@dataclasses.dataclass
class Results:
    # samples[row][who] -> values, one per repetition (start: one per session)
    samples: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)
    errors: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)
    wrong_bytes: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, row: str, who: str, value: float) -> None:
        self.samples.setdefault(row, {}).setdefault(who, []).append(value)

    def fail(self, row: str, who: str, message: str, wrong: bool) -> None:
        self.errors.setdefault(row, {}).setdefault(who, []).append(message)
        if wrong:
            self.wrong_bytes.append(f"{who}, {row}: {message}")
        log(f"{who} {row}: {'WRONG BYTES: ' if wrong else ''}{message}")


@contextlib.contextmanager
def step(results: Results, row: str, who: str) -> Iterator[None]:
    """Record a failing step instead of stopping the benchmark."""
    try:
        yield
    except WrongBytes as exc:
        results.fail(row, who, str(exc), wrong=True)
    except OSError as exc:
        # an I/O error where bytes were expected: the reader did not get the object's bytes
        results.fail(row, who, f"{type(exc).__name__}: {exc}", wrong=who != "reference")
    except (MountFailed, subprocess.SubprocessError, ValueError, RuntimeError) as exc:
        results.fail(row, who, f"{type(exc).__name__}: {exc}", wrong=False)

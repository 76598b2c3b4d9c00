"""Finding clearmount mounts on this machine (from /proc/self/mountinfo).

Owns: the mount-table reading that the helper commands (`path`, `url`, `prefetch`, `cache`)
use to find a running daemon from a path.
"""

from __future__ import annotations

import os
from pathlib import Path

FSTYPE = "fuse.clearmount"


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \\ooo octal
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def clearmount_mounts() -> list[Path]:
    """Mount points of every clearmount mount visible here."""
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as table:
            for line in table:
                fields, _, tail = line.partition(" - ")
                if tail.split(" ", 1)[0] == FSTYPE:
                    found.append(Path(_unescape(fields.split(" ")[4])))
    except OSError:
        pass
    return found


def mount_containing(path: str | Path) -> tuple[Path, str] | None:
    """The clearmount mount holding `path` and the path relative to it, if any."""
    absolute = os.path.abspath(path)
    for mountpoint in sorted(clearmount_mounts(), key=lambda p: len(str(p)), reverse=True):
        prefix = str(mountpoint).rstrip("/") + "/"
        if absolute.startswith(prefix):
            return mountpoint, absolute[len(prefix) :]
        if absolute == str(mountpoint):
            return mountpoint, ""
    return None

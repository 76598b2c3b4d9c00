"""The mount table, the processes that name a path, and `hermetic_env`: the environment a
daemon (or a peer tool) runs in, without the user's cloud credentials and settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from . import REPO


def _unescape_mountinfo(field_text: str) -> str:
    out, i = [], 0
    while i < len(field_text):
        if field_text[i] == "\\" and field_text[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def mount_points() -> dict[str, str]:
    """Mount point -> filesystem type, from /proc/self/mountinfo."""
    result = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5:
                result[_unescape_mountinfo(fields[4])] = right.split(" ", 1)[0]
    return result


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\x00", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append((int(entry.name), cmdline.strip()))
    return found


SCRUBBED_ENV_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "GCLOUD_", "CLEARML_", "TRAINS_")
SCRUBBED_ENV = ("STORAGE_EMULATOR_HOST", "CLOUDSDK_CONFIG", "BOTO_CONFIG")


def hermetic_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without cloud credentials/config variables, HOME=`home`, then `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(SCRUBBED_ENV_PREFIXES) and k not in SCRUBBED_ENV
    }
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env

"""The machine: page cache drops, /proc figures, mount points, tool and package versions."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path

from devkit.mounts import mount_points

from .common import MIB, REPO


class PageCache:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``, checked once at start."""

    def __init__(self) -> None:
        self.works = False
        self.problem = ""
        try:
            self._drop()
            self.works = True
        except OSError as exc:
            self.problem = f"cannot drop the page cache ({exc.strerror}): cold rows may be warm"

    @staticmethod
    def _drop() -> None:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")

    def drop(self) -> None:
        if self.works:
            self._drop()


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set (VmHWM) of a process in KiB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fuse_mounted(path: Path) -> bool:
    fstype = mount_points().get(str(path))
    return fstype is not None and fstype.startswith("fuse")


def unmount(path: Path) -> None:
    """Unmount `path` if it is mounted (fusermount3 -u, then a lazy umount)."""
    if str(path) not in mount_points():
        return
    for command in (["fusermount3", "-u", str(path)], ["umount", "-l", str(path)]):
        subprocess.run(command, capture_output=True, check=False, timeout=60)
        if str(path) not in mount_points():
            return


def tool_version(argv: list[str], pattern: str = r"(.+)") -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "not installed"
    text = (out.stdout or out.stderr).strip()
    match = re.search(pattern, text)
    return match.group(1).strip() if match else (text.splitlines() or ["?"])[0]


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_facts() -> dict[str, str]:
    mem_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "nproc": str(os.cpu_count()),
        "ram": f"{mem_kib / MIB:.1f} GiB",
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load": load_average(),
    }


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def git_describe() -> str:
    def git(*args: str) -> str:
        res = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
        return res.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    dirty = " +uncommitted changes" if git("status", "--porcelain", "clearmount") else ""
    return f"{commit}{dirty}"

"""Timed reads through a mount, each checking the bytes it got (sha256, sizes, counts)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from pathlib import Path

from .common import BLOCK, READERS, parallel_map


class WrongBytes(Exception):
    """A contender returned bytes that are not the object's (or an error instead of them)."""


class Reader:
    """Sequential reads into one pre-faulted buffer (so the timing has no allocation)."""

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
        for i in range(0, size, 4096):  # touch every page now, not inside the timing
            self.buffer[i] = 1
        self.view = memoryview(self.buffer)

    def read(self, path: Path) -> tuple[float, int]:
        """Open and read `path` to EOF with 1 MiB reads; (seconds, bytes)."""
        started = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            done = 0
            while done < len(self.buffer):
                n = os.readv(fd, [self.view[done : done + BLOCK]])
                if n == 0:
                    break
                done += n
            extra = os.read(fd, 1) if done == len(self.buffer) else b""
        finally:
            os.close(fd)
        seconds = time.perf_counter() - started
        if extra:
            raise WrongBytes(f"{path.name}: more bytes than the object's {len(self.buffer)}")
        return seconds, done

    def check(self, path: Path, done: int, sha256: str) -> None:
        if done != len(self.buffer):
            raise WrongBytes(f"{path.name}: read {done} bytes, the object has {len(self.buffer)}")
        if hashlib.sha256(self.view[:done]).hexdigest() != sha256:
            raise WrongBytes(f"{path.name}: sha256 mismatch")


def dd_seconds(path: Path) -> float:
    """Seconds dd reports for reading `path` to /dev/null with 1 MiB blocks."""
    res = subprocess.run(
        ["dd", f"if={path}", "of=/dev/null", "bs=1M"],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        timeout=900,
        check=False,
    )
    if res.returncode != 0:
        raise OSError(f"dd failed: {res.stderr.strip()}")
    match = re.search(r"copied, ([0-9.e+-]+) s", res.stderr)
    if not match:
        raise RuntimeError(f"cannot parse dd's output: {res.stderr.strip()}")
    return float(match.group(1))


def ls_l(directory: Path, expected: int) -> float:
    started = time.perf_counter()
    res = subprocess.run(
        ["ls", "-l", "--color=never", str(directory)],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        timeout=600,
        check=False,
    )
    seconds = time.perf_counter() - started
    if res.returncode != 0:
        raise OSError(f"ls -l failed: {res.stderr.strip()[:300]}")
    files = sum(1 for line in res.stdout.splitlines() if line.startswith("-"))
    if files != expected:
        raise WrongBytes(f"ls -l listed {files} files, expected {expected}")
    return seconds


def first_byte(path: Path) -> tuple[float, float, float, bytes]:
    """stat, then open + read 1 byte: (started, looked up, first byte) times and the byte."""
    started = time.perf_counter()
    os.stat(path)
    looked_up = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        first = os.read(fd, 1)
    finally:
        done = time.perf_counter()
        os.close(fd)
    return started, looked_up, done, first


def read_small(paths: dict[str, Path], expected: dict[str, str]) -> float:
    """Read every file with READERS threads, checking each sha256; returns seconds."""

    def one(key: str) -> None:
        with open(paths[key], "rb", buffering=0) as f:
            body = f.readall()
        if hashlib.sha256(body).hexdigest() != expected[key]:
            raise WrongBytes(f"{key}: {len(body)} bytes, sha256 mismatch")

    started = time.perf_counter()
    parallel_map(one, list(paths), READERS)
    return time.perf_counter() - started

"""4 KiB reads at random offsets of a file complete in the mount's cache, idle and while a
cold fetch of the checkpoint runs through the same mount: p50 and p99.

The reads must reach the daemon, not the kernel's page cache: ``posix_fadvise(DONTNEED)``
does not evict a FUSE file's pages, and dropping the whole page cache per read would time
the drop. The file is opened with ``O_DIRECT``: the kernel's FUSE client then sends every
read to the daemon (its ``direct_IO`` path), whatever the daemon answered at open. The check
that they did: the mount process's CPU time grows over the idle reads. The page cache is
dropped before each phase, so the daemon's cache file comes off the disk in both. The
background load is ``dd bs=1M`` of the cold checkpoint through the mount. The reference is
the same reads of a local copy (``O_DIRECT``: off the disk), idle and while boto3 downloads
the checkpoint to local disk. Every 4 KiB read is compared with the local copy.
"""

from __future__ import annotations

import mmap
import os
import random
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import download
from ..common import CKPT_KEY, KIB, LATENCY_KEY, MIB
from ..measure import WrongBytes
from ..session import in_thread
from . import Row, Scenario, register

if TYPE_CHECKING:
    from ..runner import Visit
    from ..seed import Dataset
    from ..sites import Site

READS = 2000  # per phase
AT_LEAST = 100  # under load: fewer means the background fetch ended too soon
SIZE = 4 * KIB


def rows(site: Site, data: Dataset) -> list[Row]:
    s = data.sizes
    what = f"4 KiB `O_DIRECT` reads at random offsets of a {s.latency_file // MIB} MiB file"
    load = f"while a cold {data.human(s.ckpt)} fetch runs through the same mount"
    local = "the same reads of a local copy (off the disk)"
    boto3 = f"{local}, while boto3 downloads the {data.human(s.ckpt)} checkpoint to local disk"
    return [
        Row(
            "lat_p50", f"{what} complete in the mount's cache: p50", "µs", False, local, position=84
        ),
        Row("lat_p99", "… p99", "µs", False, local, position=85),
        Row("lat_load_p50", f"… {load}: p50", "µs", False, boto3, position=86),
        Row("lat_load_p99", "… p99 under the same load", "µs", False, boto3, position=87),
        Row(
            "lat_ratio",
            "… p99 under that load ÷ p99 idle (same mount)",
            "x",
            False,
            "the local copy's own p99 under load ÷ idle",
            "abs<=3",
            2,
            position=88,
        ),
    ]


def reads(path: Path, expected: bytes, keep_going: Callable[[], bool]) -> list[float]:
    """Up to READS timed 4 KiB O_DIRECT preads at random aligned offsets, bytes checked."""
    buf = mmap.mmap(-1, SIZE)  # page-aligned, as O_DIRECT wants
    rng = random.Random(15)
    pages = len(expected) // SIZE
    seconds: list[float] = []
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        while len(seconds) < READS and keep_going():
            offset = rng.randrange(pages) * SIZE
            started = time.perf_counter()
            n = os.preadv(fd, [buf], offset)
            seconds.append(time.perf_counter() - started)
            if n != SIZE or buf[:n] != expected[offset : offset + SIZE]:
                raise WrongBytes(f"{path.name}: 4 KiB at {offset}: wrong bytes")
    finally:
        os.close(fd)
        buf.close()
    return seconds


def record(v: Visit, idle: list[float], loaded: list[float]) -> None:
    if len(loaded) < AT_LEAST:
        raise RuntimeError(f"only {len(loaded)} reads while the background fetch ran")
    p99 = {}
    for name, got in (("", idle), ("load_", loaded)):
        cuts = statistics.quantiles(got, n=100, method="inclusive")
        v.add(f"lat_{name}p50", statistics.median(got) * 1e6)
        v.add(f"lat_{name}p99", cuts[98] * 1e6)
        p99[name] = cuts[98]
    v.add("lat_ratio", p99["load_"] / p99[""])
    v.bench.results.notes.append(
        f"latency, {v.who} (rep {v.rep}): {len(idle)} reads idle, {len(loaded)} under load"
    )


def expected_bytes(v: Visit) -> bytes:
    assert v.data.latency is not None
    return v.data.latency.read_bytes()


def reference(v: Visit) -> None:
    assert v.data.latency is not None and v.scratch is not None
    expected = expected_bytes(v)
    with v.step("lat_p50"):
        v.page_cache.drop()
        idle = reads(v.data.latency, expected, lambda: True)
        v.page_cache.drop()
        failed: list[BaseException] = []

        def fetch_checkpoint() -> None:
            assert v.scratch is not None
            try:
                download.run(v.site, v.scratch / "checkpoint.pt", CKPT_KEY)
            except BaseException as exc:
                failed.append(exc)

        fetch = threading.Thread(target=fetch_checkpoint)
        fetch.start()
        time.sleep(0.05)  # let the download get going
        loaded = reads(v.data.latency, expected, fetch.is_alive)
        fetch.join()
        if failed:
            raise RuntimeError(f"the background download failed: {failed[0]}")
        record(v, idle, loaded)


def contender(v: Visit) -> None:
    expected = expected_bytes(v)
    path = v.root / LATENCY_KEY
    with v.step("lat_p50"), v.watchdog(900, "4 KiB reads"):
        with open(path, "rb") as f:  # read whole: the file is then complete in the cache
            if in_thread(f.read) != expected:
                raise WrongBytes(f"{LATENCY_KEY}: wrong bytes")
        v.page_cache.drop()
        cpu = v.mount.cpu_seconds()
        idle = in_thread(reads, path, expected, lambda: True)
        if v.mount.cpu_seconds() <= cpu:
            raise RuntimeError("the O_DIRECT reads did not reach the mount process")
        v.page_cache.drop()
        fetch = subprocess.Popen(
            ["dd", f"if={v.root / CKPT_KEY}", "of=/dev/null", "bs=1M"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.05)  # let the fetch get going
            with v.profiler("latency"):
                loaded = in_thread(reads, path, expected, lambda: fetch.poll() is None)
        finally:
            fetch.kill()
            fetch.wait()
        record(v, idle, loaded)


register(
    Scenario(
        "latency",
        85,
        rows,
        session="latency",
        reference=reference,
        contender=contender,
        seeds=("latency", "checkpoint"),
        backends=("s3",),
    )
)

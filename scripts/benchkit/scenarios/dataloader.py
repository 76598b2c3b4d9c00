"""A PyTorch ``DataLoader`` with LOADER_WORKERS worker processes over the sample files.

Each sample is one file read whole and returned as a uint8 tensor (its CRC32, taken in the
worker, is checked against the seed's). Epoch 1 runs on a fresh mount with the page cache
dropped; epoch 2 runs on the same mount with the page cache dropped again while the mount's
own cache stays on disk. Each epoch is a fresh iterator (its workers start inside the timing,
for everyone alike). References: a ``Dataset`` that calls boto3 ``get_object`` per sample
(LOADER_WORKERS workers too; it has no cache, so its epoch 2 is the same work), and for epoch 2
also the same loader over a local copy of the files, page cache dropped (the physical limit).
``--daemon-cpus`` pins the mount process to some cores for this comparison.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import mlrun
from ..common import KIB, LOADER_WORKERS, human_count, sample_key
from . import Row, Scenario, register

if TYPE_CHECKING:
    from ..runner import Visit
    from ..seed import Dataset
    from ..sites import Site

BATCH = 16


def rows(site: Site, data: Dataset) -> list[Row]:
    s = data.sizes
    files = f"{human_count(s.sample_count)} x {s.sample_size // KIB} KiB files"
    boto3 = f"a `Dataset` calling boto3 `get_object` per sample, {LOADER_WORKERS} workers"
    return [
        Row(
            "dl1",
            f"`DataLoader`, {LOADER_WORKERS} workers, over {files} (as uint8 tensors, CRC32 "
            "checked): epoch 1, cold",
            "samples/s",
            True,
            boto3,
            "ratio>=0.8",
            position=80,
        ),
        Row(
            "dl2",
            "… epoch 2 on the same mount, page cache dropped (the mount's cache kept)",
            "samples/s",
            True,
            f"{boto3} (no cache: the same work again)",
            "",
            position=81,
        ),
        Row(
            "dl2_local",
            "… the same epoch 2, against the physical limit",
            "samples/s",
            True,
            "the same `DataLoader` over a local copy of the files (page cache dropped)",
            "ratio>=0.5",
            position=82,
        ),
    ]


def job(data: Dataset, **source: Any) -> dict[str, Any]:
    return {
        "job": "loader",
        "workers": LOADER_WORKERS,
        "batch": BATCH,
        "crcs": data.sample_crc,
        "sample_size": data.sizes.sample_size,
        **source,
    }


def keys(data: Dataset) -> list[str]:
    return [sample_key(i) for i in range(data.sizes.sample_count)]


def reference(v: Visit) -> None:
    n = v.sizes.sample_count
    s3 = job(v.data, source="s3", s3=v.site.download_params(), keys=keys(v.data))
    for row in ("dl1", "dl2"):
        with v.step(row):
            v.add(row, n / mlrun.run(s3, before=v.page_cache.drop))
    local = job(v.data, source="files", paths=[str(p) for p in v.data.samples])
    with v.step("dl2_local"):
        v.add("dl2_local", n / mlrun.run(local, before=v.page_cache.drop))


def contender(v: Visit) -> None:
    n = v.sizes.sample_count
    files = job(v.data, source="files", paths=[str(v.root / key) for key in keys(v.data)])
    with v.step("dl1"), v.watchdog(1800, "DataLoader"):
        with v.profiler("loader-1"):
            v.add("dl1", n / mlrun.run(files, before=v.page_cache.drop))
        with v.profiler("loader-2"):
            rate = n / mlrun.run(files, before=v.page_cache.drop)
        v.add("dl2", rate)
        v.add("dl2_local", rate)


register(
    Scenario(
        "dataloader",
        80,
        rows,
        session="loader",
        reference=reference,
        contender=contender,
        seeds=("samples",),
        backends=("s3",),
    )
)

"""``torch.load(mmap=True)`` of the checkpoint and the sum of one tensor in its middle.

Two rows, each from its own fresh mount: the time (the call and the sum, in torch's own
process), and the bytes the bucket sent for the checkpoint until the call returned, counted
by a proxy (``devkit.proxy``) that the second mount reaches the server through (the hidden
scenario "mmap-bytes", implied by "mmap"): the Python proxy slows a large download several
times over, so it never stands in the timed mount's path. A download the mount goes on with
after the call returned is not counted. The reference is the same call on a local copy (page
cache dropped); its bytes row is the tensor's own size, the least any reader needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import mlrun
from ..common import CKPT_KEY, MIB
from . import Row, Scenario, register

SEEDS = ("checkpoint",)

if TYPE_CHECKING:
    from pathlib import Path

    from ..runner import Visit
    from ..seed import Dataset
    from ..sites import Site


def rows_time(site: Site, data: Dataset) -> list[Row]:
    s = data.sizes
    return [
        Row(
            "mmap_time",
            f"`torch.load(mmap=True)` of the {data.human(s.ckpt)} checkpoint + sum of one "
            f"{s.tensor // MIB} MiB tensor in its middle (sum checked), cold",
            "ms",
            False,
            "the same call on a local copy (page cache dropped)",
            "ratio<=3",
            1,
            position=72,
        ),
    ]


def rows_bytes(site: Site, data: Dataset) -> list[Row]:
    return [
        Row(
            "mmap_bytes",
            "… bytes the bucket sent until that call returned (counted by a proxy, another mount)",
            "MiB",
            False,
            "the tensor's own size",
            "",
            1,
            position=73,
        ),
    ]


def job(data: Dataset, path: Path) -> dict[str, Any]:
    name = data.ckpt_manifest["middle"]
    return {
        "job": "load",
        "path": str(path),
        "mmap": True,
        "tensor": name,
        "sums": {name: data.ckpt_manifest["sums"][name]},
    }


def reference_time(v: Visit) -> None:
    assert v.data.ckpt is not None
    with v.step("mmap_time"):
        seconds = mlrun.run(job(v.data, v.data.ckpt), before=v.page_cache.drop)
        v.add("mmap_time", seconds * 1e3)


def reference_bytes(v: Visit) -> None:
    v.add("mmap_bytes", v.data.ckpt_manifest["tensor_bytes"] / MIB)


def contender_time(v: Visit) -> None:
    with v.step("mmap_time"), v.watchdog(900, "torch.load(mmap=True)"):
        with v.profiler("mmap"):
            seconds = mlrun.run(job(v.data, v.root / CKPT_KEY), before=v.page_cache.drop)
        v.add("mmap_time", seconds * 1e3)


def contender_bytes(v: Visit) -> None:
    with v.step("mmap_bytes"), v.watchdog(900, "torch.load(mmap=True) (proxied)"):
        sent = mlrun.bucket_bytes_of_call(v, job(v.data, v.root / CKPT_KEY), CKPT_KEY)
        v.add("mmap_bytes", sent / MIB)


register(
    Scenario(
        "mmap",
        70,
        rows_time,
        session="mmap",
        reference=reference_time,
        contender=contender_time,
        seeds=SEEDS,
        backends=("s3",),
        implies=("mmap-bytes",),
    )
)
register(
    Scenario(
        "mmap-bytes",
        71,
        rows_bytes,
        session="mmap-bytes",
        reference=reference_bytes,
        contender=contender_bytes,
        seeds=SEEDS,
        proxied=True,
        backends=("s3",),
        selectable=False,
    )
)

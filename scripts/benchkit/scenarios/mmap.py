"""``torch.load(mmap=True)`` of the checkpoint and the sum of one tensor in its middle.

Two rows: the time (the call and the sum, in torch's own process) and the bytes the bucket
sent for the checkpoint until the call returned, counted by a proxy (``devkit.proxy``) that
this session's mount reaches the server through (a download the mount goes on with after the
call returned is not counted). The reference is the same call on a local copy (page cache
dropped); its bytes row is the tensor's own size, the least any reader needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import mlrun
from ..common import CKPT_KEY, MIB
from . import Row, Scenario, register

if TYPE_CHECKING:
    from pathlib import Path

    from ..runner import Visit
    from ..seed import Dataset
    from ..sites import Site


def rows(site: Site, data: Dataset) -> list[Row]:
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
        Row(
            "mmap_bytes",
            "… bytes the bucket sent until that call returned (counting proxy)",
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


def reference(v: Visit) -> None:
    assert v.data.ckpt is not None
    with v.step("mmap_time"):
        v.add("mmap_time", mlrun.run(job(v.data, v.data.ckpt), before=v.page_cache.drop) * 1e3)
        v.add("mmap_bytes", v.data.ckpt_manifest["tensor_bytes"] / MIB)


def contender(v: Visit) -> None:
    sent: list[int] = []

    def before() -> None:
        v.page_cache.drop()
        assert v.proxy is not None
        v.proxy.reset()

    with v.step("mmap_time"), v.watchdog(900, "torch.load(mmap=True)"):
        with v.profiler("mmap"):
            seconds = mlrun.run(
                job(v.data, v.root / CKPT_KEY),
                before=before,
                after=lambda: sent.append(v.bucket_bytes(CKPT_KEY)),
            )
        v.add("mmap_time", seconds * 1e3)
        v.add("mmap_bytes", sent[0] / MIB)


register(
    Scenario(
        "mmap",
        70,
        rows,
        session="mmap",
        reference=reference,
        contender=contender,
        seeds=("checkpoint",),
        proxied=True,
        backends=("s3",),
    )
)

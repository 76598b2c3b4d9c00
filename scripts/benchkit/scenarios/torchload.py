"""``torch.load`` of the checkpoint (every tensor's sum checked), cold, then again (warm).

torch runs in its own process (``benchkit.mlwork``), timed from the call to its return. The
reference is what a user does without a mount: a boto3 TransferManager download to local disk
followed by ``torch.load`` of the local copy (the two times added); warm, ``torch.load`` of
that local copy again. A contender loads through a fresh mount, the page cache dropped first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import download, mlrun
from ..common import CKPT_KEY
from . import Row, Scenario, register

if TYPE_CHECKING:
    from pathlib import Path

    from ..runner import Visit
    from ..seed import Dataset
    from ..sites import Site


def rows(site: Site, data: Dataset) -> list[Row]:
    ckpt = f"{data.human(data.sizes.ckpt)} checkpoint (torch zip format, every tensor checked)"
    return [
        Row(
            "torch_cold",
            f"`torch.load` of a {ckpt}, cold",
            "s",
            False,
            "boto3 TransferManager `download_file` to local disk, then `torch.load`",
            "ratio<=1.0",
            2,
            position=70,
        ),
        Row(
            "torch_warm",
            "… again on the same mount (warm)",
            "s",
            False,
            "`torch.load` of the local copy again (page cache)",
            "",
            2,
            position=71,
        ),
    ]


def params(data: Dataset, path: Path) -> dict[str, Any]:
    return {"job": "load", "path": str(path), "mmap": False, "sums": data.ckpt_manifest["sums"]}


def reference(v: Visit) -> None:
    assert v.scratch is not None
    local = v.scratch / "checkpoint.pt"
    job = params(v.data, local)
    with v.step("torch_cold"):
        v.page_cache.drop()
        fetched = download.run(v.site, local, CKPT_KEY)
        v.add("torch_cold", fetched["seconds"] + mlrun.run(job))
        v.add("torch_warm", mlrun.run(job))


def contender(v: Visit) -> None:
    job = params(v.data, v.root / CKPT_KEY)
    timeout = max(900.0, v.sizes.ckpt / (2 << 20))
    with v.step("torch_cold"), v.watchdog(timeout, "torch.load"):
        with v.profiler("torch-load"):
            v.add("torch_cold", mlrun.run(job, before=v.page_cache.drop))
        v.add("torch_warm", mlrun.run(job))


register(
    Scenario(
        "torch",
        60,
        rows,
        session="torch",
        reference=reference,
        contender=contender,
        seeds=("checkpoint",),
        backends=("s3",),
    )
)

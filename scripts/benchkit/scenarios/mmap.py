"""``torch.load(mmap=True)`` of the checkpoint and the sum of one tensor in its middle.

Two rows, each from its own fresh mount: the time (the call and the sum, in torch's own
process), and the bytes the bucket sent for the checkpoint until the call returned, counted
by a proxy on a second mount (the hidden scenario "mmap-bytes", implied by "mmap"); see
`_onetensor`. The reference is the same call on a local copy (page cache dropped); its bytes
row is the tensor's own size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..common import CKPT_KEY, MIB
from ._onetensor import OneTensor, register_pair

if TYPE_CHECKING:
    from pathlib import Path

    from ..seed import Dataset


def title(data: Dataset) -> str:
    s = data.sizes
    return (
        f"`torch.load(mmap=True)` of the {data.human(s.ckpt)} checkpoint + sum of one "
        f"{s.tensor // MIB} MiB tensor in its middle (sum checked), cold"
    )


def mmap_job(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """``torch.load(mmap=True)`` of `path` and the sum of the middle tensor `manifest` names."""
    name = manifest["middle"]
    return {
        "job": "load",
        "path": str(path),
        "mmap": True,
        "tensor": name,
        "sums": {name: manifest["sums"][name]},
    }


register_pair(
    OneTensor(
        name="mmap",
        seed="checkpoint",
        order=70,
        prefix="mmap",
        position=72,
        title=title,
        reference="the same call on a local copy (page cache dropped)",
        call="torch.load(mmap=True)",
        key=CKPT_KEY,
        local=lambda data: data.ckpt,
        manifest=lambda data: data.ckpt_manifest,
        job=lambda data, path: mmap_job(data.ckpt_manifest, path),
    )
)

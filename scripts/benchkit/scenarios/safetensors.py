"""safetensors ``safe_open`` + ``get_tensor`` of one tensor in the middle of the file (sum
checked), cold: the time, and on a second, proxied mount the bytes the bucket sent for the
file until the call returned (the hidden scenario "safetensors-bytes"); see `_onetensor`.
The reference is the same on a local copy (page cache dropped); its bytes row is the
tensor's own size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..common import MIB, SAFETENSORS_KEY
from ._onetensor import OneTensor, register_pair

if TYPE_CHECKING:
    from pathlib import Path

    from ..seed import Dataset


def title(data: Dataset) -> str:
    s = data.sizes
    return (
        f"safetensors `safe_open` of a {data.human(s.safetensors)} file + `get_tensor` of "
        f"one {s.tensor // MIB} MiB tensor in its middle (sum checked), cold"
    )


def job(data: Dataset, path: Path) -> dict[str, Any]:
    name = data.safetensors_manifest["middle"]
    return {
        "job": "safetensors",
        "path": str(path),
        "tensor": name,
        "sums": {name: data.safetensors_manifest["sums"][name]},
    }


register_pair(
    OneTensor(
        name="safetensors",
        seed="safetensors",
        order=75,
        prefix="st",
        position=76,
        title=title,
        reference="the same on a local copy (page cache dropped)",
        call="safetensors get_tensor",
        key=SAFETENSORS_KEY,
        local=lambda data: data.safetensors,
        manifest=lambda data: data.safetensors_manifest,
        job=job,
    )
)

"""``torch.load(mmap=True)`` of a model's state dict, laid out as a real one is (GPT-2 small's
shapes: weights of 2-9 MiB, each block's biases and norms of a few KiB between them), and
the sum of one 9 MiB weight in its middle: the time, and on a second, proxied mount the
bytes the bucket sent until the call returned (the hidden scenario "mmap-state-dict-bytes");
see `_onetensor`. The "mmap" row's checkpoint has tensors of one size, 10 MiB apart: this
one has headers a few KiB apart, which a reader walking them reads as if it read on. The
reference is the same call on a local copy (page cache dropped).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..common import MIB, STATE_DICT_KEY
from ._onetensor import OneTensor, register_pair
from .mmap import mmap_job

if TYPE_CHECKING:
    from ..seed import Dataset


def title(data: Dataset) -> str:
    manifest = data.state_dict_manifest
    assert data.state_dict is not None
    return (
        f"`torch.load(mmap=True)` of a {data.state_dict.stat().st_size // MIB} MiB state dict "
        f"of GPT-2 small's {manifest['count']} tensors + sum of one "
        f"{manifest['tensor_bytes'] // MIB} MiB weight in its middle (sum checked), cold"
    )


register_pair(
    OneTensor(
        name="mmap-state-dict",
        seed="state-dict",
        order=72,
        prefix="mmap_sd",
        position=74,
        title=title,
        reference="the same call on a local copy (page cache dropped)",
        call="torch.load(mmap=True) of the state dict",
        key=STATE_DICT_KEY,
        local=lambda data: data.state_dict,
        manifest=lambda data: data.state_dict_manifest,
        job=lambda data, path: mmap_job(data.state_dict_manifest, path),
        target="",  # no target: it shows what a real model's layout costs
    )
)

"""safetensors ``safe_open`` + ``get_tensor`` of one tensor in the middle of the file (sum
checked), cold: the time, and on a second, proxied mount the bytes the bucket sent for the
file until the call returned (the hidden scenario "safetensors-bytes", as in the mmap row).
The reference is the same on a local copy (page cache dropped); its bytes row is the
tensor's own size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import mlrun
from ..common import MIB, SAFETENSORS_KEY
from . import Row, Scenario, register

SEEDS = ("safetensors",)

if TYPE_CHECKING:
    from pathlib import Path

    from ..runner import Visit
    from ..seed import Dataset
    from ..sites import Site


def rows_time(site: Site, data: Dataset) -> list[Row]:
    s = data.sizes
    return [
        Row(
            "st_time",
            f"safetensors `safe_open` of a {data.human(s.safetensors)} file + `get_tensor` of "
            f"one {s.tensor // MIB} MiB tensor in its middle (sum checked), cold",
            "ms",
            False,
            "the same on a local copy (page cache dropped)",
            "ratio<=3",
            1,
            position=74,
        ),
    ]


def rows_bytes(site: Site, data: Dataset) -> list[Row]:
    return [
        Row(
            "st_bytes",
            "… bytes the bucket sent until that call returned (counted by a proxy, another mount)",
            "MiB",
            False,
            "the tensor's own size",
            "",
            1,
            position=75,
        ),
    ]


def job(data: Dataset, path: Path) -> dict[str, Any]:
    name = data.safetensors_manifest["middle"]
    return {
        "job": "safetensors",
        "path": str(path),
        "tensor": name,
        "sums": {name: data.safetensors_manifest["sums"][name]},
    }


def reference_time(v: Visit) -> None:
    assert v.data.safetensors is not None
    with v.step("st_time"):
        seconds = mlrun.run(job(v.data, v.data.safetensors), before=v.page_cache.drop)
        v.add("st_time", seconds * 1e3)


def reference_bytes(v: Visit) -> None:
    v.add("st_bytes", v.data.safetensors_manifest["tensor_bytes"] / MIB)


def contender_time(v: Visit) -> None:
    with v.step("st_time"), v.watchdog(900, "safetensors get_tensor"):
        with v.profiler("safetensors"):
            seconds = mlrun.run(job(v.data, v.root / SAFETENSORS_KEY), before=v.page_cache.drop)
        v.add("st_time", seconds * 1e3)


def contender_bytes(v: Visit) -> None:
    with v.step("st_bytes"), v.watchdog(900, "safetensors get_tensor (proxied)"):
        sent = mlrun.bucket_bytes_of_call(v, job(v.data, v.root / SAFETENSORS_KEY), SAFETENSORS_KEY)
        v.add("st_bytes", sent / MIB)


register(
    Scenario(
        "safetensors",
        75,
        rows_time,
        session="safetensors",
        reference=reference_time,
        contender=contender_time,
        seeds=SEEDS,
        backends=("s3",),
        implies=("safetensors-bytes",),
    )
)
register(
    Scenario(
        "safetensors-bytes",
        76,
        rows_bytes,
        session="safetensors-bytes",
        reference=reference_bytes,
        contender=contender_bytes,
        seeds=SEEDS,
        proxied=True,
        backends=("s3",),
        selectable=False,
    )
)

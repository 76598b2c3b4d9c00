"""safetensors ``safe_open`` + ``get_tensor`` of one tensor in the middle of the file (sum
checked): the time, and the bytes the bucket sent for the file until the call returned
(counting proxy, as in the mmap row). The reference is the same on a local copy (page cache
dropped); its bytes row is the tensor's own size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import mlrun
from ..common import MIB, SAFETENSORS_KEY
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
        Row(
            "st_bytes",
            "… bytes the bucket sent until that call returned (counting proxy)",
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


def reference(v: Visit) -> None:
    assert v.data.safetensors is not None
    with v.step("st_time"):
        seconds = mlrun.run(job(v.data, v.data.safetensors), before=v.page_cache.drop)
        v.add("st_time", seconds * 1e3)
        v.add("st_bytes", v.data.safetensors_manifest["tensor_bytes"] / MIB)


def contender(v: Visit) -> None:
    sent: list[int] = []

    def before() -> None:
        v.page_cache.drop()
        assert v.proxy is not None
        v.proxy.reset()

    with v.step("st_time"), v.watchdog(900, "safetensors get_tensor"):
        with v.profiler("safetensors"):
            seconds = mlrun.run(
                job(v.data, v.root / SAFETENSORS_KEY),
                before=before,
                after=lambda: sent.append(v.bucket_bytes(SAFETENSORS_KEY)),
            )
        v.add("st_time", seconds * 1e3)
        v.add("st_bytes", sent[0] / MIB)


register(
    Scenario(
        "safetensors",
        75,
        rows,
        session="safetensors",
        reference=reference,
        contender=contender,
        seeds=("safetensors",),
        proxied=True,
        backends=("s3",),
    )
)

"""One tensor read from the middle of a big file (its sum checked), cold: the shared part of
the "mmap" and "safetensors" scenarios.

`register_pair` registers two scenarios from one `OneTensor`: the time row, on a direct
mount, and the hidden "<name>-bytes" row, on a second mount that reaches the server through
a counting proxy (``devkit.proxy``), with the bytes the bucket sent for the file until the
call returned. The Python proxy slows a large download several times over, so it never
stands in the timed mount's path; a download the mount goes on with after the call returned
is not counted. The reference is the same call on a local copy (page cache dropped); its
bytes row is the tensor's own size, the least any reader needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import mlrun
from ..common import MIB, log
from ..session import process_cpu
from . import Row, Scenario, register

if TYPE_CHECKING:
    from pathlib import Path

    from ..runner import Visit
    from ..seed import Dataset
    from ..sites import Site


@dataclasses.dataclass(frozen=True)
class OneTensor:
    name: str  # the --rows name; also its session's and its profile's
    seed: str  # the part of the data set it reads (seed.seed)
    order: int  # the time scenario's; the bytes scenario is measured next
    prefix: str  # the row keys: <prefix>_time, <prefix>_bytes
    position: int  # the time row's; the bytes row stands below it
    title: Callable[[Dataset], str]  # the time row's title
    reference: str  # the time row's reference label
    call: str  # what the watchdog names
    key: str  # the object's key in the bucket
    local: Callable[[Dataset], Path | None]  # the local copy the reference reads
    manifest: Callable[[Dataset], dict[str, Any]]  # the file's tensors: middle, sums, bytes
    job: Callable[[Dataset, Path], dict[str, Any]]  # the mlwork job reading `path`
    target: str = "ratio<=3"  # clearmount's target for the time row ("": none)


def register_pair(spec: OneTensor) -> None:
    """Register `spec.name` (the time row) and the hidden `spec.name`-bytes."""
    time_key, bytes_key = f"{spec.prefix}_time", f"{spec.prefix}_bytes"

    def rows_time(site: Site, data: Dataset) -> list[Row]:
        return [
            Row(
                time_key,
                spec.title(data),
                "ms",
                False,
                spec.reference,
                spec.target,
                1,
                position=spec.position,
            )
        ]

    def rows_bytes(site: Site, data: Dataset) -> list[Row]:
        return [
            Row(
                bytes_key,
                "… bytes the bucket sent until that call returned (counted by a proxy, another "
                "mount)",
                "MiB",
                False,
                "the tensor's own size",
                "",
                1,
                position=spec.position + 1,
            )
        ]

    def reference_time(v: Visit) -> None:
        local = spec.local(v.data)
        assert local is not None
        with v.step(time_key):
            seconds = mlrun.run(spec.job(v.data, local), before=v.page_cache.drop)
            v.add(time_key, seconds * 1e3)

    def reference_bytes(v: Visit) -> None:
        v.add(bytes_key, spec.manifest(v.data)["tensor_bytes"] / MIB)

    def contender_time(v: Visit) -> None:
        cpu: list[float] = []

        def mount_cpu() -> tuple[float, float, float]:
            pid = v.mount.proc_pid
            return (0.0, 0.0, 0.0) if pid is None else process_cpu(pid)

        def before() -> None:
            v.page_cache.drop()
            cpu[:] = mount_cpu()

        def after() -> None:
            total, main, children = (now - then for now, then in zip(mount_cpu(), cpu, strict=True))
            log(
                f"{v.who}: mount CPU {total:.3f} s over {spec.call} ({main:.3f} s main "
                f"thread, {children:.3f} s fetch processes)"
            )

        with v.step(time_key), v.watchdog(900, spec.call):
            with v.profiler(spec.name):
                seconds = mlrun.run(spec.job(v.data, v.root / spec.key), before, after)
            v.add(time_key, seconds * 1e3)

    def contender_bytes(v: Visit) -> None:
        with v.step(bytes_key), v.watchdog(900, f"{spec.call} (proxied)"):
            sent = mlrun.bucket_bytes_of_call(v, spec.job(v.data, v.root / spec.key), spec.key)
            v.add(bytes_key, sent / MIB)

    bytes_name = f"{spec.name}-bytes"
    register(
        Scenario(
            spec.name,
            spec.order,
            rows_time,
            session=spec.name,
            reference=reference_time,
            contender=contender_time,
            seeds=(spec.seed,),
            backends=("s3",),
            implies=(bytes_name,),
        )
    )
    register(
        Scenario(
            bytes_name,
            spec.order + 1,
            rows_bytes,
            session=bytes_name,
            reference=reference_bytes,
            contender=contender_bytes,
            seeds=(spec.seed,),
            proxied=True,
            backends=("s3",),
            selectable=False,
        )
    )

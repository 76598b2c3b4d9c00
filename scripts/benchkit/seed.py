"""The data set: its sizes, and seeding a site with it once (checksums kept for the checks).

The server starts empty on every run, so every run uploads; the parts are chosen by the
selected scenarios (``Scenario.seeds``). The ML rows' files (a torch checkpoint, a model's
state dict, a safetensors file, the DataLoader's samples, the latency row's file) are built
once per size under ``.cache/bench/ml-data/`` with their manifest (each tensor's sum, each
sample's CRC32) and reused by later runs; the reference rows read those files as their "local
copy".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import mlrun
from .common import (
    BIG_KEY,
    CKPT_KEY,
    GIB,
    KIB,
    LATENCY_KEY,
    MIB,
    ONE_BYTE_KEY,
    READERS,
    SAFETENSORS_KEY,
    STATE_DICT_KEY,
    WORKDIR,
    log,
    parallel_map,
    sample_key,
    small_key,
    tiny_body,
    tiny_key,
)

if TYPE_CHECKING:
    from .sites import Site


@dataclasses.dataclass(frozen=True)
class Sizes:
    big: int
    small_count: int
    small_size: int
    tiny_count: int
    ckpt: int = 2 * GIB  # the torch checkpoint: ckpt // tensor float32 tensors
    state_dict_layers: int = 12  # the GPT-2 small shaped state dict's blocks (474 MiB)
    safetensors: int = GIB
    tensor: int = 10 * MIB
    sample_count: int = 5000  # the DataLoader's files
    sample_size: int = 128 * KIB
    latency_file: int = 64 * MIB  # read at random offsets once complete in the mount's cache


FULL = Sizes(big=GIB, small_count=1000, small_size=256 * KIB, tiny_count=10_000)
QUICK = Sizes(
    big=256 * MIB,
    small_count=200,
    small_size=256 * KIB,
    tiny_count=1000,
    ckpt=256 * MIB,
    state_dict_layers=2,
    safetensors=128 * MIB,
    sample_count=500,
)
ML_DATA = WORKDIR / "ml-data"


@dataclasses.dataclass
class Dataset:
    sizes: Sizes
    big_sha256: str = ""
    big_head: bytes = b""
    small_sha256: dict[str, str] = dataclasses.field(default_factory=dict)
    # the ML rows' local copies and manifests (set when their part is seeded)
    ckpt: Path | None = None
    ckpt_manifest: dict[str, Any] = dataclasses.field(default_factory=dict)
    state_dict: Path | None = None
    state_dict_manifest: dict[str, Any] = dataclasses.field(default_factory=dict)
    safetensors: Path | None = None
    safetensors_manifest: dict[str, Any] = dataclasses.field(default_factory=dict)
    samples: list[Path] = dataclasses.field(default_factory=list)
    sample_crc: list[int] = dataclasses.field(default_factory=list)
    latency: Path | None = None

    def human(self, n: int) -> str:
        return f"{n // GIB} GiB" if n >= GIB and n % GIB == 0 else f"{n // MIB} MiB"


def write_big_file(path: Path, size: int) -> tuple[str, bytes]:
    """Random bytes into `path`; returns (sha256, the first 4 KiB)."""
    digest = hashlib.sha256()
    head = b""
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            chunk = os.urandom(min(8 * MIB, remaining))
            if not head:
                head = chunk[: 4 * KIB]
            digest.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
    return digest.hexdigest(), head


def seed(site: Site, sizes: Sizes, scratch: Path, parts: frozenset[str]) -> Dataset:
    """Upload the parts of the data set the selected scenarios need (see Scenario.seeds)."""
    data = Dataset(sizes)
    started = time.monotonic()
    if "base" in parts:
        seed_base(site, data, scratch)
    if "checkpoint" in parts:
        data.ckpt, data.ckpt_manifest = tensors_file(
            f"checkpoint-{sizes.ckpt}-{sizes.tensor}.pt",
            {"job": "make-checkpoint", "total": sizes.ckpt, "tensor_bytes": sizes.tensor},
        )
        site.put_file(CKPT_KEY, data.ckpt)
    if "state-dict" in parts:
        data.state_dict, data.state_dict_manifest = tensors_file(
            f"state-dict-gpt2-{sizes.state_dict_layers}.pt",
            {"job": "make-state-dict", "layers": sizes.state_dict_layers},
        )
        site.put_file(STATE_DICT_KEY, data.state_dict)
    if "safetensors" in parts:
        data.safetensors, data.safetensors_manifest = tensors_file(
            f"model-{sizes.safetensors}-{sizes.tensor}.safetensors",
            {"job": "make-safetensors", "total": sizes.safetensors, "tensor_bytes": sizes.tensor},
        )
        site.put_file(SAFETENSORS_KEY, data.safetensors)
    if "samples" in parts:
        data.samples, data.sample_crc = sample_files(sizes)
        parallel_map(
            lambda i: site.put(sample_key(i), data.samples[i].read_bytes()),
            range(sizes.sample_count),
            16,
        )
    if "latency" in parts:
        data.latency = ML_DATA / f"latency-{sizes.latency_file}.bin"
        if not data.latency.exists() or data.latency.stat().st_size != sizes.latency_file:
            write_big_file(data.latency, sizes.latency_file)
        site.put_file(LATENCY_KEY, data.latency)
    log(f"seeded in {time.monotonic() - started:.1f}s")
    return data


def tensors_file(name: str, job: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """A checkpoint or safetensors file of random tensors that the mlwork `job` makes (built
    once), and its manifest."""
    ML_DATA.mkdir(parents=True, exist_ok=True)
    path, manifest_path = ML_DATA / name, ML_DATA / f"{name}.json"
    if path.exists() and manifest_path.exists():
        return path, json.loads(manifest_path.read_text())
    log(f"building {name} ({job['job']}, once)")
    partial = path.with_suffix(".partial")
    manifest = mlrun.make({**job, "out": str(partial)})
    partial.rename(path)
    manifest_path.write_text(json.dumps(manifest))
    return path, manifest


def sample_files(sizes: Sizes) -> tuple[list[Path], list[int]]:
    """The DataLoader's sample files (random bytes, built once) and their CRC32s."""
    folder = ML_DATA / f"samples-{sizes.sample_count}-{sizes.sample_size}"
    manifest_path = folder / "crc32.json"
    paths = [folder / sample_key(i).rsplit("/", 1)[1] for i in range(sizes.sample_count)]
    if manifest_path.exists():
        return paths, json.loads(manifest_path.read_text())
    log(f"building {sizes.sample_count} sample files (once)")
    folder.mkdir(parents=True, exist_ok=True)
    crcs = []
    for path in paths:
        body = os.urandom(sizes.sample_size)
        path.write_bytes(body)
        crcs.append(zlib.crc32(body))
    manifest_path.write_text(json.dumps(crcs))
    return paths, crcs


def seed_base(site: Site, data: Dataset, scratch: Path) -> None:
    """The big object, the 1-byte object, the small and the tiny objects."""
    sizes = data.sizes
    scratch.mkdir(parents=True, exist_ok=True)
    big = scratch / "seed-big.bin"
    data.big_sha256, data.big_head = write_big_file(big, sizes.big)
    site.put_file(BIG_KEY, big)
    big.unlink()
    site.put(ONE_BYTE_KEY, b"x")

    def put_small(i: int) -> tuple[str, str]:
        body = os.urandom(sizes.small_size)
        site.put(small_key(i), body)
        return small_key(i), hashlib.sha256(body).hexdigest()

    data.small_sha256 = dict(parallel_map(put_small, range(sizes.small_count), READERS))
    parallel_map(lambda i: site.put(tiny_key(i), tiny_body(i)), range(sizes.tiny_count), 16)

"""The ML rows' client side, in its own process as a user's script would be (imports torch).

``python -m benchkit.mlwork`` reads one JSON line of parameters on stdin, imports and prepares
what it needs (untimed), prints ``ready``, waits for a line ``go``, runs the timed call, prints
one JSON line ``{"seconds": ..., ...}``, checks what it got (untimed; ``"wrong"`` names a
mismatch) and prints that, then waits for stdin to close before it exits. The parent
(``benchkit.mlrun``) drops the page cache between ``ready`` and ``go`` and counts the bucket's
bytes when the first result line arrives, i.e. right after the call returned.

``{"job": "make-..."}`` jobs build the data set once (a torch checkpoint, a model's state
dict, a safetensors file) and print their manifest: each tensor's float64 sum, which the
timed jobs compare with. Jobs: make-checkpoint, make-state-dict, make-safetensors, load
(``torch.load``, optionally ``mmap=True`` and one tensor summed), safetensors (``safe_open``
+ one tensor summed), loader (a ``DataLoader`` over files or over boto3 ``get_object``).
"""

from __future__ import annotations

import json
import math
import sys
import time
import zlib
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


def tensor_sum(t: torch.Tensor) -> float:
    return float(t.sum(dtype=torch.float64).item())


def same_sum(got: float, want: float) -> bool:
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6)


def make_state(total: int, tensor_bytes: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """total // tensor_bytes float32 tensors of random values, and their manifest."""
    count = max(1, total // tensor_bytes)
    gen = torch.Generator().manual_seed(15)
    state = {
        f"layer{i:03d}.weight": torch.rand(tensor_bytes // 4, generator=gen) for i in range(count)
    }
    sums = {name: tensor_sum(t) for name, t in state.items()}
    names = list(state)
    return state, {
        "sums": sums,
        "middle": names[len(names) // 2],
        "tensor_bytes": tensor_bytes,
        "count": count,
    }


def make_state_dict(layers: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A GPT-2 small shaped state dict of random float32 values (width 768, `layers` blocks):
    each block's weights of 2-9 MiB with its biases and norms of 3-12 KiB between them, as
    `torch.save` lays out a real model; and its manifest (the middle: a block's 9 MiB MLP
    weight)."""
    gen = torch.Generator().manual_seed(16)
    width, vocab, positions = 768, 50257, 1024
    shapes: dict[str, tuple[int, ...]] = {
        "wte.weight": (vocab, width),
        "wpe.weight": (positions, width),
    }
    for i in range(layers):
        block = {
            "ln_1.weight": (width,),
            "ln_1.bias": (width,),
            "attn.c_attn.weight": (width, 3 * width),
            "attn.c_attn.bias": (3 * width,),
            "attn.c_proj.weight": (width, width),
            "attn.c_proj.bias": (width,),
            "ln_2.weight": (width,),
            "ln_2.bias": (width,),
            "mlp.c_fc.weight": (width, 4 * width),
            "mlp.c_fc.bias": (4 * width,),
            "mlp.c_proj.weight": (4 * width, width),
            "mlp.c_proj.bias": (width,),
        }
        shapes.update({f"h.{i}.{name}": shape for name, shape in block.items()})
    shapes.update({"ln_f.weight": (width,), "ln_f.bias": (width,)})
    state = {name: torch.rand(shape, generator=gen) for name, shape in shapes.items()}
    middle = f"h.{layers // 2}.mlp.c_fc.weight"
    return state, {
        "sums": {name: tensor_sum(t) for name, t in state.items()},
        "middle": middle,
        "tensor_bytes": state[middle].nbytes,
        "count": len(state),
    }


def make(params: dict[str, Any]) -> dict[str, Any]:
    if params["job"] == "make-state-dict":
        state, manifest = make_state_dict(params["layers"])
        torch.save(state, params["out"])
        return manifest
    state, manifest = make_state(params["total"], params["tensor_bytes"])
    if params["job"] == "make-checkpoint":
        torch.save(state, params["out"])
    else:
        from safetensors.torch import save_file

        save_file(state, params["out"])
    return manifest


class FileSamples(Dataset[tuple[int, int, torch.Tensor]]):
    """One sample per file: its bytes as a uint8 tensor (and their CRC32, to check them)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, int, torch.Tensor]:
        with open(self.paths[i], "rb", buffering=0) as f:
            data = f.read()
        return i, zlib.crc32(data), torch.frombuffer(bytearray(data), dtype=torch.uint8)


class S3Samples(Dataset[tuple[int, int, torch.Tensor]]):
    """One boto3 ``get_object`` per sample; each worker process makes its own client."""

    def __init__(self, s3: dict[str, Any], keys: list[str]) -> None:
        self.s3 = s3
        self.keys = keys
        self.client: Any = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[int, int, torch.Tensor]:
        if self.client is None:
            import boto3
            from botocore.config import Config

            self.client = boto3.client(
                "s3",
                endpoint_url=self.s3["endpoint"],
                aws_access_key_id=self.s3["key"],
                aws_secret_access_key=self.s3["secret"],
                region_name="us-east-1",
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
            )
        data = self.client.get_object(Bucket=self.s3["bucket"], Key=self.keys[i])["Body"].read()
        return i, zlib.crc32(data), torch.frombuffer(bytearray(data), dtype=torch.uint8)


def prepare(params: dict[str, Any]) -> Any:
    """What the timed call needs, built before ``ready`` (imports, datasets)."""
    job = params["job"]
    if job == "safetensors":
        from safetensors import safe_open

        return safe_open
    if job == "loader":
        import boto3  # noqa: F401  (imported before the workers fork, as a user's script does)

        dataset: Dataset[tuple[int, int, torch.Tensor]]
        if params["source"] == "s3":
            dataset = S3Samples(params["s3"], params["keys"])
        else:
            dataset = FileSamples(params["paths"])
        return DataLoader(
            dataset,
            batch_size=params["batch"],
            num_workers=params["workers"],
            shuffle=False,
        )
    return None


def timed(params: dict[str, Any], prepared: Any) -> tuple[float, Any]:
    job = params["job"]
    started = time.perf_counter()
    if job == "load":
        state = torch.load(params["path"], mmap=params["mmap"], weights_only=True)
        got: Any = state
        if params.get("tensor"):
            got = tensor_sum(state[params["tensor"]])
    elif job == "safetensors":
        with prepared(params["path"], framework="pt") as f:
            got = tensor_sum(f.get_tensor(params["tensor"]))
    elif job == "loader":
        got = [
            (i, c, int(tensors.shape[-1]))
            for idx, crc, tensors in prepared
            for i, c in zip(idx.tolist(), crc.tolist(), strict=True)
        ]
    else:
        raise ValueError(f"unknown job {job!r}")
    return time.perf_counter() - started, got


def check(params: dict[str, Any], got: Any) -> str:
    """ "" if `got` is right, else what is wrong."""
    job = params["job"]
    if job in ("load", "safetensors") and params.get("tensor"):
        want = params["sums"][params["tensor"]]
        return "" if same_sum(got, want) else f"{params['tensor']}: sum {got!r}, want {want!r}"
    if job == "load":
        sums: dict[str, float] = params["sums"]
        if set(got) != set(sums):
            return f"{len(got)} tensors, want {len(sums)}"
        for name, want in sums.items():
            if not same_sum(tensor_sum(got[name]), want):
                return f"{name}: wrong sum"
        return ""
    if job == "loader":
        crcs: list[int] = params["crcs"]
        seen = sorted(got)
        if [i for i, _, _ in seen] != list(range(len(crcs))):
            return f"{len(seen)} samples returned, want each of {len(crcs)} once"
        for i, crc, size in seen:
            if crc != crcs[i] or size != params["sample_size"]:
                return f"sample {i}: wrong bytes ({size} bytes, crc32 {crc:#x})"
        return ""
    return f"unknown job {job!r}"


def main() -> int:
    params = json.loads(sys.stdin.readline())
    if params["job"].startswith("make-"):
        print(json.dumps(make(params)), flush=True)
        return 0
    prepared = prepare(params)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    seconds, got = timed(params, prepared)
    print(json.dumps({"seconds": seconds}), flush=True)
    print(json.dumps({"wrong": check(params, got)}), flush=True)
    sys.stdin.read()  # the parent has counted what it wanted: now exit
    return 0


if __name__ == "__main__":
    sys.exit(main())

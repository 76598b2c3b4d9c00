"""Constants, the object names of the data set, the log line and small shared helpers."""

from __future__ import annotations

import concurrent.futures
import importlib
import pkgutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"  # holds this package
WORKDIR = REPO / ".cache" / "bench"

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
READERS = 8  # parallel readers in the small-files row
BLOCK = MIB  # read size of the sequential reads
BUCKET = "bench"
BIG_KEY = "big/blob.bin"
ONE_BYTE_KEY = "one-byte"
SMALL_PREFIX = "small/"
TINY_PREFIX = "tiny/"
# the ML rows' objects (scenarios torch, mmap, mmap-state-dict, safetensors, dataloader, latency)
CKPT_KEY = "ml/checkpoint.pt"
STATE_DICT_KEY = "ml/state-dict.pt"
SAFETENSORS_KEY = "ml/model.safetensors"
LATENCY_KEY = "ml/cached.bin"
SAMPLE_PREFIX = "samples/"
LOADER_WORKERS = 8  # DataLoader worker processes


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def small_key(i: int) -> str:
    return f"{SMALL_PREFIX}s{i:04d}.bin"


def tiny_key(i: int) -> str:
    return f"{TINY_PREFIX}t{i:05d}.txt"


def sample_key(i: int) -> str:
    return f"{SAMPLE_PREFIX}x{i:05d}.bin"


def tiny_body(i: int) -> bytes:
    return f"tiny {i:05d}\n".encode()


def human_count(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], threads: int) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


def import_all(package: str, path: Sequence[str]) -> None:
    """Import every module of a package (each registers what it defines)."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")

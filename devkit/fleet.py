"""A fleet on one machine: N clearmount daemons ("nodes"), each with its own L1 cache and
mount point, sharing one L2 directory, in front of SeaweedFS behind the counting proxy.

All N nodes read the same cold set at once (a checkpoint and many small shards); printed:
bucket GET bytes ÷ unique bytes, per-node wall time and time to the checkpoint's first byte,
for one node alone, N nodes with the L2 and N nodes without it.

    scripts/fleet                       # 4 nodes, 1 GiB checkpoint, 1000 x 256 KiB shards
    scripts/fleet --nodes 8 --checkpoint-mib 256 --shards 200
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from devkit.confs import s3_conf
from devkit.mounts import hermetic_env, mount_points
from devkit.processes import poll_until
from devkit.proxy import Proxy
from devkit.s3 import S3Server

MIB = 1 << 20


@dataclass
class NodeResult:
    name: str
    wall: float
    ttfb: float  # the checkpoint's first MiB
    ok: bool


class Node:
    def __init__(self, work: Path, name: str, conf_text: str) -> None:
        self.name = name
        self.dir = work / name
        self.mnt = self.dir / "mnt"
        self.cache = self.dir / "l1"
        self.mnt.mkdir(parents=True)
        conf = self.dir / "clearml.conf"
        conf.write_text(conf_text)
        home = self.dir / "home"
        home.mkdir()
        argv = [sys.executable, "-m", "clearmount", str(self.mnt), "--foreground"]
        argv += ["--config", str(conf), "--cache-dir", str(self.cache)]
        self.log = open(self.dir / "clearmount.log", "wb")  # noqa: SIM115
        env = hermetic_env(home, {"CLEARMOUNT_NODE_NAME": name})
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        real = os.path.realpath(self.mnt)
        poll_until(lambda: real in mount_points(), 30, f"{name} mounted")

    def path_of(self, url: str) -> Path:
        scheme, _, rest = url.partition("://")
        return self.mnt / scheme / rest

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def read_everything(node: Node, checkpoint: str, shards: list[str], start: float) -> NodeResult:
    ttfb = -1.0
    ok = True
    with open(node.path_of(checkpoint), "rb", buffering=0) as f:
        first = f.read(MIB)
        ttfb = time.monotonic() - start
        ok &= bool(first)
        while f.read(8 * MIB):
            pass

    def one(url: str) -> bool:
        return len(node.path_of(url).read_bytes()) > 0

    with ThreadPoolExecutor(8) as pool:
        ok &= all(pool.map(one, shards))
    return NodeResult(node.name, time.monotonic() - start, ttfb, ok)


def run(
    work: Path,
    conf_text: str,
    nodes: int,
    checkpoint: str,
    shards: list[str],
    proxy: Proxy,
    bucket: str,
) -> tuple[list[NodeResult], int]:
    proxy.reset()
    started = [Node(work, f"node{i}", conf_text) for i in range(nodes)]
    try:
        barrier = threading.Barrier(nodes)
        start_at: list[float] = []

        def go(node: Node) -> NodeResult:
            barrier.wait()
            if not start_at:
                start_at.append(time.monotonic())
            return read_everything(node, checkpoint, shards, start_at[0])

        with ThreadPoolExecutor(nodes) as pool:
            results = list(pool.map(go, started))
    finally:
        for node in started:
            node.stop()
    fetched = sum(s.body_bytes for s in proxy.requests("GET", prefix=f"/{bucket}/"))
    return results, fetched


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/fleet", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--checkpoint-mib", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--shard-kib", type=int, default=256)
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="clearmount-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    server = S3Server(work / "seaweedfs")
    server.start()
    proxy = Proxy(("127.0.0.1", server.port)).start()
    try:
        bucket = server.make_bucket()
        print(f"seeding {args.checkpoint_mib} MiB + {args.shards} x {args.shard_kib} KiB ...")
        blob = work / "checkpoint.bin"
        with open(blob, "wb") as f:
            for _ in range(args.checkpoint_mib):
                f.write(os.urandom(MIB))
        server.client().upload_file(str(blob), bucket, "ckpt/model.pt")
        blob.unlink()
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda i: server.put(
                        bucket, f"shards/{i:04d}.bin", os.urandom(args.shard_kib << 10)
                    ),
                    range(args.shards),
                )
            )
        unique = args.checkpoint_mib * MIB + args.shards * (args.shard_kib << 10)
        base = f"s3://{proxy.endpoint}/{bucket}"
        checkpoint = f"{base}/ckpt/model.pt"
        shards = [f"{base}/shards/{i:04d}.bin" for i in range(args.shards)]
        rows = []
        for label, nodes, l2 in (
            ("1 node alone, L2", 1, True),
            (f"{args.nodes} nodes, shared L2", args.nodes, True),
            (f"{args.nodes} nodes, no L2", args.nodes, False),
        ):
            run_dir = work / label.replace(" ", "-").replace(",", "")
            l2_dir = run_dir / "l2"
            extra = "storage { cache { disk_space_file_size_strategy { enabled: true"
            extra += f', secondary {{ default_base_dir: "{l2_dir}" }}' if l2 else ""
            extra += " } } }"
            conf = s3_conf(proxy, server.admin, sdk_extra=extra)
            results, fetched = run(run_dir, conf, nodes, checkpoint, shards, proxy, bucket)
            rows.append((label, results, fetched))
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"  {label}: done")
        print(f"\nunique bytes {unique / MIB:.0f} MiB\n")
        print(f"{'run':24} {'bucket/unique':>13} {'wall s (per node)':>30} {'TTFB s':>24}")
        for label, results, fetched in rows:
            walls = " ".join(f"{r.wall:.1f}" for r in results)
            ttfbs = " ".join(f"{r.ttfb:.2f}" for r in results)
            bad = "" if all(r.ok for r in results) else "  (READ ERRORS)"
            print(f"{label:24} {fetched / unique:>12.2f}x {walls:>30} {ttfbs:>24}{bad}")
    finally:
        proxy.stop()
        server.stop()
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The shared L2 cache (ClearML 2.x `secondary`) across several real daemons ("nodes"), each
with its own L1 cache and mount point, one L2 directory, SeaweedFS behind the counting proxy,
and the real ClearML SDK.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from conftest import MountFactory
from devkit.confs import s3_conf
from devkit.processes import poll_until
from devkit.proxy import Proxy
from devkit.s3 import S3Server
from support import Mount, sdk_local_copy, tmpfs

if TYPE_CHECKING:
    from clearmount.cache.shared import SharedCache

MIB = 1 << 20


def l2_conf(proxy: Proxy, server: S3Server, l2: Path, secondary: str = "") -> str:
    extra = (
        "storage { cache { disk_space_file_size_strategy { enabled: true, "
        f'secondary {{ default_base_dir: "{l2}"\n{secondary} }} }} }} }}'
    )
    return s3_conf(proxy, server.admin, sdk_extra=extra)


def get_bytes(proxy: Proxy, bucket: str) -> int:
    return sum(s.body_bytes for s in proxy.requests("GET", prefix=f"/{bucket}/"))


def read_all(mount: Mount, urls: list[str]) -> dict[str, str]:
    return {url: hashlib.sha256(mount.path_of(url).read_bytes()).hexdigest() for url in urls}


def node(mounted: MountFactory, conf: str, tmp_path: Path, name: str, *options: str) -> Mount:
    return mounted(
        conf,
        cache_dir=tmp_path / f"l1-{name}",
        env={"CLEARMOUNT_NODE_NAME": name},
        options=[",".join(options)] if options else (),
    )


def shared_status(mount: Mount) -> dict[str, int]:
    """The L2 figures of `clearmount status --json`."""
    result = subprocess.run(
        [sys.executable, "-m", "clearmount", "status", "--json", str(mount.path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    shared: dict[str, int] = json.loads(result.stdout)["shared"]
    return shared


@contextlib.contextmanager
def holding_the_lease(proxy: Proxy, holder: Mount, url: str, l2: Path) -> Iterator[list[Path]]:
    """`holder` reads `url` with its GET stalled after 1 MiB: yields the L2's lease files once
    it holds the lease. On exit its reader is killed and the stall lifted."""
    stall = proxy.stall(1 << 20, 120, None, method="GET")
    reader = subprocess.Popen(["cat", str(holder.path_of(url))], stdout=subprocess.DEVNULL)
    try:
        yield poll_until(lambda: list((l2 / "clearmount/leases").glob("*/1")), 30, "the lease")
    finally:
        reader.kill()
        stall.remaining = 0
        proxy.release()


def test_nodes_sharing_one_l2_download_each_object_about_once(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    objects = {"ckpt/model.pt": os.urandom(24 * MIB)}
    objects |= {f"shards/{i:03d}.bin": os.urandom(256 << 10) for i in range(24)}
    for key, data in objects.items():
        s3_server.put(bucket, key, data)
    unique = sum(len(d) for d in objects.values())
    expected = {k: hashlib.sha256(d).hexdigest() for k, d in objects.items()}
    l2 = tmp_path / "l2"
    conf = l2_conf(s3_proxy, s3_server, l2)
    base = f"s3://{s3_proxy.endpoint}/{bucket}"
    urls = [f"{base}/{key}" for key in objects]
    nodes = [node(mounted, conf, tmp_path, f"node{i}") for i in range(3)]

    with ThreadPoolExecutor(len(nodes)) as pool:
        results = list(pool.map(lambda m: read_all(m, urls), nodes))
    for result in results:
        assert result == {f"{base}/{k}": v for k, v in expected.items()}
    fetched = get_bytes(s3_proxy, bucket)
    print(f"bucket GET bytes {fetched} for {unique} unique bytes: {fetched / unique:.3f}x")
    assert fetched <= 1.1 * unique
    # every object was published to the L2, in ClearML's relative layout
    host = s3_proxy.endpoint.replace(":", ".")
    poll_until(
        lambda: all((l2 / "storage/s3" / host / bucket / k).exists() for k in objects),
        30,
        "publication",
    )
    assert not list((l2 / "clearmount/leases").glob("*/*"))
    sources = {os.getxattr(m.path_of(urls[0]), "user.clearmount.source") for m in nodes}
    assert sources <= {b"l2", b"bucket"} and b"l2" in sources

    # the SDK on a fresh node with the same L2: 0 GET
    before = get_bytes(s3_proxy, bucket)
    sdk_conf = tmp_path / "sdk-clearml.conf"
    sdk_conf.write_text(conf)
    local = sdk_local_copy(tmp_path, sdk_conf, tmp_path / "sdk-l1", urls[0])
    assert local.read_bytes() == objects["ckpt/model.pt"]
    # a daemon started later reads everything: 0 GET
    late = node(mounted, conf, tmp_path, "late")
    assert read_all(late, urls) == {f"{base}/{k}": v for k, v in expected.items()}
    assert get_bytes(s3_proxy, bucket) == before
    assert shared_status(late)["hits"] == len(objects)


def test_sdk_published_file_is_adopted_and_a_replaced_object_is_never_stale(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    pytest.importorskip("clearml")
    bucket = s3_server.make_bucket()
    old, new = os.urandom(3 * MIB), os.urandom(3 * MIB)
    s3_server.put(bucket, "obj.bin", old)
    l2 = tmp_path / "l2"
    conf = l2_conf(s3_proxy, s3_server, l2)
    url = f"s3://{s3_proxy.endpoint}/{bucket}/obj.bin"
    # the SDK downloads and publishes to the L2 (no version record): a node adopts it
    sdk_conf = tmp_path / "sdk-clearml.conf"
    sdk_conf.write_text(conf)
    sdk_local_copy(tmp_path, sdk_conf, tmp_path / "sdk-l1", url)
    gets = get_bytes(s3_proxy, bucket)
    first = node(mounted, conf, tmp_path, "a", "attr_timeout=0")
    assert first.path_of(url).read_bytes() == old
    assert get_bytes(s3_proxy, bucket) == gets
    # replaced on the server after it reached the L2: no node is served the stale copy
    s3_server.put(bucket, "obj.bin", new)
    second = node(mounted, conf, tmp_path, "b", "attr_timeout=0")
    assert second.path_of(url).read_bytes() == new
    assert first.path_of(url).read_bytes() == new
    third = node(mounted, conf, tmp_path, "c", "attr_timeout=0")
    assert third.path_of(url).read_bytes() == new


def test_hostile_l2_content_is_never_served(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    data = {name: os.urandom(2 * MIB) for name in ("short", "nover", "lease", "partial")}
    for name, body in data.items():
        s3_server.put(bucket, f"{name}.bin", body)
    l2 = tmp_path / "l2"
    host = s3_proxy.endpoint.replace(":", ".")
    folder = l2 / "storage/s3" / host / bucket
    folder.mkdir(parents=True)
    # a wrong-size file; a same-size file with other bytes and no version record (and an
    # mtime older than the object: its ETag is an MD5, which it fails anyway)
    (folder / "short.bin").write_bytes(b"x" * 100)
    (folder / "nover.bin").write_bytes(os.urandom(2 * MIB))
    os.utime(folder / "nover.bin", (1, 1))
    # a dead node's partial file and a stale lease of another node
    (folder / "partial.bin_123.4.partially").write_bytes(data["partial"][:1000])
    from clearmount.cache.layout import disk_space_relpath

    rel = disk_space_relpath(f"s3://{s3_proxy.endpoint}/{bucket}/lease.bin")
    lease = l2 / "clearmount/leases" / hashlib.md5(rel.encode()).hexdigest()
    lease.mkdir(parents=True)
    (lease / "1").write_text(json.dumps({"node": "gone", "pid": 1, "expires": time.time() - 1}))
    conf = l2_conf(s3_proxy, s3_server, l2)
    mount = node(mounted, conf, tmp_path, "n")
    for name, body in data.items():
        url = f"s3://{s3_proxy.endpoint}/{bucket}/{name}.bin"
        assert mount.path_of(url).read_bytes() == body, name
    poll_until(lambda: (folder / "nover.bin").read_bytes() == data["nover"], 30, "republished")
    assert (folder / "short.bin").read_bytes() == data["short"]


def test_lease_holder_killed_mid_fetch_is_taken_over(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    data = os.urandom(8 * MIB)
    s3_server.put(bucket, "big.bin", data)
    l2 = tmp_path / "l2"
    conf = l2_conf(s3_proxy, s3_server, l2)
    url = f"s3://{s3_proxy.endpoint}/{bucket}/big.bin"
    holder = node(mounted, conf, tmp_path, "holder", "l2_takeover=3")
    waiter = node(mounted, conf, tmp_path, "waiter", "l2_takeover=3")
    with holding_the_lease(s3_proxy, holder, url, l2):
        os.kill(holder.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    started = time.monotonic()
    assert waiter.path_of(url).read_bytes() == data
    took = time.monotonic() - started
    print(f"takeover and read in {took:.1f}s (lease 3s)")
    assert "took over the shared cache fetch" in waiter.log_text()


@pytest.mark.parametrize("fault", ["removed", "read-only", "full"])
def test_a_sick_l2_falls_back_to_the_bucket(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path, fault: str
) -> None:
    bucket = s3_server.make_bucket()
    data = os.urandom(3 * MIB)
    s3_server.put(bucket, "obj.bin", data)
    l2 = tmp_path / "l2"
    l2.mkdir()
    conf = l2_conf(s3_proxy, s3_server, l2)
    url = f"s3://{s3_proxy.endpoint}/{bucket}/obj.bin"
    # a read-only filesystem (root ignores permission bits), or a tiny one: the publication
    # runs out of space
    flags = {"read-only": "ro", "full": "size=64k"}
    with tmpfs(l2, flags[fault]) if fault in flags else contextlib.nullcontext(l2):
        mount = node(mounted, conf, tmp_path, "n")
        if fault == "removed":
            l2.rmdir()
            (tmp_path / "l2").write_text("not a directory")  # cannot even be recreated
        started = time.monotonic()
        assert mount.path_of(url).read_bytes() == data
        assert time.monotonic() - started < 30
        poll_until(lambda: "unusable" in mount.log_text(), 10, "the warning")
        assert mount.log_text().count("unusable") == 1


def test_a_hung_l2_never_hangs_a_read(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    data = os.urandom(2 * MIB)
    s3_server.put(bucket, "obj.bin", data)
    # the L2 is a FUSE mount (another clearmount) whose daemon is frozen: every stat, open
    # or read on it hangs, as on a dead NFS server
    frozen = mounted(s3_conf(s3_proxy, s3_server.admin), cache_dir=tmp_path / "frozen-cache")
    l2 = frozen.path / "l2"
    conf = l2_conf(s3_proxy, s3_server, l2)
    url = f"s3://{s3_proxy.endpoint}/{bucket}/obj.bin"
    mount = node(mounted, conf, tmp_path, "n", "l2_timeout=1")
    assert frozen.proc is not None
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert mount.path_of(url).read_bytes() == data
        took = time.monotonic() - started
        print(f"read with a hung L2 in {took:.1f}s (l2_timeout=1)")
        assert took < 20
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
    assert "unusable" in mount.log_text()


def two_nodes(l2: Path, recent_seconds: float) -> tuple[SharedCache, SharedCache, Path]:
    """Two nodes' L2 caches on `l2`, limited to 5 000 bytes (margin 20 %), and the folder of
    a bucket's files in it."""
    from clearmount.cache.shared import L2Limits, SharedCache
    from clearmount.transfer import Transfer

    limits = L2Limits(max_bytes=5000, margin=0.2, recent_seconds=recent_seconds)
    a = SharedCache(l2, Transfer(4, 4), node="a", limits=limits)
    b = SharedCache(l2, Transfer(4, 4), node="b", limits=limits)
    folder = l2 / "storage/s3/bucket"
    folder.mkdir(parents=True)
    return a, b, folder


def test_l2_eviction_one_evictor_never_a_leased_or_fresh_file(tmp_path: Path) -> None:
    l2 = tmp_path / "l2"
    shared, other, folder = two_nodes(l2, recent_seconds=60)
    old = time.time() - 3600
    paths = []
    for i in range(10):
        path = folder / f"f{i}.bin"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (old + i, old))  # atime orders, oldest first
        paths.append(path)
    fresh = folder / "fresh.bin"
    fresh.write_bytes(b"y" * 1000)  # just published
    # f0 is being fetched again under a live lease of another node
    leased = other._acquire(other.leases_dir / hashlib.md5(b"s3/bucket/f0.bin").hexdigest())
    assert leased is not None
    # another node holds the evictor lease: this one does nothing
    evictor = other._acquire(other.evictor_dir)
    assert shared.evict_once() == 0
    other._release(evictor)  # type: ignore[arg-type]
    # 11 000 bytes over 5 000: down to 5 000 * 0.8 = 4 000, least recently used first
    assert shared.evict_once() == 7
    left = sorted(p.name for p in folder.iterdir())
    assert left == ["f0.bin", "f8.bin", "f9.bin", "fresh.bin"]
    assert not list((l2 / "clearmount/evictor").glob("*"))


def test_one_l2_eviction_round_answers_the_whole_fleet(tmp_path: Path) -> None:
    """Each round walks the whole L2 tree: a node does not walk it again for a reason that a
    round of another node, started after that reason, already answered."""
    a, b, folder = two_nodes(tmp_path / "l2", recent_seconds=0)
    assert b.round_due(time.time(), spacing=5) == 0  # no round yet: due now

    before = time.time()
    (folder / "old.bin").write_bytes(b"x" * 6000)
    assert a.evict_once() == 1  # a's round removes it
    assert not (folder / "old.bin").exists()
    assert b.round_due(before, spacing=5) is None  # b's earlier reason is answered
    # b publishes after a's round started: b's round is due, once the fleet's spacing passed
    pause = b.round_due(time.time() + 1, spacing=5)
    assert pause is not None and 0 < pause <= 5
    assert b.round_due(time.time() + 1, spacing=0) == 0
    # a torn record never stops eviction
    a.last_round_path.write_bytes(b"{")
    assert b.round_due(before, spacing=5) == 0


def l2_files(l2: Path) -> dict[str, os.stat_result]:
    """The complete files in the L2's storage tree, by path relative to it."""
    found = {}
    for path in (l2 / "storage").rglob("*"):
        if not path.name.endswith(".partially"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[str(path.relative_to(l2 / "storage"))] = st
    return found


class Watcher:
    """Looks at the L2 tree every few milliseconds: when each file was last seen with which
    mtime, and when it was first missed."""

    def __init__(self, l2: Path) -> None:
        self.l2 = l2
        self.mtime: dict[str, float] = {}
        self.gone: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            files = l2_files(self.l2)
            now = time.time()
            for rel, st in files.items():
                self.mtime[rel] = st.st_mtime
                self.gone.pop(rel, None)
            for rel in self.mtime.keys() - files.keys():
                self.gone.setdefault(rel, now)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def test_l2_size_limit_through_daemons_spares_leased_and_fresh_files(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    """secondary.size through running daemons: after reading more than the L2 holds, it is
    back within its limit; a file under another node's live lease and a file published less
    than cleanup_seconds_threshold ago are never removed; every read is right."""
    bucket = s3_server.make_bucket()
    size, fresh = 2 * MIB, 2.0
    shards = {f"s{i}.bin": os.urandom(size) for i in range(6)}
    old, new = os.urandom(size), os.urandom(size)
    s3_server.put(bucket, "leased.bin", old)
    for key, body in shards.items():
        s3_server.put(bucket, key, body)
    l2 = tmp_path / "l2"
    limit = 3 * size
    conf = l2_conf(
        s3_proxy,
        s3_server,
        l2,
        f"size {{ max_used_bytes: {limit}, cleanup_margin_percent: 0 }}\n"
        f"cleanup_seconds_threshold: {fresh}",
    )
    base = f"s3://{s3_proxy.endpoint}/{bucket}"
    host = s3_proxy.endpoint.replace(":", ".")
    leased_rel = f"s3/{host}/{bucket}/leased.bin"
    reader = node(mounted, conf, tmp_path, "reader")
    assert reader.path_of(f"{base}/leased.bin").read_bytes() == old
    poll_until(lambda: leased_rel in l2_files(l2), 30, "the publication of leased.bin")
    # the object changes; another node fetches its new version under a lease, held up at
    # the bucket, while the L2 still holds the old file, the least recently used one
    s3_server.put(bucket, "leased.bin", new)
    fetcher = node(mounted, conf, tmp_path, "fetcher")
    stall = s3_proxy.stall(MIB, 120, None, method="GET", path=f"/{bucket}/leased.bin")
    slow = subprocess.Popen(
        ["cat", str(fetcher.path_of(f"{base}/leased.bin"))], stdout=subprocess.PIPE
    )
    watcher = Watcher(l2)
    try:
        poll_until(lambda: list((l2 / "clearmount/leases").glob("*/1")), 30, "the lease")
        # the reader reads three times what the L2 holds
        for key, body in shards.items():
            assert reader.path_of(f"{base}/{key}").read_bytes() == body
        poll_until(
            lambda: sum(st.st_size for st in l2_files(l2).values()) <= limit,
            30,
            "the L2 back within its limit",
            interval=0.2,
            diagnose=lambda: f"{sorted(l2_files(l2))}\n{reader.log_text()[-2000:]}",
        )
        assert leased_rel in l2_files(l2)  # its lease is live: kept
        last = f"s3/{host}/{bucket}/s5.bin"
        assert last in l2_files(l2)  # the newest shard stays, as LRU says
        stall.remaining = 0
        s3_proxy.release()
        out, _ = slow.communicate(timeout=60)
        assert out == new
    finally:
        watcher.close()
        slow.kill()
        stall.remaining = 0
        s3_proxy.release()
    # what the watcher saw: nothing went before it was cleanup_seconds_threshold old, and
    # the leased file never went
    assert len(watcher.mtime) == 1 + len(shards), sorted(watcher.mtime)
    assert leased_rel not in watcher.gone
    evicted = {rel: at - watcher.mtime[rel] for rel, at in watcher.gone.items()}
    assert len(evicted) >= 3, evicted
    assert all(age >= fresh for age in evicted.values()), evicted
    assert "evicted" in reader.log_text() + fetcher.log_text()
    # every shard still reads right on a third node (from the L2 or the bucket)
    late = node(mounted, conf, tmp_path, "late")
    for key, body in shards.items():
        assert late.path_of(f"{base}/{key}").read_bytes() == body
    assert late.path_of(f"{base}/leased.bin").read_bytes() == new


def test_a_dead_lease_holder_on_the_same_node_is_taken_over_at_once(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    """Two daemons of one node (same node name): the lease holder is killed mid-fetch; the
    other sees its pid is gone and takes over without waiting for the lease to expire (an
    hour here), and its reader gets the right bytes."""
    bucket = s3_server.make_bucket()
    data = os.urandom(8 * MIB)
    s3_server.put(bucket, "big.bin", data)
    l2 = tmp_path / "l2"
    conf = l2_conf(s3_proxy, s3_server, l2)
    url = f"s3://{s3_proxy.endpoint}/{bucket}/big.bin"
    hour = "l2_takeover=3600"
    holder = mounted(
        conf, cache_dir=tmp_path / "l1-a", env={"CLEARMOUNT_NODE_NAME": "gpu1"}, options=[hour]
    )
    waiter = mounted(
        conf, cache_dir=tmp_path / "l1-b", env={"CLEARMOUNT_NODE_NAME": "gpu1"}, options=[hour]
    )
    assert holder.proc is not None
    with holding_the_lease(s3_proxy, holder, url, l2) as leases:
        lease = json.loads(leases[0].read_text())
        assert (lease["node"], lease["pid"]) == ("gpu1", holder.proc.pid)
        assert lease["expires"] > time.time() + 3000
        # the other daemon's reader waits for the holder's publication
        waiting = subprocess.Popen(["cat", str(waiter.path_of(url))], stdout=subprocess.PIPE)
        poll_until(lambda: shared_status(waiter)["lease_waits"] == 1, 30, "a lease wait")
        holder.proc.kill()
        holder.proc.wait()  # reaped: its pid is gone from this node
    # bounded by the timeout, far below the lease's hour
    out, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and out == data
    assert "took over the shared cache fetch" in waiter.log_text()
    status = shared_status(waiter)
    assert status["takeovers"] == 1
    assert status["misses"] == 1  # it fetched for the fleet, under generation 2
    host = s3_proxy.endpoint.replace(":", ".")
    published = l2 / "storage/s3" / host / bucket / "big.bin"
    poll_until(published.exists, 30, "the publication")
    assert published.read_bytes() == data

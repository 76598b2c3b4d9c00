"""ClearML 2.x's disk-space cache layout: chosen as the SDK 2.1 chooses it, named exactly as
the SDK names its files, evicted by access time with the margin, swept after a crash, and
shared both ways with the real ClearML SDK through a real mount.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clearmount import config
from clearmount.cache.evict import evict, reconcile, scan
from clearmount.cache.index import CacheIndex
from clearmount.cache.layout import (
    DiskSpaceLayout,
    ManagerLayout,
    disk_space_relpath,
    make_layout,
)
from clearmount.cache.limits import CacheLimits
from conftest import MountFactory
from devkit.confs import s3_conf
from devkit.mounts import hermetic_env
from devkit.processes import poll_until
from devkit.proxy import Proxy
from devkit.s3 import S3Server
from support import sdk_local_copy

STRATEGY_ON = "storage { cache { disk_space_file_size_strategy { enabled: true } } }"


def load(tmp_path: Path, text: str, **environ: str) -> config.Config:
    path = tmp_path / "clearml.conf"
    path.write_text(text)
    return config.load(path, environ=environ)


# ----- when the SDK uses the 2.x layout (ClearML 2.1.12's _resolve_disk_strategy_enabled)


@pytest.mark.parametrize(
    ("text", "on", "source"),
    [
        ("", False, ""),
        ("sdk.storage.cache.disk_space_file_size_strategy.enabled: true", True, "enabled"),
        ("sdk.storage.cache.disk_space_file_size_strategy.enabled: false", False, "enabled"),
        ("sdk.storage.cache.size { max_used_bytes: 10GB }", True, "sdk.storage.cache.size"),
        ("sdk.storage.cache.secondary { default_base_dir: /l2 }", True, "secondary"),
        ("sdk.storage.cache.size {}", False, ""),  # an empty section is no opt-in
        (
            "sdk.storage.cache { size { max_used_bytes: 1GB }, "
            "disk_space_file_size_strategy.enabled: false }",
            False,
            "enabled",
        ),
    ],
)
def test_layout_is_chosen_by_clearml_2_1_rule(
    tmp_path: Path, text: str, on: bool, source: str
) -> None:
    cache = load(tmp_path, text).cache
    assert cache.disk_strategy is on
    assert source in cache.disk_strategy_source
    assert cache.layout_name == ("storage" if on else "storage_manager")


def test_strategy_settings_and_the_secondary_cache(tmp_path: Path) -> None:
    text = """sdk.storage.cache {
      cleanup_seconds_threshold: 3
      size { max_used_bytes: 5GB, cleanup_margin_percent: 50 }
      disk_space_file_size_strategy {
        enabled: true
        size { max_used_bytes: 2GB, min_free_bytes: 1GB, cleanup_margin_percent: "10%" }
        secondary { default_base_dir: /shared/l2, size { max_used_bytes: 100GB } }
      }
    }"""
    cache = load(tmp_path, text).cache
    assert (cache.max_used_bytes, cache.min_free_bytes) == (2 * 10**9, 10**9)
    assert cache.cleanup_margin == pytest.approx(0.10)
    assert cache.cleanup_seconds_threshold == 3
    assert cache.secondary is not None
    assert cache.secondary.base_dir == Path("/shared/l2")
    # the L2's own size, and the L1's for what it does not say (as the SDK falls back)
    assert (cache.secondary.max_used_bytes, cache.secondary.min_free_bytes) == (10**11, 10**9)
    # the L2's "just used" window: its own threshold, else 60 s (not the L1's)
    assert cache.secondary.cleanup_seconds_threshold == 60
    own = text.replace("secondary {", "secondary { cleanup_seconds_threshold: 7,")
    assert load(tmp_path, own).cache.secondary.cleanup_seconds_threshold == 7  # type: ignore[union-attr]
    env = load(tmp_path, text, CLEARML_SECONDARY_CACHE_DIR="/env/l2").cache
    assert env.secondary is not None and env.secondary.base_dir == Path("/env/l2")
    assert env.secondary.source == "CLEARML_SECONDARY_CACHE_DIR"
    legacy = load(tmp_path, "sdk.storage.cache.secondary.default_base_dir: /old/l2").cache
    assert legacy.secondary is not None and legacy.secondary.base_dir == Path("/old/l2")
    # without the strategy the SDK has no L2, and neither has clearmount
    off = "sdk.storage.cache.disk_space_file_size_strategy.enabled: false"
    assert load(tmp_path, off, CLEARML_SECONDARY_CACHE_DIR="/l2").cache.secondary is None


def test_clearmount_config_names_the_layout(tmp_path: Path) -> None:
    text = "sdk." + STRATEGY_ON.replace(
        "{ enabled: true }", "{ enabled: true, secondary.default_base_dir: /l2 }"
    )
    shown = config.describe(load(tmp_path, text))
    assert "layout: ClearML 2.x disk-space strategy" in shown
    assert "shared L2 cache: /l2/storage" in shown
    assert "layout: ClearML CacheManager" in config.describe(load(tmp_path, ""))


# ----- where files live: the SDK's own function is the oracle


URLS = [
    "s3://my-minio-host:9000/bucket/data/train.csv",
    "s3://bucket/folder/file.bin",
    "http://host:8081/files/a b/c%20d.bin",
    "https://h/x/y.bin?a=1&b=2",
    "https://h/x/y.bin#frag",
    "s3://b//double//slash/./x",
    "gs://b/" + "a" * 300 + "/f.bin",
    "s3://b/" + "é" * 100 + "/" + "z" * 260,
    "azure://acc.blob.core.windows.net/c/p/x.zip",
    "s3://b/k?q",
    "s3://b/ü ñ/😀.bin",
    "s3://b/a:b/c;d=e,f+g'h&i$j@k!l~m(n)o[p]q\\r",
    "http://h:1/" + "x" * 250 + "?" + "q" * 10,
]


def test_paths_are_exactly_the_sdk_s(tmp_path: Path) -> None:
    pytest.importorskip("clearml")
    os.environ.setdefault("CLEARML_OFFLINE_MODE", "1")
    from clearml.storage.helper import StorageHelper

    class Helper:
        cache_dir = "/C"
        _safe_os_join = staticmethod(StorageHelper._safe_os_join)

    for url in URLS:
        sdk = StorageHelper._get_cache_path(Helper(), url)  # type: ignore[arg-type]
        assert disk_space_relpath(url) == sdk[len("/C/") :], url
    layout = DiskSpaceLayout(tmp_path / "cache")
    assert layout.final_path("s3://my-minio-host:9000/bucket/data/train.csv") == (
        tmp_path / "cache/storage/s3/my-minio-host.9000/bucket/data/train.csv"
    )


def test_a_key_climbing_out_of_the_cache_stays_inside(tmp_path: Path) -> None:
    layout = DiskSpaceLayout(tmp_path / "cache")
    final = layout.final_path("s3://b/../../../etc/passwd")
    assert final.resolve().is_relative_to(layout.data_dir)
    assert layout.owns(layout.name_of(final))
    assert not ManagerLayout(tmp_path / "cache").owns(layout.name_of(final))


# ----- eviction, crash sweep and reconciliation in the tree


def _put(layout: DiskSpaceLayout, index: CacheIndex, url: str, size: int, atime: float) -> Path:
    final = layout.final_path(url)
    final.parent.mkdir(parents=True, exist_ok=True)
    final.write_bytes(b"x" * size)
    os.utime(final, (atime, 1_000_000))  # the mtime says nothing: the atime orders
    index.put(layout.name_of(final), url, "v1", size)
    return final


def test_eviction_by_access_time_with_the_margin(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "cache", True)
    assert isinstance(layout, DiskSpaceLayout)
    layout.prepare()
    index = CacheIndex(layout)
    now = time.time()
    files = [
        _put(layout, index, f"s3://b/dir{i % 3}/f{i}.bin", 1000, now - 1000 + i) for i in range(10)
    ]
    (layout.data_dir / ".session.json").write_text("{}")  # the SDK's, never evicted
    # 10 000 bytes over a 9 500 limit: down to 9 500 * (1 - 0.2) = 7 600, oldest atime first
    limits = CacheLimits(9_500, 0, margin=0.2, recent_seconds=20)
    result = evict(layout, index, limits)
    assert sorted(f.path for f in result.removed) == sorted(files[:3])
    assert result.used_bytes == 7_000
    assert (layout.data_dir / ".session.json").exists()
    assert {e.name for e in index.all()} == {layout.name_of(f) for f in files[3:]}
    # a file used within the threshold stops eviction (ClearML's cleanup_seconds_threshold)
    os.utime(files[3], (now, 1_000_000))
    for f in files[4:]:
        os.utime(f, (now, 1_000_000))
    assert not evict(layout, index, CacheLimits(1, 0, 0.0, 20)).removed
    index.close()


def test_crash_leftovers_in_the_tree_are_swept_and_reconciled(tmp_path: Path) -> None:
    layout = DiskSpaceLayout(tmp_path / "cache")
    layout.prepare()
    index = CacheIndex(layout)
    final = layout.final_path("s3://b/deep/er/obj.bin")
    path, fd = layout.create_partial(final)
    assert path.parent == final.parent
    assert oct(final.parent.stat().st_mode & 0o777) == oct(0o700)
    os.close(fd)  # the writer died
    sdk_partial = final.with_name("other.bin_123.45.partially")
    sdk_partial.write_bytes(b"old")
    os.utime(sdk_partial, (0, 0))
    assert layout.sweep_partials(older_than=60) == 2
    assert not any(p.name.endswith(".partially") for p, _ in layout.files())
    torn = _put(layout, index, "s3://b/torn.bin", 100, time.time())
    torn.write_bytes(b"short")
    legacy_row = "0af722bb8fad377c10129e7a9c5791f4.file.bin"
    index.put(legacy_row, "s3://bucket/folder/file.bin", "v", 5)
    reconcile(layout, index)
    assert not torn.exists()
    # the other layout's rows are left alone (for a switch back)
    assert {e.name for e in index.all()} == {legacy_row}
    assert [f.name for f in scan(layout).files] == []
    index.close()


# ----- through a real mount, with the real SDK


def test_mount_and_sdk_share_the_2x_layout_both_ways(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    pytest.importorskip("clearml")
    bucket = s3_server.make_bucket()
    mount_first, sdk_first = os.urandom(300_000), os.urandom(200_000)
    s3_server.put(bucket, "run/mount-first.bin", mount_first)
    s3_server.put(bucket, "run/sdk-first.bin", sdk_first)
    cache = tmp_path / "shared-cache"
    conf_text = s3_conf(s3_proxy, s3_server.admin, sdk_extra=STRATEGY_ON)
    conf = tmp_path / "clearml.conf"
    conf.write_text(conf_text)
    mount = mounted(conf_text, cache_dir=cache)
    base = f"s3://{s3_proxy.endpoint}/{bucket}/run"
    host = s3_proxy.endpoint.replace(":", ".")

    # the mount fetches into <cache>/storage/s3/<host>/<bucket>/..., the SDK reuses: 0 GET
    assert mount.path_of(f"{base}/mount-first.bin").read_bytes() == mount_first
    assert os.getxattr(mount.path, "user.clearmount.cache_layout") == b"storage"
    local = sdk_local_copy(tmp_path, conf, cache, f"{base}/mount-first.bin")
    assert local == cache / "storage/s3" / host / bucket / "run/mount-first.bin"
    assert local.read_bytes() == mount_first
    assert s3_proxy.count("GET", f"/{bucket}/run/mount-first.bin") == 1
    assert not (cache / "storage_manager/global").exists() or not any(
        (cache / "storage_manager/global").iterdir()
    )

    # the SDK fetches, the mount adopts its file: 0 GET
    local = sdk_local_copy(tmp_path, conf, cache, f"{base}/sdk-first.bin")
    sdk_gets = s3_proxy.count("GET", f"/{bucket}/run/sdk-first.bin")
    assert sdk_gets >= 1
    assert mount.path_of(f"{base}/sdk-first.bin").read_bytes() == sdk_first
    assert s3_proxy.count("GET", f"/{bucket}/run/sdk-first.bin") == sdk_gets
    cached = os.getxattr(mount.path_of(f"{base}/sdk-first.bin"), "user.clearmount.cached")
    assert int(cached) == len(sdk_first)

    # the cache command sees the tree
    result = subprocess.run(
        [sys.executable, "-m", "clearmount", "cache", "ls", "--json", "--config", str(conf)],
        capture_output=True,
        text=True,
        env=dict(hermetic_env(tmp_path), CLEARML_CACHE_DIR=str(cache)),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"{base}/mount-first.bin" in result.stdout
    assert f"{base}/sdk-first.bin" in result.stdout


def clearmount(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "clearmount", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_prefetch_pin_and_the_cache_commands_in_the_2x_layout(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    bodies = {name: os.urandom(100_000 + i) for i, name in enumerate(("a", "b", "c"))}
    for name, body in bodies.items():
        s3_server.put(bucket, f"set/{name}.bin", body)
    cache = tmp_path / "cache"
    conf_text = s3_conf(s3_proxy, s3_server.admin, sdk_extra=STRATEGY_ON)
    conf = tmp_path / "clearml.conf"
    conf.write_text(conf_text)
    mount = mounted(conf_text, cache_dir=cache)
    env = hermetic_env(tmp_path, {"CLEARML_CACHE_DIR": str(cache)})
    base = f"s3://{s3_proxy.endpoint}/{bucket}/set"
    folder = cache / "storage/s3" / s3_proxy.endpoint.replace(":", ".") / bucket / "set"
    url = {name: f"{base}/{name}.bin" for name in bodies}

    pinned = clearmount("prefetch", url["a"], "--pin", "--mountpoint", str(mount.path), env=env)
    assert "prefetched 1 of 1 files" in pinned.stdout
    for name in "bc":
        assert mount.path_of(url[name]).read_bytes() == bodies[name]
    names = lambda: sorted(p.name for p in folder.iterdir())  # noqa: E731
    poll_until(lambda: names() == ["a.bin", "b.bin", "c.bin"], 30, "the fetches", diagnose=names)
    # b was used before c (the 2.x layout orders by atime, mtime kept), a long before both
    now = time.time()
    for name, age in (("a", 3000), ("b", 2000), ("c", 1000)):
        path = folder / f"{name}.bin"
        os.utime(path, ns=(int((now - age) * 1e9), path.stat().st_mtime_ns))

    # ls: every file, its URL and version, the pin
    listed = clearmount("cache", "ls", "--json", "--config", str(conf), env=env).stdout
    rows = {row["url"]: row for row in map(json.loads, listed.splitlines())}
    assert set(rows) == set(url.values())
    assert [rows[url[n]]["pinned"] for n in "abc"] == [True, False, False]
    assert all(rows[url[n]]["size"] == len(bodies[n]) and rows[url[n]]["version"] for n in "abc")
    table = clearmount("cache", "ls", base, "--config", str(conf), env=env).stdout
    assert "pinned" in next(line for line in table.splitlines() if line.endswith("a.bin"))
    du = clearmount("cache", "du", "--config", str(conf), env=env).stdout
    assert str(cache / "storage") in du and "3 files" in du and "1 pinned" in du

    # prune to two files' worth: the least recently used unpinned file goes (b, not a or c)
    target = len(bodies["a"]) + len(bodies["c"])
    clearmount("cache", "prune", "--to", str(target), "--config", str(conf), env=env)
    assert sorted(p.name for p in folder.iterdir()) == ["a.bin", "c.bin"]
    listed = clearmount("cache", "ls", "--json", "--config", str(conf), env=env).stdout
    assert {json.loads(row)["url"] for row in listed.splitlines()} == {url["a"], url["c"]}
    # clear: all but the pinned file; unpin, then nothing is left
    clearmount("cache", "clear", "--config", str(conf), env=env)
    assert [p.name for p in folder.iterdir()] == ["a.bin"]
    clearmount("cache", "unpin", url["a"], "--config", str(conf), env=env)
    clearmount("cache", "prune", "--to", "0", "--config", str(conf), env=env)
    assert list(folder.iterdir()) == []

    # the mount still reads them right (the kernel's page cache may still hold some); the
    # daemon's status names the layout
    for name, body in bodies.items():
        assert mount.path_of(url[name]).read_bytes() == body
    status = clearmount("status", str(mount.path), env=env).stdout
    assert f"{cache} (layout: storage)" in status

"""The cache as a product, through real mounts: bounded, crash-proof, warmable, manageable,
and shared both ways with the real ClearML SDK.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path

import pytest

from conftest import MountFactory
from devkit.confs import s3_conf
from devkit.mounts import hermetic_env, mount_points
from devkit.processes import poll_until, unique_name
from devkit.proxy import Proxy
from devkit.s3 import S3Server
from support import sdk_local_copy

MIB = 1 << 20


def du(folder: Path) -> int:
    total = 0
    for entry in os.scandir(folder):
        try:
            total += entry.stat().st_size
        except FileNotFoundError:
            pass
    return total


def clearmount(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clearmount", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def filled_bucket(s3_server: S3Server) -> tuple[str, dict[str, bytes]]:
    """30 objects of 10 MiB (300 MiB)."""
    bucket = s3_server.make_bucket()
    objects = {f"obj-{i:02d}.bin": os.urandom(10 * MIB) for i in range(30)}
    for key, data in objects.items():
        s3_server.put(bucket, key, data)
    return bucket, objects


def test_limit_holds_under_load_and_spares_open_pinned_and_recent(
    mounted: MountFactory,
    s3_server: S3Server,
    s3_proxy: Proxy,
    filled_bucket: tuple[str, dict[str, bytes]],
    tmp_path: Path,
) -> None:
    bucket, objects = filled_bucket
    cache = tmp_path / "cache"
    base_url = f"s3://{s3_proxy.endpoint}/{bucket}"
    pinned_url = f"{base_url}/obj-01.bin"
    env = hermetic_env(tmp_path)
    assert (
        clearmount("cache", "pin", pinned_url, "--cache-dir", str(cache), env=env).returncode == 0
    )
    mount = mounted(
        s3_conf(s3_proxy, s3_server.admin),
        cache_dir=cache,
        extra_args=["--cache-max-size", "100MiB", "--cache-min-free", "0"],
    )
    folder = cache / "storage_manager/global"
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, du(folder))
            stop.wait(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    held = open(mount.path_of(f"{base_url}/obj-00.bin"), "rb")  # noqa: SIM115 (held open)
    try:
        assert held.read() == objects["obj-00.bin"]
        assert mount.path_of(pinned_url).read_bytes() == objects["obj-01.bin"]
        for i, (key, data) in enumerate(sorted(objects.items())[2:]):
            assert mount.path_of(f"{base_url}/{key}").read_bytes() == data, key
            if i % 3 == 0:  # keep obj-02 recently used
                assert mount.path_of(f"{base_url}/obj-02.bin").read_bytes()[:1]
        stop.set()
        sampler.join()
        overshoot = peak - 100 * MIB
        print(f"limit 100 MiB: peak {peak / MIB:.1f} MiB, overshoot {overshoot / MIB:.1f} MiB")
        assert overshoot <= 10 * MIB, f"peak {peak} bytes"
        poll_until(lambda: du(folder) <= 100 * MIB, 20, "eviction to settle")
        names = {p.name.split(".", 1)[1] for p in folder.iterdir()}
        assert {"obj-00.bin", "obj-01.bin", "obj-02.bin"} <= names  # open, pinned, recent
        assert "obj-03.bin" not in names  # least recently used went first
        held.seek(0)
        assert held.read() == objects["obj-00.bin"]
    finally:
        stop.set()
        held.close()


def test_object_larger_than_the_cache_is_streamed_not_cached(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    data = os.urandom(40 * MIB)
    s3_server.put(bucket, "huge.bin", data)
    mount = mounted(
        s3_conf(s3_proxy, s3_server.admin),
        extra_args=["--cache-max-size", "16MiB", "--cache-min-free", "0"],
    )
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/huge.bin")
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
    with open(path, "rb") as f:
        f.seek(33 * MIB + 5)
        assert f.read(1000) == data[33 * MIB + 5 : 33 * MIB + 1005]
    assert du(mount.cache_dir / "storage_manager/global") == 0
    assert "more than the cache can hold" in mount.log_text()


def test_a_cache_disk_without_room_is_named_at_start_and_files_still_read(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    bucket = s3_server.make_bucket()
    data = os.urandom(3 * MIB)
    s3_server.put(bucket, "weights.bin", data)
    mount = mounted(s3_conf(s3_proxy, s3_server.admin), extra_args=["--cache-min-free", "1000TiB"])
    warning = next(
        line for line in mount.log_text().splitlines() if "left for cached files" in line
    )
    assert "WARNING" in warning and str(mount.cache_dir) in warning
    assert "no room" in warning and "--cache-min-free" in warning
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/weights.bin")
    assert path.read_bytes() == data  # streamed: served, not cached
    assert du(mount.cache_dir / "storage_manager/global") == 0


def test_prefetch_then_reads_make_no_get_and_pins_survive_prune(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    client = s3_server.client()
    payload = {f"set/part-{i:03d}.bin": os.urandom(1000 + i) for i in range(200)}
    for key, data in payload.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    env = hermetic_env(tmp_path, {"CLEARML_CACHE_DIR": str(mount.cache_dir)})
    url = f"s3://{s3_proxy.endpoint}/{bucket}/set"
    result = clearmount(
        "prefetch", url, "--recursive", "--pin", "--mountpoint", str(mount.path), env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "prefetched 200 of 200 files" in result.stdout
    s3_proxy.reset()
    for key, data in payload.items():
        assert mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}").read_bytes() == data
    assert s3_proxy.count("GET", prefix=f"/{bucket}/set/") == 0
    pruned = clearmount("cache", "prune", "--to", "0", env=env)
    assert pruned.returncode == 0, pruned.stderr
    folder = mount.cache_dir / "storage_manager/global"
    assert len(list(folder.iterdir())) == 200  # every one pinned
    assert clearmount("cache", "unpin", "--all", env=env).returncode == 0
    assert clearmount("cache", "prune", "--to", "0", env=env).returncode == 0
    assert list(folder.iterdir()) == []
    missing = clearmount(
        "prefetch",
        f"s3://{s3_proxy.endpoint}/{bucket}/nope.bin",
        "--mountpoint",
        str(mount.path),
        env=env,
    )
    assert missing.returncode == 1 and "FAILED" in missing.stderr and "nope.bin" in missing.stderr
    assert "prefetched 0 of 0 files" in missing.stdout and "; 1 failed" in missing.stdout


def test_prefetch_reports_every_failure_and_goes_on(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    admin, second = s3_server.admin, s3_server.second
    good = s3_server.make_bucket()
    payload = {f"data/ok-{i}.bin": os.urandom(3000 + i) for i in range(3)}
    for key, data in payload.items():
        s3_server.put(good, key, data)
    s3_server.put(good, "data/denied.bin", b"d" * 100)
    forbidden = s3_server.make_bucket()  # credentials refused: not even looked up
    s3_server.put(forbidden, "x.txt", b"x")
    unlistable = s3_server.make_bucket()  # looked up, but its listing is refused
    s3_server.put(unlistable, "y.txt", b"y")
    conf = s3_conf(
        s3_proxy, {"bucket": forbidden, "key": second.key, "secret": second.secret}, admin
    )
    mount = mounted(conf)
    denied_xml = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
    s3_proxy.fail(None, 403, method="GET", path=f"/{good}/data/denied.bin", body=denied_xml)
    s3_proxy.fail(None, 403, method="GET", path=f"/{unlistable}", body=denied_xml)
    base = f"s3://{s3_proxy.endpoint}"
    env = hermetic_env(tmp_path)
    result = clearmount(
        "prefetch",
        f"{base}/{good}/data",
        f"{base}/{forbidden}/x.txt",
        f"{base}/{good}/nope.bin",
        f"{base}/{unlistable}",
        "--recursive",
        "--mountpoint",
        str(mount.path),
        env=env,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "prefetched 3 of 4 files" in result.stdout and "; 4 failed" in result.stdout
    assert {line for line in result.stderr.splitlines() if line.startswith("FAILED")} == {
        f"FAILED {base}/{forbidden}/x.txt: Permission denied (EACCES)",
        f"FAILED {base}/{good}/data/denied.bin: Permission denied (EACCES)",
        f"FAILED {base}/{good}/nope.bin: No such file or directory (ENOENT)",
        f"FAILED {base}/{unlistable}: Permission denied (EACCES)",
    }
    # what could be fetched was: reading it now makes no GET
    s3_proxy.reset()
    for key, data in payload.items():
        assert mount.path_of(f"{base}/{good}/{key}").read_bytes() == data
    assert s3_proxy.count("GET", prefix=f"/{good}/data/") == 0


def test_prefetch_without_a_mount_uses_a_temporary_one(
    s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "warm.bin", b"w" * 5000)
    forbidden = s3_server.make_bucket()
    s3_server.put(forbidden, "k", b"k")
    second = s3_server.second
    conf = tmp_path / "clearml.conf"
    conf.write_text(
        s3_conf(
            s3_proxy,
            {"bucket": forbidden, "key": second.key, "secret": second.secret},
            s3_server.admin,
        )
    )
    cache = tmp_path / "cache"
    env = hermetic_env(tmp_path)
    result = clearmount(
        "prefetch",
        f"s3://{s3_proxy.endpoint}/{bucket}/warm.bin",
        f"s3://{s3_proxy.endpoint}/{forbidden}/k",
        "--config",
        str(conf),
        "--cache-dir",
        str(cache),
        env=env,
    )
    # the failure names the URL, not the temporary mount's path
    assert result.returncode == 1, result.stdout + result.stderr
    assert "prefetched 1 of 1 files" in result.stdout, result.stdout
    assert result.stderr.splitlines() == [
        f"FAILED s3://{s3_proxy.endpoint}/{forbidden}/k: Permission denied (EACCES)"
    ]
    files = list((cache / "storage_manager/global").iterdir())
    assert [f.read_bytes() for f in files] == [b"w" * 5000]
    assert not [m for m in mount_points() if "clearmount-prefetch-" in m]  # unmounted again


def test_cache_commands_while_readers_hold_files_open(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    for i in range(4):
        s3_server.put(bucket, f"f{i}.bin", bytes([i]) * 100_000)
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    env = hermetic_env(tmp_path, {"CLEARML_CACHE_DIR": str(mount.cache_dir)})
    base = f"s3://{s3_proxy.endpoint}/{bucket}"
    for i in range(4):
        mount.path_of(f"{base}/f{i}.bin").read_bytes()
    with open(mount.path_of(f"{base}/f0.bin"), "rb") as reader:
        listing = clearmount("cache", "ls", base, "--json", env=env)
        rows = [json.loads(line) for line in listing.stdout.splitlines()]
        assert sorted(r["url"] for r in rows) == [f"{base}/f{i}.bin" for i in range(4)]
        assert all(r["size"] == 100_000 and r["complete"] and r["version"] for r in rows)
        table = clearmount("cache", "ls", base, env=env).stdout.splitlines()
        assert table[0].split() == ["SIZE", "LAST", "ACCESS", "VERSION", "FLAGS", "URL"]
        assert len(table) == 5
        for row in rows:
            line = next(line for line in table if line.endswith(row["url"]))
            version = row["version"]  # an MD5 ETag: 32 characters, cut to a fixed width
            assert len(version) > 13 and f"  {version[:12]}…  " in line, line
            assert line.index("…") == table[0].index("VERSION") + 12  # columns line up
        usage = clearmount("cache", "du", env=env)
        assert "4 files" in usage.stdout, usage.stdout + usage.stderr
        cleared = clearmount("cache", "clear", env=env)
        assert cleared.returncode == 0 and "kept 1" in cleared.stdout, cleared.stdout
        remaining = [p.name for p in (mount.cache_dir / "storage_manager/global").iterdir()]
        assert len(remaining) == 1 and remaining[0].endswith("f0.bin")
        assert reader.read() == bytes([0]) * 100_000
    # evicted files are plain misses: fetched again, right bytes
    assert mount.path_of(f"{base}/f3.bin").read_bytes() == bytes([3]) * 100_000


def test_sigkill_mid_fetch_of_300mib_then_restart_serves_right_bytes(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    data = os.urandom(300 * MIB)
    s3_server.put(bucket, "big.bin", data)
    cache = tmp_path / "cache"
    conf = s3_conf(s3_proxy, s3_server.admin)
    first = mounted(conf, cache_dir=cache)
    url = f"s3://{s3_proxy.endpoint}/{bucket}/big.bin"
    folder = cache / "storage_manager/global"
    reader = subprocess.Popen(
        ["cat", str(first.path_of(url))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    poll_until(lambda: any(du(folder) > 20 * MIB for _ in [0]), 60, "a partly fetched object")
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait(10)
    reader.wait(30)
    second = mounted(conf, cache_dir=cache, mountpoint=first.path)
    poll_until(lambda: "ready:" in second.log_text(), 30, "the restarted daemon")
    assert not list(folder.glob("*.partially"))
    got = hashlib.sha256(second.path_of(url).read_bytes()).hexdigest()
    assert got == hashlib.sha256(data).hexdigest()
    # the reader has every byte before the fetch has checked the whole file's MD5 and renamed
    # it into place
    poll_until(lambda: not list(folder.glob("*.partially")), 30, "the fetch to be installed")
    assert [p.stat().st_size for p in folder.iterdir()] == [len(data)]  # the one final file


def test_size_mismatch_found_at_start_is_discarded_with_a_warning(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "x.bin", b"right bytes")
    cache = tmp_path / "cache"
    conf = s3_conf(s3_proxy, s3_server.admin)
    url = f"s3://{s3_proxy.endpoint}/{bucket}/x.bin"
    first = mounted(conf, cache_dir=cache)
    assert first.path_of(url).read_bytes() == b"right bytes"
    first.stop()
    (cached,) = (cache / "storage_manager/global").iterdir()
    cached.write_bytes(b"torn")
    second = mounted(conf, cache_dir=cache)
    assert "discarding cache file" in second.log_text()
    assert second.path_of(url).read_bytes() == b"right bytes"


def test_clearml_sdk_and_mount_share_downloads_both_ways(
    mounted: MountFactory,
    s3_server: S3Server,
    s3_proxy: Proxy,
    tmp_path: Path,
) -> None:
    pytest.importorskip("clearml")
    bucket = s3_server.make_bucket()
    mount_first, sdk_first = os.urandom(300_000), os.urandom(200_000)
    s3_server.put(bucket, "mount-first.bin", mount_first)
    s3_server.put(bucket, "sdk-first.bin", sdk_first)
    cache = tmp_path / "shared-cache"
    conf_text = s3_conf(s3_proxy, s3_server.admin)
    conf = tmp_path / "clearml.conf"
    conf.write_text(conf_text)
    mount = mounted(conf_text, cache_dir=cache)
    base = f"s3://{s3_proxy.endpoint}/{bucket}"

    # the mount fetches, the SDK reuses
    assert mount.path_of(f"{base}/mount-first.bin").read_bytes() == mount_first
    local = sdk_local_copy(tmp_path, conf, cache, f"{base}/mount-first.bin")
    assert local.read_bytes() == mount_first
    assert local.parent == cache / "storage_manager/global"
    assert s3_proxy.count("GET", f"/{bucket}/mount-first.bin") == 1

    # the SDK fetches, the mount reuses
    local = sdk_local_copy(tmp_path, conf, cache, f"{base}/sdk-first.bin")
    sdk_gets = s3_proxy.count("GET", f"/{bucket}/sdk-first.bin")
    assert sdk_gets >= 1
    assert mount.path_of(f"{base}/sdk-first.bin").read_bytes() == sdk_first
    assert s3_proxy.count("GET", f"/{bucket}/sdk-first.bin") == sdk_gets
    print(f"GETs: mount-first 1 (mount) + 0 (SDK); sdk-first {sdk_gets} (SDK) + 0 (mount)")

    # the SDK's own clean-up deleting our file is a plain miss
    local.unlink()
    for path in (cache / "storage_manager/global").iterdir():
        path.unlink()
    fresh = unique_name("after-cleanup")
    s3_server.put(bucket, f"{fresh}.bin", b"after")
    assert mount.path_of(f"{base}/mount-first.bin").read_bytes() == mount_first
    assert mount.path_of(f"{base}/{fresh}.bin").read_bytes() == b"after"


def test_two_daemons_sharing_one_cache_never_tear_a_file(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    data = os.urandom(24 * MIB)
    s3_server.put(bucket, "shared.bin", data)
    cache = tmp_path / "cache"
    conf = s3_conf(s3_proxy, s3_server.admin)
    first, second = mounted(conf, cache_dir=cache), mounted(conf, cache_dir=cache)
    url = f"s3://{s3_proxy.endpoint}/{bucket}/shared.bin"
    readers = [
        subprocess.Popen(["sha256sum", str(mount.path_of(url))], stdout=subprocess.PIPE, text=True)
        for mount in (first, second, first, second)
    ]
    sums = {proc.communicate(timeout=120)[0].split()[0] for proc in readers}
    assert sums == {hashlib.sha256(data).hexdigest()}
    poll_until(
        lambda: not list((cache / "storage_manager/global").glob("*.partially")), 30, "renames"
    )
    (final,) = (cache / "storage_manager/global").iterdir()
    assert hashlib.sha256(final.read_bytes()).digest() == hashlib.sha256(data).digest()


def recorded_urls(index: Path) -> set[str]:
    """The URLs an index database has rows for, read as the `cache` commands would."""
    if not index.exists():
        return set()
    try:
        with closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as db:
            return {row[0] for row in db.execute("SELECT url FROM entries")}
    except sqlite3.OperationalError:  # being created right now
        return set()


@pytest.mark.parametrize("removed", ["clearmount", "."], ids=["index-folder", "whole-cache"])
def test_index_removed_under_the_daemon_is_recreated(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, removed: str
) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "before.bin", b"b" * 1000)
    s3_server.put(bucket, "after.bin", b"a" * 2000)
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    base = f"s3://{s3_proxy.endpoint}/{bucket}"
    index = mount.cache_dir / "clearmount" / "index.sqlite3"
    assert mount.path_of(f"{base}/before.bin").read_bytes() == b"b" * 1000
    poll_until(lambda: f"{base}/before.bin" in recorded_urls(index), 30, "the first row")
    shutil.rmtree(mount.cache_dir / removed)  # the operator clears the cache by hand
    assert mount.path_of(f"{base}/after.bin").read_bytes() == b"a" * 2000
    poll_until(
        lambda: recorded_urls(index) == {f"{base}/after.bin"},
        30,
        "the second file's row in a recreated index",
        diagnose=lambda: f"rows: {recorded_urls(index)}",
    )
    assert stat.S_IMODE(index.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(index.stat().st_mode) == 0o600
    assert "was removed or replaced: opened it afresh" in mount.log_text()
    # the first file, fetched again, is recorded in the new index too
    assert mount.path_of(f"{base}/before.bin").read_bytes() == b"b" * 1000
    poll_until(lambda: len(recorded_urls(index)) == 2, 30, "both rows")


def test_small_files_whose_rows_died_with_the_daemon_are_adopted_not_fetched_again(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    # a fetch's index row is written with others' in one transaction a moment later: a
    # daemon killed before that leaves files without rows, which the next daemon adopts by
    # their MD5 (no second GET) and records
    bucket = s3_server.make_bucket()
    objects = {f"s/{i:03d}.bin": os.urandom(64 * 1024) for i in range(40)}
    for key, data in objects.items():
        s3_server.put(bucket, key, data)
    cache = tmp_path / "cache"
    conf = s3_conf(s3_proxy, s3_server.admin)
    first = mounted(conf, cache_dir=cache)
    base = f"s3://{s3_proxy.endpoint}/{bucket}"
    for key, data in objects.items():
        assert first.path_of(f"{base}/{key}").read_bytes() == data
    # a read returns once its bytes are on disk, a moment before the file is renamed into
    # place: kill only once every file is (a partial file is rightly fetched again)
    folder = cache / "storage_manager/global"
    poll_until(lambda: not list(folder.glob("*.partially")), 30, "renames")
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait(10)
    index = cache / "clearmount" / "index.sqlite3"
    # whether the kill beat the batch is timing: make sure rows are missing, as they are
    # when it does
    with closing(sqlite3.connect(index)) as db, db:
        db.execute("DELETE FROM entries WHERE url LIKE ?", (f"{base}/s/0%",))
    assert not {f"{base}/s/{i:03d}.bin" for i in range(10)} & recorded_urls(index)
    s3_proxy.reset()
    second = mounted(conf, cache_dir=cache, mountpoint=first.path)
    poll_until(lambda: "ready:" in second.log_text(), 30, "the restarted daemon")
    for key, data in objects.items():
        assert second.path_of(f"{base}/{key}").read_bytes() == data
    assert s3_proxy.count("GET", prefix=f"/{bucket}/s/") == 0
    wanted = {f"{base}/{key}" for key in objects}
    poll_until(
        lambda: wanted <= recorded_urls(index),
        30,
        "a row for every file",
        diagnose=lambda: f"missing: {sorted(wanted - recorded_urls(index))[:3]}",
    )

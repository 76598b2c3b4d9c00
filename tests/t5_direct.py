"""Direct access through a real mount: local/NFS trees and remapped prefixes are symlinks,
so their bytes never pass through the daemon and never land in the cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import MountFactory
from devkit.confs import s3_conf
from devkit.mounts import hermetic_env
from devkit.proxy import Proxy
from devkit.s3 import S3Server

MIB = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def storage_conf(proxy: Proxy, server: S3Server, storage: str) -> str:
    return s3_conf(proxy, server.admin, sdk_extra=f"storage {{ {storage} }}")


def reads_served(log: str) -> int:
    line = next(line for line in log.splitlines() if "unmounted" in line)
    return int(line.split("served ")[1].split(" reads")[0])


@pytest.fixture(scope="module")
def nfs_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local tree standing for an NFS share: nested dirs, a 200 MiB file, odd names."""
    root = tmp_path_factory.mktemp("nfs") / "team"
    (root / "artifacts/run 1/ünï").mkdir(parents=True)
    (root / "datasets/val").mkdir(parents=True)
    with open(root / "artifacts/run 1/weights.bin", "wb") as f:
        for _ in range(200):
            f.write(os.urandom(MIB))
    (root / "artifacts/run 1/ünï/notes +%.txt").write_text("odd names\n")
    for i in range(5):
        np.save(root / f"datasets/val/part-{i}.npy", np.arange(i, i + 100))
    return root


def test_local_tree_is_passed_through_untouched(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, nfs_tree: Path
) -> None:
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    through = mount.path / "file" / str(nfs_tree).lstrip("/")
    assert os.path.islink(mount.path / "file" / str(nfs_tree).lstrip("/").split("/")[0])
    assert sorted(os.listdir(through / "artifacts/run 1")) == ["weights.bin", "ünï"]
    big = "artifacts/run 1/weights.bin"
    assert sha256_file(through / big) == sha256_file(nfs_tree / big)
    odd = "artifacts/run 1/ünï/notes +%.txt"
    assert (through / odd).read_text() == "odd names\n"
    walked = sorted(
        os.path.relpath(os.path.join(d, f), through) for d, _, fs in os.walk(through) for f in fs
    )
    expected = sorted(
        os.path.relpath(os.path.join(d, f), nfs_tree) for d, _, fs in os.walk(nfs_tree) for f in fs
    )
    assert walked == expected
    mount.stop()
    assert reads_served(mount.log_text()) == 0
    assert not any((mount.cache_dir / "storage_manager/global").iterdir())
    assert s3_proxy.count() == 0


def test_path_substitution_serves_local_bytes_without_s3_requests(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, nfs_tree: Path
) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "live/model.pt", b"from s3")
    s3_server.put(bucket, "archive/weights.bin", b"the s3 copy, must not be read")
    rules = (
        "path_substitution: [ "
        f'{{ registered_prefix: "s3://{s3_proxy.endpoint}/{bucket}/archive/", '
        f'local_prefix: "file://{nfs_tree}/artifacts/run 1/" }} ]'
    )
    mount = mounted(storage_conf(s3_proxy, s3_server, rules))
    base = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}")
    archived = base / "archive/weights.bin"
    assert sha256_file(archived) == sha256_file(nfs_tree / "artifacts/run 1/weights.bin")
    assert os.readlink(base / "archive") == f"{nfs_tree}/artifacts/run 1"
    assert s3_proxy.count(prefix=f"/{bucket}/archive") == 0
    assert (base / "live/model.pt").read_bytes() == b"from s3"
    assert sorted(os.listdir(base)) == ["archive", "live"]
    assert not any(
        p.name.endswith("weights.bin")
        for p in (mount.cache_dir / "storage_manager/global").iterdir()
    )
    env = hermetic_env(mount.path.parent)
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "clearmount",
            "path",
            f"s3://{s3_proxy.endpoint}/{bucket}/archive/weights.bin",
            "--config",
            str(mount.config_path),
            "--mountpoint",
            str(mount.path),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert (
        f"direct: {nfs_tree}/artifacts/run 1/weights.bin (sdk.storage.path_substitution[0])"
        in shown
    )


def test_substitutions_apply_in_config_order_first_match_wins(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "f").mkdir(parents=True)
    (second / "x/f").mkdir(parents=True)
    (first / "f/a.txt").write_text("first")
    (second / "x/f/a.txt").write_text("second")
    (second / "y.txt").write_text("second y")
    prefix = f"s3://{s3_proxy.endpoint}/{bucket}"
    rules = (
        "path_substitution: [ "
        f'{{ registered_prefix: "{prefix}/x/", local_prefix: "file://{first}/" }}, '
        f'{{ registered_prefix: "{prefix}/", local_prefix: "file://{second}/" }} ]'
    )
    mount = mounted(storage_conf(s3_proxy, s3_server, rules))
    base = mount.path_of(prefix)
    assert (base / "x/f/a.txt").read_text() == "first"
    assert (base / "y.txt").read_text() == "second y"
    assert os.readlink(base / "x") == str(first)
    assert s3_proxy.count("GET", prefix=f"/{bucket}/") == 0


@pytest.fixture
def root_dir_for(s3_proxy: Proxy) -> Iterator[Path]:
    """ClearML maps a direct_access hit s3://netloc/path to the local path /netloc/path."""
    path = Path("/") / s3_proxy.endpoint
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_direct_access_globs_prefix_and_fnmatch_forms(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, root_dir_for: Path
) -> None:
    bucket = s3_server.make_bucket()
    for key in ("shared/a.txt", "run-1/r.txt", "run-10/r.txt", "other/o.txt"):
        s3_server.put(bucket, key, b"s3: " + key.encode())
    local = root_dir_for / bucket
    for rel in ("shared/a.txt", "run-1/r.txt"):
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_text("local: " + rel)
    prefix = f"s3://{s3_proxy.endpoint}/{bucket}"
    rules = (
        f'direct_access: [ {{ url: "file://*" }}, {{ url: "{prefix}/shared/*" }}, '
        f'{{ url: "{prefix}/run-?/*" }} ]'
    )
    mount = mounted(storage_conf(s3_proxy, s3_server, rules))
    base = mount.path_of(prefix)
    assert (base / "shared/a.txt").read_text() == "local: shared/a.txt"  # trailing-* prefix form
    assert (base / "run-1/r.txt").read_text() == "local: run-1/r.txt"  # fnmatch form
    assert (base / "run-10/r.txt").read_bytes() == b"s3: run-10/r.txt"  # ? is one character
    assert (base / "other/o.txt").read_bytes() == b"s3: other/o.txt"
    assert os.path.islink(base / "shared") and os.path.islink(base / "run-1")
    assert s3_proxy.count("GET", f"/{bucket}/shared/a.txt") == 0
    assert s3_proxy.count("GET", f"/{bucket}/run-1/r.txt") == 0


def test_missing_local_target_is_enoent_with_the_rule_named(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    rules = (
        "path_substitution: [ "
        f'{{ registered_prefix: "s3://{s3_proxy.endpoint}/{bucket}/gone/", '
        f'local_prefix: "file://{tmp_path}/not-there/" }} ]'
    )
    mount = mounted(storage_conf(s3_proxy, s3_server, rules))
    with pytest.raises(FileNotFoundError):
        (mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}") / "gone/x.bin").read_bytes()
    log = mount.log_text()
    assert "does not exist" in log and "sdk.storage.path_substitution[0]" in log


def test_rule_looping_into_the_mount_is_refused_at_start(
    s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    conf = tmp_path / "clearml.conf"
    rules = (
        "path_substitution: [ "
        f'{{ registered_prefix: "s3://{s3_proxy.endpoint}/b/", '
        f'local_prefix: "file://{mnt}/s3/" }} ]'
    )
    conf.write_text(storage_conf(s3_proxy, s3_server, rules))
    result = subprocess.run(
        [sys.executable, "-m", "clearmount", str(mnt), "--config", str(conf), "--foreground"],
        capture_output=True,
        text=True,
        env=hermetic_env(tmp_path),
        timeout=60,
        check=False,
    )
    assert result.returncode == 3
    assert "path_substitution[0]" in result.stderr and "loop" in result.stderr
    assert not os.path.ismount(mnt)


def test_legacy_script_works_on_direct_and_cached_paths(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, nfs_tree: Path, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    for i in range(3):
        buffer = tmp_path / f"part-{i}.npy"
        np.save(buffer, np.arange(i, i + 100))
        s3_server.put(bucket, f"val/part-{i}.npy", buffer.read_bytes())
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    script = tmp_path / "legacy.py"
    script.write_text(
        "import os, shutil, sys, numpy\n"
        "total = 0\n"
        "for root in sys.argv[1:3]:\n"
        "    for d, _, files in os.walk(root):\n"
        "        for f in sorted(files):\n"
        "            p = os.path.join(d, f)\n"
        "            copy = shutil.copy(p, sys.argv[3])\n"
        "            assert open(p, 'rb').read() == open(copy, 'rb').read()\n"
        "            total += int(numpy.load(p).sum())\n"
        "print(total)\n"
    )
    direct = mount.path / "file" / str(nfs_tree / "datasets/val").lstrip("/")
    cached = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/val")
    out = subprocess.run(
        [sys.executable, str(script), str(direct), str(cached), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    expected = sum(int(np.arange(i, i + 100).sum()) for i in range(5)) + sum(
        int(np.arange(i, i + 100).sum()) for i in range(3)
    )
    assert int(out) == expected


def test_nofile_hides_local_paths(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    mount = mounted(s3_conf(s3_proxy, s3_server.admin), options=["nofile"])
    assert "file" not in os.listdir(mount.path)
    assert not (mount.path / "file/etc").exists()
    with_file = mounted(s3_conf(s3_proxy, s3_server.admin))
    assert "file" in os.listdir(with_file.path)
    assert (with_file.path / "file/etc/hostname").read_text() == Path("/etc/hostname").read_text()
    url = subprocess.run(
        [sys.executable, "-m", "clearmount", "url", str(with_file.path / "file/etc/hostname")],
        capture_output=True,
        text=True,
        check=True,
        env=hermetic_env(with_file.path.parent),
    ).stdout.strip()
    assert url == "file:///etc/hostname"

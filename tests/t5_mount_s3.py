"""The read path through a real mount: SeaweedFS on 127.0.0.1 behind the counting proxy.

What a user relies on: the bytes read equal the bytes stored, listings are complete, one
fetch serves every concurrent reader, cached files are reused (ours and the SDK's), changed
objects are seen after the TTL while old readers keep their bytes, and errors are the
documented errno with a log line that names the URL.
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import random
import struct
import subprocess
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs

import pytest

from clearmount import workers
from clearmount.cache.fetch import FIRST_WINDOW
from conftest import MountFactory
from devkit.confs import s3_conf
from devkit.processes import poll_until, unique_name
from devkit.proxy import Proxy, Seen
from devkit.s3 import S3Server
from support import Mount, status_json, written_by_fetch_processes

MIB = 1 << 20


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    return s3_server.make_bucket()


@pytest.fixture(scope="module")
def big_object(s3_server: S3Server, bucket: str) -> tuple[str, bytes]:
    """A 300 MiB object, uploaded once per module (multipart, as ClearML uploads)."""
    data = os.urandom(300 * MIB)
    key = "checkpoints/big.bin"
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=data)
    return key, data


@pytest.fixture(scope="module")
def zip_object(s3_server: S3Server, bucket: str) -> tuple[str, bytes]:
    """A 160 MiB zip of 32 stored members of 5 MiB (a checkpoint, as torch.save lays it out:
    headers far apart, the directory at the end)."""
    rng = random.Random(15)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i in range(32):
            archive.writestr(f"checkpoint/data/{i}", rng.randbytes(5 * MIB))
    key = "checkpoints/zipped.pt"
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=out.getvalue())
    return key, out.getvalue()


def test_bytes_equal_for_small_odd_and_large_objects(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str, big_object
) -> None:
    objects = {
        "sizes/zero": b"",
        "sizes/one": b"x",
        "odd names/with space.txt": b"space",
        "odd names/ünïcødé ✓.txt": b"unicode",
        "odd names/plus+sign.txt": b"plus",
        "odd names/per%25cent%.txt": b"percent",
    }
    for key, data in objects.items():
        s3_server.put(bucket, key, data)
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    for key, data in objects.items():
        path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")
        assert read_file(path) == data, key
        assert path.stat().st_size == len(data)

    key, data = big_object
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")
    assert path.stat().st_size == len(data)
    # random offsets first, while the fetch runs: each read waits only for its own bytes
    rng = random.Random(7)
    with open(path, "rb") as f:
        for _ in range(200):
            offset = rng.randrange(len(data))
            length = rng.choice([1, 4096, 131072, MIB + 17])
            f.seek(offset)
            assert f.read(length) == data[offset : offset + length], offset
        f.seek(len(data) - 1)
        assert f.read(10) == data[-1:]
    assert sha256(read_file(path)) == sha256(data)
    # ranged GETs only, and the object was not pulled twice over for those jumps
    gets = s3_proxy.requests("GET", f"/{bucket}/{key}")
    assert all(g.ranged for g in gets)
    assert sum(g.body_bytes for g in gets) < 2 * len(data)


def requested(gets: list[Seen]) -> list[tuple[int, int]]:
    """The byte ranges [start, end) the GETs asked for, in the order they came."""
    ranges = []
    for get in gets:
        assert get.range is not None, "a GET of the whole object"
        first, _, last = get.range.removeprefix("bytes=").partition("-")
        ranges.append((int(first), int(last) + 1))
    return ranges


def test_a_read_at_the_end_of_a_cold_object_is_served_by_its_own_small_get(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str, big_object
) -> None:
    # torch.load and zip readers read the directory at the end first: that byte must not
    # wait behind (nor pay for) parallel GETs of the whole object from its start
    key, data = big_object
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")
    size = path.stat().st_size
    s3_proxy.reset()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 1, size - 1) == data[-1:]
        # what the server had been asked for when the byte came back
        asked = requested(s3_proxy.requests("GET", f"/{bucket}/{key}"))
    finally:
        os.close(fd)
    # a GET of its own from near the end, and at most the opener's first window besides
    # (which a reader from the start would want): not 16 parts of 8 MiB from offset 0
    assert any(end == size and start >= size - FIRST_WINDOW for start, end in asked), asked
    assert sum(end - start for start, end in asked) <= 2 * FIRST_WINDOW, asked
    # the file opened is still fetched whole into the cache, each byte about once
    poll_until(
        lambda: int(os.getxattr(path, "user.clearmount.cached")) == size,
        120,
        "the whole object in the cache",
    )
    assert sha256(read_file(path)) == sha256(data)
    gets = s3_proxy.requests("GET", f"/{bucket}/{key}")
    assert sum(g.body_bytes for g in gets) <= size + 2 * FIRST_WINDOW


def most_at_once(gets: list[Seen]) -> int:
    """The most of these requests whose responses were being sent at the same time."""
    edges = sorted(
        [(get.time, 1) for get in gets] + [(get.ended or math.inf, -1) for get in gets],
        key=lambda edge: (edge[0], edge[1]),
    )
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_a_sequential_read_over_a_slow_link_runs_many_gets_at_once(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str, big_object
) -> None:
    # A fetch on a fast link runs few GETs at once (t3_fetch); where each GET is slow to
    # come (here answered after 0.3 s), the reader's window is fetched by up to the
    # configured 16 at once.
    key, data = big_object
    boto3 = "aws.boto3 { multipart_chunksize: 2097152, max_multipart_concurrency: 16 }"
    mount = mounted(s3_conf(s3_proxy, s3_server.admin, sdk_extra=boto3))
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")
    path.stat()
    s3_proxy.reset()
    s3_proxy.delay(0.3, method="GET", path=f"/{bucket}/{key}")
    with open(path, "rb") as f:
        got = f.read(64 * MIB)
    assert sha256(got) == sha256(data[: 64 * MIB])
    assert most_at_once(s3_proxy.requests("GET", f"/{bucket}/{key}")) > 5


def test_a_file_nobody_reads_fills_one_get_at_a_time_while_another_files_reader_waits(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    # An opened file still ends up whole in the cache, but the bytes nobody asked for must not
    # take the link and the CPU from another file's reader: while a GET some reader waits for
    # is out (here one the server holds), another file's fill runs one GET at a time. Once no
    # reader waits, a fill runs several at once again.
    rng = random.Random(8)
    sizes = {"unread-a": 24 * MIB, "read": 8 * MIB, "unread-c": 24 * MIB}
    objects = {name: rng.randbytes(size) for name, size in sizes.items()}
    client = s3_server.client()
    for name, data in objects.items():
        client.put_object(Bucket=bucket, Key=f"fill/{name}.bin", Body=data)
    boto3 = "aws.boto3 { multipart_chunksize: 2097152, max_multipart_concurrency: 16 }"
    mount = mounted(s3_conf(s3_proxy, s3_server.admin, sdk_extra=boto3))
    paths = {
        name: mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/fill/{name}.bin")
        for name in objects
    }
    for path in paths.values():
        path.stat()
    s3_proxy.reset()

    def gets(name: str) -> list[Seen]:
        return s3_proxy.requests("GET", f"/{bucket}/fill/{name}.bin")

    def fill_after_close(name: str) -> list[Seen]:
        """Opens, reads a byte, closes; returns its GETs once the file is whole on the
        server's side, those started after the close: its fill."""
        with open(paths[name], "rb") as f:
            assert f.read(1) == objects[name][:1]
        closed = time.monotonic()  # the proxy's clock
        poll_until(
            lambda: sum(get.body_bytes for get in gets(name) if get.ended) >= sizes[name],
            30,
            f"{name} filled",
            diagnose=lambda: str(gets(name)),
        )
        return [get for get in gets(name) if get.time > closed]

    s3_proxy.stall(1 * MIB, 60, count=1, method="GET", path=f"/{bucket}/fill/read.bin")
    with open(paths["read"], "rb") as reader:
        assert reader.read(4096) == objects["read"][:4096]  # the rest of its GET is held
        fill = fill_after_close("unread-a")
        assert len(fill) >= 3
        assert most_at_once(fill) == 1
        s3_proxy.release()
        assert sha256(reader.read()) == sha256(objects["read"][4096:])
    assert most_at_once(fill_after_close("unread-c")) > 1
    for name in ("unread-a", "unread-c"):
        assert sha256(read_file(paths[name])) == sha256(objects[name])


def test_listing_is_complete_paginated_and_nested(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    bucket = s3_server.make_bucket()
    client = s3_server.client()
    names = [f"f{i:05d}.txt" for i in range(10_000)]
    with ThreadPoolExecutor(32) as pool:
        list(
            pool.map(lambda n: client.put_object(Bucket=bucket, Key=f"many/{n}", Body=b"1"), names)
        )
    s3_server.put(bucket, "a/b/c/deep.txt", b"deep")
    s3_server.put(bucket, "a/top.txt", b"top")
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    root = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}")
    assert sorted(os.listdir(root / "many")) == names
    assert s3_proxy.count("GET", f"/{bucket}") >= 10  # it took every page
    assert sorted(os.listdir(root)) == ["a", "many"]
    assert sorted(os.listdir(root / "a")) == ["b", "top.txt"]
    assert (root / "a" / "b").is_dir() and (root / "a" / "b" / "c").is_dir()
    assert read_file(root / "a/b/c/deep.txt") == b"deep"
    # ls -l: attributes come with the listing (readdirplus), no request per file
    s3_proxy.reset()
    sizes = [entry.stat().st_size for entry in os.scandir(root / "many")]
    assert sizes == [1] * 10_000
    assert s3_proxy.count("HEAD") == 0


def test_the_first_stat_of_a_deep_path_asks_each_folder_once(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    bucket = s3_server.make_bucket()
    data = os.urandom(100_000)
    s3_server.put(bucket, "project/task.1/artifacts/model/model.pt", data)
    s3_server.put(bucket, "project/task.1", b"a key that is a folder too")
    s3_server.put(bucket, "project/README.txt", b"readme")
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    root = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}")
    s3_proxy.reset()
    assert os.stat(root / "project/task.1/artifacts/model/model.pt").st_size == len(data)

    def one_key_listings() -> list[str]:  # the lookups' own (listings ahead take 1 000 keys)
        return [
            parse_qs(seen.query)["prefix"][0]
            for seen in s3_proxy.requests("GET", f"/{bucket}")
            if parse_qs(seen.query).get("max-keys") == ["1"]
        ]

    # the bucket, project, task.1 (a key too: found by its HEAD, shown as the folder), then
    # not artifacts (task.1's listing began with artifacts/), model, model.pt
    heads = [seen.path for seen in s3_proxy.requests("HEAD")]
    assert sorted(heads) == [
        f"/{bucket}",
        f"/{bucket}/project",
        f"/{bucket}/project/task.1",
        f"/{bucket}/project/task.1/artifacts/model",
        f"/{bucket}/project/task.1/artifacts/model/model.pt",
    ]
    assert sorted(one_key_listings()) == [
        "project/",
        "project/task.1/",
        "project/task.1/artifacts/model/",
        "project/task.1/artifacts/model/model.pt/",
    ]
    # the walk's answers are the server's: a key that is a folder too shows as the folder
    assert (root / "project/task.1").is_dir()
    assert (root / "project/task.1/artifacts/model").is_dir()
    assert read_file(root / "project/task.1/artifacts/model/model.pt") == data
    assert read_file(root / "project/README.txt") == b"readme"
    assert sorted(os.listdir(root / "project")) == ["README.txt", "task.1"]


def test_buckets_configured_listed_and_unlisted_found_by_name(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    listed = s3_server.make_bucket()
    unlisted = s3_server.make_bucket()
    s3_server.put(unlisted, "hello.txt", b"hello")
    admin = s3_server.admin
    conf = s3_conf(
        s3_proxy,
        {"bucket": listed, "key": admin.key, "secret": admin.secret},
        s3_extra=f'key: "{admin.key}", secret: "{admin.secret}", secure: false',
    )
    mount = mounted(conf)
    host_dir = mount / f"s3/{s3_proxy.endpoint}"
    assert os.listdir(host_dir) == [listed]
    assert read_file(host_dir / unlisted / "hello.txt") == b"hello"
    assert not (host_dir / "no-such-bucket-here").exists()


def test_missing_key_is_enoent_and_writes_are_erofs(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    s3_server.put(bucket, "ro/file.txt", b"data")
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    base = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/ro")
    with pytest.raises(FileNotFoundError):
        read_file(base / "missing.txt")
    for command in (
        ["touch", str(base / "new.txt")],
        ["mkdir", str(base / "newdir")],
        ["rm", "-f", str(base / "file.txt")],
    ):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode != 0 and "Read-only file system" in result.stderr, command
    with pytest.raises(OSError) as raised, open(base / "file.txt", "r+b"):
        pass
    assert raised.value.errno == errno.EROFS
    assert read_file(base / "file.txt") == b"data"
    assert os.statvfs(mount.path).f_namemax == 255


def test_listings_show_dot_and_dotdot_and_every_entry_once(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    bucket = s3_server.make_bucket()
    # long names: the listing takes many readdir calls, resumed at the offsets we gave
    names = [f"entry-{i:04d}-{'x' * 120}" for i in range(300)]
    client = s3_server.client()
    for name in names:
        client.put_object(Bucket=bucket, Key=f"many/{name}", Body=b"")
    s3_server.put(bucket, "many/sub/inner.txt", b"inner")
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    folder = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/many")
    assert sorted(os.listdir(folder)) == sorted([*names, "sub"])  # "." and ".." filtered
    # getdents itself, as `ls -a` reads it
    shown = subprocess.run(
        ["ls", "-a1", "--sort=none", str(folder)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert shown[:2] == [".", ".."]
    assert sorted(shown[2:]) == sorted([*names, "sub"])
    for where in (mount.path, mount.path / "s3", folder / "sub"):
        detail = subprocess.run(
            ["ls", "-la", str(where)], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        assert [line.split()[-1] for line in detail[1:3]] == [".", ".."], detail
        assert detail[1].startswith("dr-x")  # "." is the directory itself
    assert os.stat(folder / "..").st_ino == os.stat(folder.parent).st_ino
    assert (folder / "sub" / "inner.txt").read_bytes() == b"inner"  # the mount still serves


def test_writes_are_erofs_unless_looking_the_path_up_fails_first(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    readable = s3_server.make_bucket()
    s3_server.put(readable, "file.txt", b"data")
    forbidden = s3_server.make_bucket()  # the credentials named for it are refused
    second = s3_server.second
    conf = s3_conf(
        s3_proxy, {"bucket": forbidden, "key": second.key, "secret": second.secret}, s3_server.admin
    )
    mount = mounted(conf)  # no default credentials: s3/<bucket> at AWS has none at all
    host = mount / f"s3/{s3_proxy.endpoint}"

    def error(*command: str) -> str:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode != 0, command
        return result.stderr

    for command in (
        ["touch", str(host / readable / "new.txt")],
        ["touch", str(host / readable / "file.txt")],
        ["mkdir", str(host / readable / "newdir")],
        ["mv", str(host / readable / "file.txt"), str(host / readable / "moved.txt")],
        ["rm", "-f", str(host / readable / "file.txt")],
        ["touch", str(mount.path / "new.txt")],
        ["mkdir", str(host / unique_name("new-bucket"))],
    ):
        assert "Read-only file system" in error(*command), command
    # the lookup of the bucket fails before any write is asked for: its error, as README says
    for folder in (host / forbidden, mount.path / "s3" / unique_name("no-credentials")):
        assert "Permission denied" in error("touch", str(folder / "x")), folder
        assert "Permission denied" in error("ls", str(folder)), folder
    assert "Permission denied" in error("mkdir", str(mount.path / "s3" / unique_name("nocred")))
    assert read_file(host / readable / "file.txt") == b"data"


def test_credentials_matched_per_bucket_and_wrong_secret_is_eacces(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    admin, second = s3_server.admin, s3_server.second
    own = s3_server.make_bucket(second=True)  # only `second` may use it (admin too)
    forbidden = s3_server.make_bucket()  # `second` may not read it
    wrong = s3_server.make_bucket("data")
    near = s3_server.make_bucket("data-large")  # must not match the entry for "data"
    for b in (own, forbidden, wrong, near):
        s3_server.put(b, "x.txt", b"x of " + b.encode())
    conf = s3_conf(
        s3_proxy,
        {"bucket": own, "key": second.key, "secret": second.secret},
        {"bucket": forbidden, "key": second.key, "secret": second.secret},
        {"bucket": "data", "key": admin.key, "secret": "not-the-secret"},
        admin,  # host entry: everything else
    )
    mount = mounted(conf)
    host = mount / f"s3/{s3_proxy.endpoint}"
    assert read_file(host / own / "x.txt") == b"x of " + own.encode()
    assert read_file(host / near / "x.txt") == b"x of data-large"
    for denied in (forbidden, wrong):
        with pytest.raises(OSError) as raised:
            read_file(host / denied / "x.txt")
        assert raised.value.errno == errno.EACCES, denied
    log = mount.log_text()
    assert f"s3://{s3_proxy.endpoint}/data" in log and "credentials[2]" in log
    # the mount survived and still serves
    assert read_file(host / own / "x.txt").startswith(b"x of")
    keys_used = {
        r.headers.get("authorization", "").split("Credential=")[-1][:20]
        for r in s3_proxy.requests(path=f"/{own}/x.txt")
    }
    assert all(k.startswith(second.key[:20]) for k in keys_used if k)


def test_one_fetch_for_concurrent_readers_and_cache_reuse(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    data = os.urandom(3 * MIB)
    key = unique_name("shared") + ".bin"
    s3_server.put(bucket, key, data)
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")
    path.stat()
    readers = [
        subprocess.Popen(["sha256sum", str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    sums = {proc.communicate(timeout=60)[0].split()[0] for proc in readers}
    assert sums == {sha256(data)}
    assert s3_proxy.count("GET", f"/{bucket}/{key}") == 1
    assert read_file(path) == data
    assert s3_proxy.count("GET", f"/{bucket}/{key}") == 1
    # ClearML's own layout: <cache>/storage_manager/global/<md5(url)>.<basename>
    url = f"s3://{s3_proxy.endpoint}/{bucket}/{key}"
    cached = (
        mount.cache_dir
        / "storage_manager/global"
        / f"{hashlib.md5(url.encode()).hexdigest()}.{key}"
    )
    assert cached.read_bytes() == data
    assert oct(cached.stat().st_mode & 0o777) == oct(0o600)
    assert os.getxattr(path, "user.clearmount.url").decode() == url
    assert int(os.getxattr(path, "user.clearmount.cached")) == len(data)


def thread_nice(pid: int) -> dict[int, int]:
    """The nice value of each thread of process `pid`, by thread id."""
    nice = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        nice[int(tid)] = int(stat.rpartition(")")[2].split()[16])  # field 19
    return nice


def test_the_fuse_loop_thread_runs_above_the_download_threads(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    data = os.urandom(3 * MIB)
    key = unique_name("nice") + ".bin"
    s3_server.put(bucket, key, data)
    mount = mounted(s3_conf(s3_proxy, s3_server.admin), options=["fetch_processes=2"])
    assert mount.proc is not None
    assert read_file(mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")) == data
    nice = thread_nice(mount.proc.pid)
    loop = nice.pop(mount.proc.pid)  # the main thread runs the trio loop
    assert len(nice) >= 2  # the download's worker threads, and the open's
    process = os.nice(0)
    # raising a thread's priority takes root (or CAP_SYS_NICE); without, all stay equal
    assert loop == (max(-20, process - 10) if os.geteuid() == 0 else process)
    assert set(nice.values()) == {process}
    # the fetch processes, forked from the loop thread, work at the workers' priority too
    children = poll_until(lambda: children_of(mount.proc.pid, 2), 30, "two fetch processes")

    def working() -> bool:  # once a process has started its threads, it has set its priority
        return all(len(thread_nice(child)) > workers.THREADS for child in children)

    poll_until(working, 30, "the fetch processes' threads")
    assert {value for child in children for value in thread_nice(child).values()} == {process}


def children_of(pid: int, count: int) -> list[int]:
    """The child processes of `pid`, once there are `count` of them (else [])."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found if len(found) >= count else []


def test_file_downloaded_by_the_clearml_sdk_is_served_without_get(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    key = "sdk/model.pt"
    s3_server.put(bucket, key, data)
    url = f"s3://{s3_proxy.endpoint}/{bucket}/{key}"
    cache = tmp_path / "shared-cache"
    folder = cache / "storage_manager/global"
    folder.mkdir(parents=True)
    (folder / f"{hashlib.md5(url.encode()).hexdigest()}.model.pt").write_bytes(data)
    mount = mounted(s3_conf(s3_proxy, s3_server.admin), cache_dir=cache)
    assert read_file(mount.path_of(url)) == data
    assert s3_proxy.count("GET", f"/{bucket}/{key}") == 0


def test_changed_object_seen_after_ttl_while_old_reader_keeps_old_bytes(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    key = unique_name("changing") + ".txt"
    s3_server.put(bucket, key, b"version one")
    mount = mounted(s3_conf(s3_proxy, s3_server.admin), options=["attr_timeout=1"])
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")
    with open(path, "rb") as old:
        assert old.read() == b"version one"
        s3_server.put(bucket, key, b"version two, longer")
        poll_until(lambda: read_file(path) == b"version two, longer", 15, "the new version")
        old.seek(0)
        assert old.read() == b"version one"
    assert path.stat().st_size == len(b"version two, longer")


def test_memory_stays_flat_while_streaming_a_large_object(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str, big_object
) -> None:
    key, data = big_object
    mount = mounted(s3_conf(s3_proxy, s3_server.admin), debug=False)
    assert mount.proc is not None
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")
    path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            digest.update(chunk)
    assert digest.hexdigest() == sha256(data)
    status = Path(f"/proc/{mount.proc.pid}/status").read_text()
    peak_kib = int(
        next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
    )
    # A whole object in RAM would be 300 MiB; parts stream to disk in 1 MiB chunks.
    assert peak_kib < 160 * 1024, f"daemon peak RSS {peak_kib} KiB"


def test_skips_keys_that_cannot_be_files(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "clash", b"a file named like a directory")
    s3_server.put(bucket, "clash/inner.txt", b"inner")
    s3_server.put(bucket, "double//slash.txt", b"slashes")
    s3_server.put(bucket, "fine.txt", b"fine")
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    root = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}")
    assert sorted(os.listdir(root)) == ["clash", "double", "fine.txt"]
    assert (root / "clash").is_dir()
    assert read_file(root / "clash/inner.txt") == b"inner"
    assert "skipped" in mount.log_text()


def test_concurrent_threads_random_reads_during_fetch(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    data = random.Random(5).randbytes(40 * MIB)
    key = unique_name("threads") + ".bin"
    s3_server.put(bucket, key, data)
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        with open(path, "rb", buffering=0) as f:
            for _ in range(50):
                offset = rng.randrange(len(data))
                got = os.pread(f.fileno(), 65536, offset)
                if got != data[offset : offset + 65536]:
                    errors.append(f"wrong bytes at {offset}")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    # one fetch served every thread: the object was not pulled once per reader
    gets = s3_proxy.requests("GET", f"/{bucket}/{key}")
    assert sum(g.body_bytes for g in gets) < 2 * len(data)


def daemon_reads(mount: Mount) -> int:
    """read() calls the daemon has answered, from `clearmount status --json`."""
    counters = status_json(mount.path, mount.env)["counters"]
    assert isinstance(counters, dict)
    return int(counters["reads"])


def test_sequential_reads_reach_the_daemon_in_1_mib_requests(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    # The kernel asks a FUSE daemon for at most the mount's readahead window per READ (128 KiB
    # by default); run as root, the daemon raises it to 1 MiB: 8 times fewer requests.
    data = os.urandom(8 * MIB)
    key = unique_name("readahead") + ".bin"
    s3_server.put(bucket, key, data)
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    device = os.stat(mount.path).st_dev
    window = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    # the mount is listed before the daemon raises the window and says it is ready
    poll_until(lambda: window.read_text().strip() == "1024", 10, "read_ahead_kb of 1024")
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")
    before = daemon_reads(mount)
    assert read_file(path) == data
    assert daemon_reads(mount) - before <= 8 + 2  # 128 KiB requests would be 64


def read_member_names(f: BinaryIO, members: list[zipfile.ZipInfo]) -> list[bytes]:
    """What torch.load(mmap=True) reads before it maps the file: each member's local header,
    one after the other (a buffered read there; the names, to check the bytes)."""
    names = []
    for member in members:
        f.seek(member.header_offset)
        header = f.read(30)
        assert header[:4] == b"PK\x03\x04", member.filename
        (name_length,) = struct.unpack_from("<H", header, 26)
        names.append(f.read(name_length))
    return names


def walk_zip_headers(
    mount: Mount, proxy: Proxy, bucket: str, key: str, data: bytes
) -> tuple[list[zipfile.ZipInfo], list[tuple[int, int]]]:
    """Stat the zip `key` on `mount` (reached through `proxy`), open it as zipfile does (its
    end, then the directory), read every member's local header in order, then one member in
    the middle (checked against `data`): the members, and the ranges the server was asked
    for from the open on."""
    path = mount.path_of(f"s3://{proxy.endpoint}/{bucket}/{key}")
    path.stat()
    proxy.reset()
    with open(path, "rb") as f:
        members = zipfile.ZipFile(f).infolist()  # reads the end, then the directory
        names = read_member_names(f, members)
        asked = requested(proxy.requests("GET", f"/{bucket}/{key}"))
        middle = members[len(members) // 2]
        assert zipfile.ZipFile(f).read(middle) == zipfile.ZipFile(io.BytesIO(data)).read(middle)
    assert names == [m.filename.encode() for m in members]
    return members, asked


def test_a_reader_walking_zip_member_headers_finds_them_fetched_ahead(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str, zip_object
) -> None:
    key, data = zip_object
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    members, asked = walk_zip_headers(mount, s3_proxy, bucket, key, data)
    # The first jump onto a member's header, once the directory is read, is fetched alone and
    # has the next headers fetched ahead: each header after the opener's window comes in one
    # small GET of its own, not a first window: a page or two, what a buffered read of a
    # local disk's st_blksize (4 KiB) makes the kernel ask for there.
    headers = [m.header_offset for m in members]
    at_headers = [(s, e) for s, e in asked if any(s <= h < e for h in headers)]
    windows = [(s, e) for s, e in at_headers if e - s >= FIRST_WINDOW]
    assert windows == [(0, FIRST_WINDOW)]  # the opener's
    small = [(s, e) for s, e in at_headers if e - s <= 16 << 10]
    assert sorted(h for h in headers if any(s <= h < e for s, e in small)) == headers[1:]
    assert len(small) == len(members) - 1, small  # one GET each
    assert sum(e - s for s, e in asked) <= 2 * FIRST_WINDOW + len(members) * (16 << 10), asked


def test_zip_member_headers_fetched_ahead_by_fetch_processes_are_the_same_gets_and_bytes(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str, zip_object
) -> None:
    # With fetch processes ready, the small GETs of the headers fetched ahead are theirs
    # (`Fetch._fetch_in_process`): the same GETs as the daemon's threads make, the same bytes.
    key, data = zip_object
    mount = mounted(s3_conf(s3_proxy, s3_server.admin), options=["fetch_processes=2"])
    poll_until(lambda: "2 fetch processes ready" in mount.log_text(), 60, "the fetch processes")
    written = written_by_fetch_processes(mount)
    members, asked = walk_zip_headers(mount, s3_proxy, bucket, key, data)
    headers = [m.header_offset for m in members]
    small = [(s, e) for s, e in asked if e - s <= 16 << 10 and any(s <= h < e for h in headers)]
    assert len(small) == len(members) - 1, small  # one GET each, as without processes
    # their bytes were written by the fetch processes
    assert written_by_fetch_processes(mount) - written >= sum(e - s for s, e in small)
    assert read_file(mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")) == data


def test_a_reader_extracting_one_zip_member_gets_a_bounded_header_look_ahead(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str, zip_object
) -> None:
    # One jump onto a header cannot tell a reader that walks the headers from one that
    # extracts that member: the headers after it are fetched ahead, but only as many as
    # the fetch runs GETs at once (max_multipart_concurrency, 16), and the member's own
    # bytes follow in a window of their own.
    key, data = zip_object
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")
    path.stat()
    s3_proxy.reset()
    expected = zipfile.ZipFile(io.BytesIO(data))
    middle = expected.infolist()[8]
    with open(path, "rb") as f:
        assert zipfile.ZipFile(f).read(middle.filename) == expected.read(middle)
        asked = requested(s3_proxy.requests("GET", f"/{bucket}/{key}"))
    headers = [m.header_offset for m in expected.infolist()]
    header_gets = [
        (s, e) for s, e in asked if e - s <= 16 << 10 and any(s <= h < e for h in headers)
    ]
    assert len(header_gets) == 1 + 16, header_gets  # its own, and the next 16
    assert sum(e - s for s, e in asked) <= 3 * FIRST_WINDOW + middle.file_size + 17 * (16 << 10), [
        (s, e - s) for s, e in asked if e - s > 16 << 10
    ]


@pytest.fixture(scope="module")
def state_dict_zip(s3_server: S3Server, bucket: str) -> tuple[str, bytes]:
    """A 24 MiB zip laid out as torch.save lays out a model's state dict: 16 weights of
    1.5 MiB, each after three 3 KiB members (its biases and norms), so four headers lie
    within 10 KiB of each other, then none for 1.5 MiB."""
    rng = random.Random(17)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for block in range(16):
            for i, size in enumerate((3 << 10, 3 << 10, 3 << 10, 1536 << 10)):
                archive.writestr(f"archive/data/{4 * block + i}", rng.randbytes(size))
    key = "checkpoints/state-dict.pt"
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=out.getvalue())
    return key, out.getvalue()


def test_a_reader_walking_headers_a_few_kib_apart_gets_them_in_one_small_get_per_cluster(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str, state_dict_zip
) -> None:
    # torch.load(mmap=True) of a real state dict: between two weights' headers, its reads go
    # from header to header a few KiB apart. They are a header walker's, not a reader reading
    # on: no first window of 4 MiB each, and the headers close together come in one GET.
    key, data = state_dict_zip
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    members, asked = walk_zip_headers(mount, s3_proxy, bucket, key, data)
    windows = [(s, e) for s, e in asked if e - s >= FIRST_WINDOW]
    assert windows == [(0, FIRST_WINDOW)], windows  # the opener's
    headers = [m.header_offset for m in members]
    clusters = [h for h in headers[::4] if h >= FIRST_WINDOW]
    bringing = [(s, e) for s, e in asked if any(s <= h < e for h in headers)]
    # the opener's window, then a GET per cluster (two for each of the first two, asked for
    # before the reader's reach past a header is known); the code before took 22
    assert len(bringing) <= 1 + len(clusters) + 2, sorted(bringing)
    # the code before pulled 24.8 MB of this 24 MiB archive (a window at each cluster)
    pulled = sum(e - s for s, e in asked)
    assert pulled <= FIRST_WINDOW + (128 << 10) + len(clusters) * (64 << 10), pulled


@pytest.fixture(scope="module")
def small_members_zip(s3_server: S3Server, bucket: str) -> tuple[str, bytes]:
    """A 12 MiB zip of 96 stored members of 128 KiB: a header in every READ the kernel sends."""
    rng = random.Random(16)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i in range(96):
            archive.writestr(f"small/{i}", rng.randbytes(128 << 10))
    key = "checkpoints/small-members.zip"
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=out.getvalue())
    return key, out.getvalue()


@pytest.mark.parametrize("archive", ["zip_object", "small_members_zip"])
def test_a_reader_reading_a_zip_in_order_gets_no_header_runs(
    mounted: MountFactory,
    s3_server: S3Server,
    s3_proxy: Proxy,
    bucket: str,
    archive: str,
    request: pytest.FixtureRequest,
) -> None:
    # torch.load without mmap reads the directory at the end, then every member in order:
    # its window brings the headers; it pulls each byte about once, in big GETs. (Before its
    # window grows, its reads past the first window land where no GET brings bytes, and with
    # small members on a header: they go on from its last read, so they are no jumps.)
    key, data = request.getfixturevalue(archive)
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")
    path.stat()
    s3_proxy.reset()
    expected = zipfile.ZipFile(io.BytesIO(data))
    with open(path, "rb") as f:
        archive = zipfile.ZipFile(f)
        for member in archive.infolist():
            assert archive.read(member) == expected.read(member), member.filename
    gets = s3_proxy.requests("GET", f"/{bucket}/{key}")
    assert sum(g.body_bytes for g in gets) <= len(data) + 2 * FIRST_WINDOW
    # no GETs of a member's header alone: its window brought them
    headers = [m.header_offset for m in expected.infolist()]
    hints = [
        (s, e) for s, e in requested(gets) if e - s <= 64 << 10 and any(s <= h < e for h in headers)
    ]
    assert hints == []

"""Writing through a real mount (`-o writable`): SeaweedFS on 127.0.0.1 behind the proxy.

What a user relies on: a checkpoint written through the mount is on the server, whole,
when close() returns, and reading it back costs nothing; atomic saves (x.tmp, then
os.replace) work; many writers at once each get their object; what cannot be an upload
(random writes, appends, overwrites and deletes not allowed) fails at once with the
documented errno and leaves the object untouched; a mount without `writable` refuses every
write with EROFS.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import MountFactory
from devkit.confs import s3_conf
from devkit.processes import free_port, poll_until, unique_name
from devkit.proxy import Proxy
from devkit.s3 import S3Server
from support import sdk_local_copy, status_json, tmpfs

MIB = 1 << 20
PART = 8 * MIB  # ClearML's default multipart_chunksize
WRITABLE = ("writable",)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def server_bytes(s3_server: S3Server, bucket: str, key: str) -> bytes:
    body: bytes = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def server_has(s3_server: S3Server, bucket: str, key: str) -> bool:
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=key)
    return any(item["Key"] == key for item in listed.get("Contents", ()))


def multipart_uploads(s3_server: S3Server, bucket: str) -> list[str]:
    reply = s3_server.client().list_multipart_uploads(Bucket=bucket)
    return [upload["Key"] for upload in reply.get("Uploads", ())]


def write_file(path: Path, data: bytes, piece: int = MIB) -> None:
    with open(path, "wb") as f:
        for start in range(0, len(data), piece):
            f.write(data[start : start + piece])


def writable_path(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str, key: str
) -> Path:
    """The path of `key` in `bucket` on a new ``-o writable`` mount that reaches the server
    through the counting proxy."""
    mount = mounted(s3_conf(s3_proxy, s3_server.admin), options=WRITABLE)
    return mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    return s3_server.make_bucket()


def test_checkpoint_is_streamed_in_parts_and_read_back_without_a_get(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    folder = writable_path(mounted, s3_server, s3_proxy, bucket, "run1")
    os.makedirs(folder, exist_ok=True)
    data = os.urandom(300 * MIB + 12345)
    write_file(folder / "epoch3.pt", data)
    # close() returned: the object is complete on the server
    assert sha256(server_bytes(s3_server, bucket, "run1/epoch3.pt")) == sha256(data)
    parts = s3_proxy.requests("PUT", f"/{bucket}/run1/epoch3.pt")
    assert len(parts) == -(-len(data) // PART)
    assert multipart_uploads(s3_server, bucket) == []
    s3_proxy.reset()
    # read back through the mount: from the cache, no GET
    path = folder / "epoch3.pt"
    assert path.stat().st_size == len(data)
    assert sha256(path.read_bytes()) == sha256(data)
    assert s3_proxy.count("GET", f"/{bucket}/run1/epoch3.pt") == 0
    assert "epoch3.pt" in os.listdir(folder)


def test_small_file_and_multipart_false_are_one_put(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    admin = s3_server.admin
    entry = {"key": admin.key, "secret": admin.secret, "multipart": False}
    mount = mounted(s3_conf(s3_proxy, entry), options=WRITABLE)
    root = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}")
    data = os.urandom(20 * MIB)
    write_file(root / "single.bin", data)
    assert server_bytes(s3_server, bucket, "single.bin") == data
    puts = s3_proxy.requests("PUT", f"/{bucket}/single.bin")
    assert len(puts) == 1
    (root / "empty").touch()
    (root / "small.txt").write_text("hello")
    assert server_bytes(s3_server, bucket, "small.txt") == b"hello"
    assert os.path.getsize(root / "small.txt") == 5

    def empty_is_there() -> bool:
        return server_has(s3_server, bucket, "empty")

    poll_until(empty_is_there, 30, "the empty file to be uploaded")


def test_close_after_reads_still_waits_for_the_upload(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    # close() waits for the upload in FLUSH: closing files only read must not turn it off
    # (the kernel stops sending FLUSH for good once one is refused)
    s3_server.put(bucket, "read/first.bin", b"first")
    mount = mounted(s3_conf(s3_proxy, s3_server.admin), options=WRITABLE)
    root = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/read")
    for _ in range(3):
        assert (root / "first.bin").read_bytes() == b"first"
    data = os.urandom(3 * MIB)
    write_file(root / "written.bin", data)
    assert server_bytes(s3_server, bucket, "read/written.bin") == data


def test_makedirs_then_atomic_save(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    root = writable_path(mounted, s3_server, s3_proxy, bucket, "")
    folder = root / "runs" / "a" / "b"
    os.makedirs(folder, exist_ok=True)
    os.makedirs(folder, exist_ok=True)
    assert folder.is_dir()
    assert "b" in os.listdir(root / "runs" / "a")
    data = os.urandom(3 * MIB)
    write_file(folder / "model.pt.tmp", data)
    os.replace(folder / "model.pt.tmp", folder / "model.pt")
    assert server_bytes(s3_server, bucket, "runs/a/b/model.pt") == data
    assert not server_has(s3_server, bucket, "runs/a/b/model.pt.tmp")
    assert sorted(os.listdir(folder)) == ["model.pt"]
    s3_proxy.reset()
    assert (folder / "model.pt").read_bytes() == data
    assert s3_proxy.count("GET", f"/{bucket}/runs/a/b/model.pt") == 0
    # renaming a directory is not an object operation
    with pytest.raises(OSError) as caught:
        os.rename(root / "runs" / "a", root / "runs" / "c")
    assert caught.value.errno in (errno.ENOTSUP, errno.EXDEV)


def test_eight_writers_write_200_files(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    root = writable_path(mounted, s3_server, s3_proxy, bucket, "many")
    os.makedirs(root, exist_ok=True)
    payloads = {f"w{i % 8}/f{i:03d}.bin": os.urandom(1000 + 997 * i) for i in range(200)}
    for writer in range(8):
        os.makedirs(root / f"w{writer}", exist_ok=True)

    def write(name: str) -> None:
        write_file(root / name, payloads[name], piece=4096)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, payloads))
    for name, data in payloads.items():
        assert server_bytes(s3_server, bucket, f"many/{name}") == data, name
    assert sum(len(os.listdir(root / f"w{i}")) for i in range(8)) == 200


def test_a_file_saved_while_its_folder_is_listed_stays_in_the_listing(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    # A LIST that left before the save and came back after it does not have the file;
    # the listing kept from it must still show the file the mount just wrote.
    folder = unique_name("listed")
    s3_server.put(bucket, f"{folder}/old.bin", b"old")
    root = writable_path(mounted, s3_server, s3_proxy, bucket, folder)
    assert root.is_dir()  # its own lookup asks for one key under it: not the one held
    # the listing's answer (made before the save) is held back until after it
    held = s3_proxy.stall(0, 60, method="GET", query={"prefix": f"{folder}/"})
    assert not (root / "absent.bin").exists()  # a miss lists its folder in the background
    poll_until(lambda: held.hits == 1, 10, "the folder's listing to reach the proxy")
    (root / "new.bin").write_bytes(b"saved")  # on the server when close() returns
    assert server_bytes(s3_server, bucket, f"{folder}/new.bin") == b"saved"
    s3_proxy.release()

    def listed() -> bool:
        return all(r.ended for r in s3_proxy.requests("GET", f"/{bucket}"))

    poll_until(listed, 10, "the held listing to come back")
    assert sorted(os.listdir(root)) == ["new.bin", "old.bin"]


def test_overwrite_and_delete_need_their_options(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    s3_server.put(bucket, "kept/model.pt", b"original")
    mount = mounted(s3_conf(s3_proxy, s3_server.admin), options=WRITABLE)
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/kept/model.pt")
    with pytest.raises(PermissionError):
        path.write_bytes(b"replaced")
    with pytest.raises(PermissionError):
        path.unlink()
    # an atomic save onto an existing object is an overwrite too
    (path.parent / "model.pt.tmp").write_bytes(b"saved")
    with pytest.raises(PermissionError):
        os.replace(path.parent / "model.pt.tmp", path)
    assert server_bytes(s3_server, bucket, "kept/model.pt") == b"original"
    assert server_bytes(s3_server, bucket, "kept/model.pt.tmp") == b"saved"
    assert path.read_bytes() == b"original"
    mount.stop()

    mount = mounted(
        s3_conf(s3_proxy, s3_server.admin),
        options=("writable", "allow_overwrite", "allow_delete"),
    )
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/kept/model.pt")
    assert path.read_bytes() == b"original"
    path.write_bytes(b"replaced, longer")
    assert server_bytes(s3_server, bucket, "kept/model.pt") == b"replaced, longer"
    assert path.read_bytes() == b"replaced, longer"
    os.replace(path.parent / "model.pt.tmp", path)
    assert server_bytes(s3_server, bucket, "kept/model.pt") == b"saved"
    assert not server_has(s3_server, bucket, "kept/model.pt.tmp")
    assert path.read_bytes() == b"saved"
    path.unlink()
    assert not server_has(s3_server, bucket, "kept/model.pt")
    assert not path.exists()


def test_random_writes_and_appends_fail_at_once(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    s3_server.put(bucket, "fixed/existing.txt", b"existing")
    mount = mounted(s3_conf(s3_proxy, s3_server.admin), options=WRITABLE)
    root = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/fixed")
    # a write behind the end of what was written
    fd = os.open(root / "holes.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, b"a" * 4096)
        with pytest.raises(OSError) as caught:
            os.pwrite(fd, b"b" * 10, 100)
        assert caught.value.errno == errno.EINVAL
    finally:
        with pytest.raises(OSError):
            os.close(fd)  # the upload failed: close() says so
    assert not server_has(s3_server, bucket, "fixed/holes.bin")
    # appending to an existing object
    with pytest.raises(OSError) as caught, open(root / "existing.txt", "ab") as f:
        f.write(b"more")
    assert caught.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as caught:
        os.open(root / "existing.txt", os.O_RDWR)
    assert caught.value.errno == errno.ENOTSUP
    assert server_bytes(s3_server, bucket, "fixed/existing.txt") == b"existing"
    assert "only sequential writes" in mount.log_text()
    assert multipart_uploads(s3_server, bucket) == []


def open_close(path: Path, flags: int) -> None:
    os.close(os.open(path, flags))


def write_attempts(root: Path) -> list[Callable[[], object]]:
    """Every kind of write there is, in folder `root` (which holds existing.txt)."""
    existing = root / "existing.txt"
    return [
        lambda: (root / "new.txt").write_bytes(b"x"),
        lambda: open_close(existing, os.O_WRONLY | os.O_TRUNC),
        lambda: open_close(existing, os.O_WRONLY | os.O_APPEND),
        lambda: os.mkdir(root / "dir"),
        lambda: os.unlink(existing),
        lambda: os.rename(existing, root / "moved.txt"),
        lambda: os.truncate(existing, 0),
        lambda: shutil.copy(__file__, root / "copy.py"),
    ]


def test_without_writable_every_write_is_erofs(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    s3_server.put(bucket, "ro/existing.txt", b"existing")
    # `rw` is what mount(8) passes to every helper: it never turns writes on; `ro` wins
    for options in ((), ("rw", "defaults"), ("writable", "ro")):
        mount = mounted(s3_conf(s3_proxy, s3_server.admin), options=options)
        root = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/ro")
        attempts = write_attempts(root)
        for attempt in attempts:
            with pytest.raises(OSError) as caught:
                attempt()
            assert caught.value.errno == errno.EROFS, (options, caught.value)
        mount.stop()
    assert server_bytes(s3_server, bucket, "ro/existing.txt") == b"existing"


# ----------------------------------------------------------------------------- faults


def open_for_writing(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)


def write_some(fd: int, size: int) -> OSError | None:
    """Write `size` random bytes in 1 MiB pieces; the first error, if any."""
    try:
        for _ in range(size // MIB):
            os.write(fd, os.urandom(MIB))
    except OSError as exc:
        return exc
    return None


def records_left(cache: Path) -> list[Path]:
    return sorted((cache / "clearmount" / "uploads").glob("*.json"))


def partials_left(cache: Path) -> list[Path]:
    return sorted((cache / "storage_manager" / "global").glob("*.partially"))


def test_server_killed_mid_upload_close_fails_and_nothing_is_left(
    mounted: MountFactory, s3_server_factory: Callable[..., S3Server], tmp_path: Path
) -> None:
    server = s3_server_factory()
    bucket = server.make_bucket()
    cache = tmp_path / "cache"
    mount = mounted(s3_conf(server), options=WRITABLE, cache_dir=cache)
    path = mount.path_of(f"s3://{server.endpoint}/{bucket}/ckpt.pt")
    fd = open_for_writing(path)
    assert write_some(fd, 3 * PART) is None
    assert multipart_uploads(server, bucket) == ["ckpt.pt"]
    server.kill()
    killed = time.monotonic()
    write_some(fd, 3 * PART)  # may already fail: the parts cannot be sent
    with pytest.raises(OSError) as caught:
        os.close(fd)
    took = time.monotonic() - killed
    assert caught.value.errno == errno.EIO
    assert took < 180, took
    log = mount.log_text()
    assert f"s3://{server.endpoint}/{bucket}/ckpt.pt" in log
    assert "credentials sdk.aws.s3.credentials[0]" in log
    poll_until(lambda: not path.exists(), 10, "the failed file to disappear")
    server.start()
    poll_until(lambda: not multipart_uploads(server, bucket), 120, "the upload to be aborted")
    poll_until(lambda: not records_left(cache), 30, "the upload's record to go")
    assert not server_has(server, bucket, "ckpt.pt")
    assert partials_left(cache) == []


def test_daemon_killed_mid_upload_next_start_cleans_up(
    mounted: MountFactory, s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    cache = tmp_path / "cache"
    mount = mounted(s3_conf(s3_server), options=WRITABLE, cache_dir=cache)
    path = mount.path_of(f"s3://{s3_server.endpoint}/{bucket}/run/ckpt.pt")
    os.makedirs(path.parent)
    fd = open_for_writing(path)
    assert write_some(fd, 3 * PART) is None
    assert multipart_uploads(s3_server, bucket) == ["run/ckpt.pt"]
    assert len(records_left(cache)) == 1
    assert mount.proc is not None
    os.kill(mount.proc.pid, signal.SIGKILL)
    mount.proc.wait(10)
    with contextlib.suppress(OSError):
        os.close(fd)
    mount.stop()
    mount = mounted(s3_conf(s3_server), options=WRITABLE, cache_dir=cache)
    poll_until(lambda: not multipart_uploads(s3_server, bucket), 60, "the upload to be aborted")
    poll_until(lambda: not records_left(cache), 30, "the upload's record to go")
    assert "aborted the unfinished upload" in mount.log_text()
    assert not server_has(s3_server, bucket, "run/ckpt.pt")
    assert partials_left(cache) == []
    assert not mount.path_of(f"s3://{s3_server.endpoint}/{bucket}/run/ckpt.pt").exists()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs to use as the cache directory."""
    with tmpfs(tmp_path / "small-disk", "size=24m,mode=0700") as path:
        yield path


def test_cache_disk_full_while_writing_is_enospc_others_served(
    mounted: MountFactory, s3_server: S3Server, small_disk: Path
) -> None:
    bucket = s3_server.make_bucket()
    other = os.urandom(2 * MIB)
    s3_server.put(bucket, "other.bin", other)
    mount = mounted(s3_conf(s3_server), options=WRITABLE, cache_dir=small_disk)
    root = mount.path_of(f"s3://{s3_server.endpoint}/{bucket}")
    fd = open_for_writing(root / "too-big.pt")
    error = write_some(fd, 64 * MIB)
    if error is None:
        with pytest.raises(OSError) as caught:
            os.close(fd)
        error = caught.value
    else:
        with contextlib.suppress(OSError):
            os.close(fd)
    assert error.errno == errno.ENOSPC
    assert (root / "other.bin").read_bytes() == other
    assert not server_has(s3_server, bucket, "too-big.pt")
    poll_until(lambda: not multipart_uploads(s3_server, bucket), 60, "the upload to be aborted")
    assert partials_left(small_disk) == []


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_memory_stays_flat_while_writing_2_gib(
    mounted: MountFactory, s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    mount = mounted(s3_conf(s3_server), options=WRITABLE, debug=False)
    assert mount.proc is not None
    pid = mount.proc.pid
    path = mount.path_of(f"s3://{s3_server.endpoint}/{bucket}/big.bin")
    block = os.urandom(8 * MIB)
    digest = hashlib.sha256()
    samples = [rss_bytes(pid)]
    with open(path, "wb") as f:
        for i in range(256):
            piece = i.to_bytes(8, "big") + block[8:]
            f.write(piece)
            digest.update(piece)
            if i % 16 == 0:
                samples.append(rss_bytes(pid))
    samples.append(rss_bytes(pid))
    body = s3_server.client().get_object(Bucket=bucket, Key="big.bin")["Body"]
    served = hashlib.sha256()
    for chunk in iter(lambda: body.read(8 * MIB), b""):
        served.update(chunk)
    assert served.hexdigest() == digest.hexdigest()
    growth = max(samples) - samples[0]
    # at most 16 parts of 8 MiB in flight, plus the SDK's buffers: never the file's size
    assert growth < 400 * MIB, [s // MIB for s in samples]


def test_a_file_being_written_shows_its_size_bytes_and_progress(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    port = free_port()
    mount = mounted(
        s3_conf(s3_proxy, s3_server.admin), options=(*WRITABLE, f"metrics=127.0.0.1:{port}")
    )
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/growing.bin")
    data = os.urandom(3 * PART)
    with open(path, "wb", buffering=0) as f:
        f.write(data[: 2 * PART])
        # another process sees the size grow and reads what is written
        seen = subprocess.run(
            [sys.executable, "-c", f"import os; print(os.stat({str(path)!r}).st_size)"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert int(seen.stdout) == 2 * PART
        with open(path, "rb") as other:
            assert other.read(PART + 5) == data[: PART + 5]
        status = status_json(mount.path, mount.env)
        uploads = status["uploads"]
        assert isinstance(uploads, list) and len(uploads) == 1
        assert uploads[0]["url"].endswith("/growing.bin")
        assert uploads[0]["written"] == 2 * PART
        human = subprocess.run(
            [sys.executable, "-m", "clearmount", "status", str(mount.path)],
            capture_output=True,
            text=True,
            env=mount.env,
            check=True,
        ).stdout
        assert "uploads:  1 in flight" in human and "growing.bin" in human
        f.write(data[2 * PART :])
    counters = status_json(mount.path, mount.env)["counters"]
    assert isinstance(counters, dict)
    assert counters["uploads_completed"] == 1
    assert counters["uploaded_bytes"] == len(data)
    assert status_json(mount.path, mount.env)["uploads"] == []
    assert path.read_bytes() == data
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    values = {
        name: float(value)
        for name, _, value in (line.partition(" ") for line in metrics.splitlines())
        if name.startswith("clearmount_upload")
    }
    assert values["clearmount_uploads_completed_total"] == 1
    assert values["clearmount_uploaded_bytes_total"] == len(data)
    assert values["clearmount_uploads_in_flight"] == 0


def test_a_writer_exiting_with_the_file_open_completes_it(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    path = writable_path(mounted, s3_server, s3_proxy, bucket, "exited/out.txt")
    os.makedirs(path.parent, exist_ok=True)
    # a shell redirect into the mount: the command's stdout, closed only by its exit
    subprocess.run(f"{sys.executable} -c 'print(42)' > {path}", shell=True, check=True)
    poll_until(lambda: server_has(s3_server, bucket, "exited/out.txt"), 30, "the object")
    assert server_bytes(s3_server, bucket, "exited/out.txt") == b"42\n"


def test_a_writer_killed_with_the_file_open_leaves_no_object(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    mount = mounted(s3_conf(s3_proxy, s3_server.admin), options=WRITABLE)
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/killed/ckpt.pt")
    os.makedirs(path.parent, exist_ok=True)
    script = (
        "import os, signal\n"
        f"f = open({str(path)!r}, 'wb', buffering=0)\n"
        f"for _ in range(20): f.write(os.urandom({MIB}))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], check=False)
    assert result.returncode == -signal.SIGKILL
    poll_until(lambda: not multipart_uploads(s3_server, bucket), 60, "the upload to be aborted")
    assert not server_has(s3_server, bucket, "killed/ckpt.pt")
    poll_until(lambda: not path.exists(), 10, "the abandoned file to disappear")
    assert "killed with the file open" in mount.log_text()


def test_clearml_sdk_get_local_copy_of_a_written_file_makes_no_get(
    mounted: MountFactory,
    s3_server: S3Server,
    s3_proxy: Proxy,
    bucket: str,
    tmp_path: Path,
) -> None:
    pytest.importorskip("clearml")
    cache = tmp_path / "shared-cache"
    conf_text = s3_conf(s3_proxy, s3_server.admin)
    conf = tmp_path / "clearml.conf"
    conf.write_text(conf_text)
    mount = mounted(conf_text, cache_dir=cache, options=WRITABLE)
    url = f"s3://{s3_proxy.endpoint}/{bucket}/sdk/model.pt"
    data = os.urandom(12 * MIB)
    path = mount.path_of(url)
    os.makedirs(path.parent, exist_ok=True)
    write_file(path, data)
    s3_proxy.reset()
    assert sdk_local_copy(tmp_path, conf, cache, url).read_bytes() == data
    assert s3_proxy.count("GET", f"/{bucket}/sdk/model.pt") == 0


def test_writable_is_its_own_word_and_ro_wins() -> None:
    from clearmount.options import parse_options

    assert not parse_options(["rw,defaults"]).writable
    assert "ro" in parse_options(["rw"]).fuse_options()
    writable = parse_options(["writable,allow_overwrite"])
    assert writable.writable and writable.allow_overwrite and not writable.allow_delete
    assert "rw" in writable.fuse_options() and "ro" not in writable.fuse_options()
    # the owner may create files and folders, unless the modes are given
    assert (writable.file_mode, writable.dir_mode) == (0o644, 0o755)
    assert parse_options(["writable,file_mode=0600"]).file_mode == 0o600
    for forced in (["ro,writable"], ["writable", "ro"]):
        assert not parse_options(forced).writable


def test_written_file_lands_in_the_clearml_2x_layout_too(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str, tmp_path: Path
) -> None:
    strategy = "storage { cache { disk_space_file_size_strategy { enabled: true } } }"
    cache = tmp_path / "cache2x"
    conf = s3_conf(s3_proxy, s3_server.admin, sdk_extra=strategy)
    mount = mounted(conf, cache_dir=cache, options=WRITABLE)
    url = f"s3://{s3_proxy.endpoint}/{bucket}/layout2x/deep/model.pt"
    path = mount.path_of(url)
    os.makedirs(path.parent)
    data = os.urandom(10 * MIB)
    write_file(path, data)
    os.replace(path, path.with_name("final.pt"))
    s3_proxy.reset()
    assert path.with_name("final.pt").read_bytes() == data
    assert s3_proxy.count("GET", f"/{bucket}/layout2x/deep/final.pt") == 0
    assert (cache / "storage").is_dir()
    assert not list((cache / "storage_manager").glob("**/*.pt"))

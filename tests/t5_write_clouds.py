"""Writing through a real mount on Azure Blob (Azurite) and GCS (fake-gcs-server).

The same contract as on S3 (tests/t5_write.py): a file written sequentially is on the
server, whole, when close() returns (Azure: staged blocks, then a commit; GCS: a resumable
upload) and reading it back costs no GET; atomic saves and many writers work; a failed
upload leaves no object.
"""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import MountFactory
from devkit.processes import poll_until
from devkit.proxy import Proxy
from t5_mount_azure_gcs import AzureCloud, Cloud, GcsCloud

MIB = 1 << 20
WRITABLE = ("writable",)


def server_bytes(where: Cloud, key: str) -> bytes | None:
    """The object's bytes as the server's own SDK reads them; None if there is none."""
    if isinstance(where, AzureCloud):
        from azure.core.exceptions import ResourceNotFoundError

        container = where.server.service_client().get_container_client(where.bucket)
        try:
            return bytes(container.download_blob(key).readall())
        except ResourceNotFoundError:
            return None
    assert isinstance(where, GcsCloud)
    blob = where.server.client().bucket(where.bucket).get_blob(key)
    return None if blob is None else bytes(blob.download_as_bytes())


def uncommitted_blocks(where: Cloud, key: str) -> int:
    """Azure: the blocks staged for `key` and never committed (0 elsewhere)."""
    if not isinstance(where, AzureCloud):
        return 0
    from azure.core.exceptions import ResourceNotFoundError

    blob = where.server.service_client().get_blob_client(where.bucket, key)
    try:
        return len(blob.get_block_list("uncommitted")[1])
    except ResourceNotFoundError:
        return 0


def write_file(path: Path, data: bytes, piece: int = MIB) -> None:
    with open(path, "wb") as f:
        for start in range(0, len(data), piece):
            f.write(data[start : start + piece])


@pytest.fixture(scope="module", params=["azure", "gcs"])
def cloud(request: pytest.FixtureRequest) -> Cloud:
    if request.param == "azure":
        return AzureCloud(request.getfixturevalue("azurite"))
    return GcsCloud(request.getfixturevalue("fake_gcs"))


@pytest.fixture
def proxy(cloud: Cloud, make_proxy) -> Proxy:  # type: ignore[no-untyped-def]
    result: Proxy = make_proxy(cloud.upstream)
    return result


def test_checkpoint_streamed_then_read_back_without_a_get(
    mounted: MountFactory, cloud: Cloud, proxy: Proxy
) -> None:
    mount = cloud.mount(mounted, proxy, options=WRITABLE)
    path = mount.path_of(cloud.url("ckpt/epoch1.pt"))
    os.makedirs(path.parent, exist_ok=True)
    data = os.urandom(20 * MIB + 4321)  # three parts
    write_file(path, data)
    assert server_bytes(cloud, "ckpt/epoch1.pt") == data
    proxy.reset()
    assert path.read_bytes() == data
    assert cloud.data_gets(proxy, "ckpt/epoch1.pt") == []
    small = mount.path_of(cloud.url("ckpt/small.json"))
    small.write_text('{"step": 3}')
    assert server_bytes(cloud, "ckpt/small.json") == b'{"step": 3}'


def test_makedirs_then_atomic_save(mounted: MountFactory, cloud: Cloud, proxy: Proxy) -> None:
    mount = cloud.mount(mounted, proxy, options=WRITABLE)
    folder = mount.path_of(cloud.url("atomic/x/y"))
    os.makedirs(folder, exist_ok=True)
    os.makedirs(folder, exist_ok=True)
    data = os.urandom(9 * MIB)
    write_file(folder / "model.safetensors.tmp", data)
    os.replace(folder / "model.safetensors.tmp", folder / "model.safetensors")
    assert server_bytes(cloud, "atomic/x/y/model.safetensors") == data
    assert server_bytes(cloud, "atomic/x/y/model.safetensors.tmp") is None
    assert os.listdir(folder) == ["model.safetensors"]
    assert (folder / "model.safetensors").read_bytes() == data


def test_eight_writers_write_200_files(mounted: MountFactory, cloud: Cloud, proxy: Proxy) -> None:
    mount = cloud.mount(mounted, proxy, options=WRITABLE)
    root = mount.path_of(cloud.url("many"))
    os.makedirs(root, exist_ok=True)
    payloads = {f"f{i:03d}.bin": os.urandom(500 + 311 * i) for i in range(200)}

    def write(name: str) -> None:
        write_file(root / name, payloads[name], piece=8192)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, payloads))
    for name, data in payloads.items():
        assert server_bytes(cloud, f"many/{name}") == data, name


def test_a_failed_upload_leaves_nothing(mounted: MountFactory, cloud: Cloud, proxy: Proxy) -> None:
    mount = cloud.mount(mounted, proxy, options=WRITABLE)
    path = mount.path_of(cloud.url("failed.bin"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    for _ in range(18):
        os.write(fd, os.urandom(MIB))  # two parts sent
    with pytest.raises(OSError) as caught:
        os.pwrite(fd, b"x", 5)
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        os.close(fd)
    poll_until(lambda: uncommitted_blocks(cloud, "failed.bin") == 0, 30, "blocks to be dropped")
    assert server_bytes(cloud, "failed.bin") is None

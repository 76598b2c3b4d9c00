"""The test servers, the counting proxy and the conf helper work (no daemon involved)."""

from __future__ import annotations

import hashlib
import os
import resource
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError
from pyhocon import ConfigFactory

from devkit.azurite import AzuriteServer
from devkit.confs import s3_conf
from devkit.fake_gcs import FakeGcsServer
from devkit.processes import ServerError, poll_until
from devkit.proxy import Proxy
from devkit.s3 import Identity, S3Server
from support import SecretGuard, start_mount

MiB = 1024 * 1024


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code"))


def test_s3_round_trip_through_proxy_is_counted(s3_server: S3Server, s3_proxy: Proxy) -> None:
    bucket = s3_server.make_bucket()
    data = os.urandom(3 * MiB + 17)
    client = s3_server.client("admin", endpoint=s3_proxy)
    client.put_object(Bucket=bucket, Key="dir/obj.bin", Body=data)  # SigV4 through the proxy
    body = client.get_object(Bucket=bucket, Key="dir/obj.bin")["Body"].read()
    assert body == data
    part = client.get_object(Bucket=bucket, Key="dir/obj.bin", Range="bytes=10-19")
    assert part["Body"].read() == data[10:20]

    path = f"/{bucket}/dir/obj.bin"
    assert s3_proxy.count("GET", path) == 2
    assert s3_proxy.count("GET", path, ranged=False) == 1
    assert s3_proxy.count("GET", path, ranged=True) == 1
    assert s3_proxy.count("PUT", path) == 1
    assert s3_proxy.counts()[("GET", path, False)] == 1
    assert [r.status for r in s3_proxy.requests("GET", path)] == [200, 206]
    assert s3_proxy.requests("GET", path, ranged=True)[0].range == "bytes=10-19"


def test_proxy_keys_with_special_characters(s3_server: S3Server, s3_proxy: Proxy) -> None:
    bucket = s3_server.make_bucket()
    key = "task 1/model + weights (v2).pt"
    client = s3_server.client(endpoint=s3_proxy)
    client.put_object(Bucket=bucket, Key=key, Body=b"x" * 100)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"x" * 100
    assert s3_proxy.count("GET", f"/{bucket}/{key}") == 1  # matched on the decoded path


def test_second_identity_only_reaches_its_buckets(s3_server: S3Server) -> None:
    admin_bucket = s3_server.make_bucket()
    s3_server.put(admin_bucket, "k", b"admin data")
    own = s3_server.make_bucket(second=True)
    second = s3_server.client("second", max_attempts=1)

    with pytest.raises(ClientError) as denied:
        second.get_object(Bucket=admin_bucket, Key="k")
    assert _error_code(denied.value) == "AccessDenied"
    with pytest.raises(ClientError) as denied:
        second.list_objects_v2(Bucket=admin_bucket)
    assert _error_code(denied.value) == "AccessDenied"

    second.put_object(Bucket=own, Key="mine", Body=b"second data")
    assert second.get_object(Bucket=own, Key="mine")["Body"].read() == b"second data"
    assert [o["Key"] for o in second.list_objects_v2(Bucket=own)["Contents"]] == ["mine"]
    assert s3_server.client("admin").get_object(Bucket=own, Key="mine")["Body"].read()


def test_wrong_secret_is_rejected(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket()
    wrong = Identity("wrong", s3_server.admin.key, "not-the-secret-at-all")
    with pytest.raises(ClientError) as exc:
        s3_server.client(wrong, max_attempts=1).list_objects_v2(Bucket=bucket)
    assert _error_code(exc.value) == "SignatureDoesNotMatch"


def test_proxy_503_burst_then_success(s3_server: S3Server, s3_proxy: Proxy) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "k", b"payload")
    path = f"/{bucket}/k"
    fault = s3_proxy.fail(2, 503, method="GET", path=path)

    client = s3_server.client(endpoint=s3_proxy, max_attempts=3)
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"payload"
    assert fault.hits == 2
    assert [r.status for r in s3_proxy.requests("GET", path)] == [503, 503, 200]

    s3_proxy.fail(1, 503, path=path)
    with pytest.raises(ClientError) as exc:
        s3_server.client(endpoint=s3_proxy, max_attempts=1).head_object(Bucket=bucket, Key="k")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503


def test_proxy_cut_mid_body(s3_server: S3Server, s3_proxy: Proxy) -> None:
    bucket = s3_server.make_bucket()
    data = os.urandom(2 * MiB)
    s3_server.put(bucket, "big", data)
    s3_proxy.cut(after_bytes=100_000, method="GET", path=f"/{bucket}/big")

    client = s3_server.client(endpoint=s3_proxy, max_attempts=1)
    resp = client.get_object(Bucket=bucket, Key="big")
    with pytest.raises((BotoCoreError, OSError)):
        resp["Body"].read()  # the body ends early: botocore raises IncompleteRead
    seen = s3_proxy.requests("GET", f"/{bucket}/big")
    assert len(seen) == 1 and seen[0].body_bytes == 100_000 and seen[0].fault == "cut"

    # the fault is used up; the next GET is whole
    assert client.get_object(Bucket=bucket, Key="big")["Body"].read() == data


def test_proxy_stall_and_delay_hold_the_answer(s3_server: S3Server, s3_proxy: Proxy) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "k", b"s" * 200_000)
    path = f"/{bucket}/k"
    impatient = s3_server.client(endpoint=s3_proxy, max_attempts=1, timeout=0.5)

    s3_proxy.stall(after_bytes=1000, seconds=60, path=path)
    resp = impatient.get_object(Bucket=bucket, Key="k")
    with pytest.raises(BotoCoreError):  # ReadTimeoutError while reading the body
        resp["Body"].read()
    assert s3_proxy.requests("GET", path)[-1].body_bytes == 1000
    s3_proxy.release()

    s3_proxy.delay(60, count=1, path=path)
    with pytest.raises(BotoCoreError):  # ReadTimeoutError waiting for the head
        impatient.get_object(Bucket=bucket, Key="k")
    s3_proxy.release()

    assert impatient.get_object(Bucket=bucket, Key="k")["Body"].read() == b"s" * 200_000


def test_proxy_trickle_never_trips_a_read_timeout_and_release_ends_it(
    s3_server: S3Server, s3_proxy: Proxy
) -> None:
    bucket = s3_server.make_bucket()
    # big enough that the server's body reaches the proxy in several reads: a release frees
    # the whole body, not just the read it came during
    data = os.urandom(1 << 20)
    s3_server.put(bucket, "k", data)
    path = f"/{bucket}/k"
    impatient = s3_server.client(endpoint=s3_proxy, max_attempts=1, timeout=0.5)
    trickle = s3_proxy.trickle(after_bytes=1000, seconds=0.1, path=path)
    body = impatient.get_object(Bucket=bucket, Key="k")["Body"]
    started = time.monotonic()
    assert body.read(1005) == data[:1005]  # a byte every 0.1 s: never 0.5 s of silence
    assert time.monotonic() - started >= 0.4
    s3_proxy.release()  # the rest at once (trickled, it would take a day)
    pool = ThreadPoolExecutor(1)
    try:
        assert pool.submit(body.read).result(timeout=60) == data[1005:]
    finally:
        pool.shutdown(wait=False)  # a read still trickling ends with the proxy
    assert trickle.hits == 1 and s3_proxy.requests("GET", path)[-1].body_bytes == len(data)


def test_proxy_does_not_buffer_big_bodies(
    s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    """64 MiB through the proxy (both ways) with little growth of this process's peak RSS."""
    bucket = s3_server.make_bucket()
    chunk = os.urandom(MiB)
    src = tmp_path / "src.bin"
    expected = hashlib.md5()
    with open(src, "wb") as f:
        for _ in range(64):
            f.write(chunk)
            expected.update(chunk)
    client = s3_server.client(endpoint=s3_proxy)
    one_at_a_time = TransferConfig(max_concurrency=1, multipart_chunksize=8 * MiB)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    client.upload_file(str(src), bucket, "stream.bin", Config=one_at_a_time)  # multipart
    digest = hashlib.md5()
    body = client.get_object(Bucket=bucket, Key="stream.bin")["Body"]
    for piece in body.iter_chunks(MiB):
        digest.update(piece)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024

    assert digest.hexdigest() == expected.hexdigest()
    assert s3_proxy.count("PUT", f"/{bucket}/stream.bin") == 8  # multipart parts
    assert grown_mib < 48, f"peak RSS grew by {grown_mib:.0f} MiB"


@pytest.mark.slow
def test_proxy_streams_one_gib(s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path) -> None:
    bucket = s3_server.make_bucket()
    chunk = os.urandom(8 * MiB)
    src = tmp_path / "src.bin"
    with open(src, "wb") as f:
        for _ in range(128):
            f.write(chunk)
    client = s3_server.client(endpoint=s3_proxy)
    client.upload_file(str(src), bucket, "gib.bin")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    body = client.get_object(Bucket=bucket, Key="gib.bin")["Body"]
    total = sum(len(piece) for piece in body.iter_chunks(8 * MiB))
    assert total == 1024 * MiB
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 128, f"peak RSS grew by {grown_mib:.0f} MiB"


def test_azurite_sdk_round_trip(azurite: AzuriteServer) -> None:
    container = azurite.make_container()
    data = os.urandom(300_000)
    azurite.put(container, "dir/blob.bin", data)
    client = azurite.service_client().get_blob_client(container, "dir/blob.bin")
    assert client.download_blob().readall() == data
    props = client.get_blob_properties()
    assert props.size == len(data) and props.etag


def test_fake_gcs_sdk_round_trip(fake_gcs: FakeGcsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = fake_gcs.make_bucket()
    data = os.urandom(300_000)
    fake_gcs.put(bucket, "dir/blob.bin", data)
    assert fake_gcs.client().bucket(bucket).blob("dir/blob.bin").download_as_bytes() == data

    # the way the daemon will find it: STORAGE_EMULATOR_HOST
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.url)
    anon = storage.Client.create_anonymous_client()
    blob = anon.bucket(bucket).get_blob("dir/blob.bin")
    assert blob is not None and blob.size == len(data) and blob.generation
    assert blob.download_as_bytes(start=5, end=14) == data[5:15]


def test_s3_conf_is_the_clearml_shape(s3_server: S3Server, s3_proxy: Proxy) -> None:
    text = s3_conf(
        s3_proxy,
        s3_server.admin,
        {"host": None, "bucket": "second-x", "key": "k2", "secret": "s2", "region": "eu"},
        sdk_extra='storage { cache { default_base_dir: "/tmp/x" } }',
    )
    conf = ConfigFactory.parse_string(text)
    creds = conf["sdk"]["aws"]["s3"]["credentials"]
    assert creds[0]["host"] == s3_proxy.endpoint
    assert creds[0]["key"] == s3_server.admin.key and creds[0]["secret"] == s3_server.admin.secret
    assert creds[0]["secure"] is False and creds[0]["multipart"] is True
    assert "host" not in creds[1] and creds[1]["bucket"] == "second-x"
    assert conf["sdk"]["storage"]["cache"]["default_base_dir"] == "/tmp/x"
    default = ConfigFactory.parse_string(s3_conf(s3_server))
    assert default["sdk.aws.s3.credentials"][0]["host"] == s3_server.endpoint


def test_s3_server_restarts_on_its_ports(
    s3_server_factory: Callable[..., S3Server],
) -> None:
    server = s3_server_factory()
    bucket = server.make_bucket()
    server.put(bucket, "k", b"kept")
    server.kill()
    with pytest.raises(Exception):  # noqa: B017 - nothing listens: any connection error
        server.client(max_attempts=1, timeout=2).list_buckets()
    server.start()
    assert server.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"kept"


def test_start_mount_reports_an_early_exit(tmp_path: Path) -> None:
    """A daemon that exits before mounting fails fast with its own output."""
    started = time.monotonic()
    with pytest.raises(ServerError, match="exited with code"):
        start_mount(tmp_path, "this is { not hocon", extra_args=["--no-such-flag-xyz"])
    assert time.monotonic() - started < 20
    assert not (tmp_path / "mnt").is_mount()


def test_poll_until_names_what_it_waited_for() -> None:
    with pytest.raises(TimeoutError, match="the moon"):
        poll_until(lambda: False, 0.05, "the moon")
    assert poll_until(lambda: 42, 1, "an answer") == 42


def test_secret_guard_finds_a_leaked_secret(tmp_path: Path) -> None:
    ident = Identity.random("leaky")
    clean, dirty = tmp_path / "clean.log", tmp_path / "dirty.log"
    clean.write_text(f"using key {ident.key} secret ***\n")
    dirty.write_text(f"oops secret={ident.secret}\n")
    guard = SecretGuard()
    guard.add_identity(ident, "test")
    guard.watch(clean)
    assert guard.leaks() == []
    guard.watch(dirty)
    assert guard.leaks() == [f"test leaky secret key appears in {dirty}"]

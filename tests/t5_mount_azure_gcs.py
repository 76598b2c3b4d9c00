"""The read path through a real mount for Azure Blob (Azurite) and GCS (fake-gcs-server).

The same promises as for S3 (t5_mount_s3): bytes read equal bytes stored, listings are
complete, one fetch serves every concurrent reader, cached files survive a remount, changed
objects are seen after the TTL while old readers keep their bytes. Then what only one cloud
has: Azure's per-container account keys, GCS's per-bucket and per-subdir credentials_json;
and all three clouds mounted from one clearml.conf.

Every request goes through a counting proxy in front of the emulator: the Azure entry's
`endpoint` (clearmount's extension) or STORAGE_EMULATOR_HOST points at it.
"""

from __future__ import annotations

import base64
import datetime
import errno
import hashlib
import http.client
import http.server
import json
import os
import random
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from clearmount import config as config_module
from clearmount import urls
from conftest import MountFactory
from devkit import REPO
from devkit.azurite import AzuriteServer
from devkit.confs import s3_section, sdk_block
from devkit.fake_gcs import FakeGcsServer
from devkit.mounts import hermetic_env
from devkit.processes import poll_until, unique_name
from devkit.proxy import Proxy, Seen
from devkit.s3 import S3Server
from support import Mount, SecretGuard

MIB = 1 << 20
ACCOUNT_HOST = f"{AzuriteServer.ACCOUNT}.blob.core.windows.net"
# A well-formed account key that is not Azurite's: every request signed with it is refused.
WRONG_KEY = base64.b64encode(b"not the devstoreaccount1 key, but 64 bytes long........").decode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def hocon(value: object) -> str:
    """A HOCON value for dicts, lists and scalars (JSON is HOCON)."""
    return json.dumps(value)


def azure_section(*entries: dict[str, str]) -> str:
    return f"azure.storage {{ containers: {hocon(list(entries))} }}"


def azure_entry(endpoint: str, container: str, key: str = AzuriteServer.KEY) -> dict[str, str]:
    return {
        "account_name": AzuriteServer.ACCOUNT,
        "account_key": key,
        "container_name": container,
        "endpoint": f"http://{endpoint}/{AzuriteServer.ACCOUNT}",
    }


def google_section(*entries: dict[str, str], **top: str) -> str:
    fields = {"project": "test", **top, "credentials": list(entries)}
    return f"google.storage {hocon(fields)}"


def byte_ranges(requests: list[Seen], size: int) -> list[tuple[int, int]]:
    """[start, end) of each GET, from its Range (GCS) or x-ms-range (Azure) header."""
    ranges = []
    for seen in requests:
        header = seen.headers.get("x-ms-range") or seen.range
        if header is None:
            ranges.append((0, size))
            continue
        first, _, last = header.removeprefix("bytes=").partition("-")
        ranges.append((int(first), min(int(last) + 1, size) if last else size))
    return sorted(ranges)


def assert_each_byte_fetched_about_once(requests: list[Seen], size: int) -> None:
    """The GETs cover the object with no gap; they overlap only where a reader's jump cut a
    GET in flight (its bytes past the cut asked for again), far less than the object."""
    ranges = byte_ranges(requests, size)
    at = 0
    for start, end in ranges:
        assert start <= at, f"ranges {ranges} leave a gap at {at}"
        at = max(at, end)
    assert at == size
    assert sum(end - start for start, end in ranges) < size + size // 4, ranges


# ----------------------------------------------------------------------------- the clouds


class _Http:
    """Plain HTTP/1.1 uploads over one kept-alive connection per thread.

    The SDKs spend about a millisecond of CPU per request; thousands of tiny uploads through
    them would dominate this module's run time.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._local = threading.local()

    def send(self, method: str, target: str, body: bytes, headers: dict[str, str]) -> None:
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, 120)
            try:
                conn.request(method, target, body=body, headers=headers)
                response = conn.getresponse()
                answer = response.read()
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
                continue  # the server closed an idle kept-alive connection
            assert response.status in (200, 201), (response.status, target, answer[:300])
            return


class Cloud:
    """One backend under test: its emulator, a container/bucket, and how the mount names it."""

    name: str
    upstream: str  # "127.0.0.1:PORT" of the emulator, for make_proxy
    bucket: str

    def put(self, key: str, data: bytes, bucket: str | None = None) -> None:
        raise NotImplementedError

    def put_many(self, keys: list[str], data: bytes) -> None:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda key: self.put(key, data), keys))

    def url(self, key: str, bucket: str | None = None) -> str:
        raise NotImplementedError

    def section(self, endpoint: str, *buckets: str) -> str:
        """The sdk { } section configuring `buckets` (default: self.bucket) via `endpoint`."""
        raise NotImplementedError

    def env(self, endpoint: str) -> dict[str, str]:
        return {}

    def data_gets(self, proxy: Proxy, key: str, bucket: str | None = None) -> list[Seen]:
        """The GETs of object bytes (not metadata, not listings) the proxy forwarded."""
        raise NotImplementedError

    def list_requests(self, proxy: Proxy, bucket: str | None = None) -> list[Seen]:
        raise NotImplementedError

    def mount(self, mounted: MountFactory, proxy: Proxy, *buckets: str, **kwargs: object) -> Mount:
        conf = sdk_block([self.section(proxy.endpoint, *buckets)])
        return mounted(conf, env=self.env(proxy.url), **kwargs)  # type: ignore[arg-type]


class AzureCloud(Cloud):
    name = "azure"

    def __init__(self, server: AzuriteServer) -> None:
        from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

        self.server = server
        self.upstream = server.endpoint
        self.bucket = server.make_container()
        self._http = _Http(server.port)
        self._sas = generate_account_sas(
            server.ACCOUNT,
            server.KEY,
            ResourceTypes(object=True),
            AccountSasPermissions(write=True, create=True),
            expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=2),
        )

    def put(self, key: str, data: bytes, bucket: str | None = None) -> None:
        blob = urllib.parse.quote(key)
        target = f"/{self.server.ACCOUNT}/{bucket or self.bucket}/{blob}?{self._sas}"
        self._http.send("PUT", target, data, {"x-ms-blob-type": "BlockBlob"})

    def url(self, key: str, bucket: str | None = None) -> str:
        return f"azure://{ACCOUNT_HOST}/{bucket or self.bucket}/{key}".rstrip("/")

    def section(self, endpoint: str, *buckets: str) -> str:
        return azure_section(*(azure_entry(endpoint, b) for b in buckets or (self.bucket,)))

    def data_gets(self, proxy: Proxy, key: str, bucket: str | None = None) -> list[Seen]:
        return proxy.requests("GET", f"/{AzuriteServer.ACCOUNT}/{bucket or self.bucket}/{key}")

    def list_requests(self, proxy: Proxy, bucket: str | None = None) -> list[Seen]:
        path = f"/{AzuriteServer.ACCOUNT}/{bucket or self.bucket}"
        return [s for s in proxy.requests("GET", path) if "comp=list" in s.query]


class GcsCloud(Cloud):
    name = "gcs"

    def __init__(self, server: FakeGcsServer) -> None:
        self.server = server
        self.upstream = server.endpoint
        self.bucket = server.make_bucket()
        self._http = _Http(server.port)

    def put(self, key: str, data: bytes, bucket: str | None = None) -> None:
        target = (
            f"/upload/storage/v1/b/{bucket or self.bucket}/o"
            f"?uploadType=media&name={urllib.parse.quote(key, safe='')}"
        )
        self._http.send("POST", target, data, {"content-type": "application/octet-stream"})

    def url(self, key: str, bucket: str | None = None) -> str:
        return f"gs://{bucket or self.bucket}/{key}".rstrip("/")

    def section(self, endpoint: str, *buckets: str) -> str:
        return google_section(*({"bucket": b} for b in buckets or (self.bucket,)))

    def env(self, endpoint: str) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": endpoint}

    def data_gets(self, proxy: Proxy, key: str, bucket: str | None = None) -> list[Seen]:
        return proxy.requests("GET", f"/download/storage/v1/b/{bucket or self.bucket}/o/{key}")

    def list_requests(self, proxy: Proxy, bucket: str | None = None) -> list[Seen]:
        return proxy.requests("GET", f"/storage/v1/b/{bucket or self.bucket}/o")


@pytest.fixture(scope="module", params=["azure", "gcs"])
def cloud(request: pytest.FixtureRequest) -> Cloud:
    if request.param == "azure":
        return AzureCloud(request.getfixturevalue("azurite"))
    return GcsCloud(request.getfixturevalue("fake_gcs"))


@pytest.fixture(scope="module")
def big_data() -> bytes:
    return os.urandom(300 * MIB)


@pytest.fixture(scope="module")
def big_object(cloud: Cloud, big_data: bytes) -> tuple[str, bytes]:
    """A 300 MiB object, uploaded once per cloud."""
    key = "checkpoints/big.bin"
    cloud.put(key, big_data)
    return key, big_data


# ----------------------------------------------------------------------------- both clouds


def test_bytes_equal_for_small_odd_and_large_objects(
    cloud: Cloud,
    mounted: MountFactory,
    make_proxy: Callable[[str], Proxy],
    big_object: tuple[str, bytes],
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
        cloud.put(key, data)
    proxy = make_proxy(cloud.upstream)
    mount = cloud.mount(mounted, proxy)
    for key, data in objects.items():
        path = mount.path_of(cloud.url(key))
        assert read_file(path) == data, key
        assert path.stat().st_size == len(data)
    assert sorted(os.listdir(mount.path_of(cloud.url("odd names")))) == sorted(
        key.removeprefix("odd names/") for key in objects if key.startswith("odd names/")
    )

    key, data = big_object
    path = mount.path_of(cloud.url(key))
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
    # ranged GETs, each byte fetched once
    assert_each_byte_fetched_about_once(cloud.data_gets(proxy, key), len(data))


def test_listing_is_complete_paginated_and_nested(
    cloud: Cloud, mounted: MountFactory, make_proxy: Callable[[str], Proxy]
) -> None:
    top = unique_name("listing")
    names = [f"f{i:05d}.txt" for i in range(5_000)]
    cloud.put_many([f"{top}/many/{n}" for n in names], b"1")
    cloud.put(f"{top}/a/b/c/deep.txt", b"deep")
    cloud.put(f"{top}/a/top.txt", b"top")
    proxy = make_proxy(cloud.upstream)
    mount = cloud.mount(mounted, proxy)
    root = mount.path_of(cloud.url(top))
    assert sorted(os.listdir(root / "many")) == names
    if cloud.name == "azure":  # fake-gcs-server answers a listing in one page
        assert len(cloud.list_requests(proxy)) >= 5  # it took every page of 1000
    assert sorted(os.listdir(root)) == ["a", "many"]
    assert sorted(os.listdir(root / "a")) == ["b", "top.txt"]
    assert (root / "a" / "b").is_dir() and (root / "a" / "b" / "c").is_dir()
    assert os.listdir(root / "a" / "b" / "c") == ["deep.txt"]
    assert read_file(root / "a/b/c/deep.txt") == b"deep"
    # ls -l: attributes come with the listing, no request per file
    proxy.reset()
    sizes = [entry.stat().st_size for entry in os.scandir(root / "many")]
    assert sizes == [1] * 5_000
    assert proxy.requests() == []


def test_one_fetch_for_concurrent_readers_and_cache_reuse_after_remount(
    cloud: Cloud, mounted: MountFactory, make_proxy: Callable[[str], Proxy], tmp_path: Path
) -> None:
    data = os.urandom(3 * MIB + 5)
    key = f"shared/{unique_name('shared')}.bin"
    cloud.put(key, data)
    proxy = make_proxy(cloud.upstream)
    cache = tmp_path / "shared-cache"
    mount = cloud.mount(mounted, proxy, cache_dir=cache)
    path = mount.path_of(cloud.url(key))
    path.stat()
    readers = [
        subprocess.Popen(["sha256sum", str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    sums = {proc.communicate(timeout=60)[0].split()[0] for proc in readers}
    assert sums == {sha256(data)}

    def downloaded() -> int:  # one fetch, in as many ranged GETs as the backend's GET size
        return sum(seen.body_bytes for seen in cloud.data_gets(proxy, key))

    assert downloaded() == len(data)
    assert read_file(path) == data
    assert downloaded() == len(data)
    # ClearML's own layout: <cache>/storage_manager/global/<md5(url)>.<basename>
    url = cloud.url(key)
    basename = key.rpartition("/")[2]
    cached = (
        cache / "storage_manager/global" / f"{hashlib.md5(url.encode()).hexdigest()}.{basename}"
    )
    assert cached.read_bytes() == data
    assert os.getxattr(path, "user.clearmount.url").decode() == url

    mount.stop()
    assert not mount.is_mounted()
    proxy.reset()
    again = cloud.mount(mounted, proxy, cache_dir=cache)
    assert read_file(again.path_of(url)) == data
    assert cloud.data_gets(proxy, key) == []
    assert int(os.getxattr(again.path_of(url), "user.clearmount.cached")) == len(data)


def test_changed_object_seen_after_ttl_while_old_reader_keeps_old_bytes(
    cloud: Cloud, mounted: MountFactory, make_proxy: Callable[[str], Proxy]
) -> None:
    key = f"changing/{unique_name('changing')}.txt"
    cloud.put(key, b"version one")
    proxy = make_proxy(cloud.upstream)
    mount = cloud.mount(mounted, proxy, options=["attr_timeout=1"])
    path = mount.path_of(cloud.url(key))
    with open(path, "rb") as old:
        assert old.read() == b"version one"
        cloud.put(key, b"version two, longer")
        poll_until(lambda: read_file(path) == b"version two, longer", 15, "the new version")
        old.seek(0)
        assert old.read() == b"version one"
    assert path.stat().st_size == len(b"version two, longer")
    assert len(cloud.data_gets(proxy, key)) == 2  # once per version


# ----------------------------------------------------------------------------- Azure only


def test_azure_containers_matched_per_entry_and_wrong_key_is_eacces(
    azurite: AzuriteServer,
    mounted: MountFactory,
    make_proxy: Callable[[str], Proxy],
    secret_guard: SecretGuard,
) -> None:
    secret_guard.add_secret(WRONG_KEY, "the wrong azure account key")
    good, bad = azurite.make_container(), azurite.make_container()
    for container in (good, bad):
        azurite.put(container, "x.txt", b"x of " + container.encode())
    azurite.put(good, "later.txt", b"read after the failure")
    proxy = make_proxy(azurite.endpoint)
    # The wrong key comes first: a matcher that took the account's first entry for every
    # container would sign `good`'s requests with it too.
    conf = sdk_block(
        [
            azure_section(
                azure_entry(proxy.endpoint, bad, WRONG_KEY), azure_entry(proxy.endpoint, good)
            )
        ]
    )
    mount = mounted(conf)
    account = mount / f"azure/{ACCOUNT_HOST}"
    assert sorted(os.listdir(account)) == sorted([good, bad])
    assert read_file(account / good / "x.txt") == b"x of " + good.encode()
    with pytest.raises(OSError) as raised:
        read_file(account / bad / "x.txt")
    assert raised.value.errno == errno.EACCES
    refused = proxy.requests(prefix=f"/{AzuriteServer.ACCOUNT}/{bad}")
    assert refused and {s.status for s in refused} == {403}  # Azurite said no, with that key
    log = mount.log_text()
    denied = [line for line in log.splitlines() if f"azure://{ACCOUNT_HOST}/{bad}" in line]
    assert any("sdk.azure.storage.containers[0]" in line for line in denied), log[-3000:]
    assert not any("containers[1]" in line for line in denied)
    # the mount survived and still serves, fetching what it had not fetched before
    assert read_file(account / good / "later.txt") == b"read after the failure"
    assert mount.is_mounted()


# ----------------------------------------------------------------------------- GCS only


class TokenServer:
    """An OAuth token endpoint for service-account credentials: each access token names the
    account it was issued to, so the proxy's Authorization headers show which credentials_json
    signed each request (fake-gcs-server itself checks none)."""

    def __init__(self) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                assertion = urllib.parse.parse_qs(body)["assertion"][0]
                payload = assertion.split(".")[1]
                claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
                account = claims["iss"].partition("@")[0]
                outer.issued.append(account)
                out = json.dumps(
                    {"access_token": f"token-{account}", "expires_in": 3600, "token_type": "Bearer"}
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: object) -> None:
                pass

        self.issued: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/token"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    server = TokenServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def private_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def service_account_file(
    folder: Path, account: str, token_uri: str, private_key: str, secret_guard: SecretGuard
) -> str:
    """A service-account credentials_json file for `account`; its tokens say `account`."""
    secret_guard.add_secret(private_key.splitlines()[1], "test service-account private key")
    path = folder / f"{account}.json"
    info = {
        "type": "service_account",
        "project_id": "test",
        "private_key_id": account,
        "private_key": private_key,
        "client_email": f"{account}@test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info))
    path.chmod(0o600)
    return str(path)


def bearer_of(proxy: Proxy, bucket: str) -> set[str]:
    """The Authorization header values of every request that touched `bucket`."""
    return {
        s.headers.get("authorization", "")
        for s in proxy.requests()
        if f"/b/{bucket}/" in s.path + "/"
    }


def gcs_gets(proxy: Proxy, bucket: str, key: str) -> list[Seen]:
    return proxy.requests("GET", f"/download/storage/v1/b/{bucket}/o/{key}")


def test_gcs_credentials_json_chosen_per_bucket_and_per_subdir(
    fake_gcs: FakeGcsServer,
    mounted: MountFactory,
    make_proxy: Callable[[str], Proxy],
    token_server: TokenServer,
    private_key: str,
    secret_guard: SecretGuard,
    tmp_path: Path,
) -> None:
    own, plain, other, broken, split = (fake_gcs.make_bucket() for _ in range(5))
    for bucket in (own, plain, other, broken):
        fake_gcs.put(bucket, "x.txt", b"x of " + bucket.encode())
    for key in ("path/in/x.txt", "path/inner/x.txt", "top.txt"):
        fake_gcs.put(split, key, key.encode())
    not_credentials = tmp_path / "not-credentials.json"
    not_credentials.write_text("this is not JSON")

    def creds(account: str) -> str:
        return service_account_file(tmp_path, account, token_server.url, private_key, secret_guard)

    proxy = make_proxy(fake_gcs.endpoint)
    conf = sdk_block(
        [
            google_section(
                {"bucket": own, "credentials_json": creds("own")},
                {"bucket": plain},
                {"bucket": split, "subdir": "path/in", "credentials_json": creds("subdir")},
                {"bucket": split, "credentials_json": creds("bucket")},
                {"bucket": broken, "credentials_json": str(not_credentials)},
                credentials_json=creds("default"),
            )
        ]
    )
    mount = mounted(conf, env={"STORAGE_EMULATOR_HOST": proxy.url})
    gs = mount / "gs"
    assert sorted(os.listdir(gs)) == sorted([own, plain, split, broken])
    for bucket in (own, plain, other, broken):
        assert read_file(gs / bucket / "x.txt") == b"x of " + bucket.encode()
    assert bearer_of(proxy, own) == {"Bearer token-own"}
    # An entry without credentials_json uses Google's default credentials, as ClearML does
    # (it does not inherit the top-level credentials_json); under STORAGE_EMULATOR_HOST
    # those are anonymous. So does an entry whose credentials_json cannot be loaded, with a
    # warning naming that entry only.
    assert bearer_of(proxy, plain) == {""}
    assert bearer_of(proxy, broken) == {""}
    assert bearer_of(proxy, other) == {"Bearer token-default"}  # no entry: the top level
    warnings = [line for line in mount.log_text().splitlines() if "credentials_json is" in line]
    assert len(warnings) == 1 and "sdk.google.storage.credentials[4]:" in warnings[0], warnings

    proxy.reset()
    assert read_file(gs / split / "path/inner/x.txt") == b"path/inner/x.txt"
    assert read_file(gs / split / "top.txt") == b"top.txt"
    assert bearer_of(proxy, split) == {"Bearer token-bucket"}  # "path/in" is not a prefix
    proxy.reset()
    assert read_file(gs / split / "path/in/x.txt") == b"path/in/x.txt"
    assert gcs_gets(proxy, split, "path/in/x.txt")
    assert bearer_of(proxy, split) == {"Bearer token-subdir"}
    assert set(token_server.issued) == {"bucket", "default", "own", "subdir"}


def test_gcs_credentials_json_of_another_kind_is_named_and_the_default_credentials_read(
    fake_gcs: FakeGcsServer,
    mounted: MountFactory,
    make_proxy: Callable[[str], Proxy],
    tmp_path: Path,
) -> None:
    # An external-account configuration can run a command: only GOOGLE_APPLICATION_CREDENTIALS
    # may bring one. In credentials_json it is named and left, and the bucket still reads.
    bucket = fake_gcs.make_bucket()
    fake_gcs.put(bucket, "x.txt", b"read anyway")
    external = tmp_path / "external.json"
    external.write_text(
        json.dumps(
            {
                "type": "external_account",
                "audience": "//iam.googleapis.com/pool-audience-material",
                "credential_source": {"executable": {"command": "/bin/false"}},
            }
        )
    )
    proxy = make_proxy(fake_gcs.endpoint)
    conf = sdk_block([google_section({"bucket": bucket, "credentials_json": str(external)})])
    mount = mounted(conf, env={"STORAGE_EMULATOR_HOST": proxy.url})
    assert read_file(mount / "gs" / bucket / "x.txt") == b"read anyway"
    assert bearer_of(proxy, bucket) == {""}  # the default credentials: anonymous here
    log_text = mount.log_text()
    warnings = [line for line in log_text.splitlines() if "credentials_json is" in line]
    assert len(warnings) == 1, warnings
    assert "sdk.google.storage.credentials[0]:" in warnings[0]
    assert "'external_account'" in warnings[0]
    assert "pool-audience-material" not in log_text


def test_gcs_subdir_entries_resolve_on_segment_boundaries(tmp_path: Path) -> None:
    conf = tmp_path / "clearml.conf"
    conf.write_text(
        sdk_block(
            [
                google_section(
                    {"bucket": "data", "subdir": "path/in"},
                    {"bucket": "data", "subdir": "path"},
                    {"bucket": "data"},
                    {"bucket": "data-large"},
                )
            ]
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "clearmount", "config", "--config", str(conf)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=hermetic_env(tmp_path),
        timeout=60,
    )
    base = "sdk.google.storage.credentials"
    for line in (
        f"gs://data/path/in -> {base}[0]",
        f"gs://data/path -> {base}[1]",
        f"gs://data -> {base}[2]",
        f"gs://data-large -> {base}[3]",
    ):
        assert line in result.stdout, result.stdout
    # what the printout cannot show: URLs between and beside the configured prefixes
    config = config_module.load(conf, environ={})
    for url, index in (
        ("gs://data/path/in/x", 0),
        ("gs://data/path/inner/x", 1),
        ("gs://data/path/x", 1),
        ("gs://data/pathology/x", 2),
        ("gs://data/x", 2),
        ("gs://data-large/path/in/x", 3),
    ):
        assert urls.match_gcs(config.gcs, urls.parse_url(url)).source == f"{base}[{index}]", url
    assert urls.match_gcs(config.gcs, urls.parse_url("gs://dat/x")).source == "sdk.google.storage"


# ----------------------------------------------------------------------------- all at once


def test_all_three_clouds_mounted_from_one_config(
    mounted: MountFactory,
    s3_server: S3Server,
    s3_proxy: Proxy,
    azurite: AzuriteServer,
    fake_gcs: FakeGcsServer,
) -> None:
    bucket = s3_server.make_bucket()
    container = azurite.make_container()
    gcs_bucket = fake_gcs.make_bucket()
    s3_server.put(bucket, "from/s3.txt", b"s3 bytes")
    azurite.put(container, "from/azure.txt", b"azure bytes")
    fake_gcs.put(gcs_bucket, "from/gcs.txt", b"gcs bytes")
    conf = sdk_block(
        [
            s3_section(s3_proxy, s3_server.admin),
            azure_section(azure_entry(azurite.endpoint, container)),
            google_section({"bucket": gcs_bucket}),
        ]
    )
    mount = mounted(conf, env=fake_gcs.env)
    # "file" is the direct-access scheme, always there (-o nofile hides it)
    assert sorted(os.listdir(mount.path)) == ["azure", "file", "gs", "s3"]
    assert read_file(mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/from/s3.txt")) == b"s3 bytes"
    assert read_file(mount.path_of(f"azure://{ACCOUNT_HOST}/{container}/from/azure.txt")) == (
        b"azure bytes"
    )
    assert read_file(mount.path_of(f"gs://{gcs_bucket}/from/gcs.txt")) == b"gcs bytes"
    assert s3_proxy.count("GET", f"/{bucket}/from/s3.txt") == 1

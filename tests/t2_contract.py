"""The `ObjectStore` contract, one suite run against every backend's real server.

S3 is SeaweedFS, Azure Blob is Azurite, GCS is fake-gcs-server, all on 127.0.0.1 (see
the `devkit` package). Every store is built the way the daemon builds it: clearml.conf text →
`config.load` → `urls.parse_url` → `backends.open_store`, so matching a URL to its
credentials entry is exercised too. Each backend gets one fresh bucket/container per session,
seeded with `OBJECTS`; tests that change objects write under ``mut/`` with their own keys.
"""

from __future__ import annotations

import datetime
import email.utils
import importlib
import logging
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
import botocore.parsers
import hypothesis
import hypothesis.strategies as st
import pytest

from clearmount import backends, config, urls
from clearmount.backends import base, s3
from clearmount.backends.base import ObjectInfo, ObjectStore
from clearmount.config import Config
from clearmount.errors import AccessDenied, NotFound, Stale, Unavailable, Unexpected
from devkit.azurite import AzuriteServer
from devkit.confs import s3_conf
from devkit.fake_gcs import FakeGcsServer
from devkit.mounts import hermetic_env
from devkit.processes import free_port, poll_until, unique_name
from devkit.proxy import Proxy
from devkit.s3 import S3Server

MIB = 1 << 20
BIG = random.Random(20260101).randbytes(3 * MIB + 4567)
ODD_KEYS = (
    "odd/with space.txt",
    "odd/ünïcödé 名前.txt",
    "odd/a+b=c.txt",
    "odd/100%.txt",
    "odd/%41%2F.txt",  # looks URL-encoded; must stay literal both ways
)
PAGE_KEYS = tuple(f"page/k{i}" for i in range(5))
OBJECTS: dict[str, bytes] = {
    "empty": b"",
    "one": b"\x01",
    "big.bin": BIG,
    "dir/a.txt": b"alpha\n",
    "dir/b.txt": b"bravo\n",
    "dir/sub/c.txt": b"charlie\n",
    "dir/sub/deeper/d.txt": b"delta\n",
    "mixed/x": b"x",
    "mixed/y/z": b"z",
    "mut/seed": b"keeps mut/ in the root listing from the start",
    **{key: f"page {key}".encode() for key in PAGE_KEYS},
    **{key: key.encode() * 3 for key in ODD_KEYS},
}
ROOT_OBJECTS = {"empty", "one", "big.bin"}
ROOT_PREFIXES = {"dir/", "mixed/", "mut/", "page/", "odd/"}
CLOSE_TO_NOW = 300.0  # seconds between a server's clock and ours on one host


class Backend:
    """One server, one seeded bucket, and the clearml.conf texts that reach it."""

    name = ""

    def __init__(self, bucket: str, conf_dir: Path) -> None:
        self.bucket = bucket
        self.conf_dir = conf_dir
        # The registry caches stores by id(config): keep every config alive so that an id is
        # never reused for a different config within the session.
        self._configs: list[Config] = []

    # -- per backend
    def conf(self) -> str:
        raise NotImplementedError

    def url(self, key: str = "", bucket: str | None = None) -> str:
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def denied_stores(self) -> list[ObjectStore]:
        """Stores whose credentials the server refuses for `bucket`."""
        raise NotImplementedError

    def dead_store(self, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
        """A store whose endpoint is a closed port."""
        raise NotImplementedError

    def environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Process environment a store of this backend needs (set for each test)."""

    # -- shared
    def load(self, text: str) -> Config:
        path = self.conf_dir / f"clearml-{len(self._configs)}.conf"
        path.write_text(text)
        cfg = config.load(path, {"HOME": str(self.conf_dir)})
        self._configs.append(cfg)
        return cfg

    def store(self, text: str | None = None, bucket: str | None = None) -> ObjectStore:
        cfg = self.load(self.conf() if text is None else text)
        return backends.open_store(urls.parse_url(self.url(bucket=bucket), cfg.s3), cfg)

    def seed(self) -> None:
        for key, data in OBJECTS.items():
            self.put(key, data)


class S3Backend(Backend):
    name = "s3"

    def __init__(self, server: S3Server, conf_dir: Path) -> None:
        super().__init__(server.make_bucket(), conf_dir)
        self.server = server

    def conf(self) -> str:
        return s3_conf(self.server)

    def url(self, key: str = "", bucket: str | None = None) -> str:
        return self.server.s3_url(bucket or self.bucket, key).rstrip("/")

    def put(self, key: str, data: bytes) -> None:
        self.server.put(self.bucket, key, data)

    def denied_stores(self) -> list[ObjectStore]:
        admin = self.server.admin
        return [
            # a valid identity without rights on this bucket (only on second-*)
            self.store(s3_conf(self.server, self.server.second)),
            # the right key with a wrong secret: the signature does not match
            self.store(
                s3_conf(self.server, {"key": admin.key, "secret": admin.secret[::-1] + "x"})
            ),
        ]

    def dead_store(self, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
        endpoint = f"127.0.0.1:{free_port()}"
        text = s3_conf(endpoint, {"key": "AKDEADENDPOINT", "secret": "dead-endpoint-secret"})
        cfg = self.load(text)
        url = f"s3://{endpoint}/{self.bucket}"
        return backends.open_store(urls.parse_url(url, cfg.s3), cfg)


class AzureBackend(Backend):
    name = "azure"
    HOST = f"{AzuriteServer.ACCOUNT}.blob.core.windows.net"

    def __init__(self, server: AzuriteServer, conf_dir: Path) -> None:
        super().__init__(server.make_container(), conf_dir)
        self.server = server

    def conf(self, key: str | None = None, endpoint: str | None = None) -> str:
        return (
            "sdk.azure.storage.containers: [\n"
            f'  {{ account_name: "{self.server.ACCOUNT}", '
            f'account_key: "{key or self.server.KEY}", '
            f'endpoint: "{endpoint or self.server.account_url}" }}\n'
            "]\n"
        )

    def url(self, key: str = "", bucket: str | None = None) -> str:
        base = f"azure://{self.HOST}/{bucket or self.bucket}"
        return f"{base}/{key}" if key else base

    def put(self, key: str, data: bytes) -> None:
        self.server.put(self.bucket, key, data)

    def denied_stores(self) -> list[ObjectStore]:
        # a well-formed key (base64 of 64 bytes) that is not the account's
        wrong = "A" * 86 + "=="
        return [self.store(self.conf(key=wrong))]

    def dead_store(self, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
        dead = f"http://127.0.0.1:{free_port()}/{self.server.ACCOUNT}"
        return self.store(self.conf(endpoint=dead))


class GcsBackend(Backend):
    name = "gcs"

    def __init__(self, server: FakeGcsServer, conf_dir: Path) -> None:
        super().__init__(server.make_bucket(), conf_dir)
        self.server = server

    def conf(self) -> str:
        return 'sdk.google.storage { project: "test-project" }\n'

    def url(self, key: str = "", bucket: str | None = None) -> str:
        base = f"gs://{bucket or self.bucket}"
        return f"{base}/{key}" if key else base

    def put(self, key: str, data: bytes) -> None:
        self.server.put(self.bucket, key, data)

    def environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # how the daemon finds the emulator (and, with no credentials_json, goes anonymous)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", self.server.url)
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)

    def denied_stores(self) -> list[ObjectStore]:
        # fake-gcs-server accepts any request, authenticated or not: it has no access control
        # to refuse wrong credentials with, so the AccessDenied case cannot be shown here.
        pytest.skip("fake-gcs-server does not check credentials")

    def dead_store(self, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
        return self.store()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def s3_backend(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> S3Backend:
    backend = S3Backend(s3_server, tmp_path_factory.mktemp("contract-s3"))
    backend.seed()
    return backend


@pytest.fixture(scope="session")
def azure_backend(azurite: AzuriteServer, tmp_path_factory: pytest.TempPathFactory) -> AzureBackend:
    backend = AzureBackend(azurite, tmp_path_factory.mktemp("contract-azure"))
    backend.seed()
    return backend


@pytest.fixture(scope="session")
def gcs_backend(fake_gcs: FakeGcsServer, tmp_path_factory: pytest.TempPathFactory) -> GcsBackend:
    backend = GcsBackend(fake_gcs, tmp_path_factory.mktemp("contract-gcs"))
    backend.seed()
    return backend


@pytest.fixture(params=["s3", "azure", "gcs"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    chosen: Backend = request.getfixturevalue(f"{request.param}_backend")
    chosen.environment(monkeypatch)
    return chosen


@pytest.fixture
def store(backend: Backend) -> ObjectStore:
    return backend.store()


# ----------------------------------------------------------------------------- helpers


def list_all(
    store: ObjectStore, prefix: str, limit: int = 1000
) -> tuple[list[ObjectInfo], list[str], int]:
    """Every page of `prefix`: (objects, prefixes, number of pages), in server order."""
    objects: list[ObjectInfo] = []
    prefixes: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = store.list_page(prefix, token, limit)
        pages += 1
        objects += page.objects
        prefixes += page.prefixes
        token = page.next_token
        if token is None:
            return objects, prefixes, pages
        assert pages < 100, "pagination does not end"


def read(store: ObjectStore, key: str, start: int, end: int, chunk_size: int = MIB) -> bytes:
    info = store.head(key)
    return b"".join(store.read_range(key, info.version, start, end, chunk_size))


def raises_within(kind: type[Exception], call: Callable[[], Any]) -> Exception:
    with pytest.raises(kind) as caught:
        call()
    return caught.value


# ----------------------------------------------------------------------------- the store


def test_store_comes_from_the_config(backend: Backend, store: ObjectStore) -> None:
    assert store.base_url == backend.url()
    assert store.entry.startswith("sdk.")  # the clearml.conf entry that supplied credentials


def test_exists(backend: Backend, store: ObjectStore) -> None:
    assert store.exists() is True
    assert backend.store(bucket=unique_name("missing")).exists() is False


# ----------------------------------------------------------------------------- head


@pytest.mark.parametrize("key", ["empty", "one", "big.bin"])
def test_head_reports_size_version_and_mtime(store: ObjectStore, key: str) -> None:
    info = store.head(key)
    assert info.key == key
    assert info.size == len(OBJECTS[key])
    assert isinstance(info.version, str) and info.version
    assert abs(info.mtime - time.time()) < CLOSE_TO_NOW


def test_head_of_a_missing_key_is_not_found(store: ObjectStore) -> None:
    error = raises_within(NotFound, lambda: store.head("dir/no-such-key"))
    assert "dir/no-such-key" in str(error)


def test_head_in_a_missing_bucket_is_not_found(backend: Backend) -> None:
    missing = backend.store(bucket=unique_name("missing"))
    raises_within(NotFound, lambda: missing.head("one"))


def test_a_directory_prefix_is_not_an_object(store: ObjectStore) -> None:
    # (not "dir/": SeaweedFS stores directories as entries and answers HEAD dir/ with 200)
    raises_within(NotFound, lambda: store.head("dir"))


# ----------------------------------------------------------------------------- list_page


def test_list_root(store: ObjectStore) -> None:
    objects, prefixes, _ = list_all(store, "")
    assert {o.key for o in objects} == ROOT_OBJECTS
    assert set(prefixes) == ROOT_PREFIXES
    for info in objects:
        assert info.size == len(OBJECTS[info.key])
        assert info.version


def test_list_nested_prefixes_with_delimiter(store: ObjectStore) -> None:
    objects, prefixes, _ = list_all(store, "dir/")
    assert sorted(o.key for o in objects) == ["dir/a.txt", "dir/b.txt"]
    assert prefixes == ["dir/sub/"]
    objects, prefixes, _ = list_all(store, "dir/sub/")
    assert [o.key for o in objects] == ["dir/sub/c.txt"]
    assert prefixes == ["dir/sub/deeper/"]
    objects, prefixes, _ = list_all(store, "dir/sub/deeper/")
    assert [o.key for o in objects] == ["dir/sub/deeper/d.txt"]
    assert prefixes == []


def test_list_object_beside_a_prefix(store: ObjectStore) -> None:
    objects, prefixes, _ = list_all(store, "mixed/")
    assert [o.key for o in objects] == ["mixed/x"]
    assert prefixes == ["mixed/y/"]


def test_list_of_a_missing_prefix_is_empty(store: ObjectStore) -> None:
    page = store.list_page("nothing-here/")
    assert (page.objects, page.prefixes, page.next_token) == ((), (), None)


def test_pagination_returns_every_key_exactly_once(store: ObjectStore) -> None:
    objects, prefixes, pages = list_all(store, "page/", limit=2)
    assert [o.key for o in objects] == list(PAGE_KEYS)
    assert prefixes == []
    assert pages >= 3


def test_pagination_over_objects_and_prefixes(store: ObjectStore) -> None:
    objects, prefixes, pages = list_all(store, "", limit=2)
    assert sorted(o.key for o in objects) == sorted(ROOT_OBJECTS)  # each exactly once
    # fake-gcs-server repeats the page's prefixes on later pages (GCS and the others do not);
    # a caller must tolerate a prefix seen twice, never a missing one
    assert set(prefixes) == ROOT_PREFIXES
    assert pages >= 2


def test_listed_version_pins_reads_like_heads(store: ObjectStore) -> None:
    objects, _, _ = list_all(store, "dir/")
    listed = {o.key: o for o in objects}["dir/a.txt"]
    assert listed.version == store.head("dir/a.txt").version
    chunks = store.read_range("dir/a.txt", listed.version, 0, listed.size)
    assert b"".join(chunks) == OBJECTS["dir/a.txt"]


# ----------------------------------------------------------------------------- read_range


def test_read_full_range(store: ObjectStore) -> None:
    assert read(store, "big.bin", 0, len(BIG)) == BIG
    assert read(store, "one", 0, 1) == b"\x01"


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, 1),
        (1, 2),
        (1000, 70_000),
        (MIB - 7, MIB + 7),  # across a chunk boundary
        (len(BIG) // 2, len(BIG) // 2 + 12_345),
        (len(BIG) - 1, len(BIG)),  # the last byte
        (5, len(BIG) - 5),
    ],
)
def test_read_ranges(store: ObjectStore, start: int, end: int) -> None:
    assert read(store, "big.bin", start, end) == BIG[start:end]


def test_read_empty_ranges_yield_nothing(store: ObjectStore) -> None:
    info = store.head("empty")
    assert list(store.read_range("empty", info.version, 0, 0)) == []
    big = store.head("big.bin")
    assert list(store.read_range("big.bin", big.version, 10, 10)) == []


@pytest.mark.parametrize(
    ("chunk_size", "start", "end"),
    [
        (1, 3, 2003),
        (4096, 777, 777 + 300_000),
        (64 * 1024, 777, 777 + 300_000),
        (MIB, 0, len(BIG)),
    ],
)
def test_read_in_chunks(store: ObjectStore, chunk_size: int, start: int, end: int) -> None:
    info = store.head("big.bin")
    chunks = list(store.read_range("big.bin", info.version, start, end, chunk_size))
    at_least = -(-(end - start) // chunk_size)
    assert len(chunks) >= at_least > 1
    assert all(0 < len(chunk) <= chunk_size for chunk in chunks)
    assert b"".join(chunks) == BIG[start:end]


def test_read_of_a_missing_key_is_not_found(store: ObjectStore) -> None:
    version = store.head("one").version  # a plausible version string of this backend
    raises_within(NotFound, lambda: list(store.read_range("dir/no-such-key", version, 0, 1)))


# ----------------------------------------------------------------------------- versions


def test_read_with_a_stale_version_raises_stale(backend: Backend, store: ObjectStore) -> None:
    key = f"mut/stale-{unique_name('k')}"
    backend.put(key, b"first version")
    old = store.head(key)
    backend.put(key, b"second version, longer")
    new = store.head(key)
    assert new.version != old.version
    raises_within(Stale, lambda: list(store.read_range(key, old.version, 0, old.size)))
    assert b"".join(store.read_range(key, new.version, 0, new.size)) == b"second version, longer"


def test_a_stream_never_mixes_versions(backend: Backend, store: ObjectStore) -> None:
    key = f"mut/stream-{unique_name('k')}"
    first = random.Random(1).randbytes(9 * MIB + 1)
    second = random.Random(2).randbytes(9 * MIB + 1)
    backend.put(key, first)
    info = store.head(key)
    stream = store.read_range(key, info.version, 0, info.size, MIB)
    got = next(stream)
    backend.put(key, second)
    try:
        for chunk in stream:
            got += chunk
    except Stale:
        return  # the backend noticed (Azure, GCS: every later GET is pinned)
    assert got == first  # or it kept streaming the version it started with (S3: one GET)


# ----------------------------------------------------------------------------- key names


@pytest.mark.parametrize("key", ODD_KEYS)
def test_keys_with_spaces_unicode_plus_and_percent(store: ObjectStore, key: str) -> None:
    info = store.head(key)
    assert info.key == key
    assert info.size == len(OBJECTS[key])
    assert read(store, key, 0, info.size) == OBJECTS[key]


def test_listing_keeps_odd_names_raw(store: ObjectStore) -> None:
    objects, prefixes, _ = list_all(store, "odd/")
    assert sorted(o.key for o in objects) == sorted(ODD_KEYS)
    assert prefixes == []


# ----------------------------------------------------------------------------- failures


def test_wrong_credentials_are_access_denied(backend: Backend) -> None:
    for denied in backend.denied_stores():
        with pytest.raises(AccessDenied):
            denied.head("one")
        with pytest.raises(AccessDenied):
            denied.list_page("")
        with pytest.raises(AccessDenied):
            denied.exists()


def test_an_unreachable_endpoint_is_unavailable(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = backend.dead_store(monkeypatch)
    # the SDK's own retries are bounded, so this returns in seconds (not asserted)
    error = raises_within(Unavailable, lambda: dead.head("one"))
    assert dead.base_url in str(error)


def test_azure_account_without_an_entry_is_access_denied(azure_backend: AzureBackend) -> None:
    cfg = azure_backend.load(azure_backend.conf())
    url = urls.parse_url("azure://otheraccount.blob.core.windows.net/c/k")
    error = raises_within(AccessDenied, lambda: backends.open_store(url, cfg))
    assert "otheraccount" in str(error)


@pytest.mark.parametrize("name", ["s3", "azure"])
def test_list_containers_names_the_bucket(request: pytest.FixtureRequest, name: str) -> None:
    chosen: Backend = request.getfixturevalue(f"{name}_backend")
    cfg = chosen.load(chosen.conf())
    url = urls.parse_url(chosen.url(), cfg.s3)
    assert chosen.bucket in backends.list_containers(url, cfg)


def test_abandoned_stream_can_be_closed(store: ObjectStore) -> None:
    info = store.head("big.bin")
    stream = store.read_range("big.bin", info.version, 0, info.size, 64 * 1024)
    assert next(stream) == BIG[: 64 * 1024]
    close: Callable[[], None] = getattr(stream, "close", lambda: None)
    close()  # a reader that stops early releases the stream without an error
    assert read(store, "big.bin", 0, 10) == BIG[:10]


# ----------------------------------------------------------------------------- S3 adapter details


@hypothesis.given(
    instant=st.datetimes(
        min_value=datetime.datetime(1970, 1, 1), max_value=datetime.datetime(2200, 1, 1)
    ),
    iso=st.booleans(),
)
def test_s3_timestamps_parse_as_botocore_parses_them(instant: datetime.datetime, iso: bool) -> None:
    # The fast parser must give the instants botocore's own gives, for both forms S3 sends:
    # ISO 8601 with milliseconds in listings, the HTTP date in headers.
    instant = instant.replace(microsecond=instant.microsecond // 1000 * 1000)
    if iso:
        text = instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{instant.microsecond // 1000:03d}Z"
    else:
        text = email.utils.format_datetime(instant.replace(tzinfo=datetime.UTC), usegmt=True)
    assert s3.parse_timestamp(text) == botocore.parsers.DEFAULT_TIMESTAMP_PARSER(text)


@pytest.mark.parametrize("text", ["1764145770", "2026-11-26T08:49:33+01:00", "Thu, 26 Nov 2026"])
def test_s3_timestamps_in_other_forms_fall_back_to_botocore(text: str) -> None:
    assert s3.parse_timestamp(text) == botocore.parsers.DEFAULT_TIMESTAMP_PARSER(text)


def proxied_s3_store(backend: S3Backend, proxy: Proxy) -> ObjectStore:
    """A store of `backend`'s bucket reached through `proxy` (which records every request)."""
    cfg = backend.load(s3_conf(proxy, backend.server.admin))
    url = urls.parse_url(f"s3://{proxy.endpoint}/{backend.bucket}", cfg.s3)
    return backends.open_store(url, cfg)


def test_s3_data_gets_are_presigned(s3_backend: S3Backend, s3_proxy: Proxy) -> None:
    store = proxied_s3_store(s3_backend, s3_proxy)
    info = store.head("big.bin")
    assert b"".join(store.read_range("big.bin", info.version, 5, 70_000)) == BIG[5:70_000]
    (get,) = s3_proxy.requests(method="GET")
    assert "X-Amz-Signature=" in get.query and "authorization" not in get.headers
    assert get.range == "bytes=5-69999" and get.headers.get("if-match") == info.version


def test_s3_gets_after_the_first_are_signed_like_the_clients(
    s3_backend: S3Backend, s3_proxy: Proxy
) -> None:
    # the client presigns the first GET; the later ones are signed by the store itself (keys
    # that need encoding too), and the server takes every signature: right bytes, no SDK GET
    store = proxied_s3_store(s3_backend, s3_proxy)
    for key in ("big.bin", *ODD_KEYS, "dir/sub/c.txt"):
        info = store.head(key)
        assert b"".join(store.read_range(key, info.version, 0, info.size)) == OBJECTS[key]
    gets = s3_proxy.requests(method="GET")
    assert len(gets) == 2 + len(ODD_KEYS)
    assert all("X-Amz-Signature=" in get.query for get in gets)
    assert not any("authorization" in get.headers for get in gets)


def established_to(port: int) -> int:
    """This machine's TCP connections established to 127.0.0.1:`port` (their client ends)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        remote, state = line.split()[2:4]
        count += state == "01" and int(remote.rpartition(":")[2], 16) == port
    return count


def test_s3_a_client_keeps_no_more_connections_than_requests_it_sends_at_once(
    s3_backend: S3Backend, make_proxy: Callable[[str], Proxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the daemon says how many requests it sends at once (its transfer slots); connections
    # beyond that (opened while given-up requests still ran) are closed once done, not pooled
    monkeypatch.setattr(base, "_requests_at_once", None)
    base.limit_pools(3)
    proxy = make_proxy(s3_backend.server.endpoint)
    store = proxied_s3_store(s3_backend, proxy)
    info = store.head("big.bin")
    proxy.stall(1000, 120, count=None, method="GET")
    bodies: list[bytes] = []

    def get() -> None:
        bodies.append(b"".join(store.read_range("big.bin", info.version, 0, 100_000)))

    readers = [threading.Thread(target=get) for _ in range(12)]
    for reader in readers:
        reader.start()
    poll_until(
        lambda: sum(r.body_bytes >= 1000 for r in proxy.requests("GET")) == 12,
        30,
        "12 GETs at once",
    )
    assert established_to(proxy.port) >= 12
    proxy.release()
    for reader in readers:
        reader.join(30)
    assert bodies == [BIG[:100_000]] * 12
    assert established_to(proxy.port) <= 3


def test_the_daemon_log_leaves_out_urllib3s_pool_overflow_and_keeps_its_other_warnings() -> None:
    # with pools of one connection per request slot, a given-up request finishing later
    # overflows its pool by design: urllib3 warns at each, the daemon's log does not
    import io

    import urllib3

    from clearmount import log

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    pool = urllib3.HTTPConnectionPool("127.0.0.1", maxsize=1, block=False)
    pool_log = logging.getLogger("urllib3.connectionpool")
    try:
        log.setup(stream=out)
        pool._put_conn(pool._new_conn())
        pool._put_conn(pool._new_conn())  # one more than the pool holds
        pool_log.warning("Retrying after connection broken")
        assert "Connection pool is full" not in out.getvalue()
        assert "Retrying after connection broken" in out.getvalue()
        for dropper in pool_log.filters:
            pool_log.removeFilter(dropper)
        pool._put_conn(pool._new_conn())  # the same overflow, seen without the filter
        assert "Connection pool is full" in out.getvalue()
    finally:
        for dropper in pool_log.filters:
            pool_log.removeFilter(dropper)
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        pool.close()


@pytest.mark.parametrize("reused", [True, False])
def test_s3_a_keys_later_gets_resend_the_url_signed_for_it_for_a_while(
    s3_backend: S3Backend, s3_proxy: Proxy, monkeypatch: pytest.MonkeyPatch, reused: bool
) -> None:
    # signing costs more CPU than the rest of a small GET's client side, and a zip reader GETs
    # one key's member headers hundreds of times in a row: within `_REUSE_SECONDS`, a key's
    # GETs send the URL signed for it (a new one after), and each key keeps its own
    if not reused:
        monkeypatch.setattr(s3, "_REUSE_SECONDS", 0.0)
    store = proxied_s3_store(s3_backend, s3_proxy)
    keys = ("big.bin", "dir/sub/c.txt")
    versions = {key: store.head(key).version for key in keys}

    def read_each(start: int) -> None:
        for key in keys:
            got = b"".join(store.read_range(key, versions[key], start, start + 2))
            assert got == OBJECTS[key][start : start + 2]

    read_each(0)  # the client presigns the first GET: the URLs signed here start after it
    read_each(2)
    time.sleep(1.1)  # a URL signed now would carry another X-Amz-Date
    read_each(4)
    gets = s3_proxy.requests(method="GET")
    assert not any("authorization" in get.headers for get in gets)
    signed_here = [(get.path, get.query) for get in gets[1:]]
    assert len(signed_here) == 5 and len({path for path, _ in signed_here}) == 2
    assert (len(set(signed_here)) == 2) is reused


def test_s3_a_get_signed_by_the_store_refused_goes_back_to_the_clients_presigning(
    s3_backend: S3Backend, s3_proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clearmount")
    store = proxied_s3_store(s3_backend, s3_proxy)
    info = store.head("big.bin")
    assert b"".join(store.read_range("big.bin", info.version, 0, 10)) == BIG[:10]
    s3_proxy.fail(1, status=403, method="GET")
    for start in (10, 20):
        got = b"".join(store.read_range("big.bin", info.version, start, start + 10))
        assert got == BIG[start : start + 10]
    signed_by_sdk = ["authorization" in get.headers for get in s3_proxy.requests(method="GET")]
    # learned, refused (the SDK asks), then presigned by the client again, not by the SDK
    assert signed_by_sdk == [False, False, True, False]
    assert "signed here answered 403" in caplog.text
    assert "presigned GETs answered" not in caplog.text


@pytest.mark.parametrize(("status", "presigned_later"), [(301, False), (403, False), (503, True)])
def test_s3_a_presigned_get_not_answered_is_asked_again_by_the_sdk(
    s3_backend: S3Backend,
    s3_proxy: Proxy,
    caplog: pytest.LogCaptureFixture,
    status: int,
    presigned_later: bool,
) -> None:
    # a bucket in another region (301), a server refusing query-string authentication (403),
    # a busy one (503): the SDK's GET retries, follows or names it, as it always did; only
    # the first two make the SDK ask for this bucket from then on
    caplog.set_level(logging.INFO, logger="clearmount")
    store = proxied_s3_store(s3_backend, s3_proxy)
    info = store.head("big.bin")
    s3_proxy.fail(1, status=status, method="GET")
    for start in (0, 1000):
        got = b"".join(store.read_range("big.bin", info.version, start, start + 1000))
        assert got == BIG[start : start + 1000]
    signed_by_sdk = ["authorization" in get.headers for get in s3_proxy.requests(method="GET")]
    assert signed_by_sdk == [False, True, not presigned_later]
    assert ("presigned GETs answered" in caplog.text) is not presigned_later


@pytest.mark.parametrize("where", ["before the answer", "in the body"])
def test_s3_a_presigned_get_timing_out_is_unavailable_and_names_no_signature(
    s3_backend: S3Backend, s3_proxy: Proxy, where: str
) -> None:
    # resumed by the fetch, not asked again by the SDK (which would wait as long again); the
    # presigned URL is a credential, so the error shows the object's URL only
    text = s3_conf(s3_proxy, s3_backend.server.admin, sdk_extra="aws.boto3 { read_timeout: 1 }")
    cfg = s3_backend.load(text)
    url = urls.parse_url(f"s3://{s3_proxy.endpoint}/{s3_backend.bucket}", cfg.s3)
    store = backends.open_store(url, cfg)
    if where == "before the answer":
        s3_proxy.delay(3, 1, method="GET")
    else:
        s3_proxy.stall(5, 3, 1, method="GET")
    error = raises_within(Unavailable, lambda: read(store, "big.bin", 0, 10))
    assert "big.bin" in str(error) and "Signature" not in str(error), error
    assert "no answer within the timeout" in str(error)
    assert len(s3_proxy.requests(method="GET")) == 1


def test_warm_up_imports_only_the_sdks_the_config_uses(tmp_path: Path) -> None:
    # boto3 alone would cost a GCS-only mount 8 MiB, and its first lookups its import time
    conf = tmp_path / "clearml.conf"
    conf.write_text('sdk.google.storage { project: "test-project" }\n')
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from clearmount import backends, config\n"
        f"backends.warm_up(config.load(Path({str(conf)!r})))\n"
        "print('boto3' in sys.modules, 'google.cloud.storage' in sys.modules)\n"
    )
    env = hermetic_env(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["False", "True"], done.stderr


@pytest.mark.parametrize("adapter", ["s3", "azure", "gcs", "http"])
def test_an_exception_no_table_names_is_a_logged_bug_not_a_retry(
    adapter: str, caplog: pytest.LogCaptureFixture
) -> None:
    # every adapter's border is the shared one: what its table does not name is logged once
    # with its traceback (for the person on call) and fails at once, naming the URL
    module = importlib.import_module(f"clearmount.backends.{adapter}")
    caplog.set_level(logging.ERROR, logger="clearmount")

    def buggy() -> None:
        raise KeyError("Body")

    border = module._border("s3://bucket/the/key", "sdk.aws.s3.credentials[0]")
    with pytest.raises(Unexpected) as raised, border:
        buggy()
    error = raised.value
    assert not isinstance(error, Unavailable)  # the fetch does not resume it
    assert str(error) == (
        "unexpected KeyError; the traceback is in the log "
        "(s3://bucket/the/key, credentials sdk.aws.s3.credentials[0])"
    )
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and "s3://bucket/the/key" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    with pytest.raises(NotFound), module._border("s3://bucket/k", ""):  # passes as it is
        raise NotFound("gone", "s3://bucket/k")


def test_an_s3_timeout_never_quotes_the_request_url() -> None:
    # botocore's message quotes the request's URL, which is a credential when presigned
    presigned = "https://h/b/k?X-Amz-Signature=deadbeef"
    for exc in (
        botocore.exceptions.ReadTimeoutError(endpoint_url=presigned),
        botocore.exceptions.ConnectionClosedError(endpoint_url=presigned),
    ):
        with pytest.raises(Unavailable) as raised, s3._border("s3://b/k", "sdk.aws.s3"):
            raise exc
        assert "Signature" not in str(raised.value) and "s3://b/k" in str(raised.value)

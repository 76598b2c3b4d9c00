"""http(s) URLs through a real mount: nginx serves the files (with and without byte ranges),
the counting proxy in front of it says what the server was asked, and a stand-in for the
ClearML API server's auth.login hands out the files-server tokens (nginx checks them with
auth_request)."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import MountFactory
from devkit.fileserver import ClearmlAuthStandIn, NginxServer
from devkit.mounts import hermetic_env
from devkit.processes import poll_until, unique_name
from devkit.proxy import Proxy
from support import SecretGuard, sdk_local_copy

MiB = 1 << 20
ACCESS_KEY = "HTTPTESTACCESSKEY0001"


@pytest.fixture(scope="module")
def auth(secret_guard: SecretGuard) -> Iterator[ClearmlAuthStandIn]:
    secret = "http-test-secret-" + unique_name("s")
    secret_guard.add_secret(secret, "clearml api secret_key")
    secret_guard.add_secret(ACCESS_KEY, "clearml api access_key")
    stand_in = ClearmlAuthStandIn(ACCESS_KEY, secret)
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="module")
def nginx(
    tmp_path_factory: pytest.TempPathFactory, auth: ClearmlAuthStandIn
) -> Iterator[NginxServer]:
    server = NginxServer(tmp_path_factory.mktemp("nginx"), auth_endpoint=auth.endpoint)
    server.start()
    yield server
    server.stop()


def http_conf(
    auth: ClearmlAuthStandIn | None = None,
    files_server: str | None = None,
    hosts: tuple[str, ...] = (),
    extra: str = "",
) -> str:
    api = []
    if auth is not None:
        api.append(f'api_server: "{auth.url}"')
        api.append(
            f'credentials {{ access_key: "{auth.access_key}", secret_key: "{auth.secret_key}" }}'
        )
    if files_server is not None:
        api.append(f'files_server: "{files_server}"')
    listed = ", ".join(f'"{host}"' for host in hosts)
    return (
        "api {\n  " + "\n  ".join(api) + "\n}\n"
        "sdk {\n"
        "  http { timeout { connection: 5, total: 10 }, download { max_retries: 2 } }\n"
        f"  storage.http.hosts: [{listed}]\n"
        f"{extra}\n"
        "}\n"
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_http_paths_map_to_urls_and_back() -> None:
    env = hermetic_env(Path("/nonexistent"))

    def run(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "clearmount", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    at = ("--mountpoint", "/mnt/artifacts")
    assert run("path", "https://files.clear.ml/proj/x.pt", *at) == (
        "/mnt/artifacts/https/files.clear.ml/proj/x.pt"
    )
    assert run("path", "http://clearml-host:8081/a/b.bin", *at) == (
        "/mnt/artifacts/http/clearml-host:8081/a/b.bin"
    )


def test_bytes_equal_by_parallel_ranged_gets_and_by_one_get_without_ranges(
    mounted: MountFactory,
    nginx: NginxServer,
    auth: ClearmlAuthStandIn,
    make_proxy: Callable[[str], Proxy],
) -> None:
    proxy = make_proxy(nginx.endpoint)
    folder = unique_name("data")
    big, small, whole = os.urandom(40 * MiB), os.urandom(300_000), os.urandom(20 * MiB)
    nginx.put(f"{folder}/big.bin", big)
    nginx.put(f"{folder}/small.bin", small)
    nginx.put(f"norange/{folder}/whole.bin", whole)
    mount = mounted(http_conf(auth, f"http://{proxy.endpoint}"))
    base = f"http://{proxy.endpoint}"

    assert sha(mount.path_of(f"{base}/{folder}/big.bin").read_bytes()) == sha(big)
    gets = proxy.requests("GET", f"/{folder}/big.bin")
    # ranged GETs of at most 8 MiB (multipart_chunksize), each byte about once
    assert all(g.ranged and g.status == 206 for g in gets), [(g.range, g.status) for g in gets]
    assert len(big) <= sum(g.body_bytes for g in gets) < len(big) + 8 * MiB
    assert len(gets) >= len(big) // (8 * MiB)
    assert mount.path_of(f"{base}/{folder}/small.bin").read_bytes() == small
    assert proxy.count("GET", f"/{folder}/small.bin") == 1

    # nginx's max_ranges 0: no Accept-Ranges, so one GET for the whole object
    assert sha(mount.path_of(f"{base}/norange/{folder}/whole.bin").read_bytes()) == sha(whole)
    gets = proxy.requests("GET", f"/norange/{folder}/whole.bin")
    assert [g.status for g in gets] == [200]
    log = mount.log_text()
    assert all(token not in log for token in auth.tokens)


def test_lookups_make_directories_and_listings_show_what_was_looked_up(
    mounted: MountFactory,
    nginx: NginxServer,
    auth: ClearmlAuthStandIn,
    make_proxy: Callable[[str], Proxy],
) -> None:
    proxy = make_proxy(nginx.endpoint)
    folder = unique_name("data")
    nginx.put(f"{folder}/a.bin", b"a bytes")
    nginx.put(f"{folder}/b.bin", b"b bytes")
    mount = mounted(http_conf(auth, f"http://{proxy.endpoint}"))
    assert "http" in os.listdir(mount.path)
    assert os.listdir(mount.path / "http") == [proxy.endpoint]
    host = mount.path / "http" / proxy.endpoint

    # a plain HTTP server lists nothing: an unknown directory is empty, not an error
    assert os.listdir(host / "no" / "such" / "dir") == []
    assert (host / "no" / "such").is_dir()
    assert proxy.count("GET") == 0

    assert (host / folder / "a.bin").read_bytes() == b"a bytes"
    assert (host / folder / "a.bin").stat().st_size == len(b"a bytes")
    assert os.listdir(host / folder) == ["a.bin"]  # b.bin was never looked up
    assert (host / folder / "b.bin").is_file()
    assert sorted(os.listdir(host / folder)) == ["a.bin", "b.bin"]
    assert folder in os.listdir(host)


def test_object_replaced_mid_read_is_never_mixed(
    mounted: MountFactory,
    nginx: NginxServer,
    auth: ClearmlAuthStandIn,
    make_proxy: Callable[[str], Proxy],
) -> None:
    proxy = make_proxy(nginx.endpoint)
    path = f"{unique_name('data')}/model.bin"
    old, new = os.urandom(8 * MiB), os.urandom(8 * MiB)
    nginx.put(path, old)
    # 1 MiB parts one after the other: the replacement lands between two GETs of one read
    boto3 = "  aws.boto3 { multipart_chunksize: 1048576, max_multipart_concurrency: 1 }"
    mount = mounted(http_conf(auth, f"http://{proxy.endpoint}", extra=boto3))
    local = mount.path_of(f"http://{proxy.endpoint}/{path}")
    assert local.stat().st_size == len(old)
    stall = proxy.stall(512 << 10, 60, count=1, method="GET", path=f"/{path}")

    got = bytearray()
    failure: list[OSError] = []

    def reader() -> None:
        try:
            with open(local, "rb", buffering=0) as f:
                while chunk := f.read(256 << 10):
                    got.extend(chunk)
        except OSError as exc:
            failure.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    poll_until(lambda: stall.hits == 1, 30, "the first GET to stall")
    nginx.put(path, new)
    later = time.time() + 5  # nginx's ETag is mtime + size: make sure it changes
    os.utime(nginx.root / path, (later, later))
    proxy.release()
    thread.join(60)
    assert not thread.is_alive()

    # the part already under way finishes with the old bytes, the next GET is refused
    assert failure and failure[0].errno == errno.ESTALE, (failure, len(got))
    assert len(got) < len(old) and bytes(got) == old[: len(got)]
    statuses = [g.status for g in proxy.requests("GET", f"/{path}")]
    assert statuses[0] == 206 and statuses[-1] == 412, statuses

    def reads_new() -> bool:
        try:
            return local.read_bytes() == new
        except OSError as exc:
            assert exc.errno == errno.ESTALE
            return False

    poll_until(reads_new, 30, "a new open to read the new object")


def test_files_server_token_only_for_files_server_hosts_and_refreshed(
    mounted: MountFactory,
    nginx: NginxServer,
    auth: ClearmlAuthStandIn,
    make_proxy: Callable[[str], Proxy],
    tmp_path: Path,
) -> None:
    files = make_proxy(nginx.endpoint)
    public = make_proxy(nginx.endpoint)
    folder = unique_name("private/t")
    for name in ("one", "two", "three"):
        nginx.put(f"{folder}/{name}.bin", name.encode() * 1000)
    open_folder = unique_name("open")
    nginx.put(f"{open_folder}/pub.bin", b"public")
    conf = http_conf(auth, f"http://{files.endpoint}", hosts=(f"http://{public.endpoint}",))
    logins = auth.logins
    mount = mounted(conf)
    f_base, p_base = f"http://{files.endpoint}", f"http://{public.endpoint}"
    assert auth.logins == logins  # lazily: nothing read yet

    assert mount.path_of(f"{f_base}/{folder}/one.bin").read_bytes() == b"one" * 1000
    assert auth.logins == logins + 1
    sent = {s.headers.get("authorization") for s in files.requests()}
    assert sent == {f"Bearer {auth.tokens[-1]}"}

    # another host gets no credentials: nginx refuses it the private folder
    with pytest.raises(PermissionError):
        mount.path_of(f"{p_base}/{folder}/one.bin").stat()
    assert "no credentials sent to a host that is not a files server" in mount.log_text()
    assert mount.path_of(f"{p_base}/{open_folder}/pub.bin").read_bytes() == b"public"
    assert public.requests() and all("authorization" not in s.headers for s in public.requests())

    # the server stops taking the token: one 401, a new login, the read succeeds
    auth.revoke()
    auth.lifetime = 0  # from now on tokens expire at once: each is renewed before it is sent
    assert mount.path_of(f"{f_base}/{folder}/two.bin").read_bytes() == b"two" * 1000
    assert auth.logins >= logins + 2
    refused = [s for s in files.requests() if s.status == 401]
    assert len(refused) == 1
    before = auth.logins
    assert mount.path_of(f"{f_base}/{folder}/three.bin").read_bytes() == b"three" * 1000
    assert auth.logins > before
    assert len([s for s in files.requests() if s.status == 401]) == 1
    auth.lifetime = 3600

    # no key and no token in the log or in `clearmount config`
    conf_path = tmp_path / "clearml.conf"
    conf_path.write_text(conf)
    shown = subprocess.run(
        [sys.executable, "-m", "clearmount", "config", "--config", str(conf_path)],
        capture_output=True,
        text=True,
        env=hermetic_env(tmp_path),
        timeout=60,
        check=True,
    ).stdout
    assert f"{f_base} (api.files_server)" in shown
    assert f"{p_base} (sdk.storage.http.hosts[0])" in shown
    log = mount.log_text()
    for secret in (auth.access_key, auth.secret_key, *auth.tokens):
        assert secret not in log and secret not in shown


def test_unlisted_host_is_never_contacted(
    mounted: MountFactory, nginx: NginxServer, tmp_path: Path
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    endpoint = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        mount = mounted(http_conf(), options=["negative_timeout=0"])
        for scheme in ("http", "https", "http"):
            with pytest.raises(FileNotFoundError):
                (mount.path / scheme / endpoint / "x.bin").stat()
            with pytest.raises(FileNotFoundError):
                os.listdir(mount.path / scheme / endpoint)
        # the kernel completes handshakes on a listening socket by itself: none is queued
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    log = mount.log_text()
    assert log.count(f"http/{endpoint}: endpoint not in clearml.conf, not contacted") == 1
    assert "-o allow_unlisted_endpoints" in log

    nginx.put("open/x.bin", b"reachable")
    allowed = mounted(http_conf(), options=["allow_unlisted_endpoints"])
    assert allowed.path_of(f"{nginx.url}/open/x.bin").read_bytes() == b"reachable"


def test_clearml_sdk_and_mount_share_http_downloads_both_ways(
    mounted: MountFactory,
    nginx: NginxServer,
    make_proxy: Callable[[str], Proxy],
    tmp_path: Path,
) -> None:
    pytest.importorskip("clearml")
    proxy = make_proxy(nginx.endpoint)
    folder = unique_name("shared")
    mount_first, sdk_first = os.urandom(3 * MiB), os.urandom(200_000)
    nginx.put(f"{folder}/mount-first.bin", mount_first)
    nginx.put(f"{folder}/sdk-first.bin", sdk_first)
    base = f"http://{proxy.endpoint}/{folder}"
    conf_text = http_conf(hosts=(f"http://{proxy.endpoint}",))
    conf = tmp_path / "clearml.conf"
    conf.write_text(conf_text)
    cache = tmp_path / "shared-cache"
    mount = mounted(conf_text, cache_dir=cache)
    # the mount fetches, the SDK reuses the file: 0 GET
    assert mount.path_of(f"{base}/mount-first.bin").read_bytes() == mount_first
    gets = proxy.count("GET", f"/{folder}/mount-first.bin")
    assert gets == 1
    local = sdk_local_copy(tmp_path, conf, cache, f"{base}/mount-first.bin")
    assert local.parent == cache / "storage_manager/global"
    assert local.read_bytes() == mount_first
    assert proxy.count("GET", f"/{folder}/mount-first.bin") == gets

    # the SDK fetches, the mount reuses the file: 0 GET
    local = sdk_local_copy(tmp_path, conf, cache, f"{base}/sdk-first.bin")
    assert local.read_bytes() == sdk_first
    gets = proxy.count("GET", f"/{folder}/sdk-first.bin")
    assert gets >= 1
    assert mount.path_of(f"{base}/sdk-first.bin").read_bytes() == sdk_first
    assert proxy.count("GET", f"/{folder}/sdk-first.bin") == gets


def test_server_errors_and_stalls_are_retried_within_the_configured_timeouts(
    mounted: MountFactory,
    nginx: NginxServer,
    make_proxy: Callable[[str], Proxy],
) -> None:
    proxy = make_proxy(nginx.endpoint)
    path = f"{unique_name('flaky')}/x.bin"
    data = os.urandom(3 * MiB)
    nginx.put(path, data)
    conf = http_conf(hosts=(f"http://{proxy.endpoint}",)).replace("total: 10", "total: 1")
    mount = mounted(conf)
    local = mount.path_of(f"http://{proxy.endpoint}/{path}")
    proxy.fail(2, 503, method="HEAD", path=f"/{path}")
    assert local.stat().st_size == len(data)
    proxy.fail(1, 502, method="GET", path=f"/{path}")
    stall = proxy.stall(1 * MiB, 60, count=1, method="GET", path=f"/{path}")
    started = time.monotonic()
    assert sha(local.read_bytes()) == sha(data)
    # the stalled answer was given up after sdk.http.timeout.total (1 s), not 60 s
    assert stall.hits == 1 and time.monotonic() - started < 20
    statuses = [s.status for s in proxy.requests(path=f"/{path}")]
    assert statuses[:3] == [503, 503, 200] and 502 in statuses, statuses


def test_object_too_big_for_the_cache_without_ranges_is_streamed_by_one_get(
    mounted: MountFactory,
    nginx: NginxServer,
    make_proxy: Callable[[str], Proxy],
) -> None:
    proxy = make_proxy(nginx.endpoint)
    path = f"norange/{unique_name('big')}/x.bin"
    data = os.urandom(30 * MiB)
    nginx.put(path, data)
    conf = http_conf(hosts=(f"http://{proxy.endpoint}",))
    mount = mounted(conf, extra_args=["--cache-max-size", "4MiB"])
    local = mount.path_of(f"http://{proxy.endpoint}/{path}")
    assert sha(local.read_bytes()) == sha(data)
    assert "more than the cache can hold" in mount.log_text()
    assert [s.status for s in proxy.requests("GET", f"/{path}")] == [200]
    with open(local, "rb") as f:  # a jump back starts a new GET from the first byte
        f.seek(5 * MiB)
        assert f.read(MiB) == data[5 * MiB : 6 * MiB]


def test_names_are_sent_as_the_clearml_sdk_sends_its_urls(
    mounted: MountFactory, nginx: NginxServer
) -> None:
    folder = unique_name("odd")
    names = {"with space.txt": b"space", "ünï 名前.txt": b"unicode", "100%.txt": b"percent"}
    for name, data in names.items():
        nginx.put(f"{folder}/{name}", data)
    mount = mounted(http_conf(hosts=(nginx.url,)))
    host = mount.path / "http" / nginx.endpoint / folder
    for name, data in names.items():
        assert (host / name).read_bytes() == data
    # ClearML records http(s) URLs percent-quoted: those paths reach the same files
    assert (host / "with%20space.txt").read_bytes() == b"space"
    assert (host / "100%25.txt").read_bytes() == b"percent"


def test_refused_api_credentials_are_permission_denied_with_a_clear_log_line(
    mounted: MountFactory, nginx: NginxServer, auth: ClearmlAuthStandIn
) -> None:
    path = f"{unique_name('private/w')}/x.bin"
    nginx.put(path, b"private")
    wrong = "not-the-secret-" + unique_name("w")
    conf = http_conf(auth, nginx.url).replace(auth.secret_key, wrong)
    mount = mounted(conf)
    logins = auth.logins
    with pytest.raises(PermissionError):
        mount.path_of(f"{nginx.url}/{path}").read_bytes()
    assert auth.logins == logins
    log = mount.log_text()
    assert "refused api.credentials (auth.login answered 401)" in log
    assert wrong not in log and auth.secret_key not in log

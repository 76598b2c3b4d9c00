"""Shared fixtures: real servers on 127.0.0.1, the counting proxy, real FUSE mounts.

Session-scoped and started only when a test asks for them:
  s3_server   S3Server (SeaweedFS): .endpoint, .admin/.second (Identity), .client(who),
              .make_bucket(name=None, second=False), .put(bucket, key, data), .s3_url()
  azurite     AzuriteServer: .account_url, .connection_string, .service_client(), .put()
  fake_gcs    FakeGcsServer: .url, .env (STORAGE_EMULATOR_HOST), .client(), .put()
Per test:
  s3_proxy        Proxy in front of s3_server, reset before and after the test:
                  .endpoint, .count("GET", "/bucket/key"), .fail/.delay/.stall/.cut
  make_proxy      make_proxy(upstream_endpoint) -> a new Proxy, stopped after the test
  s3_server_factory  make(**kwargs) -> a private S3Server (for tests that kill servers)
  mounted         mounted(config_text, *, cache_dir=None, options=(), env=None, ...) -> Mount
Always (session, autouse):
  secret_guard    fails the run if a test identity's secret appears in a daemon log
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from devkit.azurite import AzuriteServer
from devkit.fake_gcs import FakeGcsServer
from devkit.processes import tail, warnings_and_errors
from devkit.proxy import Proxy
from devkit.s3 import S3Server
from support import Mount, SecretGuard, start_mount

MOUNTS_KEY = pytest.StashKey[list[Mount]]()


# ----------------------------------------------------------------------------- secrets


@pytest.fixture(scope="session", autouse=True)
def secret_guard() -> Iterator[SecretGuard]:
    guard = SecretGuard()
    yield guard
    leaks = guard.leaks()
    if leaks:
        pytest.fail("secrets leaked into daemon logs:\n" + "\n".join(leaks), pytrace=False)


# ----------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def s3_server(
    tmp_path_factory: pytest.TempPathFactory, secret_guard: SecretGuard
) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    for ident in server.identities:
        secret_guard.add_identity(ident, "s3_server")
    server.start()
    yield server
    server.stop()
    server.remove_data()


@pytest.fixture
def s3_server_factory(
    tmp_path: Path, secret_guard: SecretGuard
) -> Iterator[Callable[..., S3Server]]:
    """Private SeaweedFS servers for tests that kill or restart them."""
    made: list[S3Server] = []

    def make(**kwargs: Any) -> S3Server:
        server = S3Server(tmp_path / f"seaweedfs{len(made)}", **kwargs)
        for ident in server.identities:
            secret_guard.add_identity(ident, "s3_server_factory")
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        server.stop()
        server.remove_data()


@pytest.fixture(scope="session")
def _s3_proxy_session(s3_server: S3Server) -> Iterator[Proxy]:
    with Proxy(("127.0.0.1", s3_server.port), name="s3-proxy") as proxy:
        yield proxy


@pytest.fixture
def s3_proxy(_s3_proxy_session: Proxy) -> Iterator[Proxy]:
    """The counting proxy in front of s3_server; empty record and no faults per test."""
    _s3_proxy_session.reset()
    yield _s3_proxy_session
    _s3_proxy_session.reset()


@pytest.fixture
def make_proxy() -> Iterator[Callable[[str], Proxy]]:
    """make_proxy("127.0.0.1:PORT") -> a started Proxy (stopped after the test)."""
    proxies: list[Proxy] = []

    def make(upstream: str) -> Proxy:
        host, _, port = upstream.removeprefix("http://").rpartition(":")
        proxy = Proxy((host, int(port)), name=f"proxy{len(proxies)}").start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture(scope="session")
def azurite(
    tmp_path_factory: pytest.TempPathFactory, secret_guard: SecretGuard
) -> Iterator[AzuriteServer]:
    server = AzuriteServer(tmp_path_factory.mktemp("azurite"))
    secret_guard.add_secret(server.KEY, "azurite account key")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcsServer]:
    server = FakeGcsServer(tmp_path_factory.mktemp("fake-gcs"))
    server.start()
    yield server
    server.stop()


# ----------------------------------------------------------------------------- mounts


class MountFactory(Protocol):
    def __call__(
        self,
        config_text: str,
        *,
        cache_dir: Path | None = None,
        options: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        debug: bool = True,
        mountpoint: Path | None = None,
        timeout: float = 30.0,
    ) -> Mount: ...


@pytest.fixture
def mounted(
    tmp_path: Path, request: pytest.FixtureRequest, secret_guard: SecretGuard
) -> Iterator[MountFactory]:
    """mounted(config_text, ...) runs the daemon on a fresh mount point and waits for it.

    Teardown: fusermount3 -u -z, SIGTERM, SIGKILL after a bound; fails the test if a
    process or the mount is left behind or a secret is in the log.
    """
    mounts = request.node.stash.setdefault(MOUNTS_KEY, [])

    def factory(
        config_text: str,
        *,
        cache_dir: Path | None = None,
        options: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        debug: bool = True,
        mountpoint: Path | None = None,
        timeout: float = 30.0,
    ) -> Mount:
        workdir = tmp_path / f"mount{len(mounts)}"
        secret_guard.watch(workdir / "clearmount.log")
        mount = start_mount(
            workdir,
            config_text,
            mountpoint=mountpoint,
            cache_dir=cache_dir,
            options=options,
            env=env,
            extra_args=extra_args,
            debug=debug,
            timeout=timeout,
        )
        mounts.append(mount)
        return mount

    yield factory
    problems: list[str] = []
    for mount in reversed(mounts):
        mount.stop()
        problems += mount.problems
    problems += secret_guard.leaks(m.log_path for m in mounts)
    if problems:
        pytest.fail("after the test:\n" + "\n".join(problems), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failing test's report carries the tail of each daemon log it started."""
    report = yield
    if report.failed:
        mounts: list[Mount] = item.stash.get(MOUNTS_KEY, [])
        for i, mount in enumerate(mounts):
            report.sections.append(
                (
                    f"clearmount log mount{i}: warnings and errors",
                    warnings_and_errors(mount.log_path),
                )
            )
            report.sections.append(
                (f"clearmount log mount{i} ({mount.log_path})", tail(mount.log_path, 80))
            )
    return report

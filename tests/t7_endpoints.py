"""Endpoints nobody configured are never contacted (issue 17, point 8).

A local user naming `s3/HOST:PORT/...` must not make the daemon (often root, holding the
node's default credentials) connect to that host and port. What must hold, through a real
mount: a `host:port` that no clearml.conf host entry names does not exist (ENOENT for ls,
stat, open, getxattr, `clearmount prefetch`), a bare TCP listener at that address sees not
a single connection, and the log has one line per host naming the option that allows it;
with `-o allow_unlisted_endpoints` that endpoint is contacted (and SeaweedFS on a port the
config does not name serves its bytes); configured hosts work as before.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clearmount import options
from clearmount.errors import UserError
from conftest import MountFactory
from devkit.confs import s3_conf
from devkit.proxy import Proxy
from devkit.s3 import S3Server
from support import Mount

OPTION = "allow_unlisted_endpoints"


class Listener:
    """A bare TCP server on 127.0.0.1 that counts the connections it accepts.

    Each connection gets an HTTP 404 and is closed, so a client that does connect fails at
    once instead of waiting out a timeout.
    """

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, name="listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            with conn:
                try:
                    conn.settimeout(5)
                    conn.recv(65536)
                    conn.sendall(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        except OSError:
            pass
        self._sock.close()
        self._thread.join(10)


@pytest.fixture
def listener() -> Iterator[Callable[[], Listener]]:
    made: list[Listener] = []

    def make() -> Listener:
        made.append(Listener())
        return made[-1]

    yield make
    for one in made:
        one.close()


def conf_with_defaults(s3_proxy: Proxy, s3_server: S3Server, storage: str = "") -> str:
    """A host entry for the proxy only, and default credentials (as a node holds them)."""
    admin = s3_server.admin
    return s3_conf(
        s3_proxy,
        admin,
        s3_extra=f'key: "{admin.key}", secret: "{admin.secret}", secure: false',
        sdk_extra=storage,
    )


def errno_of(action: Callable[[], object]) -> int:
    try:
        action()
    except OSError as exc:
        return exc.errno or -1
    return 0


def refusals(mount: Mount, endpoint: str) -> list[str]:
    return [
        line
        for line in mount.log_text().splitlines()
        if f"s3/{endpoint}:" in line and OPTION in line
    ]


def test_unlisted_endpoint_is_enoent_and_never_contacted(
    mounted: MountFactory,
    s3_server: S3Server,
    s3_proxy: Proxy,
    listener: Callable[[], Listener],
    tmp_path: Path,
) -> None:
    probed, anchored = listener(), listener()
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "old.txt").write_text("from nfs")
    rule = (
        "storage { path_substitution: [ "
        f'{{ registered_prefix: "s3://{anchored.endpoint}/archive/", '
        f'local_prefix: "file://{archive}/" }} ] }}'
    )
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "hello.txt", b"hello")
    # negative_timeout=0: every lookup reaches the daemon, none is answered by a cache
    mount = mounted(conf_with_defaults(s3_proxy, s3_server, rule), options=["negative_timeout=0"])
    unlisted = mount / f"s3/{probed.endpoint}"
    # SeaweedFS itself, at the port the proxy forwards to: also a port the config never names
    seaweed = mount / f"s3/{s3_server.endpoint}/{bucket}/hello.txt"
    for _ in range(3):
        for action in (
            lambda: os.listdir(unlisted),
            lambda: os.stat(unlisted),
            lambda: os.listdir(unlisted / "latest/meta-data"),
            lambda: os.stat(unlisted / bucket / "hello.txt"),
            lambda: open(unlisted / bucket / "hello.txt", "rb").close(),
            lambda: os.getxattr(unlisted / bucket / "hello.txt", "user.clearmount.url"),
            lambda: open(seaweed, "rb").close(),
        ):
            assert errno_of(action) == errno.ENOENT
    url = f"s3://{probed.endpoint}/{bucket}/hello.txt"
    prefetch = subprocess.run(
        [sys.executable, "-m", "clearmount", "prefetch", "--mountpoint", str(mount.path), url],
        capture_output=True,
        text=True,
        env=mount.env,
        timeout=60,
        check=False,
    )
    assert prefetch.returncode != 0 and "(ENOENT)" in prefetch.stderr
    # a direct-access rule shows its place on an unlisted host; nothing else there exists
    assert os.listdir(mount / f"s3/{anchored.endpoint}") == ["archive"]
    assert os.readlink(mount / f"s3/{anchored.endpoint}/archive") == str(archive)
    assert (mount / f"s3/{anchored.endpoint}/archive/old.txt").read_text() == "from nfs"
    assert errno_of(lambda: os.stat(mount / f"s3/{anchored.endpoint}/other")) == errno.ENOENT
    # configured hosts work as before, and only they are listed
    assert os.listdir(mount / "s3") == [s3_proxy.endpoint]
    assert (mount / f"s3/{s3_proxy.endpoint}/{bucket}/hello.txt").read_bytes() == b"hello"

    assert probed.accepted == 0 and anchored.accepted == 0
    for endpoint in (probed.endpoint, s3_server.endpoint, anchored.endpoint):
        lines = refusals(mount, endpoint)
        assert len(lines) == 1, (endpoint, lines)
        assert " WARNING " in lines[0] and "endpoint not in clearml.conf, not contacted" in lines[0]


def test_allow_unlisted_endpoints_contacts_them(
    mounted: MountFactory,
    s3_server: S3Server,
    s3_proxy: Proxy,
    listener: Callable[[], Listener],
) -> None:
    probed = listener()
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "hello.txt", b"hello")
    mount = mounted(conf_with_defaults(s3_proxy, s3_server), options=[OPTION])
    # SeaweedFS at a port no entry names, with the default credentials (ClearML's fallback)
    seaweed = mount / f"s3/{s3_server.endpoint}/{bucket}/hello.txt"
    assert seaweed.read_bytes() == b"hello"
    assert errno_of(lambda: os.stat(mount / f"s3/{probed.endpoint}/{bucket}")) == errno.ENOENT
    assert probed.accepted >= 1  # the 404 came from the listener itself
    assert (mount / f"s3/{s3_proxy.endpoint}/{bucket}/hello.txt").read_bytes() == b"hello"
    assert "not contacted" not in mount.log_text()


def test_allow_unlisted_endpoints_option_parses() -> None:
    assert options.MountOptions().allow_unlisted_endpoints is False
    assert options.parse_options([]).allow_unlisted_endpoints is False
    parsed = options.parse_options([f"allow_other,{OPTION}"])
    assert parsed.allow_unlisted_endpoints and parsed.allow_other
    assert OPTION not in " ".join(parsed.fuse_options())  # the daemon's, not the kernel's
    for bad in (f"{OPTION}=1", f"{OPTION}=yes"):
        with pytest.raises(UserError, match=OPTION):
            options.parse_options([bad])

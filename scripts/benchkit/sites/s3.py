"""S3 on SeaweedFS; the reference is boto3."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devkit.confs import s3_conf
from devkit.s3 import S3Server, weed_binary

from ..common import BIG_KEY, BUCKET, MIB
from ..machine import tool_version
from . import Site, register


@register
class S3Site(Site):
    backend = "s3"
    server_name = "SeaweedFS"
    ref_download_label = "boto3 TransferManager `download_file` to local disk"
    ref_get_label = "one boto3 GET of a 1-byte object"
    ref_list_label = "boto3 `list_objects_v2` paginated"

    def start(self) -> None:
        work = self.workdir / "seaweedfs"
        shutil.rmtree(work / "data", ignore_errors=True)
        self.server = S3Server(work)
        self.server.start(timeout=120)
        self.server.make_bucket(BUCKET)
        self._client = self._new_client()

    def _new_client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.server.url,
            aws_access_key_id=self.server.admin.key,
            aws_secret_access_key=self.server.admin.secret,
            region_name="us-east-1",
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                max_pool_connections=32,
                retries={"mode": "standard", "max_attempts": 3},
            ),
        )

    def server_version(self) -> str:
        return tool_version([weed_binary(), "version"], r"version \S+ (\S+)")

    def put(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=BUCKET, Key=key, Body=data)

    def put_file(self, key: str, path: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_chunksize=16 * MIB, max_concurrency=8)
        self._client.upload_file(str(path), BUCKET, key, Config=config)

    def warm_up(self) -> None:
        self._client.head_bucket(Bucket=BUCKET)

    def get(self, key: str) -> bytes:
        body: bytes = self._client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        return body

    def get_first_byte(self, key: str) -> bytes:
        reply = self._client.get_object(Bucket=BUCKET, Key=key, Range="bytes=0-0")
        body: bytes = reply["Body"].read()
        return body

    def list_count(self, prefix: str) -> int:
        count = 0
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=prefix, Delimiter="/"
        )
        for page in pages:
            count += len(page.get("Contents", ()))
        return count

    def download_params(self) -> dict[str, Any]:
        return {
            "backend": "s3",
            "endpoint": self.server.url,
            "key": self.server.admin.key,
            "secret": self.server.admin.secret,
            "bucket": BUCKET,
            "object": BIG_KEY,
        }

    @staticmethod
    def download(params: dict[str, Any], dest: str) -> Callable[[], None]:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=params["endpoint"],
            aws_access_key_id=params["key"],
            aws_secret_access_key=params["secret"],
            region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

        def go() -> None:
            client.download_file(params["bucket"], params["object"], dest)

        return go

    def clearmount_conf(self) -> str:
        return s3_conf(self.endpoint, self.server.admin)

    def clearmount_root(self, mnt: Path) -> Path:
        return mnt / "s3" / self.endpoint / BUCKET

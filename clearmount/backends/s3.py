"""The S3 adapter: AWS S3 and S3-compatible hosts (MinIO, SeaweedFS, Ceph) through boto3.

Owns: building boto3 clients from a matched `S3Credentials` entry and `Boto3Settings`, and
the table that turns botocore errors into clearmount's `StoreError`s. The only importer of
boto3/botocore. Blocking and thread-safe (boto3 clients are), as `ObjectStore` requires.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, cast

import boto3
import botocore.config
import botocore.exceptions

from clearmount.backends.base import ListPage, ObjectInfo, ObjectStore
from clearmount.config import Boto3Settings, S3Credentials
from clearmount.errors import AccessDenied, NotFound, Stale, StoreError, Unavailable

_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
}
_STALE = {"412", "PreconditionFailed"}

# One client per (endpoint, credentials): clients hold the connection pool, and building one
# costs milliseconds of botocore model loading.
_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def _client(entry: S3Credentials, settings: Boto3Settings) -> Any:
    cache_key = (entry, settings)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is not None:
            return client
        s3_options: dict[str, Any] = {}
        if settings.addressing_style:
            s3_options["addressing_style"] = settings.addressing_style
        config = botocore.config.Config(
            max_pool_connections=settings.pool_connections,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            signature_version=settings.signature_version,
            s3=cast(Any, s3_options or None),
            retries={"mode": "standard", "max_attempts": 5},
        )
        session_args: dict[str, Any] = {}
        if entry.profile:
            session_args["profile_name"] = entry.profile
        session = boto3.session.Session(**session_args)
        client_args: dict[str, Any] = {
            "config": config,
            "endpoint_url": entry.endpoint_url,
            "region_name": entry.region or None,
            "use_ssl": entry.secure,
        }
        if entry.verify is not None and entry.verify is not True:
            client_args["verify"] = entry.verify
        if not entry.use_credentials_chain:
            client_args["aws_access_key_id"] = entry.key or None
            client_args["aws_secret_access_key"] = entry.secret or None
            client_args["aws_session_token"] = entry.token or None
        client = session.client("s3", **client_args)
        _clients[cache_key] = client
        return client


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def translate(exc: Exception, url: str, entry: str) -> StoreError:
    """The `StoreError` for a botocore exception (the SDK → clearmount border)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code = _error_code(exc)
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _NOT_FOUND or status == "404":
            return NotFound("no such object", url, entry)
        if code in _DENIED or status == "403":
            return AccessDenied(f"access denied ({code or status})", url, entry)
        if code in _STALE or status == "412":
            return Stale("object changed while being read", url, entry)
        return Unavailable(f"server error {code or status}", url, entry)
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return AccessDenied("no credentials configured", url, entry)
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return Unavailable(f"{type(exc).__name__}: {exc}", url, entry)
    return Unavailable(f"{type(exc).__name__}: {exc}", url, entry)


class S3Store(ObjectStore):
    """One bucket, at AWS or at an S3-compatible host."""

    def __init__(
        self, base_url: str, bucket: str, entry: S3Credentials, settings: Boto3Settings
    ) -> None:
        self.base_url = base_url
        self.bucket = bucket
        self.entry = entry.source
        self._client = _client(entry, settings)

    def _url(self, key: str) -> str:
        return f"{self.base_url}/{key}" if key else self.base_url

    def exists(self) -> bool:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            error = translate(exc, self.base_url, self.entry)
            if isinstance(error, NotFound):
                return False
            raise error from None
        return True

    def head(self, key: str) -> ObjectInfo:
        try:
            reply = self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise translate(exc, self._url(key), self.entry) from None
        return ObjectInfo(
            key=key,
            size=int(reply["ContentLength"]),
            version=str(reply.get("ETag", "")),
            mtime=reply["LastModified"].timestamp(),
        )

    def list_page(self, prefix: str, token: str | None = None, limit: int = 1000) -> ListPage:
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": prefix,
            "Delimiter": "/",
            "MaxKeys": limit,
        }
        if token:
            args["ContinuationToken"] = token
        try:
            reply = self._client.list_objects_v2(**args)
        except Exception as exc:
            raise translate(exc, self._url(prefix), self.entry) from None
        objects = tuple(
            ObjectInfo(
                key=item["Key"],
                size=int(item["Size"]),
                version=str(item.get("ETag", "")),
                mtime=item["LastModified"].timestamp(),
            )
            for item in reply.get("Contents", ())
        )
        prefixes = tuple(item["Prefix"] for item in reply.get("CommonPrefixes", ()))
        next_token = reply.get("NextContinuationToken") if reply.get("IsTruncated") else None
        return ListPage(objects, prefixes, next_token)

    def read_range(
        self, key: str, version: str, start: int, end: int, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        if end <= start:
            return
        url = self._url(key)
        try:
            reply = self._client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}", IfMatch=version
            )
        except Exception as exc:
            raise translate(exc, url, self.entry) from None
        body = reply["Body"]
        remaining = end - start
        try:
            while remaining > 0:
                try:
                    chunk = body.read(min(chunk_size, remaining))
                except Exception as exc:
                    raise translate(exc, url, self.entry) from None
                if not chunk:
                    raise Unavailable(f"connection closed with {remaining} bytes missing", url)
                remaining -= len(chunk)
                yield chunk
        finally:
            body.close()


def list_buckets(entry: S3Credentials, settings: Boto3Settings, host_url: str) -> list[str]:
    """The buckets these credentials can see at this host (the names under `s3/host:port/`)."""
    try:
        reply = _client(entry, settings).list_buckets()
    except Exception as exc:
        raise translate(exc, host_url, entry.source) from None
    return [bucket["Name"] for bucket in reply.get("Buckets", ())]

"""The Azure Blob adapter: storage accounts and Azurite through azure-storage-blob.

Owns: building `BlobServiceClient`s from a matched `AzureContainer` entry, and the table that
turns azure-core errors into clearmount's `StoreError`s (`translate`; every SDK call runs
inside `_border`, the shared `sdk_border` with that table). The only importer of azure.*.
Blocking and thread-safe (the SDK's clients are), as `ObjectStore` requires.

A URL `azure://<account>.blob.core.windows.net/<container>/<blob>` is served from
`https://<account>.blob.core.windows.net` like ClearML does, unless the entry names an
`endpoint` (clearmount's extension, e.g. `http://127.0.0.1:10000/devstoreaccount1` for
Azurite). Only account keys are supported, as in ClearML.
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
import requests.adapters
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import (
    BlobBlock,
    BlobPrefix,
    BlobServiceClient,
    ContainerClient,
    ExponentialRetry,
)

from clearmount.backends.base import ListPage, ObjectInfo, ObjectStore, sdk_border
from clearmount.config import AzureContainer, Config, Deadlines
from clearmount.errors import AccessDenied, NotFound, Stale, StoreError, Unavailable
from clearmount.urls import StorageURL, match_azure

# Bounded time. Every request has a connect deadline and a read deadline (the wait for the
# first byte and every stall between bytes): the mount's (`Deadlines`). The SDK's own retry
# policy retries timeouts, connection errors, 408/500/502/503/504 `_RETRY_TOTAL` times; the
# n-th retry waits _RETRY_BASE**n seconds +- _RETRY_JITTER (1.5, 2.25, 3.4: about 7 s in all),
# not the SDK's default 15 s + 3**n, so an unreachable account surfaces as `Unavailable` (EIO)
# in seconds. A download cut mid-body is resumed by the fetch from the last byte received;
# whole lookups and downloads are bounded by `clearmount.transfer`.
_RETRY_TOTAL = 3
_RETRY_BASE = 1.5
_RETRY_JITTER = 1.0  # seconds either side of each backoff, so clients do not retry in step
# Size of the first ranged GET and of every later one of a download. The SDK keeps one such
# piece in memory per stream (its default first GET is 32 MiB), so this bounds a read: with 16
# parts at once, 2 MiB streamed as fast as 4 MiB here and kept the daemon 40 MiB smaller.
_GET_SIZE = 2 << 20
_MIN_POOL = 10  # requests' default pool size, raised to max_connections when that is larger
# Writing: blocks staged per upload at once, and how often a server-side copy is polled.
_UPLOAD_CONCURRENCY = 4
_COPY_POLL = 0.2

# One service client per (endpoint, credentials, pool size): it holds the connection pool.
_clients: dict[tuple[str, str, str, int, Deadlines], BlobServiceClient] = {}
_clients_lock = threading.Lock()


def account_of(url: StorageURL) -> str:
    """The storage account of an `azure://<account>.blob.core.windows.net/...` URL."""
    return url.host.partition(".")[0]


def account_url(url: StorageURL, entry: AzureContainer) -> str:
    """The blob endpoint that serves `url` with `entry`'s credentials."""
    return entry.endpoint.rstrip("/") if entry.endpoint else f"https://{url.host}"


def _client(
    endpoint: str, entry: AzureContainer, max_connections: int, deadlines: Deadlines
) -> BlobServiceClient:
    cache_key = (endpoint, entry.account_name, entry.account_key, max_connections, deadlines)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is not None:
            return client
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(_MIN_POOL, max_connections))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        transport = RequestsTransport(
            session=session,
            session_owner=False,
            connection_timeout=deadlines.connect,
            read_timeout=deadlines.read,
        )
        client = BlobServiceClient(
            account_url=endpoint,
            credential={"account_name": entry.account_name, "account_key": entry.account_key},
            transport=transport,
            retry_policy=ExponentialRetry(
                initial_backoff=0,
                increment_base=_RETRY_BASE,  # type: ignore[arg-type]
                retry_total=_RETRY_TOTAL,
                random_jitter_range=_RETRY_JITTER,  # type: ignore[arg-type]
            ),
            max_single_get_size=_GET_SIZE,
            max_chunk_get_size=_GET_SIZE,
        )
        _clients[cache_key] = client
        return client


def translate(exc: Exception, url: str, entry: str) -> StoreError | None:
    """The `StoreError` for an azure-core exception, None for one that is not the SDK's (the
    table of this adapter's `sdk_border`)."""
    if not isinstance(exc, AzureError):
        return None
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None) or ""
    code = str(getattr(code, "value", code))  # a StorageErrorCode member, or the raw string
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return NotFound("no such blob or container", url, entry)
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        return AccessDenied(f"access denied ({code or status or 'bad account key'})", url, entry)
    if isinstance(exc, ResourceModifiedError) or status == 412:
        return Stale("blob changed while being read", url, entry)
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return Unavailable(f"cannot reach the blob endpoint: {type(exc).__name__}", url, entry)
    if isinstance(exc, HttpResponseError):
        return Unavailable(f"server error {code or status}", url, entry)
    return Unavailable(f"{type(exc).__name__}: {exc.message}", url, entry)


def _border(url: str, entry: str) -> contextlib.AbstractContextManager[None]:
    return sdk_border(translate, url, entry)


def _etag(value: str) -> str:
    # One form (quoted, as in the ETag header) whether a listing or a HEAD reported it, so a
    # version taken from either pins `read_range` the same way.
    return value if value.startswith('"') else f'"{value}"'


class AzureStore(ObjectStore):
    """One container of one storage account."""

    def __init__(
        self,
        url: StorageURL,
        entry: AzureContainer,
        max_connections: int,
        deadlines: Deadlines,
    ) -> None:
        self.base_url = url.base_url
        self.entry = entry.source
        self.deadlines = deadlines
        self.container = url.bucket
        self._max_concurrency = max(1, max_connections)
        # built at the first request, in its worker thread: the store itself is made on the
        # trio loop, and building a client takes milliseconds
        self._client_args = (account_url(url, entry), entry, max_connections, deadlines)
        self._built: ContainerClient | None = None
        self.writable = True
        self.part_concurrency = _UPLOAD_CONCURRENCY

    @property
    def _container(self) -> ContainerClient:
        """The container's client (blocking on first use: call it in a worker thread)."""
        container = self._built
        if container is None:
            with _border(self.base_url, self.entry):
                service = _client(*self._client_args)
                container = self._built = service.get_container_client(self.container)
        return container

    def _url(self, key: str) -> str:
        return f"{self.base_url}/{key}" if key else self.base_url

    def exists(self) -> bool:
        with _border(self.base_url, self.entry):
            return bool(self._container.exists())

    def head(self, key: str) -> ObjectInfo:
        with _border(self._url(key), self.entry):
            props = self._container.get_blob_client(key).get_blob_properties()
        return ObjectInfo(
            key=key,
            size=int(props.size),
            version=_etag(str(props.etag)),
            mtime=props.last_modified.timestamp(),
        )

    def list_page(self, prefix: str, token: str | None = None, limit: int = 1000) -> ListPage:
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        with _border(self._url(prefix), self.entry):
            pages: Any = self._container.walk_blobs(
                name_starts_with=prefix or None, delimiter="/", results_per_page=limit
            ).by_page(continuation_token=token or None)
            page = next(pages, None)
            for item in page if page is not None else ():
                if isinstance(item, BlobPrefix):
                    prefixes.append(item.name)
                else:
                    objects.append(
                        ObjectInfo(
                            key=item.name,
                            size=int(item.size),
                            version=_etag(str(item.etag)),
                            mtime=item.last_modified.timestamp(),
                        )
                    )
            next_token = pages.continuation_token or None
        return ListPage(tuple(objects), tuple(prefixes), next_token)

    def read_range(
        self, key: str, version: str, start: int, end: int, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        if end <= start:
            return
        url = self._url(key)
        try:
            with _border(url, self.entry):
                # The downloader pins every later GET of the stream to the ETag of the first
                # one, and the first one to `version`: a blob replaced mid-stream raises Stale.
                stream = self._container.get_blob_client(key).download_blob(
                    offset=start,
                    length=end - start,
                    etag=version,
                    match_condition=MatchConditions.IfNotModified,
                    max_concurrency=self._max_concurrency,
                )
        except Stale as error:
            # Azurite checks If-Match before existence (412 for a deleted blob): report a
            # missing blob as NotFound, as the other backends do.
            raise self._gone(key, error) from None
        remaining = end - start
        while remaining > 0:
            with _border(url, self.entry):
                chunk = stream.read(min(chunk_size, remaining))
            if not chunk:
                raise Unavailable(f"download ended with {remaining} bytes missing", url, self.entry)
            remaining -= len(chunk)
            yield chunk

    # ----- writing: staged blocks, then a commit -----------------------------------------

    def start_upload(self, key: str) -> str:
        # blocks are staged under ids made of this one (all of one blob's ids have one length)
        return os.urandom(8).hex()

    def upload_part(
        self, key: str, upload_id: str, number: int, offset: int, data: bytes, last: bool
    ) -> str:
        block = base64.b64encode(f"{upload_id}-{number:06d}".encode()).decode()
        with _border(self._url(key), self.entry):
            self._container.get_blob_client(key).stage_block(block, data, length=len(data))
        return block

    def complete_upload(self, key: str, upload_id: str, parts: list[str], size: int) -> ObjectInfo:
        with _border(self._url(key), self.entry):
            reply = self._container.get_blob_client(key).commit_block_list(
                [BlobBlock(block_id=block) for block in parts]
            )
        return ObjectInfo(key, size, _etag(str(reply["etag"])), time.time())

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Drop the blob's uncommitted blocks: with no blob at `key`, by putting an empty
        blob (only while there is still none) and deleting what that made. Blocks
        staged beside an existing blob are left to the service, which drops them in a week."""
        url = self._url(key)
        blob = self._container.get_blob_client(key)
        try:
            with _border(url, self.entry):
                blocks = blob.get_block_list("uncommitted")[1]
        except NotFound:
            return
        if not blocks:
            return
        # Put Blob discards the uncommitted blocks; only while there is no blob (If-None-Match)
        with _border(url, self.entry):
            try:
                made = blob.upload_blob(b"", overwrite=False)
            except ResourceExistsError:
                # Azurite counts uncommitted blocks as a blob: ask whether one is visible
                try:
                    blob.get_blob_properties()
                    return  # a blob exists: its uncommitted blocks are the service's to drop
                except ResourceNotFoundError:
                    made = blob.upload_blob(b"", overwrite=True)
        with _border(url, self.entry), contextlib.suppress(ResourceNotFoundError):
            blob.delete_blob(etag=str(made["etag"]), match_condition=MatchConditions.IfNotModified)

    def pending_uploads(self, key: str) -> list[str]:
        try:
            with _border(self._url(key), self.entry):
                blocks = self._container.get_blob_client(key).get_block_list("uncommitted")[1]
        except NotFound:
            return []
        return ["uncommitted"] if blocks else []

    def put_file(self, key: str, path: str, size: int) -> ObjectInfo:
        with open(path, "rb") as body, _border(self._url(key), self.entry):
            reply = self._container.get_blob_client(key).upload_blob(
                body, length=size, overwrite=True, max_concurrency=1
            )
        return ObjectInfo(key, size, _etag(str(reply["etag"])), time.time())

    def copy(self, source: str, key: str, size: int) -> ObjectInfo:
        url = self._url(key)
        origin = self._container.get_blob_client(source).url
        target = self._container.get_blob_client(key)
        with _border(url, self.entry):
            target.start_copy_from_url(origin)
            props = target.get_blob_properties()
            while props.copy.status == "pending":
                time.sleep(_COPY_POLL)
                props = target.get_blob_properties()
        if props.copy.status != "success":
            raise Unavailable(f"copy from {source} ended {props.copy.status}", url, self.entry)
        return ObjectInfo(key, int(props.size), _etag(str(props.etag)), time.time())

    def delete(self, key: str) -> None:
        with _border(self._url(key), self.entry), contextlib.suppress(ResourceNotFoundError):
            self._container.get_blob_client(key).delete_blob()

    def _gone(self, key: str, error: Stale) -> StoreError:
        """`error`, or `NotFound` when the blob whose version changed is not there at all."""
        try:
            self.head(key)
        except NotFound as missing:
            return missing
        except StoreError as other:
            return other
        return error


def _no_entry(url: StorageURL) -> AccessDenied:
    return AccessDenied(
        f"no sdk.azure.storage.containers entry for account {account_of(url)}", url.base_url
    )


def open_store(url: StorageURL, config: Config) -> AzureStore:
    """The store for the container of `url`, with the first matching containers[] entry."""
    entry = match_azure(config.azure, url)
    if entry is None:
        raise _no_entry(url)
    return AzureStore(url, entry, config.azure.max_connections, config.azure.deadlines)


def list_containers(url: StorageURL, config: Config) -> list[str]:
    """The container names of `url`'s storage account (`url.bucket` is ignored)."""
    entry = match_azure(config.azure, url)
    if entry is None:
        # A containers[] entry pinned to one container still carries the account's key.
        account = account_of(url).lower()
        entry = next(
            (e for e in config.azure.containers if e.account_name.lower() == account), None
        )
    if entry is None:
        raise _no_entry(url)
    with _border(f"azure://{url.host}", entry.source):
        client = _client(
            account_url(url, entry), entry, config.azure.max_connections, config.azure.deadlines
        )
        return [container.name for container in client.list_containers()]

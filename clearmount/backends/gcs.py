"""The Google Cloud Storage adapter: GCS and fake-gcs-server through google-cloud-storage.

Owns: building `storage.Client`s from a matched `GcsCredentials` entry, and the table that
turns google-api-core / google-auth errors into clearmount's `StoreError`s (`translate`;
every SDK call runs inside `_border`, the shared `sdk_border` with that table). The only
importer of google.*. Blocking and thread-safe, as `ObjectStore` requires.

Credentials, in order: the entry's `credentials_json` (a file path or the JSON itself, of a
service account, as ClearML reads it, or of an authorized user; each through its own
google-auth loader, not the generic one, which google-auth deprecates: an external-account
configuration can run commands and reach URLs, and belongs in the default credentials, where
the operator puts it with `GOOGLE_APPLICATION_CREDENTIALS`); without it,
anonymous when `STORAGE_EMULATOR_HOST` points at an emulator; else application-default
credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud, the metadata server); else anonymous,
with a warning, which still reads public buckets. A version is the object's generation.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import google.auth
import google.auth.exceptions
import google.oauth2.credentials
import requests.exceptions
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2 import service_account

from clearmount.backends.base import ListPage, ObjectInfo, ObjectStore, sdk_border
from clearmount.config import Config, GcsCredentials, GcsSettings
from clearmount.errors import AccessDenied, NotFound, Stale, StoreError, Unavailable
from clearmount.urls import StorageURL, match_gcs

log = logging.getLogger(__name__)

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
# Least privilege: reads use tokens scoped read-only; only the writes of `-o writable` build
# a second client whose tokens may write (the key's own permissions still decide).
_READ_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_only"]
_WRITE_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
# Bounded time. Every request has a connect deadline and a read deadline (the wait for the
# first byte and every stall between bytes): the mount's (`Deadlines`). The SDK's own retry
# policy retries 429/5xx, connection errors and timeouts with jittered exponential backoff (a
# random wait up to 0.5, 1, 2, 4, 4... s) for at most 8 s after the first failure, not the
# SDK's default 120 s, so an unreachable server surfaces as `Unavailable` (EIO) quickly. A
# failed ranged GET is resumed by the fetch from the last byte received; whole lookups and
# downloads are bounded by `clearmount.transfer`.
_RETRY = DEFAULT_RETRY.with_delay(initial=0.5, multiplier=2.0, maximum=4.0).with_timeout(8.0)
# The smallest ranged GET of `read_range`: one request per caller chunk would pay a round
# trip per MiB. Memory stays bounded by max(chunk_size, _MIN_GET) per stream (the library
# holds a response twice): 1 MiB keeps a 16-part download near 100 MiB, 4 MiB took 220.
_MIN_GET = 1 << 20
_FULL_PAGE = 1000

# One client per (credentials, project, emulator): it holds the authorized session and pool.
_clients: dict[tuple[str | None, str | None, str | None, bool], storage.Client] = {}
_clients_lock = threading.Lock()


def _load_credentials(
    entry: GcsCredentials, scopes: list[str]
) -> tuple[Credentials | None, str | None]:
    """The credentials and project of `entry`'s credentials_json, or (None, None)."""
    value = (entry.credentials_json or "").strip()
    if not value:
        return None, None
    try:
        if value.startswith("{"):
            info = json.loads(value)
        else:
            with open(os.path.expanduser(value), encoding="utf-8") as f:
                info = json.load(f)
        kind = info.get("type") if isinstance(info, dict) else None
        if kind == "service_account":
            credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=scopes
            )
            return credentials, info.get("project_id")
        if kind == "authorized_user":
            user = google.oauth2.credentials.Credentials.from_authorized_user_info(  # type: ignore[no-untyped-call]
                info, scopes=scopes
            )
            return user, None
    except (OSError, ValueError, google.auth.exceptions.GoogleAuthError) as exc:
        # ClearML falls back to the default credentials too; the value may be a secret, so
        # only the kind of failure is logged.
        log.warning(
            "%s: credentials_json is neither a readable credentials file nor credentials JSON "
            "(%s); using the default credentials",
            entry.source,
            type(exc).__name__,
        )
        return None, None
    log.warning(
        "%s: credentials_json is %s, not a service account or an authorized user; using the "
        "default credentials (GOOGLE_APPLICATION_CREDENTIALS takes the other kinds)",
        entry.source,
        f"of type {str(kind)[:40]!r}" if kind else "without a type",
    )
    return None, None


def _anonymous() -> Credentials:
    return AnonymousCredentials()  # type: ignore[no-untyped-call]


def _credentials(entry: GcsCredentials, scopes: list[str]) -> tuple[Credentials, str | None]:
    credentials, project = _load_credentials(entry, scopes)
    if credentials is not None:
        return credentials, project
    if os.environ.get(EMULATOR_ENV):
        return _anonymous(), None
    try:
        credentials, project = google.auth.default(scopes=scopes)
    except google.auth.exceptions.DefaultCredentialsError:
        log.warning(
            "%s: no credentials_json and no application-default credentials; "
            "reading Google Cloud Storage anonymously (public buckets only)",
            entry.source,
        )
        return _anonymous(), None
    return credentials, project


def _client(entry: GcsCredentials, writing: bool = False) -> storage.Client:
    emulator = os.environ.get(EMULATOR_ENV) or None
    cache_key = (entry.credentials_json, entry.project, emulator, writing)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is not None:
            return client
        credentials, project = _credentials(entry, _WRITE_SCOPES if writing else _READ_SCOPES)
        client = storage.Client(project=entry.project or project, credentials=credentials)
        _clients[cache_key] = client
        return client


def translate(exc: Exception, url: str, entry: str) -> StoreError | None:
    """The `StoreError` for a google-api-core/google-auth/requests exception, None for one
    that is none of these (the table of this adapter's `sdk_border`)."""
    if isinstance(exc, api_exceptions.RetryError) and isinstance(exc.cause, Exception):
        return translate(exc.cause, url, entry)
    if isinstance(exc, api_exceptions.NotFound):
        return NotFound("no such object or bucket", url, entry)
    if isinstance(exc, (api_exceptions.Forbidden, api_exceptions.Unauthorized)):
        return AccessDenied(f"access denied ({exc.code})", url, entry)
    if isinstance(exc, api_exceptions.PreconditionFailed):
        return Stale("object changed while being read", url, entry)
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return Unavailable(f"server error {exc.code}", url, entry)
    if isinstance(
        exc, (google.auth.exceptions.RefreshError, google.auth.exceptions.DefaultCredentialsError)
    ):
        # Token refresh refused (revoked key, wrong audience): a credentials problem.
        return AccessDenied(f"credentials rejected: {type(exc).__name__}", url, entry)
    if isinstance(
        exc, (requests.exceptions.RequestException, google.auth.exceptions.TransportError)
    ):
        return Unavailable(f"cannot reach the server: {type(exc).__name__}", url, entry)
    if isinstance(exc, (api_exceptions.GoogleAPIError, google.auth.exceptions.GoogleAuthError)):
        return Unavailable(f"{type(exc).__name__}: {exc}", url, entry)
    return None


def _border(url: str, entry: str) -> contextlib.AbstractContextManager[None]:
    return sdk_border(translate, url, entry)


def _info(blob: Any) -> ObjectInfo:
    return ObjectInfo(
        key=blob.name,
        size=int(blob.size or 0),
        version=str(blob.generation),
        mtime=_mtime(blob),
    )


def _mtime(blob: Any) -> float:
    # The SDK's `updated` parses RFC 3339 with regexes, ~10 µs a key: a tenth of a listing's
    # CPU. The resource's own string in the form GCS sends is read directly.
    text = blob._properties.get("updated")
    if isinstance(text, str):
        try:
            return datetime.datetime.fromisoformat(text).timestamp()
        except ValueError:
            pass
    updated = blob.updated
    return float(updated.timestamp()) if updated is not None else 0.0


class GcsStore(ObjectStore):
    """One bucket; each key is served with the credentials[] entry that matches it.

    A `bucket` + `subdir` entry serves only keys under that subdir (whole segments), so one
    bucket may use several entries: ClearML's documented form, which its own per-bucket client
    cache gets wrong (the first URL used fixes a bucket's credentials).
    """

    def __init__(self, url: StorageURL, gcs: GcsSettings) -> None:
        self.base_url = url.base_url
        self._name = url.bucket
        self._gcs = gcs
        self.deadlines = gcs.deadlines
        # seconds: connect, then before the first byte and between bytes
        self._timeout = (self.deadlines.connect, self.deadlines.read)
        self._handles: dict[tuple[str, bool], Any] = {}
        self._lock = threading.Lock()
        # the client is built at the first request, in its worker thread: the store itself is
        # made on the trio loop, and google.auth.default() may ask a metadata server
        self.entry = match_gcs(gcs, StorageURL("gs", "", self._name, "")).source
        # a resumable upload takes its chunks in order, one at a time
        self.writable = True
        self.part_concurrency = 1

    @property
    def _bucket(self) -> Any:
        """The bucket handle of the bucket's own entry (blocking on first use)."""
        return self._serving("")[0]

    def _serving(self, key: str, writing: bool = False) -> tuple[Any, str]:
        """The bucket handle (with its client) for `key`, and the entry it was built from;
        `writing`: with a client whose tokens may write (only `-o writable` asks)."""
        entry = match_gcs(self._gcs, StorageURL("gs", "", self._name, key))
        slot = (entry.source, writing)
        with self._lock:
            handle = self._handles.get(slot)
        if handle is None:
            with _border(self._url(key), entry.source):
                handle = _client(entry, writing).bucket(self._name)
            with self._lock:
                handle = self._handles.setdefault(slot, handle)
        return handle, entry.source

    def _url(self, key: str) -> str:
        return f"{self.base_url}/{key}" if key else self.base_url

    def exists(self) -> bool:
        with _border(self.base_url, self.entry):
            return bool(self._bucket.exists(timeout=self._timeout, retry=_RETRY))

    def head(self, key: str) -> ObjectInfo:
        bucket, entry = self._serving(key)
        with _border(self._url(key), entry):
            blob = bucket.get_blob(key, timeout=self._timeout, retry=_RETRY)
        if blob is None:
            raise NotFound("no such object", self._url(key), entry)
        return _info(blob)

    def list_page(self, prefix: str, token: str | None = None, limit: int = 1000) -> ListPage:
        bucket, entry = self._serving(prefix)
        with _border(self._url(prefix), entry):
            iterator = bucket.client.list_blobs(
                bucket,
                prefix=prefix or None,
                delimiter="/",
                page_token=token or None,
                # a full page is the server's own size (1 000 on GCS), as the SDK asks by
                # default; emulators that return everything at once then answer in one page
                max_results=limit if limit < _FULL_PAGE else None,
                timeout=self._timeout,
                retry=_RETRY,
            )
            page = next(iterator.pages, None)
            objects = tuple(_info(blob) for blob in page) if page is not None else ()
            # Set by the SDK when a page starts: this page's prefixes, in server order.
            prefixes = tuple(getattr(page, "prefixes", ()))
            next_token = iterator.next_page_token or None
        return ListPage(objects, prefixes, next_token)

    def read_range(
        self, key: str, version: str, start: int, end: int, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        if end <= start:
            return
        url = self._url(key)
        bucket, entry = self._serving(key)
        try:
            generation = int(version)
        except ValueError:
            raise Stale(f"not a generation: {version!r}", url, entry) from None
        # Pinned twice: `ifGenerationMatch` makes GCS answer 412 once the live object is another
        # generation; `generation` makes servers that ignore preconditions on media GETs
        # (fake-gcs-server) answer 404 for a generation that is gone, resolved below.
        blob = bucket.blob(key, generation=generation)
        get_size = max(chunk_size, _MIN_GET)
        offset = start
        while offset < end:
            stop = min(offset + get_size, end)
            try:
                with _border(url, entry):
                    # Every GET is pinned, so a replaced object raises Stale wherever the stream
                    # is. raw_download: the stored bytes, which `size` counts.
                    data = blob.download_as_bytes(
                        start=offset,
                        end=stop - 1,
                        raw_download=True,
                        checksum=None,
                        if_generation_match=generation,
                        timeout=self._timeout,
                        retry=_RETRY,
                    )
            except NotFound as error:
                raise self._gone(key, version, error) from None
            if len(data) != stop - offset:
                raise Unavailable(
                    f"short read: {len(data)} of {stop - offset} bytes at {offset}", url, entry
                )
            offset = stop
            for at in range(0, len(data), chunk_size):
                yield data[at : at + chunk_size]

    # ----- writing: a resumable upload session ------------------------------------------
    # The session URI is the upload id: it lets anyone holding it upload, so it is kept
    # only in the upload's crash record (0600) and never logged.

    def start_upload(self, key: str) -> str:
        bucket, entry = self._serving(key, writing=True)
        with _border(self._url(key), entry):
            session: str = bucket.blob(key).create_resumable_upload_session(timeout=self._timeout)
        return session

    def upload_part(
        self, key: str, upload_id: str, number: int, offset: int, data: bytes, last: bool
    ) -> str:
        bucket, entry = self._serving(key, writing=True)
        end = offset + len(data)
        total = str(end) if last else "*"
        span = f"bytes {offset}-{end - 1}/{total}" if data else f"bytes */{total}"
        with _border(self._url(key), entry):
            response = bucket.client._http.put(
                upload_id, data=data, headers={"Content-Range": span}, timeout=self._timeout
            )
            if response.status_code == 308 and not last:
                return ""
            if response.status_code in (200, 201) and last:
                return str(response.json()["generation"])
            raise api_exceptions.from_http_response(response)  # type: ignore[no-untyped-call]

    def complete_upload(self, key: str, upload_id: str, parts: list[str], size: int) -> ObjectInfo:
        # the last chunk, sent with the total size, completed the object
        return ObjectInfo(key, size, parts[-1], time.time())

    def abort_upload(self, key: str, upload_id: str) -> None:
        bucket, entry = self._serving(key, writing=True)
        with _border(self._url(key), entry):
            response = bucket.client._http.delete(upload_id, timeout=self._timeout)
        # 499: cancelled; 404/410: gone already. A server error or none: asked again.
        if response.status_code >= 500:
            raise Unavailable(f"server error {response.status_code}", self._url(key), entry)

    def put_file(self, key: str, path: str, size: int) -> ObjectInfo:
        bucket, entry = self._serving(key, writing=True)
        blob = bucket.blob(key)
        with _border(self._url(key), entry):
            blob.upload_from_filename(path, timeout=self._timeout)
        return _info(blob)

    def copy(self, source: str, key: str, size: int) -> ObjectInfo:
        bucket, entry = self._serving(key, writing=True)
        origin, target = bucket.blob(source), bucket.blob(key)
        with _border(self._url(key), entry):
            token, _, _ = target.rewrite(origin, timeout=self._timeout)
            while token is not None:
                token, _, _ = target.rewrite(origin, token=token, timeout=self._timeout)
        return _info(target)

    def delete(self, key: str) -> None:
        bucket, entry = self._serving(key, writing=True)
        with _border(self._url(key), entry), contextlib.suppress(api_exceptions.NotFound):
            bucket.delete_blob(key, timeout=self._timeout, retry=_RETRY)

    def _gone(self, key: str, version: str, error: NotFound) -> StoreError:
        """Why generation `version` of `key` is not found: `Stale` if another one is live."""
        try:
            self.head(key)
        except NotFound:
            return error
        except StoreError as other:
            return other
        return Stale(f"generation {version} is no longer live", error.url, error.entry)


def open_store(url: StorageURL, config: Config) -> GcsStore:
    """The store for the bucket of `url`; each key uses its matching credentials[] entry."""
    return GcsStore(url, config.gcs)

"""The `ObjectStore` contract every cloud adapter satisfies.

Owns: the value types a backend returns (`ObjectInfo`, `ListPage`), the abstract
`ObjectStore`, `sdk_border`, the one SDK → clearmount error border every adapter uses, and
`pool_size`, how many idle connections an SDK client may keep (`limit_pools`). One store is
one bucket / container, reached with one credentials entry.

Contract, for every implementation:
- methods are blocking and thread-safe; they are called from worker threads only
  (see `clearmount.transfer`), never from the trio loop;
- each request is bounded by `deadlines` (connect, read) and the SDK's retries;
- they raise only `clearmount.errors.StoreError` subclasses: `NotFound`, `AccessDenied`,
  `Unavailable` (after the SDK's own retries), `Stale` (a version precondition failed),
  `ProtocolError` (an answer other than the one asked for), `Unexpected` (a bug); every SDK
  call runs inside `sdk_border` with the adapter's `translate` table, which ensures it;
- keys are the raw object keys (no URL decoding), relative to the bucket root;
- `read_range` is pinned to `version` (S3/Azure ETag, GCS generation, HTTP ETag or
  Last-Modified): if the object no longer has that version it raises `Stale`, so bytes of two
  versions never mix.

Writing (`-o writable`; `clearmount.cache.upload` drives it): a store with `writable` True
takes streamed uploads: `start_upload` → `upload_part` for parts 1, 2, ... (S3 multipart
parts, Azure staged blocks, GCS resumable chunks) → `complete_upload`, which makes the object
appear at once and whole, or `abort_upload`, which leaves neither an object nor anything
billed behind (the multipart upload aborted, uncommitted blocks dropped, the GCS session
cancelled); `put_file` sends a small file in one request; `copy` and `delete` serve rename
and unlink. No object is visible before `complete_upload` or `put_file` returns.

Two things a store may lack, said by the store rather than guessed by its callers:
- `listable` False (a plain HTTP server): `list_page` has nothing to list, a name the server
  does not have as an object is taken as a directory, and a directory shows the names looked
  up in it;
- `ObjectInfo.ranged` False (the server did not offer `Accept-Ranges: bytes`): the object is
  read by one GET from its first byte, never in parallel parts.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clearmount.config import Deadlines
from clearmount.errors import StoreError, Unexpected

if TYPE_CHECKING:
    from clearmount.config import Config
    from clearmount.urls import StorageURL

log = logging.getLogger(__name__)

#: The most requests this process sends at once (`limit_pools`); None: not said (a command).
_requests_at_once: int | None = None


def limit_pools(requests_at_once: int) -> None:
    """Say how many requests this process sends at once at most (the daemon: its transfer
    slots; a fetch process: its threads), before it builds a client: no client pools more
    idle connections than that. A configured pool is kept as a cap (ClearML asks for 512),
    and connections beyond it (a request given up while its thread still runs) are closed
    once done instead of kept at rest."""
    global _requests_at_once
    _requests_at_once = requests_at_once


def pool_size(configured: int) -> int:
    """The connections a client configured to pool `configured` keeps (see `limit_pools`)."""
    return configured if _requests_at_once is None else min(configured, _requests_at_once)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object as the server describes it."""

    key: str
    size: int
    version: str  # ETag (S3, Azure) or generation (GCS): what `read_range` pins to
    mtime: float  # seconds since the epoch
    #: the server serves byte ranges of it; False: read it whole, by one GET from byte 0
    ranged: bool = True


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a delimiter listing under `prefix`.

    `objects` and `prefixes` carry full keys (prefixes end with "/"); `next_token` is None on
    the last page.
    """

    objects: tuple[ObjectInfo, ...]
    prefixes: tuple[str, ...]
    next_token: str | None


class ObjectStore(abc.ABC):
    """One bucket or container."""

    #: the base URL of this store, e.g. "s3://bucket" or "s3://host:9000/bucket"
    base_url: str
    #: which config entry supplied the credentials, e.g. "sdk.aws.s3.credentials[1]"
    entry: str
    #: the server lists keys; False: only names looked up exist (see the module docstring)
    listable: bool = True
    #: an ETag of 32 hex digits is the object's MD5 (S3 single-part uploads) and downloads
    #: are checked against it; False for servers whose ETags are opaque
    md5_versions: bool = True
    #: the SDK's connect/read deadlines this store was built with; `clearmount.transfer` and
    #: the fetch bound whole lookups and downloads by them (README "Guarantees")
    deadlines: Deadlines = Deadlines()
    #: what `backends.open_store` built this store from: another process (a fetch process,
    #: `clearmount.workers`) builds its own from it; None for stores made otherwise, and for
    #: plain HTTP stores, whose files-server token is the daemon's one login
    origin: tuple[StorageURL, Config] | None = None

    #: the store takes uploads (the writing methods below); False: writes are ENOTSUP
    writable: bool = False
    #: bytes per streamed part, and parts sent at once per upload (`upload_part`)
    part_size: int = 8 << 20
    part_concurrency: int = 4
    #: False: the object is sent in one request when the file is closed (`put_file`), never
    #: streamed in parts (an S3 host entry with `multipart: false`)
    multipart: bool = True

    @abc.abstractmethod
    def exists(self) -> bool:
        """Whether the bucket exists and these credentials can reach it (False on NotFound)."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """The object's current size and version; `NotFound` if there is none."""

    @abc.abstractmethod
    def list_page(self, prefix: str, token: str | None = None, limit: int = 1000) -> ListPage:
        """One page of the "/"-delimited listing of `prefix` ("" for the root)."""

    @abc.abstractmethod
    def read_range(
        self, key: str, version: str, start: int, end: int, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        """Stream bytes [start, end) of `key` at `version`, in chunks of at most `chunk_size`.

        Raises `Stale` (before or during the stream) when the object is no longer `version`.
        """

    # ----- writing (only when `writable`) --------------------------------------------------

    def start_upload(self, key: str) -> str:
        """Begin a streamed upload to `key`; its id (nothing is visible at `key` yet)."""
        raise NotImplementedError

    def upload_part(
        self, key: str, upload_id: str, number: int, offset: int, data: bytes, last: bool
    ) -> str:
        """Send part `number` (1, 2, ...), the bytes from `offset` on (every part but the
        `last` one a multiple of `part_size` bytes); the token `complete_upload` wants for
        it. Parts are sent at most `part_concurrency` at once, in order when that is 1."""
        raise NotImplementedError

    def complete_upload(self, key: str, upload_id: str, parts: list[str], size: int) -> ObjectInfo:
        """Make the object of these parts, in order, appear at `key`; its new version."""
        raise NotImplementedError

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Drop an unfinished upload and every part sent (no error if it is already gone)."""
        raise NotImplementedError

    def pending_uploads(self, key: str) -> list[str]:
        """The ids of unfinished uploads to exactly `key` (a crash's leftovers)."""
        return []

    def put_file(self, key: str, path: str, size: int) -> ObjectInfo:
        """Upload the local file `path` (`size` bytes) as `key` in one request."""
        raise NotImplementedError

    def copy(self, source: str, key: str, size: int) -> ObjectInfo:
        """Copy object `source` (`size` bytes) to `key` on the server; the copy's version."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove the object `key` (no error if there is none)."""
        raise NotImplementedError


#: An adapter's error table: the `StoreError` for an exception its SDK raised, or None when
#: the exception is none of the SDK's (then `sdk_border` treats it as a bug).
Translate = Callable[[Exception, str, str], StoreError | None]


@contextlib.contextmanager
def sdk_border(translate: Translate, url: str, entry: str) -> Iterator[None]:
    """The SDK → clearmount border of an adapter: every SDK call of the adapter runs inside it.

    A `StoreError` passes; an exception `translate` (the adapter's table) names becomes that
    `StoreError`; anything else is a bug in clearmount or the SDK: it is logged once here, at
    ERROR with its traceback (for the person on call), and becomes `Unexpected` (not retried:
    asking again would fail the same way), which the caller's border turns into EIO. So nothing
    but a `StoreError` leaves an adapter, and each names `url` and the credentials `entry`.
    """
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        raise translated(translate, exc, url, entry) from None


def translated(translate: Translate, exc: Exception, url: str, entry: str) -> StoreError:
    """The `StoreError` `sdk_border` raises for `exc` (for the few places that must decide
    on it before raising, such as a retry loop)."""
    if isinstance(exc, StoreError):
        return exc
    error = translate(exc, url, entry)
    if error is not None:
        return error
    log.error("%s: unexpected %s (a bug)", url, type(exc).__name__, exc_info=exc)
    return Unexpected(f"unexpected {type(exc).__name__}; the traceback is in the log", url, entry)

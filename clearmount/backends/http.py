"""The plain HTTP(S) adapter: ClearML's file server and any web server, read through urllib3.

Owns: the requests to http(s) hosts (HEAD for a lookup, ranged or whole GETs for bytes), the
ClearML login that gives the files-server hosts their `Authorization: Bearer` token, and the
table that turns HTTP statuses and urllib3 errors into clearmount's `StoreError`s (`_failure`
for answers, `translate` for exceptions: every request and body read runs inside `_border`,
the shared `sdk_border` with that table). The only module that talks HTTP to storage.
Blocking and thread-safe, as `ObjectStore` requires.

As ClearML's `_HttpDriver`: only URLs under a files-server host (`HttpSettings.auth_for`) get
the token; every other host gets no credentials. The token comes from the API server's
`auth.login` (HTTP basic auth with `api.credentials`), fetched on first need, shared by every
store of one configuration, renewed a minute before the expiry its JWT states and whenever a
files server answers 401/403 (once per request). It never reaches a log line or an error.

A plain server has no listing (`listable` False) and its ETags are opaque (`md5_versions`
False). A version is the ETag, else `lm:` + Last-Modified, else `size:` + the length. Reads
are pinned to it: `If-Match` (strong ETag) or `If-Unmodified-Since`, plus `If-Range`, and the
validators of every answer are compared with it, so a replaced object raises `Stale` rather
than mixing bytes. A server that ignores `Range` sends the whole object: the bytes before
the range are skipped. Redirects are not followed (one to the same path plus "/" means a
directory). Bounded time: every request has the connect and read timeouts of `sdk.http`;
connection errors, timeouts, 408/429/5xx are retried with jittered backoff, at most
`sdk.http.download.max_retries` times and for 8 s after the first failure.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import json
import logging
import random
import re
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import urllib3
import urllib3.exceptions

from clearmount.backends.base import ListPage, ObjectInfo, ObjectStore, sdk_border
from clearmount.config import Config, HttpSettings
from clearmount.errors import (
    AccessDenied,
    NotFound,
    ProtocolError,
    Stale,
    StoreError,
    Unavailable,
)
from clearmount.urls import StorageURL

log = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 509})
_RETRY_WINDOW = 8.0  # seconds after the first failure
_BACKOFF_MAX = 4.0
# Renew the token this long before its stated expiry (ClearML's token_expiration_threshold_sec)
_TOKEN_MARGIN = 60.0
# Characters kept as they are in a key: ClearML records http(s) URLs percent-quoted already
_SAFE = "/%:@!$&'()*+,;=-._~?"
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_NO_CREDENTIALS = "no credentials"
# An answer's body this small is read to its end, so its connection can be reused
_DRAIN_AT_MOST = 64 << 10

_pool = urllib3.PoolManager(num_pools=64, maxsize=32)
_tokens: dict[tuple[str, str, str], _Tokens] = {}
_tokens_lock = threading.Lock()


def translate(exc: Exception, url: str, entry: str) -> StoreError | None:
    """The `StoreError` for a urllib3 or socket exception, None for another (the table of this
    adapter's `sdk_border`; an answer with an unwanted status is `HttpStore._failure`'s)."""
    # (before timeouts: urllib3's NewConnectionError, a refused connection, is a timeout too)
    if isinstance(exc, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ProxyError)):
        return Unavailable(f"cannot reach the server: {type(exc).__name__}", url, entry)
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return Unavailable(f"{type(exc).__name__}: no answer within the timeout", url, entry)
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return Unavailable(f"connection failed: {type(exc).__name__}", url, entry)
    return None


def _border(url: str, entry: str) -> contextlib.AbstractContextManager[None]:
    return sdk_border(translate, url, entry)


class _Retries:
    """One request's retry budget: `max_retries` more attempts, within `_RETRY_WINDOW`
    seconds of the first failure, with jittered exponential backoff between them."""

    def __init__(self, max_retries: int) -> None:
        self._max_retries = max_retries
        self._attempt = 0
        self._first_failure: float | None = None

    def after_failure(self, error: StoreError) -> None:
        """Wait before the next attempt; raise `error` once the budget is spent."""
        self._attempt += 1
        now = time.monotonic()
        self._first_failure = self._first_failure or now
        if self._attempt > self._max_retries or now - self._first_failure > _RETRY_WINDOW:
            raise error
        time.sleep(random.uniform(0, min(_BACKOFF_MAX, 0.25 * 2**self._attempt)))


def _token_expiry(token: str) -> float | None:
    """The `exp` (epoch seconds) a JWT states, or None when it states none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error):
        return None


class _Tokens:
    """The ClearML API token of one API server and key pair (never logged)."""

    def __init__(self, settings: HttpSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at: float | None = None

    def current(self) -> str:
        """The token, logging in first if there is none or it is about to expire."""
        with self._lock:
            expiring = self._renew_at is not None and time.time() >= self._renew_at
            if self._token is None or expiring:
                self._token, expires = self._login()
                # a minute before the expiry, or halfway there for a short-lived token
                left = None if expires is None else expires - time.time()
                self._renew_at = (
                    None
                    if left is None
                    else time.time() + left - min(_TOKEN_MARGIN, max(left, 0) / 2)
                )
            return self._token

    def refuse(self, token: str) -> None:
        """A files server refused `token`: the next `current` logs in again."""
        with self._lock:
            if self._token == token:
                log.info("a files server refused the ClearML token; logging in again")
                self._token = None

    def _login(self) -> tuple[str, float | None]:
        url = f"{self._settings.api_server}/auth.login"
        pair = f"{self._settings.access_key}:{self._settings.secret_key}".encode()
        headers = {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        retries = _Retries(self._settings.max_retries)
        while True:
            try:
                with _border(url, "api.credentials"):
                    reply = _pool.request(
                        "GET", url, headers=headers, timeout=_timeout(self._settings), retries=False
                    )
            except Unavailable as exc:
                error: StoreError = exc
            else:
                if reply.status in (401, 403):
                    raise AccessDenied(
                        f"the ClearML API server refused api.credentials (auth.login answered "
                        f"{reply.status})",
                        url,
                        "api.credentials",
                    )
                if reply.status == 200:
                    try:
                        token = json.loads(reply.data)["data"]["token"]
                    except (ValueError, KeyError, TypeError):
                        token = None
                    if not isinstance(token, str) or not token:
                        raise ProtocolError(
                            "auth.login answered without a token: is api.api_server the "
                            "ClearML API server?",
                            url,
                            "api.credentials",
                        )
                    log.info("logged in to the ClearML API server %s", self._settings.api_server)
                    return token, _token_expiry(token)
                error = Unavailable(f"auth.login answered {reply.status}", url, "api.credentials")
                if reply.status not in _RETRY_STATUSES:
                    raise error
            retries.after_failure(error)


def _tokens_for(settings: HttpSettings) -> _Tokens | None:
    """The token source of `settings`' credentials, or None when it has none."""
    if not (settings.access_key and settings.secret_key):
        return None
    key = (settings.api_server, settings.access_key, settings.secret_key)
    with _tokens_lock:
        tokens = _tokens.get(key)
        if tokens is None:
            tokens = _tokens[key] = _Tokens(settings)
        return tokens


def _timeout(settings: HttpSettings) -> urllib3.Timeout:
    return urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout)


def _parse_date(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return 0.0


class HttpStore(ObjectStore):
    """One http(s) host ("scheme://host[:port]"); a key is the URL's path after the host."""

    listable = False
    md5_versions = False

    def __init__(self, url: StorageURL, settings: HttpSettings) -> None:
        self.base_url = url.base_url
        self._settings = settings
        named = settings.host_entry(url.scheme, url.host)
        self.entry = named.source if named is not None else _NO_CREDENTIALS
        self._timeout = _timeout(settings)
        self.deadlines = settings.deadlines

    def _url(self, key: str) -> str:
        return f"{self.base_url}/{key}" if key else self.base_url

    def _wire_url(self, key: str) -> str:
        # as requests sends the SDK's URLs: escapes kept, a "%" that starts none quoted
        return f"{self.base_url}/{quote(_LONE_PERCENT.sub('%25', key), safe=_SAFE)}"

    def _request(self, method: str, key: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        """Send one request (retried, with the files-server token where it is due); the
        response is not read yet. Raises `Unavailable` once the retries are spent."""
        url = self._url(key)
        tokens = _tokens_for(self._settings) if self._settings.auth_for(url) else None
        entry = "api.credentials" if tokens is not None else self.entry
        refreshed = False
        retries = _Retries(self._settings.max_retries)
        while True:
            sent = dict(headers, **{"Accept-Encoding": "identity"})
            token = tokens.current() if tokens is not None else None
            if token is not None:
                sent["Authorization"] = f"Bearer {token}"
            try:
                with _border(url, entry):
                    reply = _pool.request(
                        method,
                        self._wire_url(key),
                        headers=sent,
                        preload_content=False,
                        redirect=False,
                        retries=False,
                        timeout=self._timeout,
                    )
            except Unavailable as exc:
                error: StoreError = exc
            else:
                if reply.status in (401, 403) and token is not None and not refreshed:
                    _discard(reply)
                    assert tokens is not None
                    tokens.refuse(token)
                    refreshed = True
                    continue
                if reply.status not in _RETRY_STATUSES:
                    return reply
                _discard(reply)
                error = Unavailable(f"server error {reply.status}", url, entry)
            log.debug("%s %s: %s", method, url, error)
            retries.after_failure(error)

    def _failure(self, reply: urllib3.BaseHTTPResponse, key: str) -> StoreError:
        """The `StoreError` for an answer that is not the one asked for."""
        url = self._url(key)
        files_server = self._settings.auth_for(url) is not None
        with_token = files_server and _tokens_for(self._settings) is not None
        entry = "api.credentials" if with_token else self.entry
        status = reply.status
        if status in (404, 410):
            return NotFound("no such object", url, entry)
        if status in (401, 403):
            if with_token:
                hint = ", also with a new token"
            elif files_server:
                hint = ", no api.credentials configured"
            else:
                hint = ", no credentials sent to a host that is not a files server"
            return AccessDenied(f"access denied ({status}{hint})", url, entry)
        if status in (412, 416):
            return Stale("object changed while being read", url, entry)
        if 300 <= status < 400:
            return ProtocolError(f"redirected ({status}); redirects are not followed", url, entry)
        return ProtocolError(f"unexpected answer {status}", url, entry)

    # ----- ObjectStore ----------------------------------------------------------------------

    def exists(self) -> bool:
        # a host has no "bucket" to check: whether it may be contacted is the namespace's call
        return True

    def head(self, key: str) -> ObjectInfo:
        reply = self._request("HEAD", key, {})
        _discard(reply)
        if 300 <= reply.status < 400:
            location = urlsplit(reply.headers.get("Location", "")).path
            if location.rstrip("/") == urlsplit(self._wire_url(key)).path.rstrip("/"):
                # the server's way of saying "a directory" (nginx, Apache)
                raise NotFound("a directory, not an object", self._url(key), self.entry)
        if reply.status != 200:
            raise self._failure(reply, key)
        length = reply.headers.get("Content-Length", "")
        if not length.isdigit():
            raise ProtocolError("no Content-Length: the size is unknown", self._url(key))
        etag = reply.headers.get("ETag", "")
        modified = reply.headers.get("Last-Modified", "")
        version = etag or (f"lm:{modified}" if modified else f"size:{length}")
        return ObjectInfo(
            key=key,
            size=int(length),
            version=version,
            mtime=_parse_date(modified),
            ranged="bytes" in reply.headers.get("Accept-Ranges", "").lower(),
        )

    def list_page(self, prefix: str, token: str | None = None, limit: int = 1000) -> ListPage:
        return ListPage((), (), None)

    def read_range(
        self, key: str, version: str, start: int, end: int, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        if end <= start:
            return
        url = self._url(key)
        headers = {"Range": f"bytes={start}-{end - 1}", **_pins(version)}
        reply = self._request("GET", key, headers)
        try:
            with _border(url, self.entry):
                if reply.status not in (200, 206):
                    raise self._failure(reply, key)
                if not _same_version(reply, version):
                    raise Stale("object changed while being read", url, self.entry)
                skip = 0
                if reply.status == 206:
                    content_range = reply.headers.get("Content-Range", "")
                    first, _, _ = content_range.removeprefix("bytes ").partition("-")
                    if first.strip() != str(start):
                        raise ProtocolError(f"asked for byte {start}, got {content_range!r}", url)
                else:
                    skip = start  # the server ignored Range: the whole object, from byte 0
                wanted = end - start
                sent = 0
                for chunk in reply.stream(max(chunk_size, 64 << 10), decode_content=False):
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk = chunk[dropped:]
                        skip -= dropped
                    chunk = chunk[: wanted - sent]
                    if chunk:
                        sent += len(chunk)
                        yield chunk
                    if sent == wanted:
                        break
                if sent < wanted:
                    raise Unavailable(f"short read: {sent} of {wanted} bytes at {start}", url)
        finally:
            _discard(reply)


def _pins(version: str) -> dict[str, str]:
    """The precondition headers that pin a GET to `version`."""
    if version.startswith("lm:"):
        date = version[3:]
        return {"If-Unmodified-Since": date, "If-Range": date}
    if version.startswith("size:"):
        return {}
    if version.startswith("W/"):
        return {}  # weak ETags match nothing strongly: the answer's ETag is compared instead
    return {"If-Match": version, "If-Range": version}


def _same_version(reply: urllib3.BaseHTTPResponse, version: str) -> bool:
    """Whether the validators of `reply` (where it states them) are those of `version`."""
    if version.startswith("lm:"):
        modified = reply.headers.get("Last-Modified")
        return modified is None or modified == version[3:]
    if version.startswith("size:"):
        return True
    etag = reply.headers.get("ETag")
    return etag is None or etag == version


def _discard(reply: urllib3.BaseHTTPResponse) -> None:
    """Give the connection back: reused when little or nothing of the answer is left to
    read (read to its end first, so the connection is idle), else closed."""
    try:
        left = reply.length_remaining
        if left is not None and left <= _DRAIN_AT_MOST:
            reply.drain_conn()
        else:
            reply.close()
        reply.release_conn()
    except (urllib3.exceptions.HTTPError, OSError):
        pass


def open_store(url: StorageURL, config: Config) -> HttpStore:
    """The store for the host of `url`."""
    return HttpStore(url, config.http)

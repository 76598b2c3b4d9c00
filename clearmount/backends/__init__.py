"""Which adapter serves a URL: the scheme → backend registry.

Owns: turning a `StorageURL` plus the config into an `ObjectStore` (one per bucket,
container or http(s) host, reused) and listing the buckets/containers under a host or
account. Cloud SDKs are imported lazily here, so a mount that uses only S3 never pays for
the Azure or Google imports, and `clearmount --help` starts fast.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time

from clearmount.backends.base import ObjectStore
from clearmount.config import Config, Deadlines
from clearmount.urls import HTTP_SCHEMES, StorageURL, match_s3

# Keyed by the config object itself (frozen, hashable), so a reloaded config never reuses a
# store built with old credentials.
_stores: dict[tuple[Config, str], ObjectStore] = {}
_lock = threading.Lock()

log = logging.getLogger(__name__)


def open_store(url: StorageURL, config: Config) -> ObjectStore:
    """The store for the bucket or container of `url` (cached per config and base URL).

    Cheap, and called on the trio loop: a store builds its SDK client (credentials lookup,
    botocore models, google.auth.default()) at its first request, in that request's worker
    thread."""
    cache_key = (config, url.base_url)
    with _lock:
        store = _stores.get(cache_key)
    if store is not None:
        return store
    store = _new_store(url, config)
    if url.scheme not in ("http", "https"):
        # A files server's token comes from a login to the ClearML API server: its fetches
        # stay in the daemon, so that one token serves them all (one login, one refresh).
        store.origin = (url, config)
    with _lock:
        return _stores.setdefault(cache_key, store)


def _new_store(url: StorageURL, config: Config) -> ObjectStore:
    if url.scheme == "s3":
        from clearmount.backends import s3

        entry = match_s3(config.s3, url)
        return s3.S3Store(url.base_url, url.bucket, entry, config.s3.boto3)
    if url.scheme == "azure":
        from clearmount.backends import azure

        return azure.open_store(url, config)
    if url.scheme == "gs":
        from clearmount.backends import gcs

        return gcs.open_store(url, config)
    if url.scheme in ("http", "https"):
        from clearmount.backends import http

        return http.open_store(url, config)
    raise ValueError(f"no object store for {url.scheme}:// URLs")


def warm_up(config: Config) -> None:
    """Import the SDKs the config uses and build their S3 clients ahead of the first open.

    Only those: importing boto3 would cost a GCS- or Azure-only mount 8 MiB, and its first
    lookups, which wait for this, ~0.1 s."""
    for entry in (config.s3.defaults, *config.s3.credentials):
        if entry.key or entry.use_credentials_chain or entry.host:
            from clearmount.backends import s3

            s3.client_for(entry, config.s3.boto3)
    if config.azure.containers:
        from clearmount.backends import azure  # noqa: F401
    if config.gcs.credentials or config.gcs.defaults.project:
        from clearmount.backends import gcs  # noqa: F401


def start_warm_up(config: Config) -> concurrent.futures.Future[None]:
    """`warm_up(config)` in a thread of its own, from now on.

    A few hundred ms of CPU that the first lookups of a fresh mount wait for (a job stats its
    files the moment the mount is there): the daemon starts it just before it mounts, so that
    it overlaps the waits of the mount's last steps (the kernel mount, the first FUSE
    requests) instead of following them. Not earlier, in the interpreter's own start: the
    imports of both would share one GIL, and the mount would be ready that much later."""
    warming: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run() -> None:
        started = time.monotonic()
        try:
            warm_up(config)
        except BaseException as exc:
            warming.set_exception(exc)
        else:
            log.debug("SDKs imported and clients built in %.3f s", time.monotonic() - started)
            warming.set_result(None)

    threading.Thread(target=run, name="clearmount-warm-up", daemon=True).start()
    return warming


def deadlines(url: StorageURL, config: Config) -> Deadlines:
    """The deadlines of the stores that serve `url`'s scheme."""
    if url.scheme == "s3":
        return config.s3.boto3.deadlines
    if url.scheme == "azure":
        return config.azure.deadlines
    if url.scheme == "gs":
        return config.gcs.deadlines
    if url.scheme in HTTP_SCHEMES:
        return config.http.deadlines
    return Deadlines()


def list_containers(url: StorageURL, config: Config) -> list[str]:
    """Bucket or container names at `url`'s host/account (`url.bucket` is ignored)."""
    if url.scheme == "s3":
        from clearmount.backends import s3

        entry = match_s3(config.s3, url)
        return s3.list_buckets(entry, config.s3.boto3, f"s3://{url.host}")
    if url.scheme == "azure":
        from clearmount.backends import azure

        return azure.list_containers(url, config)
    raise ValueError(f"{url.scheme}:// has no container listing")

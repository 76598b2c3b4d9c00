"""The composition root: build every part, mount, serve, unmount.

Owns: wiring (config → stores, cache, namespace, FUSE operations), the trio nursery that
holds every background task, signal handling (SIGTERM/SIGINT unmount cleanly), the readiness
signal, and the mount point checks done before mounting (missing, not empty, already
mounted, or a stale mount left by a crash, which is cleaned up).
"""

from __future__ import annotations

import errno
import faulthandler
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from clearmount.cache.evict import CacheLimits, evict, reconcile
from clearmount.cache.fetch import Fetcher
from clearmount.cache.index import CacheIndex
from clearmount.cache.layout import CacheLayout
from clearmount.config import Config
from clearmount.direct import DirectAccess
from clearmount.errors import MountPointError, UserError
from clearmount.fuse_ops import Operations
from clearmount.namespace import Namespace
from clearmount.options import MountOptions
from clearmount.transfer import Transfer

log = logging.getLogger(__name__)

MOUNT_FAILED_EXIT = 5
# Partial downloads untouched this long at start-up are a crash's leftovers, not a live
# download by another process.
_STALE_PARTIAL_SECONDS = 60.0
# Handler tasks pyfuse3 keeps ready: enough that a slow fetch never blocks other requests.
_MIN_TASKS = 16
_MAX_TASKS = 512
# Seconds between eviction passes when nothing else triggers one.
_EVICTION_INTERVAL = 5.0


@dataclass(frozen=True)
class MountRequest:
    mountpoint: Path
    config: Config
    options: MountOptions
    cache: CacheLayout
    limits: CacheLimits


def prepare_mountpoint(path: Path, nonempty: bool) -> None:
    """Check the mount point, cleaning up a dead mount a crash left there."""
    try:
        # statfs, unlike stat, is never answered from the kernel's attribute cache, so a
        # dead FUSE mount fails it with ENOTCONN.
        os.statvfs(path)
    except FileNotFoundError:
        raise MountPointError(
            f"mount point {path} does not exist (create it with: mkdir -p {path})"
        ) from None
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise MountPointError(f"mount point {path}: {exc.strerror}") from None
        log.warning("%s is a dead mount left by a crash; unmounting it", path)
        _lazy_unmount(path)
    if not path.is_dir():
        raise MountPointError(f"mount point {path} is not a directory")
    if os.path.ismount(path):
        raise MountPointError(
            f"{path} is already a mount point (unmount it first: fusermount3 -u {path})"
        )
    if not nonempty and any(path.iterdir()):
        raise MountPointError(f"mount point {path} is not empty (or pass -o nonempty)")


def check_rules(config: Config, mountpoint: Path) -> None:
    """Refuse direct-access rules that would loop through the mount (ConfigError)."""
    DirectAccess(config.direct_access, config.path_substitution).check(mountpoint)


def _lazy_unmount(path: Path) -> None:
    command = (
        ["fusermount3", "-u", "-z", str(path)]
        if shutil.which("fusermount3")
        else ["umount", "-l", str(path)]
    )
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        os.statvfs(path)
    except OSError as exc:
        detail = result.stderr.strip() or exc.strerror
        raise MountPointError(f"cannot clean up the dead mount at {path}: {detail}") from None


def serve(request: MountRequest, on_ready: Callable[[], None]) -> None:
    """Mount, call `on_ready` once the mount answers, serve until unmounted or signalled."""
    faulthandler.enable()
    cache = request.cache
    cache.sweep_partials(older_than=_STALE_PARTIAL_SECONDS)
    options = request.options
    index = CacheIndex(cache.state_dir / "index.sqlite3")
    reconcile(cache, index)
    transfer = Transfer(options.metadata_concurrency, options.fetch_concurrency)
    config = request.config
    direct = DirectAccess(config.direct_access, config.path_substitution, request.mountpoint)
    namespace = Namespace(config, options, transfer, direct)
    boto3_settings = request.config.s3.boto3
    fetcher = Fetcher(
        cache,
        index,
        transfer,
        part_size=boto3_settings.multipart_chunksize,
        parallel=boto3_settings.max_multipart_concurrency,
        limits=request.limits,
        verify=not options.noverify,
    )
    operations = Operations(namespace, fetcher, options)
    try:
        pyfuse3.init(operations, str(request.mountpoint), options.fuse_options())
    except RuntimeError as exc:
        raise UserError(
            f"cannot mount {request.mountpoint}: {exc} (is /dev/fuse available and fuse3 "
            "installed?)",
            MOUNT_FAILED_EXIT,
        ) from None
    log.info("mounted %s (cache %s)", request.mountpoint, cache.root)
    unmounted = False
    try:
        trio.run(_main, request.mountpoint, fetcher, on_ready)
        unmounted = True
    finally:
        pyfuse3.close(unmount=True)
        index.close()
        if unmounted:
            log.info(
                "unmounted %s (served %d reads, %d fetches)",
                request.mountpoint,
                operations.reads,
                fetcher.fetches_started,
            )


async def _main(mountpoint: Path, fetcher: Fetcher, on_ready: Callable[[], None]) -> None:
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        nursery.start_soon(_keep_within_limits, fetcher)
        nursery.start_soon(_stop_on_signal)
        nursery.start_soon(_announce_ready, mountpoint, on_ready)
        await pyfuse3.main(min_tasks=_MIN_TASKS, max_tasks=_MAX_TASKS)
        # The session ended (fusermount3 -u, or a signal): stop fetches and helpers.
        nursery.cancel_scope.cancel()


async def _keep_within_limits(fetcher: Fetcher) -> None:
    """Evict in the background whenever a fetch starts or ends, and every few seconds (the
    ClearML SDK adds files too). Reads never wait for it."""
    layout = fetcher.layout
    # its own connection: this one is used from a worker thread
    index = CacheIndex(layout.state_dir / "index.sqlite3")
    try:
        while True:
            with trio.move_on_after(_EVICTION_INTERVAL):
                await fetcher.changed.wait()
            result = await trio.to_thread.run_sync(
                evict, layout, index, fetcher.limits, fetcher.reserved_bytes()
            )
            fetcher.usage_bytes = result.used_bytes
    finally:
        index.close()


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s received: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _announce_ready(mountpoint: Path, on_ready: Callable[[], None]) -> None:
    # The stat is answered by our own getattr: once it returns, the mount serves requests.
    await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    log.info("ready: %s", mountpoint)
    on_ready()

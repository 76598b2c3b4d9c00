"""The composition root: build every part, mount, serve, unmount.

Owns: wiring (config → stores, cache, namespace, FUSE operations), the trio nursery that
holds every background task, signal handling (SIGTERM/SIGINT unmount within a bound, SIGHUP
re-reads clearml.conf), the readiness signal and the rest of the systemd protocol (READY,
STATUS, RELOADING, STOPPING, the watchdog fed from the event loop), the control socket and
the optional metrics endpoint, and the mount point checks done before mounting (missing,
not empty, already mounted, or a stale mount left by a crash, which is cleaned up).
"""

from __future__ import annotations

import concurrent.futures
import errno
import faulthandler
import gc
import logging
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyfuse3
import trio

from clearmount import backends, control
from clearmount import config as config_module
from clearmount.backends.base import limit_pools
from clearmount.cache import limits as cache_limits
from clearmount.cache.evict import EvictResult, evict, reconcile
from clearmount.cache.fetch import Fetcher
from clearmount.cache.index import CacheIndex
from clearmount.cache.layout import CacheLayout, DiskSpaceLayout
from clearmount.cache.shared import L2Limits, SharedCache
from clearmount.cache.upload import Uploads
from clearmount.config import Config
from clearmount.direct import DirectAccess
from clearmount.errors import MountPointError, UserError
from clearmount.fuse_ops import Operations
from clearmount.monitor import Monitor, MountCounters
from clearmount.namespace import Namespace
from clearmount.options import USAGE_EXIT, MountOptions
from clearmount.sd_notify import Notifier
from clearmount.transfer import Transfer, as_worker, favor_loop
from clearmount.workers import FetchProcesses

if TYPE_CHECKING:
    from clearmount.metrics import MetricsServer

log = logging.getLogger(__name__)

MOUNT_FAILED_EXIT = 5
# Partial downloads untouched this long at start-up are a crash's leftovers, not a live
# download by another process.
_STALE_PARTIAL_SECONDS = 60.0
# Handler tasks pyfuse3 keeps ready: enough that a slow fetch never blocks other requests.
_MIN_TASKS = 16
_MAX_TASKS = 512
# After SIGTERM: readers waiting for fetches get this long to finish, then the fetches are
# cancelled (the readers get EIO), then whatever still runs is cancelled. The sum stays well
# under the units' TimeoutStopSec, so systemd never has to SIGKILL a mount.
_DRAIN_SECONDS = 5.0
_CANCEL_SECONDS = 3.0
# The kernel asks a FUSE daemon for at most a readahead window per READ: 128 KiB by default,
# though libfuse 3 accepts 1 MiB requests (max_pages 256). 1 MiB makes a sequential read 8
# times fewer requests, and so 8 times fewer handler calls and thread hops.
_READ_AHEAD_KB = 1024


@dataclass(frozen=True)
class MountRequest:
    mountpoint: Path
    config: Config
    options: MountOptions
    cache: CacheLayout
    limits: cache_limits.CacheLimits
    #: --config as given (None: the usual search), read again on SIGHUP
    config_arg: Path | None = None


@dataclass
class _Service:
    """The live parts of a mount that the background tasks act on."""

    request: MountRequest
    namespace: Namespace
    fetcher: Fetcher
    uploads: Uploads
    monitor: Monitor
    notifier: Notifier
    control: control.ControlServer | None
    metrics: MetricsServer | None
    #: the SDK warm-up of the config mounted, started before the mount
    warming: concurrent.futures.Future[None]


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


def _raise_open_files_limit() -> None:
    """Every open file and every download holds a descriptor: under a busy job the soft
    limit (1 024 under systemd) runs out long before the hard one (524 288)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _shared_cache(
    config: Config, cache: CacheLayout, transfer: Transfer, options: MountOptions
) -> SharedCache | None:
    """The shared L2 cache, when clearml.conf names one and the 2.x layout is on (as in the
    SDK: CacheManager has no L2)."""
    secondary = config.cache.secondary
    if secondary is None or not isinstance(cache, DiskSpaceLayout):
        return None
    limits = L2Limits(
        secondary.max_used_bytes,
        secondary.min_free_bytes or 0,
        secondary.cleanup_margin,
        secondary.cleanup_seconds_threshold,
    )
    shared = SharedCache(
        secondary.base_dir,
        transfer,
        takeover=options.l2_takeover,
        timeout=options.l2_timeout,
        limits=limits,
    )
    log.info("shared L2 cache %s, node %s", shared.describe(), shared.node)
    return shared


def serve(request: MountRequest, on_ready: Callable[[], None]) -> None:
    """Mount, call `on_ready` once the mount answers, serve until unmounted or signalled."""
    faulthandler.enable()
    # beside the index, the kernel mount and the first requests (see `start_warm_up`)
    warming = backends.start_warm_up(request.config)
    _raise_open_files_limit()
    cache = request.cache
    cache.sweep_partials(older_than=_STALE_PARTIAL_SECONDS)
    options = request.options
    index = CacheIndex(cache)
    try:
        reconcile(cache, index)
    except sqlite3.Error as exc:  # a stale row is harmless: the next start cleans it
        log.warning("cache index not reconciled with the disk: %s", exc)
    transfer = Transfer(options.metadata_concurrency, options.fetch_concurrency)
    limit_pools(transfer.requests_at_once)
    config = request.config
    direct = DirectAccess(config.direct_access, config.path_substitution, request.mountpoint)
    namespace = Namespace(config, options, transfer, direct)
    boto3_settings = request.config.s3.boto3
    shared = _shared_cache(config, cache, transfer, options)
    fetcher = Fetcher(
        cache,
        index,
        transfer,
        part_size=boto3_settings.multipart_chunksize,
        parallel=boto3_settings.max_multipart_concurrency,
        limits=request.limits,
        verify=not options.noverify,
        shared=shared,
        processes=FetchProcesses(options.fetch_processes) if options.fetch_processes else None,
    )
    uploads = Uploads(cache, index, transfer)
    operations = Operations(namespace, fetcher, options, uploads)
    monitor = Monitor(
        fetcher,
        operations.counters,
        mountpoint=request.mountpoint,
        options=options,
        config=lambda: namespace.config,
    )
    # every fetch event is counted where it happens, however quickly the fetch ends
    fetcher.events = monitor
    monitor.uploads = uploads
    # Both sockets are bound before mounting: a taken metrics port fails the start (one
    # line, nothing mounted) instead of leaving a mount without what was asked for.
    metrics = _metrics_server(options.metrics, monitor) if options.metrics else None
    service = _Service(
        request,
        namespace,
        fetcher,
        uploads,
        monitor,
        Notifier(),
        _control_server(request),
        metrics,
        warming,
    )
    try:
        pyfuse3.init(operations, str(request.mountpoint), options.fuse_options())
    except RuntimeError as exc:
        _close(service)
        raise UserError(
            f"cannot mount {request.mountpoint}: {exc} (is /dev/fuse available and fuse3 "
            "installed?)",
            MOUNT_FAILED_EXIT,
        ) from None
    log.info("mounted %s (cache %s)", request.mountpoint, cache.root)
    unmounted = False
    try:
        favor_loop()  # this thread runs the loop; trio's worker threads start from it
        trio.run(_main, service, on_ready)
        unmounted = True
    finally:
        pyfuse3.close(unmount=True)
        index.close()
        _close(service)
        if unmounted:
            log.info(
                "unmounted %s (served %d reads, %d fetches)",
                request.mountpoint,
                operations.reads,
                operations.counters.fetches_started,
            )


def _control_server(request: MountRequest) -> control.ControlServer | None:
    # Keyed by the mount point as the mount table will spell it (resolved now, before it is
    # a mount: resolving a live mount point would ask the mount).
    mountpoint = Path(os.path.realpath(request.mountpoint))
    try:
        sock, path = control.bind(mountpoint)
    except OSError as exc:
        log.warning("no control socket (clearmount status will not work): %s", exc)
        return None
    return control.ControlServer(sock, path)


def _metrics_server(address: str, monitor: Monitor) -> MetricsServer:
    from clearmount import metrics  # prometheus_client only for mounts that ask for it

    try:
        sock = metrics.bind(address)
    except OSError as exc:
        raise UserError(f"-o metrics={address}: {exc.strerror}", USAGE_EXIT) from None
    return metrics.MetricsServer(sock, monitor)


def _close(service: _Service) -> None:
    if service.control is not None:
        service.control.close()
    if service.metrics is not None:
        service.metrics.close()
    service.notifier.close()


async def _main(service: _Service, on_ready: Callable[[], None]) -> None:
    notifier = service.notifier
    async with trio.open_nursery() as nursery:
        # Fetches get a nursery of their own, so a stop can cancel them alone.
        fetches: trio.Nursery = await nursery.start(_fetch_nursery)
        service.fetcher.start(fetches)
        # uploads' parts and aborts: cancelled with the fetches at a stop
        service.uploads.start(fetches)
        if service.fetcher.shared is not None:
            service.fetcher.shared.start(fetches)
            nursery.start_soon(service.fetcher.shared.keep_within_limits)
        service.namespace.start(nursery)
        # what a killed daemon left unfinished on the servers
        nursery.start_soon(service.uploads.recover, service.namespace.store_for)
        nursery.start_soon(_keep_within_limits, service.fetcher, service.monitor.counters)
        nursery.start_soon(_stop_on_signal, service, nursery.cancel_scope, fetches.cancel_scope)
        nursery.start_soon(_reload_on_hangup, service)
        nursery.start_soon(_announce_ready, service, on_ready, nursery)
        nursery.start_soon(_feed_watchdog, notifier)
        nursery.start_soon(service.monitor.run, notifier.status)
        if service.control is not None:
            service.control.register("status", _status_handler(service.monitor))
            nursery.start_soon(service.control.serve)
        if service.metrics is not None:
            nursery.start_soon(service.metrics.serve)
        await pyfuse3.main(min_tasks=_MIN_TASKS, max_tasks=_MAX_TASKS)
        # The session ended (fusermount3 -u, or a signal): stop fetches and helpers.
        notifier.stopping(f"unmounted {service.request.mountpoint}")
        nursery.cancel_scope.cancel()


async def _fetch_nursery(task_status: trio.TaskStatus[trio.Nursery]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


async def _keep_within_limits(fetcher: Fetcher, counters: MountCounters) -> None:
    """Evict in the background whenever a fetch starts or ends (the free-space check at most
    once per `CHECK_GAP`), and every few seconds (the ClearML SDK adds files too). Reads never
    wait for it; a fetch starting while it is behind does, briefly (`Fetcher.note_eviction`,
    `cache_limits.waits_for_room`). When to scan and evict is `cache.limits`' policy; the
    `statvfs`, the scan and the batched index rows (`_check`) run in worker threads."""
    layout = fetcher.layout
    limits = fetcher.limits
    local = fetcher.transfer.local
    # its own connection, for the eviction's long transactions
    index = CacheIndex(layout)
    last_scan = -cache_limits.RESCAN_INTERVAL
    last_check = -cache_limits.CHECK_GAP
    want_free = limits.min_free_bytes > 0
    seen = -1  # `fetcher.changes` at the last size check
    checked = -1  # ... and at the last free-space check
    not_before = 0.0  # after a pass that left the cache over its limits
    try:
        while True:
            await trio.sleep_until(not_before)
            # The size limit is checked at every fetch start and end, on the loop; the free
            # space (a `statvfs`) and the batched index rows need a thread hop (`_check`): at
            # most one per CHECK_GAP, which the other starts and ends of a burst share. A
            # scan stats every cache file: only when the running estimate says a limit may be
            # crossed, or now and then for what the ClearML SDK added behind our back.
            wake_at = trio.current_time() + cache_limits.EVICTION_INTERVAL
            if (want_free and fetcher.changes != checked) or fetcher.index.pending:
                wake_at = min(wake_at, last_check + cache_limits.CHECK_GAP)
            # changes made while the last pass was in a thread are not waited for again
            if fetcher.changes == seen:
                with trio.move_on_at(wake_at):
                    await fetcher.changed.wait()
            seen = fetcher.changes
            reserved = fetcher.reserved_bytes()
            since_scan = trio.current_time() - last_scan
            due = cache_limits.eviction_due_by_size(
                limits, since_scan, fetcher.held_bytes(), reserved
            )
            gap_over = trio.current_time() >= last_check + cache_limits.CHECK_GAP
            if not due and gap_over and (want_free or fetcher.index.pending):
                last_check = trio.current_time()
                checked = fetcher.changes
                free = await local(_check, fetcher.index, layout.root, want_free)
                reserved = fetcher.reserved_bytes()
                since_scan = trio.current_time() - last_scan
                due = cache_limits.eviction_due(
                    limits, since_scan, fetcher.held_bytes(), free, reserved
                )
            if not due:
                continue
            estimate = fetcher.usage_bytes
            try:
                result = await local(_evict, fetcher.index, layout, index, limits, reserved)
            except (OSError, sqlite3.Error) as exc:
                # a full or vanished cache disk must not end the mount: try again later
                log.warning("cache eviction failed: %s", exc)
                fetcher.note_eviction(over=True)
                continue
            # Fetches that ended during the pass may be missing from its scan: count them on
            # top (too high is corrected by the next pass's scan; too low overshoots the limit).
            complete = result.used_bytes - result.partial_bytes
            fetcher.usage_bytes = complete + max(0, fetcher.usage_bytes - estimate)
            last_scan = trio.current_time()
            if result.over:
                not_before = last_scan + cache_limits.STUCK_PAUSE
            fetcher.note_eviction(result.over)
            counters.evictions += len(result.removed)
            counters.evicted_bytes += sum(f.size for f in result.removed)
    finally:
        index.close()


def _evict(
    rows: CacheIndex,
    layout: CacheLayout,
    index: CacheIndex,
    limits: cache_limits.CacheLimits,
    reserved: int,
) -> EvictResult:
    """The eviction's thread hop: the fetches' batched index rows first (an evicted file's
    row must not be written after its removal), then `evict`."""
    rows.flush()
    return evict(layout, index, limits, reserved)


def _check(index: CacheIndex, root: Path, want_free: bool) -> int | None:
    """The eviction loop's one thread hop per check: write the index rows the fetches keep
    for a batch (`CacheIndex.put_soon`), and measure the free space if a limit needs it."""
    if index.pending:
        index.flush()
    return cache_limits.free_bytes(root) if want_free else None


async def _stop_on_signal(
    service: _Service, everything: trio.CancelScope, fetches: trio.CancelScope
) -> None:
    """SIGTERM/SIGINT: unmount within _DRAIN_SECONDS + _CANCEL_SECONDS, however stuck.

    pyfuse3.main() returns only once every running handler has answered, and a read waiting
    for a stalled fetch would hold it open for as long as the server stalls. A second signal
    skips the waiting.
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        signum = await signals.__anext__()
        log.info("%s received: unmounting", signal.Signals(signum).name)
        service.notifier.stopping(f"stopping: unmounting {service.request.mountpoint}")
        pyfuse3.terminate()
        with trio.move_on_after(_DRAIN_SECONDS):
            await signals.__anext__()
        running = len(service.fetcher.in_flight)
        if running:
            log.warning("cancelling %d fetch(es) still running: their readers get EIO", running)
        fetches.cancel()
        with trio.move_on_after(_CANCEL_SECONDS):
            await signals.__anext__()
        log.warning("requests still running after the signal: stopping without them")
        everything.cancel()


async def _announce_ready(
    service: _Service, on_ready: Callable[[], None], nursery: trio.Nursery
) -> None:
    mountpoint = service.request.mountpoint
    # The stat is answered by our own getattr: once it returns, the mount serves requests.
    st = await trio.to_thread.run_sync(as_worker, os.stat, mountpoint, abandon_on_cancel=True)
    # before on_ready: files opened from then on take the larger window
    await trio.to_thread.run_sync(as_worker, raise_readahead, st.st_dev)
    log.info("ready: %s", mountpoint)
    on_ready()
    service.notifier.ready()  # STATUS= lines come from the monitor
    await trio.to_thread.run_sync(service.warming.result, abandon_on_cancel=True)
    if service.fetcher.processes is not None:
        # after ready, at the lowest CPU priority until they are ready too: their start (an
        # interpreter and the SDK's imports each) takes no core from the first requests
        nursery.start_soon(service.fetcher.processes.run, service.namespace.config)
    # What start-up and the SDKs built (~90 000 objects, mostly botocore's service models)
    # lives as long as the daemon: out of the collector's sight, a full collection, which
    # a listing of 10 000 keys triggers a few times, takes ~2 ms instead of ~40 ms.
    gc.freeze()


def raise_readahead(dev: int, kib: int = _READ_AHEAD_KB) -> None:
    """Let the kernel send READ requests of up to `kib` KiB (best effort: needs root).

    The window is the `read_ahead_kb` of the mount's device in sysfs. The FUSE INIT reply
    can only lower it (and pyfuse3 does not expose it), so it is raised once the mount has
    answered a request, i.e. once INIT has been applied: raised before, the reply would cap
    it again. It lasts as long as the mount. Never fails the mount: without it reads are
    smaller and slower, nothing else.
    """
    path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    try:
        current = int(path.read_text())
    except (OSError, ValueError) as exc:
        log.debug("cannot read the readahead of this mount (%s): %s", path, exc)
        return
    if current >= kib:
        return
    try:
        path.write_text(f"{kib}\n")
    except PermissionError:
        log.info(
            "reads reach the daemon in requests of %d KiB: only root can raise %s to %d",
            current,
            path,
            kib,
        )
    except OSError as exc:
        log.debug("cannot raise the readahead of this mount (%s): %s", path, exc)
    else:
        log.debug("readahead of this mount raised from %d to %d KiB", current, kib)


async def _feed_watchdog(notifier: Notifier) -> None:
    """Ping systemd's watchdog from the event loop: if the loop wedges, the pings stop and
    systemd restarts the service (WatchdogSec= in the unit)."""
    if notifier.watchdog_seconds is None:
        return
    # (a floor, so that an absurdly short WatchdogSec cannot make this a busy loop)
    interval = max(notifier.watchdog_seconds / 2, 0.05)
    while True:
        notifier.watchdog()
        await trio.sleep(interval)


def _status_handler(monitor: Monitor) -> control.Handler:
    async def status(request: dict[str, Any]) -> dict[str, Any]:
        await monitor.refresh()
        return monitor.snapshot()

    return status


async def _reload_on_hangup(service: _Service) -> None:
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            service.notifier.reloading()
            await reload(service)
            service.notifier.ready(service.monitor.status_line())


async def reload(service: _Service) -> None:
    """Read clearml.conf again and use it from the next request on; keep the running one if
    the new one is unusable (one ERROR line says why)."""
    request = service.request
    namespace = service.namespace
    old = namespace.config
    try:
        new = await trio.to_thread.run_sync(as_worker, config_module.load, request.config_arg)
        check_rules(new, request.mountpoint)
    except UserError as exc:
        log.error("reload failed, still using the configuration loaded before: %s", exc)
        service.monitor.note_reload(False, str(exc))
        return
    for warning in new.warnings:
        log.warning("%s", warning)
    if new.cache.base_dir != old.cache.base_dir:
        log.warning(
            "the cache directory changed to %s: it takes effect at the next start (still using %s)",
            new.cache.base_dir,
            request.cache.root,
        )
    if new.cache.layout_name != request.cache.kind:
        log.warning(
            "the cache layout changed to %s: it takes effect at the next start (still using %s)",
            new.cache.layout_name,
            request.cache.kind,
        )
    direct = DirectAccess(new.direct_access, new.path_substitution, request.mountpoint)
    # Stores are cached per Config object (backends.open_store), so the new credentials
    # serve every request from now on; open files keep the store they opened with.
    namespace.reload(new, direct)
    files = ", ".join(str(path) for path in new.files) or "no config file (defaults)"
    log.info("reloaded the configuration from %s", files)
    service.monitor.note_reload(True, files)

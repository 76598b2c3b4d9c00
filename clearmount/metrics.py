"""The optional Prometheus endpoint: `-o metrics=HOST:PORT` serves GET /metrics.

Owns: the metric names and help texts, a prometheus_client collector that reads the daemon's
own figures (`MountCounters`, the `Fetcher`, the `Monitor`) at scrape time, and a small HTTP
server that runs in the daemon's trio loop. The daemon imports this module only when the
option is given, so prometheus_client costs nothing otherwise. Reading plain counters from
the loop that bumps them needs no locks, and a scrape that cannot be answered is itself a
sign that the loop is stuck.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Mapping

import prometheus_client
import trio
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from clearmount import __version__
from clearmount.log import recent_errors
from clearmount.monitor import Histogram, Monitor
from clearmount.options import parse_address

log = logging.getLogger(__name__)

_MAX_REQUEST = 16 * 1024
_REQUEST_SECONDS = 10.0


def bind(text: str) -> socket.socket:
    """A listening TCP socket for `text` (HOST:PORT). Raises ValueError or OSError."""
    host, port = parse_address(text)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    return sock


def _by_label(name: str, help_text: str, label: str, counts: Mapping[str, int]) -> Metric:
    """A counter family with one sample per key of `counts`, labelled `label`."""
    family = CounterMetricFamily(name, help_text, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    return family


def _histogram(name: str, help_text: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets = [("+Inf" if b == float("inf") else repr(b), n) for b, n in histogram.cumulative()]
    return HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=histogram.sum)


class _MountCollector(Collector):
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterable[Metric]:
        monitor = self.monitor
        counters = monitor.counters
        fetcher = monitor.fetcher
        info = GaugeMetricFamily(
            "clearmount_info", "Version and mount point", labels=["version", "mountpoint"]
        )
        info.add_metric([__version__, str(monitor.mountpoint)], 1)
        yield info
        yield GaugeMetricFamily(
            "clearmount_start_time_seconds", "When the daemon started", value=monitor.started_wall
        )
        yield CounterMetricFamily("clearmount_reads", "read() calls served", value=counters.reads)
        yield CounterMetricFamily(
            "clearmount_read_bytes", "Bytes returned by read()", value=counters.read_bytes
        )
        yield _by_label(
            "clearmount_opens",
            "open() calls by where the bytes came from (cached, fetched, joined, streamed)",
            "result",
            counters.opens,
        )
        yield CounterMetricFamily(
            "clearmount_cache_hits", "Opens served from the cache", value=counters.opens["cached"]
        )
        misses = sum(n for result, n in counters.opens.items() if result != "cached")
        yield CounterMetricFamily(
            "clearmount_cache_misses", "Opens that needed the server", value=misses
        )
        yield CounterMetricFamily(
            "clearmount_fetches_started", "Fetches started", value=counters.fetches_started
        )
        yield CounterMetricFamily(
            "clearmount_fetches_completed",
            "Fetches that completed",
            value=counters.fetches_completed,
        )
        yield _by_label(
            "clearmount_fetches_failed",
            "Fetches that failed, by error kind",
            "kind",
            counters.fetches_failed,
        )
        yield CounterMetricFamily(
            "clearmount_fetches_stopped",
            "Fetches given up after their files were closed, to make room for a reader",
            value=counters.fetches_stopped,
        )
        yield CounterMetricFamily(
            "clearmount_fetched_bytes",
            "Object data downloaded, into the cache or streamed to readers",
            value=counters.fetched_bytes,
        )
        yield CounterMetricFamily(
            "clearmount_cache_evictions",
            "Cache files removed to keep within the limits",
            value=counters.evictions,
        )
        yield CounterMetricFamily(
            "clearmount_cache_evicted_bytes", "Bytes evicted", value=counters.evicted_bytes
        )
        uploads = monitor.uploads
        if uploads is not None:
            yield CounterMetricFamily(
                "clearmount_uploads_started", "Uploads started (-o writable)", value=uploads.started
            )
            yield CounterMetricFamily(
                "clearmount_uploads_completed",
                "Uploads complete on the server",
                value=uploads.completed,
            )
            yield _by_label(
                "clearmount_uploads_failed",
                "Uploads that failed, by error kind",
                "kind",
                uploads.failures,
            )
            yield CounterMetricFamily(
                "clearmount_uploaded_bytes",
                "Bytes the servers acknowledged (parts and whole objects)",
                value=uploads.sent_bytes,
            )
            yield GaugeMetricFamily(
                "clearmount_uploads_in_flight", "Uploads running now", value=len(uploads.active)
            )
        shared = monitor.fetcher.shared
        if shared is not None:
            st = shared.stats
            for name, text, value in (
                ("l2_hits", "Fetches served from the shared L2 cache", st.hits),
                ("l2_misses", "Fetches made from the bucket for the fleet", st.misses),
                ("l2_publications", "Files published to the shared L2 cache", st.publications),
                ("l2_lease_waits", "Fetches that waited for another node's", st.lease_waits),
                ("l2_takeovers", "Expired leases of dead holders taken over", st.takeovers),
                ("l2_saved_bytes", "Bucket bytes not downloaded thanks to the L2", st.bytes_saved),
                ("l2_faults", "Shared cache operations that failed or timed out", st.faults),
            ):
                yield CounterMetricFamily(f"clearmount_{name}", text, value=max(value, 0))
        yield GaugeMetricFamily(
            "clearmount_fetches_in_flight",
            "Fetches running now",
            value=monitor.fetches_in_flight,
        )
        processes = fetcher.processes
        if processes is not None:
            yield GaugeMetricFamily(
                "clearmount_fetch_processes_ready",
                "Fetch processes taking jobs now (-o fetch_processes)",
                value=processes.ready,
            )
            yield CounterMetricFamily(
                "clearmount_fetch_process_restarts",
                "Fetch processes started again after one died",
                value=processes.restarts,
            )
        errors = CounterMetricFamily(
            "clearmount_errors",
            "User-visible failures by operation and kind (error class or errno)",
            labels=["operation", "kind"],
        )
        for (operation, kind), count in sorted(counters.errors.items()):
            errors.add_metric([operation, kind], count)
        yield errors
        yield CounterMetricFamily(
            "clearmount_error_log_lines", "ERROR lines logged", value=recent_errors.total
        )
        reloads = CounterMetricFamily(
            "clearmount_config_reloads", "SIGHUP reloads by result", labels=["result"]
        )
        for result in ("ok", "failed"):
            reloads.add_metric([result], counters.reloads[result])
        yield reloads
        yield _histogram(
            "clearmount_open_duration_seconds", "Time to answer open()", counters.open_seconds
        )
        yield _histogram(
            "clearmount_read_duration_seconds",
            "Time to answer read(), waiting for a fetch included",
            counters.read_seconds,
        )
        yield _histogram(
            "clearmount_fetch_duration_seconds",
            "Time from the start of a fetch to its completion",
            counters.fetch_seconds,
        )
        cache = monitor.cache
        yield GaugeMetricFamily("clearmount_cache_files", "Complete files", value=cache.files)
        yield GaugeMetricFamily("clearmount_cache_bytes", "Bytes in the cache", value=cache.bytes)
        yield GaugeMetricFamily(
            "clearmount_cache_free_bytes", "Free space on the cache's disk", value=cache.free_bytes
        )
        if fetcher.limits.max_bytes is not None:
            yield GaugeMetricFamily(
                "clearmount_cache_limit_bytes", "Cache size limit", value=fetcher.limits.max_bytes
            )


class MetricsServer:
    """Answers GET /metrics on a bound socket from the daemon's trio loop."""

    def __init__(self, sock: socket.socket, monitor: Monitor) -> None:
        self._sock = sock
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_MountCollector(monitor))
        host, port = sock.getsockname()[:2]
        self.address = f"{host}:{port}"

    async def serve(self) -> None:
        log.info("metrics at http://%s/metrics", self.address)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._sock))
        await trio.serve_listeners(self._connection, [listener])

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                with trio.move_on_after(_REQUEST_SECONDS):
                    head = await _read_head(stream)
                    if head is None:
                        return
                    await stream.send_all(self._answer(head))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("metrics connection ended: %s", exc)

    def _answer(self, head: bytes) -> bytes:
        method, _, rest = head.partition(b" ")
        target = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD") or target not in (b"/metrics", b"/"):
            return _response(404, "text/plain", b"not found: try /metrics\n")
        body = prometheus_client.generate_latest(self.registry)
        return _response(200, prometheus_client.CONTENT_TYPE_LATEST, body, method == b"HEAD")

    def close(self) -> None:
        self._sock.close()


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk or len(data) > _MAX_REQUEST:
            return None
        data += chunk
    return data


def _response(status: int, content_type: str, body: bytes, head_only: bool = False) -> bytes:
    reason = {200: "OK", 404: "Not Found"}[status]
    header = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return header.encode() + (b"" if head_only else body)

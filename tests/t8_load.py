"""Load and a randomized model: many readers at once, and objects that change under them.

Load: 64 reader threads read random ranges of N objects (from a few KiB to several parts)
for T seconds through one mount, verifying every byte against the source, while the proxy
answers a 503 now and then and the cache is kept under a limit smaller than the data (so
eviction runs under load). The daemon's descriptors, threads and RSS are measured at rest
(no reads, no fetch, idle worker threads gone) after T/3 and again at the end: descriptors
other than sockets may grow by `FD_SLACK`, threads by `THREAD_SLACK`, RSS by `RSS_SLACK`,
and pooled keep-alive sockets never exceed `SOCKETS_MAX`. The short form runs by default
(200 objects, 15 s); the long one, 1 000 objects for 180 s (so the first measurement is at
minute 1; its peak of ~1 800 descriptors is why the daemon raises its soft open-files limit to
the hard one at start), with ``pytest -m slow tests/t8_load.py``.

Model: a seeded fsx-style loop puts, replaces and deletes objects on the server while it
reads, lists and stats them through a mount that trusts nothing it has seen
(attr/dir/negative timeouts 0), and keeps files open across changes. After every step the
mount must agree with the model: a new open reads the server's current bytes (ENOENT once
deleted), a listing shows exactly the current names, and a file opened before a change
reads the bytes it had when opened (or fails with ESTALE/ENOENT), never a byte of another
version. CLEARMOUNT_MODEL_SEED and CLEARMOUNT_MODEL_STEPS override the seed and length.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import resource
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import MountFactory
from devkit.confs import s3_conf
from devkit.processes import poll_until, unique_name
from devkit.proxy import Fault, Proxy
from devkit.s3 import S3Server
from support import Mount

MIB = 1 << 20
KIB = 1 << 10
PART = 4 * MIB
READERS = 64
#: allowed growth between the measurement at T/3 and the one at the end, both at rest:
#: descriptors other than sockets, threads, resident memory
FD_SLACK = 4
THREAD_SLACK = 4
RSS_SLACK = 64 * MIB
#: idle keep-alive connections the daemon may pool: one per request that can run at once
#: (the default fetch_concurrency + metadata_concurrency), plus its own unix sockets (the
#: control socket and the journal/notify ones)
SOCKETS_MAX = 32 + 32 + 8


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def soft_open_files_limit(soft: int | None) -> Iterator[None]:
    """Start daemons inside with this soft RLIMIT_NOFILE (they inherit it), as systemd's
    default LimitNOFILE=1024:524288 does; None: leave it alone."""
    if soft is None:
        yield
        return
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


# ----------------------------------------------------------------------------- the daemon


@dataclass(frozen=True)
class Vitals:
    fds: int  # descriptors other than sockets
    sockets: int
    threads: int
    rss: int  # bytes

    def __str__(self) -> str:
        return (
            f"fds {self.fds} + sockets {self.sockets}, threads {self.threads}, "
            f"RSS {self.rss / MIB:.0f} MiB"
        )


def fd_kinds(pid: int) -> dict[str, int]:
    """The daemon's descriptors by kind: sockets, partial downloads, cache files, others."""
    kinds: dict[str, int] = {}
    files: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        files.add(target)
        if target.startswith("socket:"):
            kind = "socket"
        elif target.endswith(".partially"):
            kind = "partial"
        elif "/storage_manager/global/" in target:
            kind = "cache file"
        else:
            kind = "other"
        kinds[kind] = kinds.get(kind, 0) + 1
    kinds["distinct files"] = len({f for f in files if "/storage_manager/global/" in f})
    return kinds


def vitals(pid: int) -> Vitals:
    fds = sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:"):
            sockets += 1
        else:
            fds += 1
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return Vitals(fds, sockets, int(fields["Threads"]), int(fields["VmRSS"].split()[0]) * KIB)


def at_rest(mount: Mount, idle_threads: int) -> Vitals:
    """The daemon's vitals once no fetch is in flight and its idle worker threads are gone
    (trio keeps an idle one for 10 s), or the fewest seen within 12 s."""
    assert mount.proc is not None
    pid = mount.proc.pid
    folder = mount.cache_dir / "storage_manager" / "global"
    poll_until(
        lambda: not any(p.name.endswith(".partially") for p in folder.iterdir()), 30, "fetches"
    )
    least = vitals(pid)
    deadline = time.monotonic() + 12
    while least.threads > idle_threads and time.monotonic() < deadline:
        time.sleep(0.5)
        now = vitals(pid)
        least = Vitals(
            min(least.fds, now.fds),
            min(least.sockets, now.sockets),
            min(least.threads, now.threads),
            now.rss,
        )
    return least


# ----------------------------------------------------------------------------- load


@dataclass
class Corpus:
    """Objects whose bytes are a function of their index (so none is kept twice)."""

    prefix: str
    sizes: list[int]
    _cache: dict[int, bytes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def make(cls, count: int, seed: int) -> Corpus:
        rng = random.Random(seed)
        sizes = []
        for i in range(count):
            roll = rng.random()
            if roll < 0.6:
                sizes.append(rng.randrange(0, 256 * KIB))
            elif roll < 0.9:
                sizes.append(rng.randrange(256 * KIB, 3 * MIB))
            else:
                sizes.append(rng.randrange(PART, 3 * PART + 1))  # several parts
            if i == 0:
                sizes[0] = 0
        return cls(unique_name("load"), sizes)

    def key(self, i: int) -> str:
        return f"{self.prefix}/d{i % 10}/obj{i:05d}.bin"

    def data(self, i: int) -> bytes:
        with self._lock:
            cached = self._cache.get(i)
        if cached is None:
            cached = random.Random(i * 7919 + 17).randbytes(self.sizes[i])
            with self._lock:
                self._cache[i] = cached
        return cached


class LoadStats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reads = 0
        self.bytes = 0
        self.opens = 0
        self.errors: list[str] = []

    def add(self, reads: int, nbytes: int) -> None:
        with self.lock:
            self.reads += reads
            self.bytes += nbytes
            self.opens += 1


def reader(
    seed: int,
    corpus: Corpus,
    root: Path,
    stop: threading.Event,
    pause: threading.Event,
    idle: threading.Semaphore,
    stats: LoadStats,
) -> None:
    rng = random.Random(seed)
    count = len(corpus.sizes)
    while not stop.is_set():
        if pause.is_set():
            idle.release()
            while pause.is_set() and not stop.is_set():
                time.sleep(0.05)
            continue
        i = rng.randrange(count)
        path = root / corpus.key(i)
        try:
            roll = rng.random()
            if roll < 0.03:
                names = os.listdir(path.parent)
                expected = {corpus.key(j).rpartition("/")[2] for j in range(i % 10, count, 10)}
                if set(names) != expected:
                    stats.errors.append(f"listing of {path.parent.name} is wrong")
                continue
            if roll < 0.06:
                if path.stat().st_size != corpus.sizes[i]:
                    stats.errors.append(f"{corpus.key(i)}: wrong size")
                continue
            data = corpus.data(i)
            reads = nbytes = 0
            with open(path, "rb", buffering=0) as f:
                if roll < 0.16:  # the whole file, sequentially
                    got = f.read()
                    reads, nbytes = 1, len(got)
                    if sha256(got) != sha256(data):
                        stats.errors.append(f"{corpus.key(i)}: wrong bytes (whole file)")
                else:
                    for _ in range(rng.randint(1, 6)):
                        offset = rng.randrange(len(data) + 1)
                        length = rng.choice([1, 4 * KIB, 64 * KIB, 300_000, MIB])
                        got = os.pread(f.fileno(), length, offset)
                        reads += 1
                        nbytes += len(got)
                        if got != data[offset : offset + length]:
                            stats.errors.append(f"{corpus.key(i)}: wrong bytes at {offset}")
            stats.add(reads, nbytes)
        except OSError as exc:
            stats.errors.append(f"{corpus.key(i)}: {exc!r}")


def upload(server: S3Server, bucket: str, corpus: Corpus) -> None:
    client = server.client()

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=corpus.key(i), Body=corpus.data(i))

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(len(corpus.sizes))))


def run_load(
    mounted: MountFactory,
    s3_server: S3Server,
    s3_proxy: Proxy,
    objects: int,
    seconds: float,
    nofile: int | None = None,
) -> None:
    bucket = s3_server.make_bucket()
    corpus = Corpus.make(objects, seed=objects)
    upload(s3_server, bucket, corpus)
    total = sum(corpus.sizes)
    conf = s3_conf(
        s3_proxy,
        s3_server.admin,
        sdk_extra=f"aws.boto3 {{ multipart_chunksize: {PART}, read_timeout: 10 }}",
    )
    with soft_open_files_limit(nofile):
        mount = mounted(
            conf,
            options=["attr_timeout=2", "dir_timeout=2"],
            extra_args=["--cache-max-size", str(int(total * 0.6))],  # eviction under load
            debug=False,
        )
    assert mount.proc is not None
    root = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}")
    start = vitals(mount.proc.pid)
    stop, pause = threading.Event(), threading.Event()
    idle = threading.Semaphore(0)
    stats = LoadStats()
    threads = [
        threading.Thread(
            target=reader,
            args=(n, corpus, root, stop, pause, idle, stats),
            name=f"reader{n}",
            daemon=True,
        )
        for n in range(READERS)
    ]
    peak = start
    peak_kinds: dict[str, int] = {}

    def sample() -> None:
        nonlocal peak, peak_kinds
        assert mount.proc is not None
        now = vitals(mount.proc.pid)
        if now.fds > peak.fds:
            peak_kinds = fd_kinds(mount.proc.pid)
        peak = Vitals(
            max(peak.fds, now.fds),
            max(peak.sockets, now.sockets),
            max(peak.threads, now.threads),
            max(peak.rss, now.rss),
        )

    def recovered(fault: Fault | None) -> bool:
        # The next 503 waits until a GET succeeded after the last one: on a warm cache the
        # GETs are rare, and one request retried into fault after fault would exhaust its
        # attempts, which no real server does to a client that backs off.
        if fault is None:
            return True
        if not fault.hits:
            return False
        gets = s3_proxy.requests("GET")
        faulted = max(i for i, seen in enumerate(gets) if seen.fault)
        return any(seen.status in (200, 206) for seen in gets[faulted + 1 :])

    def drive(until: float) -> None:
        # a 503 now and then: botocore's retries must hide every one of them
        next_fault = time.monotonic() + 0.5
        fault: Fault | None = None
        while time.monotonic() < until:
            assert not stats.errors, stats.errors[:5]
            assert mount.returncode is None, "the daemon died"
            if time.monotonic() >= next_fault and recovered(fault):
                fault = s3_proxy.fail(1, 503, method="GET")
                next_fault = time.monotonic() + 0.5
            sample()
            time.sleep(0.2)

    def rest() -> Vitals:
        pause.set()
        for _ in threads:
            assert idle.acquire(timeout=120), "a reader did not pause"
        vital = at_rest(mount, start.threads)
        pause.clear()
        return vital

    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        drive(started + seconds / 3)
        first = rest()
        resumed = time.monotonic()
        drive(resumed + seconds * 2 / 3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    assert not any(t.is_alive() for t in threads), "a reader hung"
    last = at_rest(mount, start.threads)
    elapsed = time.monotonic() - started
    print(
        f"\nLOAD {objects} objects ({total / MIB:.0f} MiB, cache limit 60%), {READERS} readers, "
        f"{elapsed:.0f}s: {stats.opens} opens, {stats.reads} reads, "
        f"{stats.bytes / MIB:.0f} MiB verified, {s3_proxy.count('GET')} GETs\n"
        f"  daemon at start: {start}\n  at rest after T/3: {first}\n"
        f"  at rest at the end: {last}\n  peak while loaded: {peak} ({peak_kinds})"
    )
    assert stats.errors == []
    assert stats.opens > READERS
    assert last.fds <= first.fds + FD_SLACK, (first, last)
    assert last.sockets <= SOCKETS_MAX, (first, last)
    assert last.threads <= first.threads + THREAD_SLACK, (first, last)
    assert last.rss <= first.rss + RSS_SLACK, (first, last)
    assert "evicted" in mount.log_text()


def test_load_short(mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy) -> None:
    run_load(mounted, s3_server, s3_proxy, objects=200, seconds=15)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_load_long(mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy) -> None:
    # rest at minute 1; open files limited as under systemd's default (LimitNOFILE soft 1024)
    run_load(mounted, s3_server, s3_proxy, objects=1000, seconds=180)


# ----------------------------------------------------------------------------- model


KEYS = ["m/k0", "m/k1", "m/k2", "m/k3", "m/k4", "m/sub/k5", "m/sub/k6"]
SIZES = [0, 1, 100, 4095, 64 * KIB, 700 * KIB, 3 * MIB + 17]  # the largest is 3 parts


@dataclass
class Held:
    """A file opened through the mount, and the bytes its object had when it was opened."""

    key: str
    fd: int
    data: bytes


@dataclass
class Model:
    server: S3Server
    bucket: str
    root: Path  # the bucket through the mount
    rng: random.Random
    current: dict[str, bytes] = field(default_factory=dict)
    held: list[Held] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def path(self, key: str) -> Path:
        return self.root / key

    # -- mutations (on the server)

    def put(self) -> None:
        key = self.rng.choice(KEYS)
        data = self.rng.randbytes(self.rng.choice(SIZES))
        self.server.put(self.bucket, key, data)
        self.current[key] = data
        self.log.append(f"put {key} ({len(data)} bytes)")
        self.check_key(key)

    def delete(self) -> None:
        if not self.current:
            return self.put()
        key = self.rng.choice(sorted(self.current))
        self.server.client().delete_object(Bucket=self.bucket, Key=key)
        del self.current[key]
        self.log.append(f"delete {key}")
        self.check_key(key)

    # -- observations (through the mount)

    def check_key(self, key: str) -> None:
        """A new open reads the current bytes; a deleted key is ENOENT."""
        expected = self.current.get(key)
        try:
            with open(self.path(key), "rb") as f:
                got = f.read()
        except FileNotFoundError:
            assert expected is None, f"{key} exists on the server but the mount says ENOENT"
            return
        assert expected is not None, f"{key} was deleted but the mount still reads it"
        assert sha256(got) == sha256(expected), f"{key}: not the current bytes"

    def read_range(self) -> None:
        key = self.rng.choice(KEYS)
        expected = self.current.get(key)
        try:
            with open(self.path(key), "rb", buffering=0) as f:
                if expected is None:
                    pytest.fail(f"{key} was deleted but opens")
                offset = self.rng.randrange(len(expected) + 1)
                length = self.rng.choice([1, 1000, 70_000, MIB])
                got = os.pread(f.fileno(), length, offset)
        except FileNotFoundError:
            assert expected is None, f"{key} exists but ENOENT"
            return
        assert got == expected[offset : offset + length], f"{key}: wrong bytes at {offset}"
        self.log.append(f"read {key}[{offset}:+{length}]")

    def listing(self) -> None:
        folder = self.rng.choice(["m", "m/sub"])
        files = {k[len(folder) + 1 :] for k in self.current if k.startswith(folder + "/")}
        # the server's word on folders: SeaweedFS keeps one that has been emptied
        reply = self.server.client().list_objects_v2(
            Bucket=self.bucket, Prefix=folder + "/", Delimiter="/"
        )
        folders = {p["Prefix"][len(folder) + 1 : -1] for p in reply.get("CommonPrefixes", [])}
        expected = {n for n in files if "/" not in n} | folders
        try:
            got = set(os.listdir(self.root / folder))
        except FileNotFoundError:
            got = set()
        assert got == expected, f"listing of {folder}: {sorted(got)} != {sorted(expected)}"
        self.log.append(f"list {folder}")

    def stat(self) -> None:
        key = self.rng.choice(KEYS)
        expected = self.current.get(key)
        try:
            size = self.path(key).stat().st_size
        except FileNotFoundError:
            assert expected is None, f"{key} exists but stat says ENOENT"
            return
        assert expected is not None and size == len(expected), f"{key}: size {size}"

    def hold(self) -> None:
        if len(self.held) >= 3 or not self.current:
            return
        key = self.rng.choice(sorted(self.current))
        fd = os.open(self.path(key), os.O_RDONLY)
        self.held.append(Held(key, fd, self.current[key]))
        self.log.append(f"hold {key}")

    def read_held(self) -> None:
        if not self.held:
            return self.hold()
        held = self.rng.choice(self.held)
        offset = self.rng.randrange(len(held.data) + 1)
        length = self.rng.choice([1, 5000, MIB])
        unchanged = self.current.get(held.key) == held.data
        try:
            got = os.pread(held.fd, length, offset)
        except OSError as exc:
            # bytes not fetched before the object changed are gone for good
            assert not unchanged, f"held {held.key}: {exc!r} though the object is unchanged"
            assert exc.errno in (errno.ESTALE, errno.ENOENT), exc
            return
        assert got == held.data[offset : offset + length], (
            f"held {held.key}: not the bytes it had when opened (offset {offset})"
        )

    def release(self) -> None:
        if self.held:
            os.close(self.held.pop(self.rng.randrange(len(self.held))).fd)

    def step(self) -> None:
        operations: list[tuple[float, Callable[[], None]]] = [
            (3, self.put),
            (1, self.delete),
            (2, self.read_range),
            (1, self.listing),
            (1, self.stat),
            (1, self.hold),
            (2, self.read_held),
            (1, self.release),
        ]
        weights, actions = zip(*operations, strict=True)
        self.rng.choices(actions, weights)[0]()


def test_model_reads_match_the_server_while_objects_change(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    seed = int(os.environ.get("CLEARMOUNT_MODEL_SEED", "20261126"))
    steps = int(os.environ.get("CLEARMOUNT_MODEL_STEPS", "250"))
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "anchor", b"keeps the bucket listed")
    mount = mounted(
        s3_conf(s3_proxy, s3_server.admin, sdk_extra="aws.boto3 { multipart_chunksize: 1048576 }"),
        options=["attr_timeout=0", "negative_timeout=0", "dir_timeout=0"],
        extra_args=["--cache-max-size", "5MiB"],  # files come and go from the cache too
        debug=False,
    )
    model = Model(
        s3_server, bucket, mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}"), random.Random(seed)
    )
    try:
        for number in range(steps):
            try:
                model.step()
            except AssertionError as exc:
                history = "\n".join(model.log[-15:])
                raise AssertionError(
                    f"seed {seed}, step {number}: {exc}\nlast steps:\n{history}"
                ) from None
        for key in KEYS:
            model.check_key(key)
        assert mount.returncode is None
        assert "evicted" in mount.log_text()
    finally:
        for held in model.held:
            os.close(held.fd)
    puts = sum(1 for entry in model.log if entry.startswith("put"))
    print(f"\nMODEL seed {seed}: {steps} steps, {puts} puts")


# ----------------------------------------------------------------------------- backlog


def test_a_reader_never_waits_behind_downloads_nobody_reads(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    # A job peeks at the first bytes of many files (type checks, headers) while the server is
    # slow. Each open starts a download that goes on after the file is closed; once such
    # downloads hold every transfer slot, the next reader would wait for the read timeout
    # (600 s here) unless they give their slots up. Started under systemd's default soft limit
    # of 1 024 open files, the daemon also raises its own soft limit to the hard one.
    slots, count, size = 4, 40, 3 * MIB
    bucket = s3_server.make_bucket()
    corpus = Corpus(unique_name("peek"), [size] * count)
    upload(s3_server, bucket, corpus)
    conf = s3_conf(s3_proxy, s3_server.admin, sdk_extra="aws.boto3 { read_timeout: 600 }")
    options = ["attr_timeout=3600", "dir_timeout=3600", f"fetch_concurrency={slots}"]
    with soft_open_files_limit(1024):
        mount = mounted(conf, options=options, debug=False)
    assert mount.proc is not None
    root = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}")
    for n in range(10):
        os.listdir((root / corpus.key(n)).parent)  # sizes from listings: no HEAD per file
    # every GET pauses after 1 MiB + 64 KiB: the first read (at most 1 MiB, the readahead
    # window) is served, the rest of the object waits
    stall_after = MIB + 64 * KIB
    s3_proxy.stall(stall_after, 300, count=None, method="GET", prefix=f"/{bucket}/{corpus.prefix}/")
    failures: list[str] = []
    peeked = 0

    def peek_all() -> None:
        nonlocal peeked
        for i in range(count):
            try:
                with open(root / corpus.key(i), "rb", buffering=0) as f:
                    if f.read(16) != corpus.data(i)[:16]:
                        failures.append(f"{i}: wrong bytes")
            except OSError as exc:
                failures.append(f"{i}: {exc!r}")
            peeked += 1

    peeker = threading.Thread(target=peek_all, daemon=True)
    peeker.start()
    peeker.join(120)  # the stalls last 300 s and the read timeout 600 s: 120 s is a hang
    stuck, waiting_at = peeker.is_alive(), peeked + 1
    s3_proxy.reset()  # releases the stalls
    peeker.join(60)
    print(f"\nPEEK {peeked} of {count} files peeked at; failures {failures[:3]}")
    assert not stuck, f"peek {waiting_at} of {count} waited behind downloads nobody read"
    assert failures == []
    limits = Path(f"/proc/{mount.proc.pid}/limits").read_text()
    soft, hard = next(line for line in limits.splitlines() if "open files" in line).split()[3:5]
    assert soft == hard, limits

"""Hostile input and security: odd keys, lying servers, other users.

Keys. SeaweedFS refuses some keys that AWS S3 accepts ("..", ".", "a/../b", names over 255
bytes, keys over about 1 000 bytes, so at most about 500 levels of nesting). Those keys are
tested twice: what SeaweedFS accepts against SeaweedFS itself, and everything else against
`HostileS3`, a small scripted S3 endpoint in this module that answers ListObjectsV2, HEAD
and ranged GET with exactly the keys and misbehaviours a test asks for (the daemon still
talks HTTP to it through botocore and a real FUSE mount). What must hold: nothing outside
the mount or the cache directory is ever reached or written, listings never fail because
of one bad name (it is skipped with a log line), and every byte read is the server's.

Servers that lie: one that ignores Range, one that ignores If-Match while the object
changes, one whose GET is shorter than its HEAD, one whose listing never ends. The reader
gets the right bytes or an errno, never other bytes.

Security: the cache is private (0700 folders, 0600 files), no secret reaches a log, the
process table or an extended attribute, the control socket refuses other users, and
`-o nofile` removes the only local paths the mount shows. Other users and `allow_other`
are tested in t6_service.py (test_allow_other_uid_gid_modes_as_another_user); config
files are fuzzed with Hypothesis in t1_config.py.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import os
import pwd
import re
import socket
import stat
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from clearmount import control
from conftest import MountFactory
from devkit.confs import s3_conf
from devkit.processes import poll_until, unique_name
from devkit.proxy import Proxy
from devkit.s3 import Identity, S3Server
from support import Mount, SecretGuard

MIB = 1 << 20
HANG = 60.0
CACHE_NAME = re.compile(r"[0-9a-f]{32}\.")
TEST_USER = "clearmount-test"  # shared with t6_service.py


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: Path, timeout: float = HANG) -> bytes | int:
    """The file's bytes, or the errno of the failure (in a thread: a hang fails the test)."""
    result: list[bytes | int] = []

    def run() -> None:
        try:
            with open(path, "rb") as f:
                result.append(f.read())
        except OSError as exc:
            result.append(exc.errno or -1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        pytest.fail(f"reading {path} did not return within {timeout:g}s")
    return result[0]


def assert_cache_holds_only(mount: Mount, expected: dict[str, bytes]) -> None:
    """The cache tree holds ClearML-named files of the expected URLs with their exact bytes,
    the index and nothing else; no name is long or odd enough to leave its folder."""
    root = mount.cache_dir
    assert {p.name for p in root.iterdir()} <= {"storage_manager", "clearmount"}
    assert [p.name for p in (root / "storage_manager").iterdir()] == ["global"]
    by_name = {
        f"{hashlib.md5(url.encode()).hexdigest()}.": (url, data) for url, data in expected.items()
    }
    folder = root / "storage_manager" / "global"
    poll_until(
        lambda: not any(p.name.endswith(".partially") for p in folder.iterdir()), 10, "fetches"
    )
    for path in folder.iterdir():
        assert path.is_file() and not path.is_symlink(), path
        assert CACHE_NAME.match(path.name) and len(os.fsencode(path.name)) <= 255, path.name
        url, data = by_name[path.name[:33]]
        assert path.read_bytes() == data, url
    for path in (root / "clearmount").iterdir():
        assert path.name.startswith("index.sqlite3"), path


def walk_names(top: Path) -> set[str]:
    """Every path under `top`, relative, as os.walk sees it (directories end with "/")."""
    found: set[str] = set()
    for folder, dirs, files in os.walk(top):
        rel = os.path.relpath(folder, top)
        prefix = "" if rel == "." else rel + "/"
        found.update(prefix + d + "/" for d in dirs)
        found.update(prefix + f for f in files)
    return found


# ----------------------------------------------------------------------------- SeaweedFS


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    return s3_server.make_bucket()


def test_odd_keys_seaweedfs_accepts_are_read_exactly_or_skipped(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    top = unique_name("odd")
    shown = {
        "ctl\x01\x1f\x7f\n\tx": b"control characters",
        "q?x=1&y=%41": b"query-like",
        "frag#1": b"fragment-like",
        "pct%2Fx": b"encoded slash",
        " lead and trail ": b"spaces",
        "-dash": b"dash",
        "...": b"three dots",
        "..x": b"dots then x",
        "back\\slash": b"backslash",
        "n" * 255: b"255 bytes",
        "é" * 127: b"254 bytes of UTF-8",
        "NFC-\u00e9": b"precomposed",
        "NFD-e\u0301": b"decomposed",
        "emoji-\U0001f600": b"astral",
        "dir/x.bin": b"plain",
        "a": b"a file beside a directory of the same name",
        "a/x": b"inside a/",
        "dbl//x": b"empty component",
    }
    for key, data in shown.items():
        s3_server.put(bucket, f"{top}/{key}", data)
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    root = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{top}")
    names = walk_names(root)
    stored = {
        o["Key"][len(top) + 1 :]
        for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix=top + "/")["Contents"]
    }
    # SeaweedFS's filer stores "back\\slash" as "back/slash" and "dbl//x" as "dbl/x"
    data_of = {k.replace("\\", "/").replace("//", "/"): v for k, v in shown.items()}
    assert stored == set(data_of)
    # the file "a" loses to the directory "a/" and is skipped
    expected = {k for k in stored if k != "a"} | {k.split("/")[0] + "/" for k in stored if "/" in k}
    assert names == expected
    readable = {k: v for k, v in data_of.items() if k in names}
    for key, data in readable.items():
        assert read_bytes(root / key) == data, key
    log = mount.log_text()
    assert "skipped 1 key(s)" in log and f"'{top}/a'" in log
    assert mount.returncode is None
    assert_cache_holds_only(
        mount,
        {f"s3://{s3_proxy.endpoint}/{bucket}/{top}/{k}": v for k, v in readable.items()},
    )


@pytest.mark.parametrize("name", ["n" * 255, "é" * 127, "m" * 200], ids=["255", "254-utf8", "200"])
def test_long_names_are_read(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str, name: str
) -> None:
    key = f"{unique_name('long')}/{name}"
    s3_server.put(bucket, key, b"a long name")
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    url = f"s3://{s3_proxy.endpoint}/{bucket}/{key}"
    assert read_bytes(mount.path_of(url)) == b"a long name"
    assert_cache_holds_only(mount, {url: b"a long name"})


def test_nesting_as_deep_as_seaweedfs_allows(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    # SeaweedFS refuses keys over about 1 000 bytes: 500 levels of "d/" is its limit here
    depth = 500
    top = unique_name("deep")
    key = f"{top}/" + "d/" * depth + "leaf.txt"
    s3_server.put(bucket, key, b"at the bottom")
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")
    assert read_bytes(path) == b"at the bottom"
    folder = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{top}")
    levels = 0
    for _, dirs, _ in os.walk(folder):
        levels += bool(dirs)
    assert levels == depth


# ----------------------------------------------------------------------------- HostileS3


@dataclass
class Obj:
    data: bytes
    etag: str

    @classmethod
    def of(cls, data: bytes) -> Obj:
        return cls(data, f'"{hashlib.md5(data).hexdigest()}"')


@dataclass
class Script:
    """What HostileS3 serves and how it misbehaves."""

    objects: dict[str, Obj] = field(default_factory=dict)
    #: extra raw <Contents> entries for listings of a prefix (malformed ones)
    raw_entries: dict[str, list[str]] = field(default_factory=dict)
    ignore_range: bool = False
    ignore_if_match: bool = False
    #: GET bodies stop after this many bytes (while the headers promise all of them)
    short_body: int | None = None
    #: listings hand out these continuation tokens in turn, forever
    token_cycle: tuple[str, ...] = ()
    #: every GET body pauses after this many bytes until `resume` is set
    pause_after: int | None = None
    resume: threading.Event = field(default_factory=threading.Event)
    requests: list[str] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # a head and a body in two writes: no 40 ms ACK waits
    server: HostileS3

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _route(self) -> tuple[str, str, dict[str, str]]:
        target = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(target.query, keep_blank_values=True))
        path = urllib.parse.unquote(target.path)
        _, bucket, key = path.split("/", 2) if path.count("/") >= 2 else (*path.split("/"), "")
        return bucket, key, query

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        script = self.server.script
        bucket, key, query = self._route()
        script.requests.append(f"{self.command} {self.path}")
        if not bucket:
            names = f"<Bucket><Name>{HostileS3.BUCKET}</Name></Bucket>"
            body = f"<ListAllMyBucketsResult><Buckets>{names}</Buckets></ListAllMyBucketsResult>"
            return self._send(200, body.encode(), {"Content-Type": "application/xml"})
        if bucket != HostileS3.BUCKET:
            return self._send(404, b"<Error><Code>NoSuchBucket</Code></Error>")
        if not key:
            if self.command == "HEAD":
                return self._send(200)
            return self._list(query)
        obj = script.objects.get(key)
        if obj is None:
            return self._send(404, b"<Error><Code>NoSuchKey</Code></Error>")
        headers = {
            "ETag": obj.etag,
            "Last-Modified": formatdate(1_700_000_000, usegmt=True),
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        if self.command == "HEAD":
            headers["Content-Length"] = str(len(obj.data))
            return self._send(200, b"", headers)
        wanted = self.headers.get("If-Match")
        if wanted and wanted != obj.etag and not script.ignore_if_match:
            return self._send(412, b"<Error><Code>PreconditionFailed</Code></Error>")
        data, status = obj.data, 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if match and not script.ignore_range:
            first = int(match[1])
            last = int(match[2]) if match[2] else len(obj.data) - 1
            data, status = obj.data[first : last + 1], 206
            headers["Content-Range"] = f"bytes {first}-{last}/{len(obj.data)}"
        headers["Content-Length"] = str(len(data))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if script.short_body is not None:
            data = data[: script.short_body]
        pause = script.pause_after  # read once: the test may clear it while this GET waits
        if pause is not None and len(data) > pause:
            self.wfile.write(data[:pause])
            self.wfile.flush()
            script.resume.wait(HANG)
            data = data[pause:]
        self.wfile.write(data)
        if script.short_body is not None:
            self.close_connection = True

    def _list(self, query: dict[str, str]) -> None:
        script = self.server.script
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        encode = query.get("encoding-type") == "url"

        def text(value: str) -> str:
            return urllib.parse.quote(value, safe="") if encode else escape(value)

        keys = sorted(k for k in script.objects if k.startswith(prefix))
        contents, prefixes = [], set()
        for key in keys:
            rest = key[len(prefix) :]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
                continue
            obj = script.objects[key]
            contents.append(
                f"<Contents><Key>{text(key)}</Key>"
                "<LastModified>2023-11-14T22:13:20.000Z</LastModified>"
                f"<ETag>{escape(obj.etag)}</ETag><Size>{len(obj.data)}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
        contents += script.raw_entries.get(prefix, [])
        common = "".join(
            f"<CommonPrefixes><Prefix>{text(p)}</Prefix></CommonPrefixes>" for p in sorted(prefixes)
        )
        truncated = "false"
        token = ""
        if script.token_cycle:
            sent = query.get("continuation-token", "")
            cycle = script.token_cycle
            nxt = cycle[(cycle.index(sent) + 1) % len(cycle)] if sent in cycle else cycle[0]
            truncated, token = "true", f"<NextContinuationToken>{nxt}</NextContinuationToken>"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{HostileS3.BUCKET}</Name><Prefix>{text(prefix)}</Prefix>"
            f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount><MaxKeys>1000</MaxKeys>"
            f"<Delimiter>{text(delimiter)}</Delimiter><IsTruncated>{truncated}</IsTruncated>"
            f"{token}{''.join(contents)}{common}"
            f"{'<EncodingType>url</EncodingType>' if encode else ''}</ListBucketResult>"
        )
        self._send(200, body.encode(), {"Content-Type": "application/xml"})


class HostileS3(http.server.ThreadingHTTPServer):
    """A scripted S3 endpoint on 127.0.0.1 (no authentication, path-style, one bucket)."""

    BUCKET = "hostile"
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up mid-answer are part of the tests

    def __init__(self, script: Script) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.endpoint = f"127.0.0.1:{self.server_address[1]}"

    def url(self, key: str) -> str:
        return f"s3://{self.endpoint}/{self.BUCKET}/{key}"


@pytest.fixture
def hostile() -> Iterator[HostileS3]:
    server = HostileS3(Script())
    thread = threading.Thread(target=server.serve_forever, name="hostile-s3", daemon=True)
    thread.start()
    yield server
    server.script.resume.set()
    server.shutdown()
    server.server_close()


NOBODY = Identity("nobody", "AKHOSTILEKEY0000", "hostile-server-accepts-anything")


def hostile_mount(mounted: MountFactory, server: HostileS3, **kwargs: object) -> Mount:
    conf = s3_conf(
        server.endpoint,
        NOBODY,
        sdk_extra="aws.boto3 { connect_timeout: 2, read_timeout: 3, multipart_chunksize: 1048576 }",
    )
    return mounted(conf, env={"AWS_MAX_ATTEMPTS": "2"}, **kwargs)  # type: ignore[arg-type]


def test_names_s3_allows_but_no_file_can_have_are_skipped_never_shown(
    mounted: MountFactory, hostile: HostileS3, tmp_path: Path
) -> None:
    objects = {
        "ok.txt": b"fine",
        "..": b"dot dot",
        ".": b"dot",
        "a/../escape.txt": b"traversal",
        "a/./here.txt": b"dot segment",
        "a/real.txt": b"real",
        "/etc/passwd": b"leading slash",
        "//x": b"two slashes",
        "x//y": b"empty component",
        "n" * 256: b"256 bytes",
        "long/" + "m" * 300: b"300 bytes",
        "clash": b"file",
        "clash/in.txt": b"in",
        "marker/": b"",
        "marker/file.txt": b"under a marker",
        "ctl\x01\x02\x1b[31m": b"escape sequence",
    }
    hostile.script.objects = {k: Obj.of(v) for k, v in objects.items()}
    hostile.script.raw_entries[""] = [
        "<Contents><Key>no-size</Key><ETag>&quot;x&quot;</ETag></Contents>",
        "<Contents><Key>negative</Key><Size>-5</Size></Contents>",
    ]
    before = set(tmp_path.rglob("*"))
    mount = hostile_mount(mounted, hostile)
    root = mount.path_of(hostile.url(""))
    names = walk_names(root)
    assert names == {
        "ok.txt",
        "a/",
        "a/real.txt",
        "x/",
        "clash/",
        "clash/in.txt",
        "marker/",
        "marker/file.txt",
        "ctl\x01\x02\x1b[31m",
        "long/",
    }
    for name in ("ok.txt", "a/real.txt", "clash/in.txt", "marker/file.txt"):
        assert read_bytes(root / name) == objects[name]
    assert read_bytes(root / "ctl\x01\x02\x1b[31m") == b"escape sequence"
    # names the kernel would take apart are never looked up as keys
    for name in ("..", ".", "a/..", "clash/..", "x/.."):
        assert (root / name).resolve().is_relative_to(mount.path)
    with pytest.raises(OSError) as raised:
        (root / ("n" * 256)).stat()
    assert raised.value.errno in (errno.ENOENT, errno.ENAMETOOLONG)
    log = mount.log_text()
    assert "skipped" in log and "malformed listing entry" in log
    assert mount.returncode is None
    assert_cache_holds_only(
        mount,
        {
            hostile.url(k): objects[k]
            for k in ("ok.txt", "a/real.txt", "clash/in.txt", "marker/file.txt")
        }
        | {hostile.url("ctl\x01\x02\x1b[31m"): b"escape sequence"},
    )
    # nothing new outside the mount's own working folders
    after = set(tmp_path.rglob("*"))
    outside = {
        p
        for p in after - before
        if not p.is_relative_to(mount.cache_dir) and not p.is_relative_to(mount.path.parent)
    }
    assert outside == set()


def test_listing_entry_without_a_key_is_eio_and_the_daemon_lives(
    mounted: MountFactory, hostile: HostileS3
) -> None:
    hostile.script.objects = {"ok.txt": Obj.of(b"fine"), "sub/x.txt": Obj.of(b"x")}
    hostile.script.raw_entries[""] = ["<Contents><Size>3</Size></Contents>"]
    mount = hostile_mount(mounted, hostile)
    root = mount.path_of(hostile.url(""))
    with pytest.raises(OSError) as raised:
        os.listdir(root)
    assert raised.value.errno == errno.EIO  # botocore itself cannot decode that page
    assert os.listdir(root / "sub") == ["x.txt"]
    assert read_bytes(root / "ok.txt") == b"fine"
    assert mount.returncode is None


def daemon_memory_kib(pid: int) -> dict[str, int]:
    """The daemon's resident set now (VmRSS) and at its peak (VmHWM), in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


@pytest.mark.parametrize(
    "depth", [2_000, pytest.param(10_000, marks=pytest.mark.slow)], ids=["2000", "10000"]
)
def test_deep_nesting_far_beyond_path_max(
    mounted: MountFactory, hostile: HostileS3, depth: int
) -> None:
    # AWS S3 and GCS cap keys at 1 024 bytes (512 levels); other S3 servers may not.
    # The walk's time is still quadratic in the depth (each level's listing request carries
    # the whole key): 10 000 levels take about 100 s. Its memory must be linear: a node
    # keeps its parent's path and its own name, not all its components. Measured growth of
    # the daemon's peak: 2 000 levels +6 to +8 MiB (+34 to +38 MiB when each node kept a
    # tuple of its components), 10 000 levels +28 to +42 MiB (+802 MiB). The bound, 10 KiB
    # a level, sits between.
    key = "d/" * depth + "leaf.txt"
    hostile.script.objects = {key: Obj.of(b"at the bottom"), "top.txt": Obj.of(b"top")}
    mount = hostile_mount(mounted, hostile, options=["dir_timeout=3600", "attr_timeout=3600"])
    assert mount.proc is not None
    root = mount.path_of(hostile.url(""))
    # far beyond PATH_MAX: walk down one directory descriptor at a time
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert sorted(os.listdir(fd)) == ["d", "top.txt"]
        before = daemon_memory_kib(mount.proc.pid)
        started = time.monotonic()
        for level in range(depth):
            if level:
                assert os.listdir(fd) == ["d"], level
            down = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = down
        assert os.listdir(fd) == ["leaf.txt"]
        leaf = os.open("leaf.txt", os.O_RDONLY, dir_fd=fd)
        try:
            assert os.read(leaf, 100) == b"at the bottom"
        finally:
            os.close(leaf)
    finally:
        os.close(fd)
    assert read_bytes(root / "top.txt") == b"top"
    after = daemon_memory_kib(mount.proc.pid)
    grown_kib = after["VmHWM"] - before["VmRSS"]
    print(
        f"\nHOSTILE {depth} levels: walked in {time.monotonic() - started:.1f}s, "
        f"daemon RSS {before['VmRSS'] // 1024} -> {after['VmRSS'] // 1024} MiB, "
        f"peak {after['VmHWM'] // 1024} MiB (+{grown_kib // 1024} MiB)"
    )
    assert grown_kib < 10 * depth, f"the daemon grew by {grown_kib} KiB over {depth} levels"


# ----------------------------------------------------------------------------- lying servers


def test_server_ignoring_range_small_objects_read_right_large_ones_eio(
    mounted: MountFactory, hostile: HostileS3
) -> None:
    small, large = os.urandom(MIB // 2), os.urandom(3 * MIB)  # parts are 1 MiB here
    hostile.script.objects = {"small.bin": Obj.of(small), "large.bin": Obj.of(large)}
    hostile.script.ignore_range = True
    mount = hostile_mount(mounted, hostile)
    assert read_bytes(mount.path_of(hostile.url("small.bin"))) == small
    assert read_bytes(mount.path_of(hostile.url("large.bin"))) == errno.EIO
    assert "asked for bytes" in mount.log_text()
    assert "resuming" not in mount.log_text()  # asking again gets the same answer: no retries
    assert_cache_holds_only(mount, {hostile.url("small.bin"): small})


def test_server_ignoring_if_match_while_the_object_changes_never_mixes_versions(
    mounted: MountFactory, hostile: HostileS3
) -> None:
    old, new = os.urandom(3 * MIB), os.urandom(3 * MIB)
    script = hostile.script
    script.objects = {"model.pt": Obj.of(old)}
    script.ignore_if_match = True
    # one version for the whole test; one GET at a time, so the object is replaced while
    # the first part's GET is under way and before the next part's starts
    mount = hostile_mount(mounted, hostile, options=["attr_timeout=3600", "fetch_concurrency=1"])
    path = mount.path_of(hostile.url("model.pt"))
    assert path.stat().st_size == len(old)
    script.pause_after = 256 * 1024  # every part's GET stops there until resumed
    result: list[bytes | int] = []
    reader = threading.Thread(target=lambda: result.append(read_bytes(path)), daemon=True)
    reader.start()

    def object_gets() -> int:
        return sum(request.startswith("GET /hostile/model.pt") for request in script.requests)

    poll_until(lambda: object_gets() == 1, 30, "the first part's GET to start")
    script.objects["model.pt"] = Obj.of(new)  # replaced; If-Match is not checked
    script.pause_after = None
    script.resume.set()
    reader.join(HANG)
    assert result, "the read did not return"
    assert result[0] == errno.ESTALE  # the old version's first part, then the new ETag
    assert "the server sent version" in mount.log_text()
    assert_cache_holds_only(mount, {hostile.url("model.pt"): old})


def test_server_sending_less_than_it_promised_is_eio_never_a_short_file(
    mounted: MountFactory, hostile: HostileS3
) -> None:
    data = os.urandom(MIB // 2)
    hostile.script.objects = {"short.bin": Obj.of(data)}
    hostile.script.short_body = 1000
    mount = hostile_mount(mounted, hostile)
    assert read_bytes(mount.path_of(hostile.url("short.bin"))) == errno.EIO
    assert_cache_holds_only(mount, {})
    hostile.script.short_body = None
    assert read_bytes(mount.path_of(hostile.url("short.bin"))) == data


def test_listing_that_repeats_its_token_is_eio_not_endless(
    mounted: MountFactory, hostile: HostileS3
) -> None:
    hostile.script.objects = {"x.txt": Obj.of(b"x")}
    hostile.script.token_cycle = ("again",)
    mount = hostile_mount(mounted, hostile)
    listing = subprocess.run(
        ["ls", str(mount.path_of(hostile.url("")))],
        capture_output=True,
        text=True,
        timeout=HANG,
        check=False,
    )
    assert listing.returncode != 0 and "Input/output error" in listing.stderr
    assert "repeats its listing continuation token" in mount.log_text()


def test_listing_whose_tokens_cycle_is_eio_not_endless(
    mounted: MountFactory, hostile: HostileS3
) -> None:
    hostile.script.objects = {"x.txt": Obj.of(b"x")}
    hostile.script.token_cycle = ("first", "second")
    mount = hostile_mount(mounted, hostile)
    assert mount.proc is not None
    listing = subprocess.Popen(
        ["ls", str(mount.path_of(hostile.url("")))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        code = listing.wait(15)
    except subprocess.TimeoutExpired:
        # a FUSE request already taken by the daemon cannot be interrupted: only the
        # daemon's end frees the reader
        mount.proc.kill()
        listing.wait(30)
        pytest.fail("ls did not return within 15 s")
    assert code != 0
    assert "continuation tokens repeat" in mount.log_text()


# ----------------------------------------------------------------------------- security


@pytest.fixture(scope="module")
def test_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
            check=True,
        )
        return pwd.getpwnam(TEST_USER)


def as_user(user: pwd.struct_passwd, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *command],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_every_file_and_folder_the_daemon_creates_is_private(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str, tmp_path: Path
) -> None:
    key = unique_name("private") + ".bin"
    s3_server.put(bucket, key, b"secret model")
    cache = tmp_path / "fresh" / "cache"  # created by the daemon, parents too
    mount = mounted(s3_conf(s3_proxy, s3_server.admin), cache_dir=cache)
    url = f"s3://{s3_proxy.endpoint}/{bucket}/{key}"
    assert read_bytes(mount.path_of(url)) == b"secret model"
    assert_cache_holds_only(mount, {url: b"secret model"})
    modes = {
        str(p.relative_to(cache)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in [cache, *cache.rglob("*")]
    }
    wrong = {
        path: mode
        for path, mode in modes.items()
        if mode != ("0o700" if (cache / path).is_dir() else "0o600")
    }
    assert wrong == {}, modes
    assert "index.sqlite3" in " ".join(modes) and len(modes) >= 6


def test_secrets_never_in_logs_process_table_or_attributes(
    mounted: MountFactory,
    s3_server: S3Server,
    s3_proxy: Proxy,
    secret_guard: SecretGuard,
) -> None:
    wrong = Identity("wrong", s3_server.admin.key, "Wr0ng-secret-that-must-never-be-logged")
    secret_guard.add_identity(wrong, "t7_hostile")
    good, denied = s3_server.make_bucket(), s3_server.make_bucket()
    s3_server.put(good, "x.txt", b"x")
    s3_server.put(denied, "x.txt", b"y")
    conf = s3_conf(
        s3_proxy,
        {"bucket": denied, "key": wrong.key, "secret": wrong.secret},
        s3_server.admin,
    )
    mount = mounted(conf, debug=True)
    assert mount.proc is not None
    host = mount / f"s3/{s3_proxy.endpoint}"
    assert read_bytes(host / good / "x.txt") == b"x"
    assert read_bytes(host / denied / "x.txt") == errno.EACCES
    assert os.listdir(host / good) == ["x.txt"]
    secrets = [wrong.secret, s3_server.admin.secret]
    log = mount.log_text()
    assert "access denied" in log and denied in log
    cmdline = Path(f"/proc/{mount.proc.pid}/cmdline").read_bytes().decode(errors="replace")
    attributes = b"".join(
        os.getxattr(host / good / "x.txt", name) for name in os.listxattr(host / good / "x.txt")
    ).decode()
    for secret in secrets:
        assert secret not in log and secret not in cmdline and secret not in attributes


def test_control_socket_refuses_other_users(
    mounted: MountFactory,
    s3_server: S3Server,
    s3_proxy: Proxy,
    test_user: pwd.struct_passwd,
) -> None:
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    path = poll_until(
        lambda: next(
            (
                d / control.socket_name(str(mount.path))
                for d in control.runtime_dirs(os.geteuid())
                if (d / control.socket_name(str(mount.path))).exists()
            ),
            None,
        ),
        10,
        "the control socket",
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    probe = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "try:\n s.connect(sys.argv[1])\n"
        "except OSError as e:\n print(e.errno); sys.exit(1)\n"
        "print('connected')\n"
    )
    other = as_user(test_user, "/usr/bin/python3", "-c", probe, str(path))
    assert other.returncode == 1 and other.stdout.strip() == str(errno.EACCES), other
    with socket.socket(socket.AF_UNIX) as mine:
        mine.connect(str(path))  # the daemon's own user still gets in


def test_only_file_shows_local_paths_and_nofile_removes_it(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, bucket: str
) -> None:
    conf = s3_conf(s3_proxy, s3_server.admin)
    key = unique_name("plain") + ".txt"
    s3_server.put(bucket, key, b"plain")
    mount = mounted(conf)
    assert (mount / "file").is_dir() and os.readlink(mount / "file/etc") == "/etc"
    # inside a bucket nothing is a link: no path there leads outside the object store
    bucket_root = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}")
    for folder, dirs, files in os.walk(bucket_root):
        for name in dirs + files:
            assert not os.path.islink(os.path.join(folder, name))
    with pytest.raises(OSError) as raised:
        os.readlink(bucket_root / key)
    assert raised.value.errno == errno.EINVAL
    closed = mounted(conf, options=["nofile"])
    assert "file" not in os.listdir(closed.path)
    for probe in ("file", "file/etc", "file/etc/passwd"):
        assert not os.path.lexists(closed / probe), probe
    assert read_bytes(closed.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/{key}")) == b"plain"

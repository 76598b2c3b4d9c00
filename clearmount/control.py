"""The control socket: how `clearmount status` (and later commands) talk to a running daemon.

Owns: where a mount's socket lives, the protocol, the server that runs in the daemon's trio
loop, the blocking client, and the human rendering of a status reply.

Where: `<runtime dir>/<hash of the mount point>.sock`, the runtime dir being
$CLEARMOUNT_RUNTIME_DIR if set, else /run/clearmount for root, else
/run/user/UID/clearmount, else /tmp/clearmount-UID. The daemon's uid is in the kernel's mount
table (`user_id=` of the FUSE mount), so a client needs nothing but the mount point and never
asks the mount itself, which may be the thing that is stuck. The socket is 0600: status
shows URLs, which may be private to the daemon's user.

Protocol: line-delimited JSON over a stream socket. Each request is one line
`{"op": NAME, ...}`; each reply is one line, `{"ok": true, ...}` or
`{"ok": false, "error": "one line"}`. A connection may carry any number of requests. New
operations are added with `ControlServer.register(name, handler)`; a handler is an async
function from the request dict to the reply dict. Handlers run on the trio loop: they must not
block it.

Errors: `dispatch` is the border of the control protocol, as `fuse_ops._errors` is the FUSE
one, but it renders errors as reply text rather than errno: a `ClearmountError` a handler
raises (`UserError`, `StoreError`, ...) becomes `{"ok": false, "error": str(exc)}`, its one
line; anything else is a bug, logged with its traceback and answered "internal error: TYPE".
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from clearmount.errors import ClearmountError, UserError
from clearmount.units import format_bytes, progress_bar

log = logging.getLogger(__name__)

RUNTIME_DIR_ENV = "CLEARMOUNT_RUNTIME_DIR"
FSTYPE = "fuse.clearmount"
# A request line longer than this is a client bug, not a request.
_MAX_LINE = 1 << 20
# A client that connects and says nothing is dropped after this long.
_IDLE_SECONDS = 60.0

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(UserError):
    """The daemon cannot be reached or refused a request."""


# ----------------------------------------------------------------------------- where


def runtime_dirs(uid: int) -> list[Path]:
    """Where a daemon running as `uid` puts its sockets, in order of preference."""
    override = os.environ.get(RUNTIME_DIR_ENV)
    if override:
        return [Path(override)]
    if uid == 0:
        return [Path("/run/clearmount")]
    return [Path(f"/run/user/{uid}/clearmount"), Path(f"/tmp/clearmount-{uid}")]


def socket_name(mountpoint: str) -> str:
    # A hash, not the path itself: sun_path holds 108 bytes, mount points can be longer.
    return hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:24] + ".sock"


def bind(mountpoint: Path) -> tuple[socket.socket, Path]:
    """A listening socket (0600) for the daemon serving `mountpoint` (as the mount table
    will show it). Raises OSError when no runtime directory is usable."""
    uid = os.geteuid()
    failure: OSError | None = None
    for directory in runtime_dirs(uid):
        try:
            _prepare_dir(directory, uid)
            _sweep_stale(directory)
            path = directory / socket_name(str(mountpoint))
            return _listen(path), path
        except OSError as exc:
            failure = exc
    assert failure is not None
    raise failure


def _prepare_dir(directory: Path, uid: int) -> None:
    if not directory.parent.is_dir():
        raise OSError(errno.ENOENT, f"{directory.parent} does not exist")
    # /run/clearmount is readable by all (each socket is 0600); a private dir elsewhere.
    mode = 0o755 if directory == Path("/run/clearmount") else 0o700
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=mode)
    info = os.lstat(directory)
    # In /tmp anyone could have made it first: use it only if it is ours and private.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o022:
        raise OSError(errno.EPERM, f"{directory} is not a directory owned by uid {uid}")


def _sweep_stale(directory: Path) -> None:
    """Remove sockets nobody listens on any more (their daemons were killed)."""
    for path in directory.glob("*.sock"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except ConnectionRefusedError:
                with contextlib.suppress(OSError):
                    path.unlink()
            except OSError:
                continue


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        # Linux creates the socket file with the mode of the socket inode: set it before
        # bind, so the file is never reachable with a wider mode.
        os.fchmod(sock.fileno(), 0o600)
        with contextlib.suppress(FileNotFoundError):
            # a socket left by a daemon that was killed; the mount point is ours now
            path.unlink()
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(16)
    except OSError:
        sock.close()
        raise
    return sock


# ----------------------------------------------------------------------------- server


class ControlServer:
    """Serves the control protocol on a bound socket (see the module docstring)."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self._sock = sock
        self.path = path
        self._inode = os.stat(path).st_ino
        self.handlers: dict[str, Handler] = {"ping": self._ping}

    def register(self, op: str, handler: Handler) -> None:
        self.handlers[op] = handler

    @staticmethod
    async def _ping(request: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid()}

    async def serve(self) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._sock))
        await trio.serve_listeners(self._connection, [listener])

    async def _connection(self, stream: trio.SocketStream) -> None:
        # Every failure stays inside this connection: an exception leaving it would end
        # the daemon's nursery, and so the mount.
        try:
            async with stream:
                buffer = b""
                while True:
                    with trio.move_on_after(_IDLE_SECONDS) as idle:
                        data = await stream.receive_some(65536)
                    if idle.cancelled_caught or not data:
                        return
                    buffer += data
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        reply = await self.dispatch(line)
                        await stream.send_all(json.dumps(reply).encode() + b"\n")
                    if len(buffer) > _MAX_LINE:
                        await stream.send_all(b'{"ok": false, "error": "request too long"}\n')
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("control connection ended: %s", exc)

    async def dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "not a JSON line"}
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": 'expected {"op": NAME, ...}'}
        handler = self.handlers.get(request["op"])
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return {"ok": False, "error": f"unknown op {request['op']!r} (known: {known})"}
        try:
            reply = await handler(request)
        except ClearmountError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control request %s failed", request["op"])
            return {"ok": False, "error": f"internal error: {type(exc).__name__}"}
        return {"ok": True, **reply}

    def close(self) -> None:
        self._sock.close()
        try:
            # only our own socket: a new daemon may already have bound the same path
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        except OSError:
            pass


# ----------------------------------------------------------------------------- client


def _unescape(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def mount_owners() -> dict[str, int]:
    """Mount point -> the uid of the daemon, for every clearmount mount visible here."""
    owners: dict[str, int] = {}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as table:
            for line in table:
                left, _, right = line.partition(" - ")
                tail = right.split()
                if len(tail) < 3 or tail[0] != FSTYPE:
                    continue
                options = dict(
                    item.partition("=")[::2] for item in tail[2].split(",") if "=" in item
                )
                owners[_unescape(left.split()[4])] = int(options.get("user_id", "0"))
    except (OSError, ValueError):
        pass
    return owners


def _as_in_table(path: Path, table: dict[str, int]) -> str | None:
    """`path` as the mount table spells it. Never stats `path` itself (it may hang)."""
    absolute = os.path.abspath(path)
    if absolute in table:
        return absolute
    parent, name = os.path.split(absolute)
    resolved = os.path.join(os.path.realpath(parent), name)
    return resolved if resolved in table else None


def find_socket(mountpoint: Path | None) -> tuple[str, Path]:
    """The mount point (as mounted) and the control socket of its daemon.

    With no `mountpoint`, the one clearmount mount there is. Raises ControlError.
    """
    table = mount_owners()
    if mountpoint is None:
        if len(table) != 1:
            listed = ", ".join(sorted(table)) or "none"
            raise ControlError(f"name the mount point (clearmount mounts here: {listed})", 2)
        key = next(iter(table))
    else:
        found = _as_in_table(mountpoint, table)
        if found is None:
            raise ControlError(f"{mountpoint} is not a clearmount mount point", 4)
        key = found
    candidates = [d / socket_name(key) for d in runtime_dirs(table[key])]
    for path in candidates:
        if path.exists():
            return key, path
    raise ControlError(
        f"no control socket for {key} (looked for {', '.join(map(str, candidates))}); "
        "is the daemon running? (if the mount says 'Transport endpoint is not connected', it "
        f"died: fusermount3 -u -z {key})",
        1,
    )


def call(mountpoint: Path | None, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the daemon serving `mountpoint`; its reply. Raises ControlError."""
    key, path = find_socket(mountpoint)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except PermissionError:
        owner = os.stat(path).st_uid
        raise ControlError(f"{path} belongs to uid {owner}: run as that user or root", 1) from None
    except TimeoutError:
        raise ControlError(f"the daemon for {key} did not answer within {timeout:g}s", 1) from None
    except OSError as exc:
        raise ControlError(f"cannot reach the daemon for {key}: {exc.strerror}", 1) from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"the daemon for {key} sent no reply", 1) from None
    if not isinstance(reply, dict):
        raise ControlError(f"the daemon for {key} sent a malformed reply", 1)
    if not reply.get("ok"):
        raise ControlError(f"the daemon refused: {reply.get('error')}", 1)
    return reply


# ----------------------------------------------------------------------------- rendering


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _count(number: int, noun: str, plural: str = "s") -> str:
    return f"{number} {noun}{'' if number == 1 else plural}"


def _clock(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def render_status(status: dict[str, Any]) -> str:
    """A status reply as an operator reads it."""
    lines = [
        f"{status['mountpoint']}: clearmount {status['version']}, pid {status['pid']}, "
        f"up {_duration(status['uptime'])} (since {_clock(status['started'])})",
        f"config:   {', '.join(status['config_files']) or '(none found: defaults only)'}",
    ]
    reload = status.get("reload")
    if reload:
        outcome = "reloaded" if reload["ok"] else "RELOAD FAILED (running the previous one)"
        detail = "" if reload["ok"] else f": {reload['message']}"
        lines.append(f"          {outcome} at {_clock(reload['time'])}{detail}")
    cache = status["cache"]
    limit = (
        f"limit {format_bytes(cache['max_bytes'])}"
        if cache.get("max_bytes") is not None
        else "no size limit"
    )
    if cache["scanned_at"]:
        use = f"{_count(cache['files'], 'file')}, {format_bytes(cache['bytes'])}"
        if cache["partial_files"]:
            use += f" (+{cache['partial_files']} partial, {format_bytes(cache['partial_bytes'])})"
    else:
        use = "not measured yet"
    layout = status.get("cache_layout", "storage_manager")
    lines.append(f"cache:    {status['cache_dir']} (layout: {layout})")
    lines.append(
        f"          {use}; {limit}; {format_bytes(cache['free_bytes'])} free on disk "
        f"(keeping {format_bytes(cache.get('min_free_bytes') or 0)})"
    )
    fetches = status["fetches"]
    lines.append(f"fetches:  {len(fetches)} in flight" if fetches else "fetches:  none in flight")
    for fetch in fetches:
        lines.append(f"  {fetch['url']}")
        lines.append(
            f"  {progress_bar(fetch['bytes_done'], fetch['size'])}  "
            f"{format_bytes(fetch['bytes_done'])} / {format_bytes(fetch['size'])}  "
            f"{format_bytes(fetch['rate'])}/s  {_duration(fetch['elapsed'])}"
        )
    processes = status.get("fetch_processes")
    if processes:
        lines.append(
            f"workers:  {processes['ready']} of {processes['count']} fetch processes ready, "
            f"{processes['restarts']} restarted"
        )
    uploads = status.get("uploads") or []
    if uploads:
        lines.append(f"uploads:  {len(uploads)} in flight")
    for upload in uploads:
        lines.append(f"  {upload['url']}  ({upload['state']})")
        lines.append(
            f"  {progress_bar(upload['uploaded'], upload['written'])}  "
            f"{format_bytes(upload['uploaded'])} uploaded of {format_bytes(upload['written'])} "
            f"written  {_duration(upload['seconds'])}"
        )
    shared = status.get("shared")
    if shared:
        lines.append(
            f"L2:       {shared['dir']} (node {shared['node']}): {shared['l1_hits']} L1 hits, "
            f"{shared['hits']} L2 hits, {shared['publications']} published, "
            f"{shared['lease_waits']} lease waits, {shared['takeovers']} takeovers, "
            f"{format_bytes(max(shared['bytes_saved'], 0))} saved, {shared['faults']} faults"
        )
    counters = status["counters"]
    opens = ", ".join(f"{n} {kind}" for kind, n in sorted(counters["opens"].items())) or "none"
    lines.append(
        f"served:   {counters['reads']} reads ({format_bytes(counters['read_bytes'])}); "
        f"opens: {opens}"
    )
    failed = sum(counters["fetches_failed"].values())
    lines.append(
        f"          {_count(counters['fetches_started'], 'fetch', 'es')} started, "
        f"{counters['fetches_completed']} completed, {failed} failed, "
        f"{counters.get('fetches_stopped', 0)} stopped unread, "
        f"{format_bytes(counters['fetched_bytes'])} downloaded, "
        f"{_count(counters.get('evictions', 0), 'file')} evicted "
        f"({format_bytes(counters.get('evicted_bytes', 0))})"
    )
    if counters.get("uploads_started"):
        lines.append(
            f"          {_count(counters['uploads_started'], 'upload')} started, "
            f"{counters['uploads_completed']} completed, "
            f"{sum(counters['uploads_failed'].values())} failed, "
            f"{format_bytes(counters['uploaded_bytes'])} uploaded"
        )
    errors = status["errors"]
    if errors["total"]:
        lines.append(f"errors:   {errors['total']} since start; the latest:")
        for record in errors["recent"][-10:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(record["time"]))
            lines.append(f"  {stamp} {record['message']}")
    else:
        lines.append("errors:   none")
    return "\n".join(lines)

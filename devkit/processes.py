"""Server subprocesses and the waiting around them: `ServerProcess` (a log file, a readiness
check, stop/kill/restart, new ports after a clash), free ports, `poll_until`, `tail`.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import HOST

T = TypeVar("T")


class ServerError(RuntimeError):
    """A server (or the mount) did not start, or died."""


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (all bound at once while choosing, so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def poll_until(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.02,
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Call `condition` until it returns something truthy and return that.

    Exceptions from `condition` propagate at once; after `timeout` seconds a
    `TimeoutError` names `what` (plus whatever `diagnose` returns).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f"\n{diagnose()}" if diagnose is not None else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.25)


def _log_lines(path: Path) -> list[str]:
    """A log file's lines ([] if missing)."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    return data.decode("utf-8", "replace").replace("\x00", "").splitlines()


def tail(path: Path, lines: int = 60) -> str:
    """The last `lines` lines of a log file ("" if missing)."""
    return "\n".join(_log_lines(path)[-lines:])


def warnings_and_errors(path: Path, most: int = 20) -> str:
    """The first `most` WARNING and ERROR lines of a daemon log ("" if none or missing): a
    failure's cause is often far above the log's tail."""
    found = [
        line
        for line in _log_lines(path)
        if " WARNING " in line or " ERROR " in line or " CRITICAL " in line
    ]
    more = f"\n[{len(found) - most} more]" if len(found) > most else ""
    return "\n".join(found[:most]) + more


def unique_name(prefix: str) -> str:
    """A bucket/container name unique in this run: ``prefix-1a2b3c4d``."""
    return f"{prefix}-{secrets.token_hex(4)}"


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of a GET (any status counts as an answer); None if no answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def endpoint_of(target: str | Any) -> str:
    """ "host:port" of a string, a server or a proxy (anything with .endpoint)."""
    if isinstance(target, str):
        return target.removeprefix("http://").rstrip("/")
    endpoint: str = target.endpoint
    return endpoint


# ----------------------------------------------------------------------------- processes


class ServerProcess:
    """A server subprocess with a log file, a readiness check, stop/kill/restart."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # subclasses define these
    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    # lifecycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def _alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise ServerError(
                f"{self.name} exited with code {code} before it was ready; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )
        return True

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait until `ready`; ServerError (with the log) if it does not come up."""
        if self.running:
            return
        for attempt in range(3):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._start_once(timeout)
                self.started_once = True
                return
            except ServerError:
                with open(self.log_path, "rb") as log:
                    log.seek(offset)
                    out = log.read().lower()
                clash = any(s in out for s in (b"already in use", b"is not available"))
                if not (clash and attempt < 2 and self.reassign_ports()):
                    raise

    def reassign_ports(self) -> bool:
        """Pick new ports after a clash with another process; False if it cannot."""
        if self._fixed_port or self.started_once:
            return False
        self.port = free_port()
        return True

    port = 0
    _fixed_port = False
    started_once = False

    def _start_once(self, timeout: float) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.environment(),
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest only
            )
        try:
            poll_until(
                lambda: self._alive() and self.ready(),
                timeout,
                f"{self.name} to be ready",
                diagnose=lambda: f"log {self.log_path}:\n{self.log_tail()}",
            )
        except TimeoutError as exc:
            self.stop()
            raise ServerError(str(exc)) from None
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; always reaps."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.after_stop()

    def kill(self) -> None:
        """SIGKILL (a crash, for fault tests); `start` brings it back on the same ports."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
        self.after_stop()

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout)

    def after_stop(self) -> None:
        pass

"""The systemd notification protocol (sd_notify(3)), without libsystemd.

Owns: the `NOTIFY_SOCKET` datagram socket (a path, or an abstract `@name`), the messages the
daemon sends (`READY=1`, `STATUS=…`, `RELOADING=1`, `STOPPING=1`, `WATCHDOG=1`) and the
watchdog interval systemd asks for (`WATCHDOG_USEC`, honoured only when `WATCHDOG_PID` is
unset or ours). Everything is a no-op when the variables are unset, so the daemon calls it
unconditionally. Never blocks: the socket is non-blocking and a message systemd cannot take
right now is dropped (the next periodic one replaces it).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self.watchdog_seconds = _watchdog_seconds(env)
        self._complained = False

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=value` lines as one datagram; whether systemd took it."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:
            # systemd restarting, or its queue full: the next message will do.
            if not self._complained:
                log.warning("cannot notify systemd at %s: %s", self._address, exc.strerror)
                self._complained = True
            return False
        return True

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        # systemd >= 253 wants the clock with RELOADING=1, to tell this reload from others.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self, status: str = "") -> None:
        self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        # An abstract socket: the name starts with a NUL byte instead of the "@".
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    if value:
        log.warning("NOTIFY_SOCKET=%s is not a socket path; not notifying systemd", value)
    return None


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """The watchdog timeout systemd set for this process, in seconds (None: no watchdog)."""
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were forked, or started by one)
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None

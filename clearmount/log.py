"""Logging set-up: one place decides the format and where lines go.

Owns: the root logger's handlers and format, and the ring of recent ERROR records that
`clearmount status` shows. Under systemd (JOURNAL_STREAM names the very stream we write to)
each line carries a `<N>` priority prefix so the journal keeps the level; elsewhere lines
carry a time and level. Chatty SDK loggers stay at WARNING even with --debug: their debug
output includes request headers, and secrets must never reach a log.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
from typing import TextIO

_SYSLOG_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
_QUIET = ("botocore", "boto3", "urllib3", "s3transfer", "azure", "google", "pyfuse3")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
LEVELS["error"] = logging.ERROR
# Enough to see a pattern at 3 a.m. without turning the status reply into a log file.
_RECENT_ERRORS = 20


def _expected_pool_overflow(record: logging.LogRecord) -> bool:
    """Drop urllib3's "Connection pool is full" warning: pools hold one connection per
    request slot (`backends.base.limit_pools`), so a request given up and finished later
    closes its connection by design; the give-up was logged when it happened."""
    return not str(record.msg).startswith("Connection pool is full")


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{record.name}: {super().format(record)}"


class RecentErrors(logging.Handler):
    """Keeps the last few ERROR records (time, logger, first line) for the status command."""

    def __init__(self, size: int = _RECENT_ERRORS) -> None:
        super().__init__(logging.ERROR)
        self.records: collections.deque[dict[str, object]] = collections.deque(maxlen=size)
        self.total = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage().splitlines()[0] if record.msg else ""
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        self.total += 1
        self.records.append({"time": record.created, "logger": record.name, "message": message})

    def snapshot(self) -> list[dict[str, object]]:
        return list(self.records)


#: the one ring every `setup` installs; `clearmount status` reads it through the daemon
recent_errors = RecentErrors()


def journal_stream(stream: TextIO) -> bool:
    """Whether `stream` is the journal systemd connected us to (JOURNAL_STREAM=dev:inode).

    A child whose stderr was redirected elsewhere inherits the variable too, so the variable
    alone is not enough: the stream's own device and inode must match it.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        info = os.fstat(stream.fileno())
        return (info.st_dev, info.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


def setup(
    debug: bool = False,
    stream: TextIO | None = None,
    path: str | None = None,
    level: str = "",
) -> None:
    """Send clearmount's logs to `path` (appended) or `stream` (default stderr).

    `level` is one of `LEVELS` ("" = info); `debug` wins over it.
    """
    handler: logging.Handler
    if path:
        handler = logging.FileHandler(path, encoding="utf-8")
    else:
        stream = stream or sys.stderr
        handler = logging.StreamHandler(stream)
    if not path and stream is not None and journal_stream(stream):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.addHandler(recent_errors)
    root.setLevel(logging.DEBUG if debug else LEVELS.get(level, logging.INFO))
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("urllib3.connectionpool").addFilter(_expected_pool_overflow)

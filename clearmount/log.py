"""Logging set-up: one place decides the format and where lines go.

Owns: the root logger's handler and format. Under systemd (JOURNAL_STREAM is set) each line
carries a `<N>` priority prefix so the journal keeps the level; elsewhere lines carry a time
and level. Chatty SDK loggers stay at WARNING even with --debug: their debug output includes
request headers, and secrets must never reach a log.
"""

from __future__ import annotations

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


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{record.name}: {super().format(record)}"


def setup(debug: bool = False, stream: TextIO | None = None, path: str | None = None) -> None:
    """Send clearmount's logs to `path` (appended) or `stream` (default stderr)."""
    handler: logging.Handler
    if path:
        handler = logging.FileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    if os.environ.get("JOURNAL_STREAM") and not path:
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)

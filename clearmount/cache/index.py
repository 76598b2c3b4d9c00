"""clearmount's own record of what each cache file holds.

Owns: a small SQLite table beside ClearML's layout (`<cache>/clearmount/index.sqlite3`) that
remembers, per cache file, the URL, object version (ETag/generation) and size it was fetched
at. ClearML records none of this; without it a changed object could be served stale. A cache
file with no row (the SDK downloaded it) is adopted when its size matches the object.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class IndexEntry:
    name: str
    url: str
    version: str
    size: int
    fetched_at: float


class CacheIndex:
    def __init__(self, path: Path) -> None:
        # WAL keeps a reader (`clearmount cache ls`) from blocking the daemon's writes.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS entries ("
            " name TEXT PRIMARY KEY, url TEXT NOT NULL, version TEXT NOT NULL,"
            " size INTEGER NOT NULL, fetched_at REAL NOT NULL)"
        )

    def get(self, name: str) -> IndexEntry | None:
        row = self._db.execute(
            "SELECT name, url, version, size, fetched_at FROM entries WHERE name = ?", (name,)
        ).fetchone()
        return IndexEntry(*row) if row else None

    def put(self, name: str, url: str, version: str, size: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
            (name, url, version, size, time.time()),
        )

    def remove(self, name: str) -> None:
        self._db.execute("DELETE FROM entries WHERE name = ?", (name,))

    def close(self) -> None:
        self._db.close()

"""clearmount's own record of what each cache file holds.

Owns: a small SQLite table beside ClearML's layout (`<cache>/clearmount/index.sqlite3`) that
remembers, per cache file, the URL, object version (ETag/generation) and size it was fetched
at, and whether it is pinned against eviction. ClearML records none of this; without it a
changed object could be served stale. A cache file with no row (the SDK downloaded it) is
adopted when its size matches the object. Shared by the daemon and the `clearmount cache`
commands (WAL mode: readers never block the daemon).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class IndexEntry:
    name: str
    url: str
    version: str
    size: int
    fetched_at: float
    pinned: bool = False


_COLUMNS = "name, url, version, size, fetched_at, pinned"


class CacheIndex:
    def __init__(self, path: Path) -> None:
        # Private like the cache files; SQLite gives its -wal and -shm files the same mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS entries ("
            " name TEXT PRIMARY KEY, url TEXT NOT NULL, version TEXT NOT NULL,"
            " size INTEGER NOT NULL, fetched_at REAL NOT NULL, pinned INTEGER NOT NULL DEFAULT 0)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(entries)")}
        if "pinned" not in columns:  # an index written before pins existed
            self._db.execute("ALTER TABLE entries ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")

    def get(self, name: str) -> IndexEntry | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM entries WHERE name = ?", (name,)).fetchone()
        return _entry(row) if row else None

    def all(self) -> list[IndexEntry]:
        return [_entry(row) for row in self._db.execute(f"SELECT {_COLUMNS} FROM entries")]

    def put(self, name: str, url: str, version: str, size: int) -> None:
        """Record a complete file; a pin survives re-fetches of the same URL."""
        self._db.execute(
            "INSERT INTO entries (name, url, version, size, fetched_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET url = excluded.url, version = excluded.version,"
            " size = excluded.size, fetched_at = excluded.fetched_at",
            (name, url, version, size, time.time()),
        )

    def pin(self, name: str, url: str, pinned: bool = True) -> None:
        """Pin (or unpin) a file; a row is created for a file not fetched yet."""
        self._db.execute(
            "INSERT INTO entries (name, url, version, size, fetched_at, pinned)"
            " VALUES (?, ?, '', -1, 0, ?)"
            " ON CONFLICT(name) DO UPDATE SET pinned = excluded.pinned",
            (name, url, int(pinned)),
        )

    def pinned_names(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT name FROM entries WHERE pinned")}

    def remove(self, name: str) -> None:
        self._db.execute("DELETE FROM entries WHERE name = ?", (name,))

    def close(self) -> None:
        self._db.close()


def _entry(row: tuple[Any, ...]) -> IndexEntry:
    name, url, version, size, fetched_at, pinned = row
    return IndexEntry(name, url, version, int(size), float(fetched_at), bool(pinned))

"""clearmount's own record of what each cache file holds.

Owns: a small SQLite table beside ClearML's layout (`<cache>/clearmount/index.sqlite3`) that
remembers, per cache file, the URL, object version (ETag/generation) and size it was fetched
at, and whether it is pinned against eviction. ClearML records none of this; without it a
changed object could be served stale. A cache file with no row (the SDK downloaded it) is
adopted when its size matches the object. Shared by the daemon and the `clearmount cache`
commands (WAL mode: readers never block the daemon).

The index is a convenience, never a reason to fail or stall a read: a database removed under
a running daemon (`rm -rf <cache>/clearmount`) is recreated at the next call, and a `get` or
`put` the database cannot answer (another process holds the write lock longer than the short
busy timeout, a full disk, a damaged file) is skipped with a warning, as for a file with no
row. The other calls raise `sqlite3.Error`: the eviction loop and the commands report it.

Blocking (SQLite, with a busy timeout): the daemon calls it only from worker threads
(`Transfer.local`, and a fetch's own thread when it seals a file), and it serializes the
calls of those threads itself. The rows of finished fetches are written in batches
(`put_soon`: one transaction per `BATCH_ROWS` rows or `BATCH_SECONDS`; the daemon's eviction
loop writes what is left in its next hop), not one commit per small file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

from clearmount.cache.layout import CacheLayout

log = logging.getLogger(__name__)

#: Rows `put_soon` keeps before writing them in one transaction, and how long at most.
BATCH_ROWS = 64
BATCH_SECONDS = 0.1

# How long a statement waits for another process's write lock. The daemon makes its index
# calls in worker threads (`Transfer.local`), so a wait stalls one open, not the loop; short
# all the same, since an open waits for it. The `cache` commands may pass a longer one.
DAEMON_BUSY_TIMEOUT = 1.0


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
    def __init__(self, layout: CacheLayout, busy_timeout: float = DAEMON_BUSY_TIMEOUT) -> None:
        self.layout = layout
        self.path = layout.state_dir / "index.sqlite3"
        self._busy_timeout = busy_timeout
        # Calls come from several worker threads: one at a time, so that a reopen never
        # closes the connection under another call.
        self._lock = threading.RLock()
        self._db, self._identity = self._open()
        #: how many times the database was found removed or replaced and opened afresh: the
        #: rows this process saw before may be gone
        self.generation = 0
        # rows of `put_soon` not written yet: name -> (url, version, size, fetched_at)
        self._pending: dict[str, tuple[str, str, int, float]] = {}
        self._pending_since = 0.0

    def _open(self) -> tuple[sqlite3.Connection, tuple[int, int]]:
        """Connect (creating the database if need be) and return the (device, inode) of the
        file connected to."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            stat = self._create()
        # No descriptor of our own on an existing database: closing one would drop every
        # POSIX lock this process holds on it, the other connection's (the daemon has two)
        # included; another process's SQLite, closing, would then find the database unused
        # and delete the -wal and -shm files under us, and our writes would go unseen.
        db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_timeout
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS entries ("
                " name TEXT PRIMARY KEY, url TEXT NOT NULL, version TEXT NOT NULL,"
                " size INTEGER NOT NULL, fetched_at REAL NOT NULL,"
                " pinned INTEGER NOT NULL DEFAULT 0)"
            )
            columns = {row[1] for row in db.execute("PRAGMA table_info(entries)")}
            if "pinned" not in columns:  # an index written before pins existed
                db.execute("ALTER TABLE entries ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")
        except BaseException:
            db.close()
            raise
        return db, (stat.st_dev, stat.st_ino)

    def _create(self) -> os.stat_result:
        """Create the database file, private like the cache files (SQLite gives its -wal and
        -shm files the same mode)."""
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, self.layout.file_mode)
        except FileNotFoundError:  # its folder was removed
            self.layout.make_folders()
            fd = os.open(self.path, flags, self.layout.file_mode)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)  # a new file: no connection of this process holds a lock on it

    def _current(self) -> sqlite3.Connection:
        """The connection, reopened first if the database file was removed or replaced.

        A connection to a removed file goes on working, so nothing else would notice: rows
        would silently go nowhere. One stat per call, no I/O while the path is cached.
        """
        try:
            stat = os.stat(self.path)
            moved = (stat.st_dev, stat.st_ino) != self._identity
        except OSError:
            moved = True
        if moved:
            self._reopen()
        return self._db

    def _reopen(self) -> None:
        try:
            db, identity = self._open()
        except (OSError, sqlite3.Error) as exc:
            # Unavailable, as a locked database is: nothing read from or written to the
            # removed file. Tried again on the next call.
            raise sqlite3.OperationalError(
                f"cache index {self.path} is gone and cannot be recreated: {exc}"
            ) from exc
        # SQLite neither checkpoints nor deletes the -wal of a moved database on close, so
        # this cannot harm a new database another process created at the same path.
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._db, self._identity = db, identity
        self.generation += 1
        log.warning(
            "cache index %s was removed or replaced: opened it afresh (files recorded before "
            "are adopted again once their checksum or age shows they are current)",
            self.path,
        )

    def get(self, name: str) -> IndexEntry | None:
        """The row of cache file `name`; None also when the database cannot answer now (the
        caller then treats the file as unrecorded and checks it against the object)."""
        with self._lock:
            waiting = self._pending.get(name)
        if waiting is not None:
            return IndexEntry(name, *waiting)
        try:
            with self._lock:
                row = (
                    self._current()
                    .execute(f"SELECT {_COLUMNS} FROM entries WHERE name = ?", (name,))
                    .fetchone()
                )
        except sqlite3.DatabaseError as exc:
            log.warning("cache index unavailable, treating %s as unrecorded: %s", name, exc)
            return None
        return _entry(row) if row else None

    def all(self) -> list[IndexEntry]:
        with self._lock:
            self.flush()
            rows = self._current().execute(f"SELECT {_COLUMNS} FROM entries").fetchall()
        return [_entry(row) for row in rows]

    def put(self, name: str, url: str, version: str, size: int) -> None:
        """Record a complete file; a pin survives re-fetches of the same URL. Skipped with a
        warning when the database cannot take the write now: the file is then adopted at its
        next open by its checksum or age, like a file the SDK downloaded."""
        with self._lock:
            self._pending[name] = (url, version, size, time.time())
            self.flush()

    def put_soon(self, name: str, url: str, version: str, size: int, flush: bool = True) -> None:
        """`put`, written with others in one transaction once `BATCH_ROWS` rows wait or the
        oldest has waited `BATCH_SECONDS` (by this call or `flush`). This object's calls see
        the row at once (`all` and the pin calls write the waiting rows first); another
        process sees it once written. A row lost with the process (kill -9)
        costs what a skipped `put` costs: the file is adopted at its next open. Not
        `flush`: the row waits for the next `flush` call, whatever (the trio loop's rows:
        the loop never writes the database)."""
        with self._lock:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending[name] = (url, version, size, time.time())
            if flush and (
                len(self._pending) >= BATCH_ROWS
                or time.monotonic() - self._pending_since >= BATCH_SECONDS
            ):
                self.flush()

    @property
    def pending(self) -> bool:
        """Whether rows of `put_soon` wait to be written (`flush`)."""
        return bool(self._pending)

    def flush(self) -> None:
        """Write the rows `put_soon` keeps, in one transaction (never raises: see `put`)."""
        with self._lock:
            rows = [(name, *row) for name, row in self._pending.items()]
            self._pending.clear()
            if not rows:
                return
            try:
                db = self._current()
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany(
                        "INSERT INTO entries (name, url, version, size, fetched_at)"
                        " VALUES (?, ?, ?, ?, ?)"
                        " ON CONFLICT(name) DO UPDATE SET url = excluded.url,"
                        " version = excluded.version, size = excluded.size,"
                        " fetched_at = excluded.fetched_at",
                        rows,
                    )
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                urls = ", ".join(row[1] for row in rows[:3]) + (" …" if len(rows) > 3 else "")
                log.warning("cannot record %s in the cache index (skipped): %s", urls, exc)

    def pin(self, name: str, url: str, pinned: bool = True) -> None:
        """Pin (or unpin) a file; a row is created for a file not fetched yet."""
        with self._lock:
            self.flush()
            self._current().execute(
                "INSERT INTO entries (name, url, version, size, fetched_at, pinned)"
                " VALUES (?, ?, '', -1, 0, ?)"
                " ON CONFLICT(name) DO UPDATE SET pinned = excluded.pinned",
                (name, url, int(pinned)),
            )

    def pinned_names(self) -> set[str]:
        with self._lock:
            self.flush()
            rows = self._current().execute("SELECT name FROM entries WHERE pinned").fetchall()
        return {row[0] for row in rows}

    def remove(self, name: str) -> None:
        with self._lock:
            self._pending.pop(name, None)
            self._current().execute("DELETE FROM entries WHERE name = ?", (name,))

    def close(self) -> None:
        with self._lock:
            self.flush()
            self._db.close()


def _entry(row: tuple[Any, ...]) -> IndexEntry:
    name, url, version, size, fetched_at, pinned = row
    return IndexEntry(name, url, version, int(size), float(fetched_at), bool(pinned))

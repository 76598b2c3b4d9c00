"""The cache on disk: ClearML's own layout, so the SDK and the mount reuse each other's files.

Owns: where a URL's cache file lives (`<root>/storage_manager/global/<md5(url)>.<basename>`,
exactly as ClearML's CacheManager names it), the `<final>_<time>.partially` names downloads
are written under before the atomic rename, permissions (0700 directories, 0600 files by
default) and the start-up sweep of partial files left by a crash. Plain synchronous file
operations, no trio.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from pathlib import Path

from clearmount.errors import ConfigError

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partially"
# Our own partial files: ClearML's suffix (its clean-up treats them like its own) plus a
# marker that says they are locked by their writer.
OWN_PARTIAL_SUFFIX = ".clearmount" + PARTIAL_SUFFIX
# ClearML keeps 32 characters of head-room below the filesystem's name limit.
_NAME_HEADROOM = 32


class CacheLayout:
    def __init__(self, root: Path, dir_mode: int = 0o700, file_mode: int = 0o600) -> None:
        self.root = root
        self.global_dir = root / "storage_manager" / "global"
        self.state_dir = root / "clearmount"
        self.dir_mode = dir_mode
        self.file_mode = file_mode
        self._name_max = 255 - _NAME_HEADROOM

    def prepare(self) -> None:
        """Create the folders and prove they are writable; `ConfigError` if not."""
        try:
            self.make_folders()
            self._name_max = os.statvfs(self.global_dir).f_namemax - _NAME_HEADROOM
            probe = self.state_dir / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(f"cache directory {self.root} is not usable: {reason}") from None

    def make_folders(self) -> None:
        """Create the cache folders (each private), also after someone removed them."""
        for folder in (
            self.root,
            self.root / "storage_manager",
            self.global_dir,
            self.state_dir,
        ):
            try:
                folder.mkdir(mode=self.dir_mode, parents=True)
            except FileExistsError:
                continue
            folder.chmod(self.dir_mode)  # mkdir's mode is filtered by the umask

    def final_path(self, url: str) -> Path:
        """The cache file of `url`, named as ClearML's `get_hashed_url_file` names it."""
        digest = hashlib.md5(url.encode()).hexdigest()
        basename = url.split("/")[-1]
        name = f"{digest}.{basename}"
        if len(name.encode()) > self._name_max:
            # Too long for the filesystem: keep the hash (the identity) and the end of the
            # name (its suffixes), as ClearML's _conform_filename keeps the suffixes.
            keep = self._name_max - len(digest) - 1
            tail = basename.encode()[-keep:].decode(errors="ignore")
            name = f"{digest}.{tail}"
        return self.global_dir / name

    def partial_path(self, final: Path) -> Path:
        suffix = f"_{time.time()}{OWN_PARTIAL_SUFFIX}"
        # a long final name leaves no room for the suffix: shorten the name part (the sweep
        # recognises partial files by their suffix alone)
        room = self._name_max + _NAME_HEADROOM - len(suffix.encode())
        name = final.name.encode()[:room].decode(errors="ignore")
        return final.with_name(name + suffix)

    def create_partial(self, final: Path) -> tuple[Path, int]:
        """A new partial file for `final`, locked for as long as the returned fd is open.

        The (shared) lock tells a later start-up sweep whether its writer is still alive;
        readers hold shared locks too, and the file becomes the cache file they keep open.
        """
        path = self.partial_path(final)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, self.file_mode)
        except FileNotFoundError:  # the cache folder was removed under us
            self.make_folders()
            fd = os.open(path, flags, self.file_mode)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return path, fd

    def sweep_partials(self, older_than: float) -> int:
        """Remove partial downloads whose writer is gone (a crash's leftovers).

        Ours carry a lock while being written, so a dead writer's file is removed at once.
        Other partials (the ClearML SDK's) are removed once nobody wrote to them for
        `older_than` seconds: one still growing belongs to a live download.
        """
        removed = 0
        now = time.time()
        try:
            candidates = list(self.global_dir.glob(f"*{PARTIAL_SUFFIX}"))
        except OSError:
            return 0
        for path in candidates:
            try:
                if path.name.endswith(OWN_PARTIAL_SUFFIX):
                    dead = _writer_is_gone(path)
                else:
                    dead = now - path.stat().st_mtime >= older_than
                if dead:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        if removed:
            log.info("removed %d partial download(s) left by an earlier run", removed)
        return removed


def _writer_is_gone(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True

"""The cache on disk: ClearML's own layouts, so the SDK and the mount reuse each other's files.

Owns: where a URL's cache file lives, in two implementations chosen by the config as the
ClearML SDK chooses (`make_layout`, from `CacheSettings.disk_strategy`):
- `ManagerLayout`, ClearML's CacheManager (the default):
  `<root>/storage_manager/global/<md5(url)>.<basename>`, one flat folder, recency = mtime;
- `DiskSpaceLayout`, ClearML 2.x's disk-space strategy:
  `<root>/storage/<scheme>/<netloc ':'→'.'>/<path>` (`disk_space_relpath`, ClearML 2.1's
  `StorageHelper._get_cache_path` exactly), a tree, recency = atime (the SDK sets atime on
  each hit and keeps mtime).
Both own the `<final>_<time>.partially` names downloads are written under before the atomic
rename, the index name of a file (its path below the layout's data folder), the listing of
every file the layout holds, touching a file on a hit, permissions (0700 directories, 0600
files by default) and the start-up sweep of partial files left by a crash. Plain synchronous
file operations, no trio.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import stat as statmod
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from clearmount.errors import ConfigError

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partially"
# Our own partial files: ClearML's suffix (its clean-up treats them like its own) plus a
# marker that says they are locked by their writer.
OWN_PARTIAL_SUFFIX = ".clearmount" + PARTIAL_SUFFIX
# ClearML keeps 32 characters of head-room below the filesystem's name limit.
_NAME_HEADROOM = 32
# The SDK's session file at the root of the 2.x layout: never a cache file.
_SESSION_FILE = ".session.json"
# ClearML 2.1's `_limit_folder_name`: the characters `quote` leaves as they are.
_SAFE = "/\\=[]!~()#@$&%'+,;+ "


class LayoutConflict(OSError):
    """The 2.x layout cannot hold this object: a file stands where a folder must be (objects
    `a` and `a/b` both exist), or the other way round. The object is streamed instead."""


class CacheLayout:
    """What both layouts share; `final_path`, `data_dir` and recency are theirs."""

    #: "storage_manager" or "storage": the folder below the root, and the layout's name
    kind = ""

    def __init__(self, root: Path, dir_mode: int = 0o700, file_mode: int = 0o600) -> None:
        self.root = root
        self.data_dir = root / self.kind
        self.state_dir = root / "clearmount"
        self.dir_mode = dir_mode
        self.file_mode = file_mode
        self._name_max = 255 - _NAME_HEADROOM

    def describe(self) -> str:
        raise NotImplementedError

    def final_path(self, url: str) -> Path:
        """The cache file of `url`, where the ClearML SDK would put it."""
        raise NotImplementedError

    def recency(self, stat: os.stat_result) -> float:
        """When a file was last used, as this layout's eviction orders them."""
        raise NotImplementedError

    def touch(self, path: Path) -> None:
        """Mark a hit, as the SDK does (errors ignored)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Create the folders and prove they are writable; `ConfigError` if not."""
        try:
            self.make_folders()
            self._name_max = os.statvfs(self.data_dir).f_namemax - _NAME_HEADROOM
            probe = self.state_dir / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(f"cache directory {self.root} is not usable: {reason}") from None

    def _folders(self) -> tuple[Path, ...]:
        return (self.root, self.data_dir, self.state_dir)

    def make_folders(self) -> None:
        """Create the cache folders (each private), also after someone removed them."""
        for folder in self._folders():
            _make_private(folder, self.dir_mode)

    def name_of(self, path: Path) -> str:
        """The index name of a cache file: its path below the data folder."""
        return path.relative_to(self.data_dir).as_posix()

    def path_of(self, name: str) -> Path:
        return self.data_dir / name

    def owns(self, name: str) -> bool:
        """Whether an index name is one of this layout's (the other layout's rows stay)."""
        raise NotImplementedError

    def files(self) -> Iterator[tuple[Path, os.stat_result]]:
        """Every file of the layout (complete and partial), with its stat."""
        raise NotImplementedError

    def partial_path(self, final: Path) -> Path:
        suffix = f"_{time.time()}{OWN_PARTIAL_SUFFIX}"
        # a long final name leaves no room for the suffix: shorten the name part (the sweep
        # recognises partial files by their suffix alone)
        room = self._name_max + _NAME_HEADROOM - len(suffix.encode())
        name = final.name.encode()[:room].decode(errors="ignore")
        return final.with_name(name + suffix)

    def _make_parent(self, final: Path) -> None:
        self.make_folders()

    def create_partial(self, final: Path, absent: bool = False) -> tuple[Path, int]:
        """A new partial file for `final`, locked for as long as the returned fd is open
        (`absent`: the caller just found nothing at `final`, so no folder is there).

        The (shared) lock tells a later start-up sweep whether its writer is still alive;
        readers hold shared locks too, and the file becomes the cache file they keep open.
        """
        if not absent and final.is_dir():
            raise LayoutConflict(21, f"{final} is a folder, not a file")
        path = self.partial_path(final)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, self.file_mode)
        except (FileNotFoundError, NotADirectoryError):  # the folder is missing or removed
            self._make_parent(final)
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
            candidates = [(p, s) for p, s in self.files() if p.name.endswith(PARTIAL_SUFFIX)]
        except OSError:
            return 0
        for path, stat in candidates:
            try:
                if path.name.endswith(OWN_PARTIAL_SUFFIX):
                    dead = _writer_is_gone(path)
                else:
                    dead = now - stat.st_mtime >= older_than
                if dead:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        if removed:
            log.info("removed %d partial download(s) left by an earlier run", removed)
        return removed


class ManagerLayout(CacheLayout):
    """ClearML's CacheManager: `<root>/storage_manager/global/<md5(url)>.<basename>`."""

    kind = "storage_manager"

    def __init__(self, root: Path, dir_mode: int = 0o700, file_mode: int = 0o600) -> None:
        super().__init__(root, dir_mode, file_mode)
        self.data_dir = self.global_dir = root / "storage_manager" / "global"

    def describe(self) -> str:
        return f"ClearML CacheManager layout, {self.data_dir}/<md5(url)>.<name>"

    def _folders(self) -> tuple[Path, ...]:
        return (self.root, self.root / "storage_manager", self.data_dir, self.state_dir)

    def final_path(self, url: str) -> Path:
        """Named as ClearML's `get_hashed_url_file` names it."""
        digest = hashlib.md5(url.encode()).hexdigest()
        basename = url.split("/")[-1]
        name = f"{digest}.{basename}"
        if len(name.encode()) > self._name_max:
            # Too long for the filesystem: keep the hash (the identity) and the end of the
            # name (its suffixes), as ClearML's _conform_filename keeps the suffixes.
            keep = self._name_max - len(digest) - 1
            tail = basename.encode()[-keep:].decode(errors="ignore")
            name = f"{digest}.{tail}"
        return self.data_dir / name

    def recency(self, stat: os.stat_result) -> float:
        # ClearML's count-based eviction orders by mtime, and its own hits touch the file
        return stat.st_mtime

    def touch(self, path: Path) -> None:
        try:
            os.utime(path)
        except OSError:
            pass

    def owns(self, name: str) -> bool:
        return "/" not in name

    def files(self) -> Iterator[tuple[Path, os.stat_result]]:
        try:
            entries = list(os.scandir(self.data_dir))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False):
                    yield Path(entry.path), entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile (the SDK's own clean-up)


class DiskSpaceLayout(CacheLayout):
    """ClearML 2.x's disk-space strategy: `<root>/storage/<scheme>/<host>/<path>`."""

    kind = "storage"

    def describe(self) -> str:
        return f"ClearML 2.x disk-space layout, {self.data_dir}/<scheme>/<host>/<path>"

    def final_path(self, url: str) -> Path:
        return self.data_dir / disk_space_relpath(url)

    def recency(self, stat: os.stat_result) -> float:
        return stat.st_atime

    def touch(self, path: Path) -> None:
        # the SDK's `_update_cache_file`: atime now, mtime kept
        try:
            os.utime(path, (time.time(), os.stat(path).st_mtime))
        except OSError:
            pass

    def owns(self, name: str) -> bool:
        return "/" in name

    def _make_parent(self, final: Path) -> None:
        self.make_folders()
        folder = self.data_dir
        for part in final.parent.relative_to(self.data_dir).parts:
            folder = folder / part
            try:
                _make_private(folder, self.dir_mode)
            except (FileExistsError, NotADirectoryError) as exc:
                raise LayoutConflict(exc.errno, f"{folder} is a file, not a folder") from None

    def files(self) -> Iterator[tuple[Path, os.stat_result]]:
        top = str(self.data_dir)
        for folder, _dirs, names in os.walk(top):
            for name in names:
                if folder == top and name == _SESSION_FILE:
                    continue
                path = os.path.join(folder, name)
                try:
                    stat = os.lstat(path)
                except OSError:
                    continue
                if statmod.S_ISREG(stat.st_mode):
                    yield Path(path), stat


def make_layout(root: Path, disk_strategy: bool) -> CacheLayout:
    """The layout the ClearML SDK with the same config uses."""
    return DiskSpaceLayout(root) if disk_strategy else ManagerLayout(root)


def disk_space_relpath(url: str) -> str:
    """Where ClearML 2.1's disk-space strategy caches `url`, below `<cache>/storage`
    (`StorageHelper._get_cache_path` with `fast_urlsplit` and `_safe_os_join`): http becomes
    https, ':' in the host '.', a query becomes an `md5(query).` prefix of the last segment,
    a fragment is cut, each part is `quote`d, and a part over 255 characters has each
    over-long segment replaced by `md5(segment).<its last 200 characters>`. A `..` segment
    (which would climb out of the cache) is written quoted, `%2E%2E`: the SDK would leave
    the cache there; clearmount never does."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    netloc, sep, rest = rest.partition("/")
    if not sep:
        netloc, rest = "", netloc
    rest = rest.partition("#")[0]
    path, _, query = rest.partition("?")
    if query:
        segments = path.split("/")
        segments[-1] = f"{hashlib.md5(query.encode()).hexdigest()}.{segments[-1]}"
        filename = "/".join(segments if segments[0] else segments[1:])
    else:
        filename = str(PurePosixPath(path.lstrip("/")))
    if scheme == "http":
        scheme = "https"
    netloc = netloc.replace(":", ".")
    parts = [_limit_folder_name(p) for p in (scheme, netloc, filename)]
    joined = os.path.join(*parts) if any(parts) else ""
    return "/".join("%2E%2E" if s == ".." else s for s in joined.split("/"))


def _limit_folder_name(part: str) -> str:
    if not part:
        return part
    part = quote(part, safe=_SAFE)
    if len(part) <= 255:
        return part
    return "/".join(
        s if len(s) <= 255 else f"{hashlib.md5(s.encode()).hexdigest()}.{s[-200:]}"
        for s in part.split("/")
    )


def _make_private(folder: Path, mode: int) -> None:
    try:
        folder.mkdir(mode=mode, parents=True)
    except FileExistsError:
        if not folder.is_dir():
            raise
        return
    folder.chmod(mode)  # mkdir's mode is filtered by the umask


def _writer_is_gone(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True

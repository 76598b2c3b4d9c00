"""`clearmount prefetch` and `clearmount cache …`: warming, pinning and managing the cache.

Owns: these commands and their output. Prefetching goes through a running mount (opening
files there starts the daemon's own fetches, under its limits); without one it mounts a
private, temporary one for the duration. The `cache` commands work on the cache directory
directly and are safe while a daemon runs: eviction never removes a file a reader holds open
(shared flock) or a pinned one, and partial downloads are never touched.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from clearmount import config as config_module
from clearmount import urls
from clearmount.cache.evict import evict, scan
from clearmount.cache.index import CacheIndex
from clearmount.cache.layout import CacheLayout, DiskSpaceLayout, make_layout
from clearmount.cache.limits import CacheLimits, resolve
from clearmount.errors import UserError
from clearmount.mounts import clearmount_mounts, mount_containing
from clearmount.units import format_bytes, progress_bar

_CACHED = "user.clearmount.cached"
_URL = "user.clearmount.url"
_CACHE_DIR = "user.clearmount.cache_dir"
_CACHE_LAYOUT = "user.clearmount.cache_layout"
# Files fetched at once by prefetch; each fetch is itself parallel inside the daemon.
_PREFETCH_WORKERS = 8
# The commands may wait for the daemon's index writes (each holds the lock for microseconds).
_BUSY_TIMEOUT = 30.0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="clearml.conf (default: as the SDK finds it)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="the cache (default: CLEARML_CACHE_DIR, sdk.storage.cache.default_base_dir, "
        "~/.clearml/cache, as for the mount)",
    )


def _cache_layout(args: argparse.Namespace) -> CacheLayout:
    # the same default folder and layout as the daemon's, so `cache` and the mount agree
    # without flags
    try:
        settings = config_module.load(args.config).cache
    except UserError:
        if not args.cache_dir:
            raise
        return make_layout(Path(args.cache_dir).expanduser().absolute(), False)
    root = Path(args.cache_dir).expanduser().absolute() if args.cache_dir else settings.base_dir
    return make_layout(root, settings.disk_strategy)


def _open_cache(args: argparse.Namespace) -> tuple[CacheLayout, CacheIndex]:
    layout = _cache_layout(args)
    layout.prepare()
    return layout, CacheIndex(layout, busy_timeout=_BUSY_TIMEOUT)


# ----- clearmount cache ---------------------------------------------------------------------


def cache_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="clearmount cache",
        description="Inspect and manage the cache shared by clearmount and the ClearML SDK. "
        "Safe while a daemon runs: open and pinned files are never removed.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("ls", help="list cached files (url, size, version, last access, pin)")
    ls.add_argument("prefix", nargs="?", default="", help="only URLs starting with this")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    sub.add_parser("du", help="how much the cache holds, and its limits")
    prune = sub.add_parser("prune", help="evict least recently used files down to a size")
    prune.add_argument("--to", metavar="SIZE", help="target size (default: the configured limit)")
    sub.add_parser("clear", help="remove every file that is not open or pinned")
    for name, text in (("pin", "keep URLs from eviction"), ("unpin", "let URLs be evicted")):
        command = sub.add_parser(name, help=text)
        command.add_argument("urls", nargs="*", metavar="URL")
        if name == "unpin":
            command.add_argument("--all", action="store_true", help="unpin everything")
    for command in sub.choices.values():
        _common(command)
    args = parser.parse_args(argv)
    layout, index = _open_cache(args)
    try:
        handler = {
            "ls": _ls,
            "du": _du,
            "prune": _prune,
            "clear": _clear,
            "pin": _pin,
            "unpin": _pin,
        }[args.action]
        return handler(args, layout, index)
    finally:
        index.close()


@dataclass(frozen=True)
class _Row:
    url: str
    name: str
    size: int
    version: str
    last_access: float
    pinned: bool
    complete: bool


def _rows(layout: CacheLayout, index: CacheIndex) -> Iterator[_Row]:
    entries = {entry.name: entry for entry in index.all()}
    for cached in sorted(scan(layout).files, key=lambda f: f.last_used, reverse=True):
        name = cached.name
        if cached.partial:
            name = name.rsplit("_", 1)[0]  # <final>_<time>.partially
        entry = entries.get(name)
        yield _Row(
            url=entry.url if entry else "",
            name=cached.name,
            size=cached.size,
            version=entry.version if entry else "",
            last_access=cached.last_used,
            pinned=bool(entry and entry.pinned),
            complete=not cached.partial,
        )


# `cache ls` shows versions (ETags, generations) cut to this width, marked with "…";
# `--json` has them whole.
_VERSION_WIDTH = 13


def _short_version(version: str) -> str:
    if len(version) <= _VERSION_WIDTH:
        return version
    return version[: _VERSION_WIDTH - 1] + "…"


def _ls(args: argparse.Namespace, layout: CacheLayout, index: CacheIndex) -> int:
    if not args.json:
        print(f"{'SIZE':>10}  {'LAST ACCESS':19}  {'VERSION':{_VERSION_WIDTH}}  {'FLAGS':14} URL")
    for row in _rows(layout, index):
        if args.prefix and not row.url.startswith(args.prefix):
            continue
        if args.json:
            print(json.dumps(row.__dict__))
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.last_access))
        flags = ("pinned " if row.pinned else "") + ("" if row.complete else "partial")
        shown = row.url or f"(ClearML SDK) {row.name}"
        version = _short_version(row.version) or "-"
        print(
            f"{format_bytes(row.size):>10}  {when}  {version:{_VERSION_WIDTH}}  {flags:14} {shown}"
        )
    return 0


def _du(args: argparse.Namespace, layout: CacheLayout, index: CacheIndex) -> int:
    usage = scan(layout)
    partial = sum(f.size for f in usage.files if f.partial)
    limits = _limits(args, layout)
    limit = "no limit" if limits.max_bytes is None else format_bytes(limits.max_bytes)
    print(f"{layout.data_dir} ({layout.describe()})")
    print(
        f"  {len(usage.files)} files, {format_bytes(usage.used_bytes)} "
        f"({format_bytes(partial)} being downloaded), {len(index.pinned_names())} pinned"
    )
    keep, free = format_bytes(limits.min_free_bytes), format_bytes(usage.free_bytes)
    print(f"  limit {limit}; keep {keep} free; {free} free now")
    return 0


def _limits(args: argparse.Namespace, layout: CacheLayout) -> CacheLimits:
    try:
        config = config_module.load(args.config)
    except UserError:
        return CacheLimits()
    return resolve(config, layout.root)


def _prune(args: argparse.Namespace, layout: CacheLayout, index: CacheIndex) -> int:
    limits = _limits(args, layout)
    target = limits.max_bytes
    if args.to is not None:
        try:
            target = config_module.parse_size(args.to)
        except ValueError as exc:
            raise UserError(f"bad size for --to: {exc}", 2) from None
    if target is None:
        raise UserError("no cache size limit is configured: pass --to SIZE", 2)
    result = evict(layout, index, CacheLimits(target, 0), target_bytes=target)
    freed = sum(f.size for f in result.removed)
    print(
        f"removed {len(result.removed)} files ({format_bytes(freed)}); "
        f"cache now {format_bytes(result.used_bytes)}"
    )
    if result.used_bytes > target:
        print(f"kept {len(result.kept_busy)} open or pinned files above the target")
    return 0


def _clear(args: argparse.Namespace, layout: CacheLayout, index: CacheIndex) -> int:
    result = evict(layout, index, CacheLimits(0, 0), target_bytes=0)
    print(
        f"removed {len(result.removed)} files ({format_bytes(sum(f.size for f in result.removed))})"
    )
    if result.kept_busy:
        print(f"kept {len(result.kept_busy)} files that are open or pinned")
    return 0


def _pin(args: argparse.Namespace, layout: CacheLayout, index: CacheIndex) -> int:
    pinned = args.action == "pin"
    if not pinned and getattr(args, "all", False):
        names = index.pinned_names()
        for entry in index.all():
            if entry.name in names:
                index.pin(entry.name, entry.url, False)
        print(f"unpinned {len(names)} files")
        return 0
    if not args.urls:
        raise UserError(f"{args.action}: name at least one URL", 2)
    for url in args.urls:
        index.pin(layout.name_of(layout.final_path(url)), url, pinned)
    return 0


# ----- clearmount prefetch ------------------------------------------------------------------


def prefetch_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="clearmount prefetch",
        description="Fetch objects into the cache before a job needs them, through the running "
        "mount (or a temporary private one). Exits non-zero if any object failed.",
    )
    parser.add_argument("targets", nargs="+", metavar="URL|PATH")
    parser.add_argument("-r", "--recursive", action="store_true", help="everything below")
    parser.add_argument("--pin", action="store_true", help="keep them from eviction")
    parser.add_argument(
        "--mountpoint", type=Path, help="the mount to go through (default: the one mounted)"
    )
    _common(parser)
    args = parser.parse_args(argv)
    with _mount_for(args) as mountpoint:
        failed: dict[str, str] = {}
        files = _expand(args.targets, mountpoint, args.recursive, failed)
        if not files and not failed:
            raise UserError("nothing to prefetch (a directory needs --recursive)", 2)
        if args.pin and files:
            files = _pin_all(files, mountpoint, failed)
        return _fetch_all(files, mountpoint, failed)


def _pin_all(files: list[Path], mountpoint: Path, failed: dict[str, str]) -> list[Path]:
    """Pin each file's URL; the files that could be pinned."""
    cache = Path(os.fsdecode(os.getxattr(mountpoint, _CACHE_DIR)))
    layout = make_layout(cache, _xattr(mountpoint, _CACHE_LAYOUT) == DiskSpaceLayout.kind.encode())
    index = CacheIndex(layout, busy_timeout=_BUSY_TIMEOUT)
    pinned = []
    try:
        for path in files:
            try:
                url = os.fsdecode(os.getxattr(path, _URL))
            except OSError as exc:
                failed[_shown(path, mountpoint)] = _reason(exc)
                continue
            index.pin(layout.name_of(layout.final_path(url)), url)
            pinned.append(path)
    finally:
        index.close()
    return pinned


def _xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name)
    except OSError:
        return None


class _mount_for:
    """The mount to prefetch through: the given or only one, else a temporary one."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.temporary: Path | None = None

    def __enter__(self) -> Path:
        args = self.args
        if args.mountpoint:
            return Path(args.mountpoint).absolute()
        for target in args.targets:
            found = mount_containing(target) if "://" not in target else None
            if found:
                return found[0]
        mounts = clearmount_mounts()
        if args.cache_dir:  # only a mount filling that cache will do
            wanted = os.fsencode(Path(args.cache_dir).expanduser().absolute())
            mounts = [m for m in mounts if _xattr(m, _CACHE_DIR) == wanted]
        if len(mounts) == 1:
            return mounts[0]
        if len(mounts) > 1:
            raise UserError("several clearmount mounts: choose one with --mountpoint", 2)
        self.temporary = Path(tempfile.mkdtemp(prefix="clearmount-prefetch-"))
        command = [sys.executable, "-m", "clearmount", str(self.temporary), "-o", "nofile"]
        if args.config:
            command += ["--config", str(args.config)]
        if args.cache_dir:
            command += ["--cache-dir", str(args.cache_dir)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            self.temporary.rmdir()
            raise UserError(result.stderr.strip().removeprefix("clearmount: "), result.returncode)
        return self.temporary

    def __exit__(self, *exc: object) -> None:
        if self.temporary is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(self.temporary)], check=False)
            try:
                self.temporary.rmdir()
            except OSError:
                pass


def _reason(exc: OSError) -> str:
    """ "Permission denied (EACCES)": what a user reads, and the errno to look up."""
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


def _shown(path: Path, mountpoint: Path) -> str:
    """How a failure names a path: its storage URL when it is under the mount (a temporary
    mount's path means nothing to the user), else the path."""
    try:
        return urls.path_to_url(str(path.relative_to(mountpoint)))
    except ValueError:
        return str(path)


def _expand(
    targets: Sequence[str], mountpoint: Path, recursive: bool, failed: dict[str, str]
) -> list[Path]:
    """The files the targets name (directories walked with `recursive`); every target or
    folder that cannot be looked up or listed goes into `failed` (what -> reason)."""
    files: list[Path] = []
    for target in targets:
        if "://" in target:
            try:
                path = mountpoint / urls.url_to_path(target.rstrip("/"))
            except ValueError as exc:
                failed[target] = f"not a storage URL ({exc})"
                continue
        else:
            path = Path(target).absolute()
        try:
            mode = path.lstat().st_mode
        except OSError as exc:
            failed[target] = _reason(exc)
            continue
        if stat.S_ISLNK(mode):
            continue  # direct access: nothing to cache
        if not stat.S_ISDIR(mode):
            files.append(path)
        elif recursive:
            _walk(path, mountpoint, files, failed)
        else:
            print(f"skipping directory {target} (use --recursive)", file=sys.stderr)
    return files


def _walk(top: Path, mountpoint: Path, files: list[Path], failed: dict[str, str]) -> None:
    """Add the regular files below `top` to `files`; a folder that cannot be listed goes into
    `failed`. Symlinks (direct access) are not followed."""
    folders = [top]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            failed[_shown(folder, mountpoint)] = _reason(exc)
            continue
        subfolders = []
        for entry in entries:
            try:
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(Path(entry.path))
                else:
                    files.append(Path(entry.path))
            except OSError as exc:
                failed[_shown(Path(entry.path), mountpoint)] = _reason(exc)
        folders += reversed(subfolders)


def _fetch_all(files: list[Path], mountpoint: Path, failed: dict[str, str]) -> int:
    """Read every file through the mount; one summary line on stdout, then one `FAILED`
    line per object or folder that failed (here or before) on stderr. 1 if any failed."""
    sizes: dict[Path, int] = {}
    for path in files:
        try:
            sizes[path] = path.stat().st_size
        except OSError as exc:
            failed[_shown(path, mountpoint)] = _reason(exc)
    files = list(sizes)
    total = sum(sizes.values())
    done: set[Path] = set()
    started = time.monotonic()
    finished = threading.Event()

    def fetch(path: Path) -> None:
        try:
            with open(path, "rb", buffering=0) as f:
                # one byte per MiB (parts are larger): each read returns once its part is on
                # disk, and a failed fetch surfaces as an error here
                for offset in range(0, sizes[path], 1 << 20):
                    os.pread(f.fileno(), 1, offset)
                if sizes[path]:
                    os.pread(f.fileno(), 1, sizes[path] - 1)
        except OSError as exc:
            failed[_shown(path, mountpoint)] = _reason(exc)
        finally:
            done.add(path)

    def cached_bytes() -> int:
        present = 0
        for path in files:
            try:
                present += int(os.getxattr(path, _CACHED))
            except (OSError, ValueError):
                pass
        return present

    reporter = threading.Thread(
        target=_report, args=(cached_bytes, total, started, finished), daemon=True
    )
    reporter.start()
    with ThreadPoolExecutor(_PREFETCH_WORKERS) as pool:
        list(pool.map(fetch, files))
    finished.set()
    reporter.join()
    seconds = time.monotonic() - started
    good = len(files) - sum(1 for path in files if _shown(path, mountpoint) in failed)
    summary = f"prefetched {good} of {len(files)} files ({format_bytes(total)}) in {seconds:.1f} s"
    print(summary + (f"; {len(failed)} failed" if failed else ""), flush=True)
    for what, reason in failed.items():
        print(f"FAILED {what}: {reason}", file=sys.stderr)
    return 1 if failed else 0


def _report(
    cached_bytes: Callable[[], int], total: int, started: float, finished: threading.Event
) -> None:
    tty = sys.stdout.isatty()
    interval = 0.2 if tty else 5.0
    while not finished.wait(interval):
        present = min(cached_bytes(), total)
        elapsed = time.monotonic() - started
        rate = present / elapsed if elapsed else 0.0
        eta = (total - present) / rate if rate else float("inf")
        line = f"{format_bytes(present)} / {format_bytes(total)}"
        if eta != float("inf"):
            line += f"  {format_bytes(rate)}/s  ETA {eta:.0f} s"
        if tty:
            print(f"\r{progress_bar(present, total)}  {line}   ", end="", flush=True)
        else:
            print(line, flush=True)
    if tty:
        print()

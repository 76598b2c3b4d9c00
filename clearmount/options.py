"""Mount options given with `-o`: parsed once into a frozen `MountOptions`.

Owns: the list of `-o` options, their defaults and their validation. Timeouts are seconds,
modes octal (`file_mode=0440`), `uid`/`gid` numbers or names.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass, field, fields, replace

from clearmount.errors import UserError

USAGE_EXIT = 2


@dataclass(frozen=True)
class MountOptions:
    #: seconds the kernel and the daemon trust a name → object version (and its attributes);
    #: after it a lookup or open asks the server again (HEAD) and sees a changed object
    attr_timeout: float = 60.0
    #: seconds a directory listing is reused before it is fetched again
    dir_timeout: float = 60.0
    #: seconds a "no such file" answer is remembered
    negative_timeout: float = 5.0
    #: blocking backend calls running at once for metadata (HEAD, LIST)
    metadata_concurrency: int = 32
    #: ranged GETs running at once, over all fetches
    fetch_concurrency: int = 32
    #: worker processes that fetch cold small objects (`clearmount.workers`); 0 = threads.
    #: By default 2 where the daemon may run on more than one core (measured: README "Many
    #: small files on a big node"); on one, threads cost less CPU
    fetch_processes: int = field(default_factory=lambda: default_fetch_processes())
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    #: permission bits of files and directories (the kernel checks them: default_permissions);
    #: with `writable` and not given: 0644 and 0755
    file_mode: int = 0o444
    dir_mode: int = 0o555
    #: bits cleared from both modes, as with other mounts' umask=
    umask: int = 0
    allow_other: bool = False
    allow_root: bool = False
    #: allow mounting over a non-empty directory
    nonempty: bool = False
    #: do not show local paths (file:// URLs) under MOUNTPOINT/file
    nofile: bool = False
    #: skip the MD5 check of downloads against S3 ETags (needed for SSE-KMS/SSE-C buckets,
    #: whose ETags are not MD5s)
    noverify: bool = False
    #: contact S3 `host:port` endpoints (and http(s) hosts) that clearml.conf does not name;
    #: off: such paths are ENOENT, so no local user can aim the daemon's requests elsewhere
    allow_unlisted_endpoints: bool = False
    #: where logs go when the daemon runs in the background ("" = <cache>/clearmount/clearmount.log)
    log_file: str = ""
    #: debug, info, warning or error ("" = info; --debug wins)
    log_level: str = ""
    #: HOST:PORT of a Prometheus endpoint (GET /metrics); "" = none
    metrics: str = ""
    #: accept writes: new files written sequentially are uploaded (README "Writing"); off, every
    #: write is EROFS. `rw` and `defaults` (which mount(8) passes to every helper) never turn
    #: it on; `ro` anywhere in the options turns it off
    writable: bool = False
    #: with `writable`: O_TRUNC of an existing object replaces it (else EPERM)
    allow_overwrite: bool = False
    #: with `writable`: unlink removes the object (else EPERM)
    allow_delete: bool = False
    #: seconds after which a dead node's lease on a shared (L2) cache fetch is taken over
    l2_takeover: float = 30.0
    #: seconds one shared (L2) cache operation may take before the L2 is bypassed
    l2_timeout: float = 5.0
    #: restrictive mount flags from fstab, passed to the kernel (noexec, nosuid, ...)
    kernel_flags: tuple[str, ...] = ()

    def fuse_options(self) -> set[str]:
        """The options handed to libfuse (read-only unless `writable`, permission checks by
        the kernel)."""
        access = "rw" if self.writable else "ro"
        options = {"fsname=clearmount:", "subtype=clearmount", access, "default_permissions"}
        if self.allow_other:
            options.add("allow_other")
        if self.allow_root:
            options.add("allow_root")
        options.update(self.kernel_flags)
        return options


def default_fetch_processes() -> int:
    return 2 if len(os.sched_getaffinity(0)) > 1 else 0


_FLAGS = {"allow_other", "allow_root", "nonempty", "nofile", "noverify"}
_FLAGS |= {"allow_unlisted_endpoints", "writable", "allow_overwrite", "allow_delete"}
# Options that mount(8) and fstab hand to every helper; they mean nothing to the daemon itself.
_IGNORED = {"ro", "rw", "defaults", "auto", "noauto", "user", "users", "_netdev", "nofail", "dev"}
_IGNORED |= {"nouser", "owner", "group", "suid", "exec", "atime", "relatime", "strictatime"}
_IGNORED |= {"norelatime", "nostrictatime", "lazytime", "nolazytime", "sync", "async", "silent"}
_IGNORED |= {"loud"}
_IGNORED_PREFIXES = ("x-systemd.", "x-", "comment=")
# fstab flags that restrict what the mount allows: honoured by passing them to the kernel
_KERNEL_FLAGS = {"noexec", "nosuid", "nodev", "noatime", "nodiratime"}
_NOT_OPTIONS = {"kernel_flags"}
_MODES = {"file_mode", "dir_mode", "umask"}
_LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_options(values: list[str]) -> MountOptions:
    """Parse `-o a,b=c` strings (any number of them) into `MountOptions`."""
    options = MountOptions()
    read_only = False
    given: set[str] = set()
    kinds = {f.name: f.type for f in fields(MountOptions) if f.name not in _NOT_OPTIONS}
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, has_value, raw = item.partition("=")
            if name == "ro" and not has_value:
                read_only = True  # wins over `writable`, wherever either stands
                continue
            if name in _IGNORED or name.startswith(_IGNORED_PREFIXES):
                continue
            if name in _KERNEL_FLAGS and not has_value:
                flags = tuple(sorted({*options.kernel_flags, name}))
                options = replace(options, kernel_flags=flags)
                continue
            if name in _FLAGS and not has_value:
                options = replace(options, **{name: True})  # type: ignore[arg-type]
                continue
            if name not in kinds or name in _FLAGS or not has_value:
                known = ", ".join(sorted(kinds))
                raise UserError(f"unknown mount option -o {item} (known: {known})", USAGE_EXIT)
            try:
                converted: object = _convert(name, str(kinds[name]), raw)
            except ValueError:
                raise UserError(f"bad value for -o {name}: {raw!r}", USAGE_EXIT) from None
            options = replace(options, **{name: converted})  # type: ignore[arg-type]
            given.add(name)
    if read_only and options.writable:
        options = replace(options, writable=False)
    if options.writable:
        # files and folders can be made: the owner may write unless the modes were given
        defaults = MountOptions()
        if options.file_mode == defaults.file_mode and "file_mode" not in given:
            options = replace(options, file_mode=0o644)
        if options.dir_mode == defaults.dir_mode and "dir_mode" not in given:
            options = replace(options, dir_mode=0o755)
    return options


def parse_address(text: str) -> tuple[str, int]:
    """ "127.0.0.1:9101", "[::1]:9101" or ":9101" (every interface) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _convert(name: str, kind: str, raw: str) -> object:
    if name in _MODES:
        mode = int(raw.removeprefix("0o"), 8)
        if not 0 <= mode <= 0o7777:
            raise ValueError(raw)
        return mode
    if name in ("uid", "gid") and not raw.isdigit():
        try:
            return pwd.getpwnam(raw).pw_uid if name == "uid" else grp.getgrnam(raw).gr_gid
        except KeyError:
            raise ValueError(raw) from None
    if name == "log_level" and raw not in _LOG_LEVELS:
        raise ValueError(raw)
    if name == "metrics":
        parse_address(raw)
    if kind == "float":
        number = float(raw)
        if number < 0:
            raise ValueError(raw)
        return number
    if kind == "int":
        number = int(raw)
        if number < 0:
            raise ValueError(raw)
        return number
    return raw

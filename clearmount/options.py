"""Mount options given with `-o`: parsed once into a frozen `MountOptions`.

Owns: the list of `-o` options, their defaults and their validation. Timeouts are seconds.
"""

from __future__ import annotations

import os
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
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    allow_other: bool = False
    allow_root: bool = False
    #: allow mounting over a non-empty directory
    nonempty: bool = False
    #: do not show local paths (file:// URLs) under MOUNTPOINT/file
    nofile: bool = False
    #: skip the MD5 check of downloads against S3 ETags (needed for SSE-KMS/SSE-C buckets,
    #: whose ETags are not MD5s)
    noverify: bool = False
    #: where logs go when the daemon runs in the background ("" = <cache>/clearmount/clearmount.log)
    log_file: str = ""

    def fuse_options(self) -> set[str]:
        """The options handed to libfuse (read-only, permission checks by the kernel)."""
        options = {"fsname=clearmount:", "subtype=clearmount", "ro", "default_permissions"}
        if self.allow_other:
            options.add("allow_other")
        if self.allow_root:
            options.add("allow_root")
        return options


_FLAGS = {"allow_other", "allow_root", "nonempty", "nofile", "noverify"}
# Options that mount(8) and fstab hand to every helper; they mean nothing to the daemon itself.
_IGNORED = {"ro", "rw", "defaults", "auto", "noauto", "user", "users", "_netdev", "nofail", "dev"}
_IGNORED_PREFIXES = ("x-systemd.", "x-", "comment=")


def parse_options(values: list[str]) -> MountOptions:
    """Parse `-o a,b=c` strings (any number of them) into `MountOptions`."""
    options = MountOptions()
    kinds = {f.name: f.type for f in fields(MountOptions)}
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, has_value, raw = item.partition("=")
            if name in _IGNORED or name.startswith(_IGNORED_PREFIXES):
                continue
            if name in _FLAGS and not has_value:
                options = replace(options, **{name: True})  # type: ignore[arg-type]
                continue
            if name not in kinds or name in _FLAGS or not has_value:
                known = ", ".join(sorted(kinds))
                raise UserError(f"unknown mount option -o {item} (known: {known})", USAGE_EXIT)
            try:
                converted: object = _convert(str(kinds[name]), raw)
            except ValueError:
                raise UserError(f"bad value for -o {name}: {raw!r}", USAGE_EXIT) from None
            options = replace(options, **{name: converted})  # type: ignore[arg-type]
    return options


def _convert(kind: str, raw: str) -> object:
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

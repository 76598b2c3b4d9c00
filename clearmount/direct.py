"""Direct access: URLs that the mount shows as symlinks instead of fetching.

Owns: ClearML's `sdk.storage.path_substitution` rewriting and `sdk.storage.direct_access`
matching, and what a direct URL points to. `file://` URLs are always direct (as in the
ClearML SDK). A remote URL becomes direct when a substitution rewrites it to `file://…`, or
when a `direct_access` glob matches it, in which case ClearML maps `scheme://netloc/path` to
the local path `/netloc/path`. A substitution to another remote URL points at that URL's
place in the mount. Pure functions of the config and the mount point; no I/O but `check`.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from clearmount import urls
from clearmount.config import DirectAccessRule, PathSubstitution
from clearmount.errors import ConfigError

FILE_PREFIX = "file://"


@dataclass(frozen=True)
class Target:
    """Where a direct URL leads: an absolute local path, and the rule that said so."""

    path: str
    rule: str


def matches(pattern: str, url: str) -> bool:
    """ClearML's matcher: a prefix match when the only `*` are trailing, fnmatch otherwise."""
    if pattern == "*":
        return True
    stripped = pattern.rstrip("*")
    if "*" not in stripped and "?" not in stripped and "[" not in stripped:
        return url.startswith(stripped)
    return fnmatch.fnmatchcase(url, pattern)


def _file_path(url: str) -> str:
    path = urls.without_localhost(url[len(FILE_PREFIX) :])
    return "/" + path.lstrip("/")


class DirectAccess:
    def __init__(
        self,
        rules: tuple[DirectAccessRule, ...],
        substitutions: tuple[PathSubstitution, ...],
        mountpoint: Path | None = None,
    ) -> None:
        self.rules = rules
        self.substitutions = substitutions
        self.mountpoint = mountpoint

    def substitute(self, url: str) -> tuple[str, int | None]:
        """ClearML's `_apply_url_substitutions`: the first matching rule, applied once.

        Returns the rewritten URL and the index of the rule used (None: no rule matched).
        """
        for index, rule in enumerate(self.substitutions):
            if url.startswith(rule.registered_prefix):
                rewritten = rule.local_prefix + url[len(rule.registered_prefix) :]
                if rule.replace_windows_sep:
                    rewritten = rewritten.replace("\\", "/")
                return rewritten, index
        return url, None

    def resolve(self, url: str, is_dir: bool = False) -> Target | None:
        """Where `url` leads if it is direct, else None.

        `is_dir`: the URL may name a directory (bucket or prefix), so a rule written for
        everything below it ("s3://bucket/data/" or "s3://bucket/data/*") makes the whole
        directory one symlink, unless an earlier substitution maps part of it elsewhere.
        """
        plain = self._resolve(url)
        if is_dir and not url.endswith("/"):
            whole = self._resolve(url + "/", whole_directory=True)
            # the rule that comes first in the config decides, as it would for every URL
            # below the directory
            if whole is not None and (plain is None or whole[1] < plain[1]):
                return whole[0]
        return plain[0] if plain is not None else None

    def _resolve(self, url: str, whole_directory: bool = False) -> tuple[Target, int] | None:
        """The target and the rank of the rule that produced it (config order)."""
        rewritten, index = self.substitute(url)
        if whole_directory and self._split_below(url, index):
            return None
        if index is not None:
            source = self.substitutions[index].source
            if rewritten.startswith(FILE_PREFIX):
                return Target(_file_path(rewritten).rstrip("/") or "/", source), index
            if self.mountpoint is None:
                return None
            # rewritten to another storage: point at that storage's place in the mount
            try:
                relative = urls.url_to_path(rewritten.rstrip("/"))
            except ValueError:
                return None
            return Target(str(self.mountpoint / relative), source), index
        rank = len(self.substitutions)
        if rewritten.startswith(FILE_PREFIX):
            return Target(_file_path(rewritten).rstrip("/") or "/", "file://"), rank
        for position, rule in enumerate(self.rules):
            if not rule.url.startswith(FILE_PREFIX) and matches(rule.url, rewritten):
                scheme_rest = rewritten.partition("://")[2]
                local = "/" + scheme_rest.strip("/")
                return Target(local, rule.source), rank + position
        return None

    def _split_below(self, directory: str, used: int | None) -> bool:
        """Whether a substitution that wins over rule `used` maps part of `directory`."""
        earlier = self.substitutions if used is None else self.substitutions[:used]
        return any(
            rule.registered_prefix.startswith(directory) and rule.registered_prefix != directory
            for rule in earlier
        )

    def check(self, mountpoint: Path) -> None:
        """Refuse rules that lead into the mount itself (every access would loop)."""
        inside = os.path.realpath(mountpoint)
        for prefix, source in self._local_prefixes():
            local = os.path.realpath(prefix)
            if local == inside or local.startswith(inside.rstrip("/") + "/"):
                raise ConfigError(
                    f"{source} maps into the mount point {mountpoint} itself "
                    f"({prefix}); every access would loop. Point it elsewhere."
                )

    def _local_prefixes(self) -> list[tuple[str, str]]:
        found = []
        for substitution in self.substitutions:
            if substitution.local_prefix.startswith(FILE_PREFIX):
                found.append((_file_path(substitution.local_prefix), substitution.source))
        for rule in self.rules:
            if rule.url.startswith(FILE_PREFIX) or "://" not in rule.url:
                continue
            static = rule.url.partition("://")[2]
            for wildcard in "*?[":
                static = static.split(wildcard, 1)[0]
            if "/" in static:
                found.append(("/" + static.rsplit("/", 1)[0], rule.source))
        return found

    def anchors(self) -> list[str]:
        """URLs that rules name explicitly, so listings can show them even when the server
        has nothing there (a bucket that only exists on NFS)."""
        names = [s.registered_prefix for s in self.substitutions]
        for rule in self.rules:
            static = rule.url
            for wildcard in "*?[":
                static = static.split(wildcard, 1)[0]
            if static != rule.url and static.endswith("/"):
                names.append(static)
        return [name for name in names if "://" in name and not name.startswith(FILE_PREFIX)]

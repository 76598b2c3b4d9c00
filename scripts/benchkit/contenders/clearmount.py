"""clearmount itself, from the venv the benchmark runs in, on a fresh clearml.conf."""

from __future__ import annotations

import sys
from pathlib import Path

from devkit.mounts import hermetic_env

from ..machine import git_describe, tool_version
from . import Contender, register


@register
class Clearmount(Contender):
    name = "clearmount"
    label = "clearmount"
    order = 0
    #: `-o` options of the mount (--clearmount-options)
    options = ""

    def version(self) -> str:
        binary = str(Path(sys.executable).parent / "clearmount")
        out = tool_version([binary, "--version"], r"clearmount (\S+)")
        return f"{out} (git {git_describe()})"

    def command(self, mnt: Path, cache: Path, home: Path) -> tuple[list[str], dict[str, str]]:
        conf = home / "clearml.conf"
        conf.write_text(self.site.clearmount_conf())
        conf.chmod(0o600)
        argv = [
            str(Path(sys.executable).parent / "clearmount"),
            str(mnt),
            "--foreground",
            "--config",
            str(conf),
            "--cache-dir",
            str(cache),
        ]
        if self.options:
            argv += ["-o", self.options]
        return argv, hermetic_env(home, self.site.clearmount_env())

    def root(self, mnt: Path) -> Path:
        return self.site.clearmount_root(mnt)

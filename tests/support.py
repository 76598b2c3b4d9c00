"""The tests' side of the real FUSE mount, and the secret-leak guard.

- `Mount`/`start_mount`: ``python -m clearmount MOUNTPOINT --foreground ...`` as a
  subprocess, waited for in /proc/self/mountinfo, unmounted and reaped by `Mount.stop`.
- `status_json`: ``clearmount status --json`` of a mount.
- `tmpfs`: a small or read-only filesystem of its own (a cache disk that fills up).
- `sdk_local_copy`: the real ClearML SDK's ``StorageManager.get_local_copy`` of a URL, in a
  subprocess with a given clearml.conf and cache folder.
- `SecretGuard`: the test identities' secrets and the daemon logs; reports any leak.

The servers and the conf texts are in the ``devkit`` package at the repository root.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devkit.mounts import hermetic_env, mount_points, processes_mentioning
from devkit.processes import ServerError, poll_until, tail
from devkit.s3 import Identity


def status_json(mountpoint: Path, env: Mapping[str, str]) -> dict[str, object]:
    """`clearmount status --json` of the mount at `mountpoint`."""
    result = subprocess.run(
        [sys.executable, "-m", "clearmount", "status", str(mountpoint), "--json"],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    reply: dict[str, object] = json.loads(result.stdout)
    return reply


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `path` (created if missing) with the mount `options`
    (``size=24m,mode=0700``, ``ro``); lazily unmounted on exit."""
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


SDK_SCRIPT = """
import sys
from clearml import StorageManager
print(StorageManager.get_local_copy(sys.argv[1], extract_archive=False))
"""


def sdk_local_copy(tmp_path: Path, conf: Path, cache: Path, url: str) -> Path:
    """The local copy the real ClearML SDK makes of `url` (offline, with the clearml.conf
    `conf` and the cache folder `cache`), run in a subprocess; asserts that it succeeded."""
    env = dict(
        hermetic_env(tmp_path),
        CLEARML_OFFLINE_MODE="1",
        CLEARML_CONFIG_FILE=str(conf),
        CLEARML_CACHE_DIR=str(cache),
    )
    result = subprocess.run(
        [sys.executable, "-c", SDK_SCRIPT, url],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class Mount:
    """A clearmount daemon serving `path`; see `start_mount`."""

    path: Path
    cache_dir: Path
    config_path: Path
    log_path: Path
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    problems: list[str] = field(default_factory=list)
    _real: str = ""

    def __post_init__(self) -> None:
        self._real = os.path.realpath(self.path)  # before mounting: never stat a live mount

    def __truediv__(self, rel: str) -> Path:
        return self.path / rel

    def path_of(self, url: str) -> Path:
        """The local path of a storage URL: ``s3://h:p/b/k`` -> MOUNT/s3/h:p/b/k."""
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise ValueError(f"not a URL: {url!r}")
        return self.path / scheme / rest

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def is_mounted(self) -> bool:
        return self._real in mount_points()

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def start(self, timeout: float = 30.0) -> Mount:
        """Start the daemon and wait until the kernel lists the mount."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.log_path.parent,
                start_new_session=True,
            )

        def mounted() -> bool:
            if self.is_mounted():
                return True
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(
                    f"clearmount exited with code {self.proc.returncode} before mounting "
                    f"{self.path}\n$ {' '.join(self.argv)}\n{tail(self.log_path)}"
                )
            return False

        try:
            poll_until(
                mounted,
                timeout,
                f"clearmount to mount {self.path}",
                diagnose=lambda: tail(self.log_path),
            )
        except BaseException:
            self.stop()
            raise
        return self

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the daemon to exit by itself; its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Unmount (fusermount3 -u -z), SIGTERM, SIGKILL after `timeout`; reap. Idempotent.

        Returns the daemon's exit code; anything left behind (a process, the mount) is
        killed/unmounted and described in `problems`.
        """
        if self.is_mounted():
            res = subprocess.run(
                ["fusermount3", "-u", "-z", self._real],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if res.returncode != 0 and self.is_mounted():
                self.problems.append(f"fusermount3 -u -z failed: {res.stderr.strip()}")
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(2.0)  # after the unmount the daemon should leave by itself
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.problems.append(f"clearmount ignored SIGTERM for {timeout:g}s")
                    proc.kill()
                    proc.wait()
        for pid, cmdline in processes_mentioning(self._real):
            self.problems.append(f"process left behind: {pid} {cmdline}")
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if self.is_mounted():
            self.problems.append(f"{self.path} still mounted after stop")
            subprocess.run(["umount", "-l", self._real], capture_output=True, check=False)
        return None if proc is None else proc.returncode


def start_mount(
    workdir: Path,
    config_text: str,
    *,
    mountpoint: Path | None = None,
    cache_dir: Path | None = None,
    options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    debug: bool = True,
    timeout: float = 30.0,
) -> Mount:
    """Write the config, run ``python -m clearmount MOUNTPOINT --foreground ...`` and wait
    for the mount. Files go to `workdir`: clearml.conf, clearmount.log, home/, mnt/, cache/.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "clearml.conf"
    conf.write_text(config_text)
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    mnt = mountpoint or workdir / "mnt"
    cache = cache_dir or workdir / "cache"
    argv = [
        sys.executable,
        "-m",
        "clearmount",
        str(mnt),
        "--foreground",
        "--config",
        str(conf),
        "--cache-dir",
        str(cache),
    ]
    if debug:
        argv.append("--debug")
    if options:
        argv += ["-o", ",".join(options)]
    argv += list(extra_args)
    mount = Mount(
        path=mnt,
        cache_dir=cache,
        config_path=conf,
        log_path=workdir / "clearmount.log",
        argv=argv,
        env=hermetic_env(home, env),
    )
    return mount.start(timeout)


# ----------------------------------------------------------------------------- secrets


class SecretGuard:
    """Collects the test identities' secrets and the daemon logs; reports any leak."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.logs: list[Path] = []

    def add_secret(self, value: str, label: str) -> None:
        if len(value) >= 8:  # short strings would match by chance
            self.secrets[value] = label

    def add_identity(self, ident: Identity, owner: str) -> None:
        self.add_secret(ident.secret, f"{owner} {ident.name} secret key")

    def watch(self, log: Path) -> None:
        if log not in self.logs:
            self.logs.append(log)

    def leaks(self, logs: Iterable[Path] | None = None) -> list[str]:
        found = []
        for log in self.logs if logs is None else logs:
            try:
                text = log.read_bytes().decode("utf-8", "replace")
            except OSError:
                continue
            for value, label in self.secrets.items():
                if value in text:
                    found.append(f"{label} appears in {log}")
        return found


def fetch_process_ids(mount: Mount) -> list[int]:
    """The daemon's child processes (its fetch processes)."""
    assert mount.proc is not None
    pid = mount.proc.pid
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


def written_by_fetch_processes(mount: Mount) -> int:
    """Bytes the fetch processes wrote (files and their socket)."""
    total = 0
    for pid in fetch_process_ids(mount):
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                total += int(line.split()[1])
    return total


def tcp_peer_ports(pid: int) -> list[int]:
    """The remote ports of process `pid`'s IPv4 TCP connections (from /proc)."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                sockets.add(target.removeprefix("socket:[").removesuffix("]"))
    ports = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in sockets:
            ports.append(int(fields[2].rpartition(":")[2], 16))
    return ports

"""A contender's process serving one fresh mount, and what watches a step run against it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devkit.processes import tail

from .common import log
from .machine import fuse_mounted, unmount, vm_hwm_kib

if TYPE_CHECKING:
    from .contenders import Contender


class MountFailed(Exception):
    pass


class MountSession:
    """One contender process serving a fresh mount with a fresh cache."""

    live: list[MountSession] = []  # for the cleanup on exit / Ctrl-C

    def __init__(self, contender: Contender, workdir: Path, mnt: Path, cpus: str = "") -> None:
        self.contender = contender
        self.cpus = cpus  # taskset -c list ("" = not pinned)
        self.workdir = workdir
        self.mnt = mnt
        self.cache = workdir / "cache"
        self.home = workdir / "home"
        self.log_path = workdir / f"{contender.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_seconds = 0.0

    @property
    def root(self) -> Path:
        return self.contender.root(self.mnt)

    def start(self, timeout: float = 60.0) -> float:
        """Launch; return the seconds until the mount point answers a stat as a FUSE mount."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        for d in (self.cache, self.home, self.mnt):
            d.mkdir(parents=True, exist_ok=True)
        if fuse_mounted(self.mnt) or any(self.mnt.iterdir()):
            raise MountFailed(f"{self.mnt} is busy")
        argv, env = self.contender.command(self.mnt, self.cache, self.home)
        if self.cpus:
            argv = ["taskset", "-c", self.cpus, *argv]  # execs the daemon: same pid
        parent_dev = os.stat(self.mnt.parent).st_dev
        MountSession.live.append(self)
        with open(self.log_path, "ab") as logfile:
            started = time.perf_counter()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = started + timeout
        while True:
            if fuse_mounted(self.mnt) and os.stat(self.mnt).st_dev != parent_dev:
                self.ready_seconds = time.perf_counter() - started
                return self.ready_seconds
            if self.proc.poll() is not None:
                raise MountFailed(
                    f"{self.contender.name} exited with {self.proc.returncode} before mounting:"
                    f"\n{tail(self.log_path, 20)}"
                )
            if time.perf_counter() > deadline:
                self.stop()
                raise MountFailed(f"{self.contender.name} did not mount in {timeout:g}s")
            time.sleep(0.002)

    @property
    def proc_pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time of the mount process so far (0 once it is gone)."""
        return 0.0 if self.proc is None else cpu_seconds(f"/proc/{self.proc.pid}/stat")

    def hwm_kib(self) -> int | None:
        return None if self.proc is None else vm_hwm_kib(self.proc.pid)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        unmount(self.mnt)

    def stop(self) -> None:
        """Unmount, let the process leave (SIGTERM, then SIGKILL), remove the cache."""
        unmount(self.mnt)
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        unmount(self.mnt)
        if self in MountSession.live:
            MountSession.live.remove(self)
        shutil.rmtree(self.cache, ignore_errors=True)

    @classmethod
    def stop_all(cls) -> None:
        for session in list(cls.live):
            with contextlib.suppress(Exception):
                session.stop()


class Watchdog:
    """Calls `on_expire` (killing a mount unblocks its readers) if a step takes too long."""

    def __init__(self, seconds: float, on_expire: Callable[[], None], what: str) -> None:
        self.expired = False

        def fire() -> None:
            self.expired = True
            log(f"{what} took longer than {seconds:g}s: killing the mount")
            on_expire()

        self._timer = threading.Timer(seconds, fire)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn` in a worker thread while the main thread waits in short joins.

    A read blocked in a FUSE request cannot be interrupted; this way Ctrl-C / SIGTERM still
    reach the main thread, whose clean-up kills the mount, which unblocks the reader.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def cpu_seconds(stat: str) -> float:
    """User + system CPU time in a /proc stat file so far (0 once it is gone)."""
    try:
        with open(stat) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> tuple[float, float, float]:
    """CPU seconds of process `pid` (threads gone included) and its live child processes
    (clearmount's fetch processes), of its main thread, and of those children."""
    children: list[str] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += (task / "children").read_text().split()
    child_cpu = sum(cpu_seconds(f"/proc/{child}/stat") for child in children)
    total = cpu_seconds(f"/proc/{pid}/stat") + child_cpu
    return total, cpu_seconds(f"/proc/{pid}/task/{pid}/stat"), child_cpu


class Profiler:
    """py-spy (--nonblocking) on the mount process while one step runs, collapsed stacks;
    and, profiled or not, the process's CPU seconds over the step, logged (all threads, and
    its main thread: clearmount's trio loop)."""

    def __init__(self, enabled: bool, pid: int | None, out: Path, idle: bool = False) -> None:
        self.pid = pid
        self.enabled = enabled and pid is not None and py_spy_binary() is not None
        self.idle = idle
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        self.cpu = (0.0, 0.0, 0.0)

    def _cpu(self) -> tuple[float, float, float]:
        assert self.pid is not None
        return process_cpu(self.pid)

    def __enter__(self) -> Profiler:
        if self.pid is not None:
            self.cpu = self._cpu()
        if self.enabled:
            self.proc = subprocess.Popen(
                [
                    str(py_spy_binary()),
                    "record",
                    "--pid",
                    str(self.pid),
                    "--nonblocking",
                    "--threads",
                    *(["--idle"] if self.idle else []),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "-o",
                    str(self.out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            time.sleep(0.5)  # let it attach
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pid is not None:
            total, main, children = (
                now - before for now, before in zip(self._cpu(), self.cpu, strict=True)
            )
            log(
                f"{self.out.stem}: mount CPU {total:.2f} s over the step ({main:.2f} s main "
                f"thread, {children:.2f} s child processes)"
            )
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            log(f"profile written to {self.out}")


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("py-spy")

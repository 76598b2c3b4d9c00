"""Running one ``benchkit.mlwork`` job in its own process: ready, page cache dropped, go, result.

``run`` starts the job, waits until it has imported torch and built what it needs, calls
``before`` (drop the page cache, reset a proxy's counts), says go, and calls ``after`` the
moment the timed call has returned (count the bucket's bytes), before the job checks what it
got. A wrong tensor or sample raises ``WrongBytes``; a job that failed, ``RuntimeError``.
Reads blocked on a mount are unblocked by the caller's watchdog killing the mount.
``bucket_bytes_of_call`` runs a job on a proxied session and counts what the bucket sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .common import SCRIPTS
from .measure import WrongBytes
from .session import in_thread

if TYPE_CHECKING:
    from .runner import Visit


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(SCRIPTS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def make(params: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """A ``make-*`` job: builds a file, returns its manifest."""
    res = subprocess.run(
        [sys.executable, "-m", "benchkit.mlwork"],
        input=json.dumps(params) + "\n",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=_env(),
    )
    if res.returncode != 0:
        raise RuntimeError(f"{params['job']} failed:\n{res.stderr[-2000:]}")
    manifest: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return manifest


def run(
    params: dict[str, Any],
    before: Callable[[], None] | None = None,
    after: Callable[[], None] | None = None,
) -> float:
    """Run a timed job; its seconds (the call alone: no interpreter start, no imports)."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchkit.mlwork"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=_env(),
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        stdout = proc.stdout

        def line() -> str:
            text: str = in_thread(stdout.readline)
            if not text:
                proc.wait(30)
                errors.seek(0)
                tail = errors.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"{params['job']} exited with {proc.returncode}:\n{tail}")
            return text

        try:
            proc.stdin.write(json.dumps(params) + "\n")
            proc.stdin.flush()
            if line().strip() != "ready":
                raise RuntimeError(f"{params['job']}: unexpected output")
            if before is not None:
                before()
            proc.stdin.write("go\n")
            proc.stdin.flush()
            seconds = float(json.loads(line())["seconds"])
            if after is not None:
                after()
            wrong = str(json.loads(line())["wrong"])
            proc.stdin.close()
            proc.wait(60)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the job and its loader workers
                proc.wait()
    if wrong:
        raise WrongBytes(f"{params['job']}: {wrong}")
    return seconds


def bucket_bytes_of_call(v: Visit, job: dict[str, Any], key: str) -> int:
    """Run `job` cold on a proxied session's mount; the bytes the bucket sent for `key` until
    the call returned."""
    sent: list[int] = []

    def before() -> None:
        v.page_cache.drop()
        assert v.proxy is not None, "this session has no counting proxy"
        v.proxy.reset()

    run(job, before=before, after=lambda: sent.append(v.bucket_bytes(key)))
    return sent[0]

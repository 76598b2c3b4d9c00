"""The reference download, in its own process so that its peak RSS is its own.

``run`` (in the benchmark) starts ``python -m benchkit.download``, which reads JSON parameters
on stdin, has the site's SDK download the object and prints {"seconds", "hwm_kib"} (the timing
excludes the interpreter start and the imports, like the mount's reads exclude its start).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import SCRIPTS
from .machine import vm_hwm_kib
from .sites import Site, load


def run(site: Site, dest: Path, key: str = "") -> dict[str, Any]:
    """Download the big object (or `key`) to `dest` in a subprocess; {"seconds", "hwm_kib"}."""
    params = {**site.download_params(), "dest": str(dest)}
    if key:
        params["object"] = key
    path = os.pathsep.join(p for p in (str(SCRIPTS), os.environ.get("PYTHONPATH", "")) if p)
    res = subprocess.run(
        [sys.executable, "-m", "benchkit.download"],
        input=json.dumps(params),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env={**os.environ, "PYTHONPATH": path},
    )
    if res.returncode != 0:
        raise RuntimeError(f"reference download failed:\n{res.stderr[-2000:]}")
    measured: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return measured


def main() -> int:
    params = json.load(sys.stdin)
    go = load()[params["backend"]].download(params, params["dest"])
    started = time.perf_counter()
    go()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "hwm_kib": vm_hwm_kib(os.getpid())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`scripts/demo` as a new user runs it: again and again, after Ctrl-C and after a kill.

Each run starts the demo servers (S3, Azure, GCS and the ClearML-style file server with its
token check) and a real mount; the test reads the sample artifacts through it and stops the
demo as a terminal would (SIGINT to its process group).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from devkit import REPO
from devkit.demo import demo_objects, stop_leftovers
from devkit.mounts import hermetic_env, mount_points, processes_mentioning
from devkit.processes import free_ports, http_status, poll_until, tail

READY_TIMEOUT = 180.0
#: Starts the demo with SIGINT's default action, as a terminal's shell does: a test run
#: started in the background of a script inherits SIGINT ignored, and a shell cannot trap a
#: signal ignored when it started, so the demo's Ctrl-C trap would silently not exist.
_WITH_DEFAULT_SIGINT = (
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)


class Demo:
    """One `scripts/demo` run in its own process group, its output in a log file."""

    def __init__(self, tmp: Path, run: int, s3_port: int, files_port: int) -> None:
        self.folder = tmp / "demo"
        self.mnt = tmp / "artifacts"
        self.s3_port = s3_port
        self.files_port = files_port
        self.log = tmp / f"demo-{run}.log"
        env = hermetic_env(
            tmp / "home",
            {
                "DEMO_DIR": str(self.folder),
                "DEMO_MOUNTPOINT": str(self.mnt),
                "DEMO_S3_PORT": str(s3_port),
                "DEMO_FILES_PORT": str(files_port),
            },
        )
        (tmp / "home").mkdir(exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*_WITH_DEFAULT_SIGINT, str(REPO / "scripts" / "demo")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def output(self) -> str:
        return tail(self.log, 200)

    def wait_ready(self) -> None:
        """Until the daemon says it serves the mount point (a dead mount of an earlier run
        is in the mount table too, so the table alone proves nothing)."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"demo exited with {self.proc.returncode}:\n{self.output()}")
            return f"ready: {self.mnt}" in self.output()

        poll_until(ready, READY_TIMEOUT, "the demo to mount", diagnose=self.output)

    def check_bytes(self) -> None:
        objects = demo_objects()
        roots = [
            self.mnt / "s3" / f"127.0.0.1:{self.s3_port}" / "demo-models",
            self.mnt / "azure" / "devstoreaccount1.blob.core.windows.net" / "demo-models",
            self.mnt / "gs" / "demo-datasets",
            self.mnt / "http" / f"127.0.0.1:{self.files_port}",
        ]
        for root in roots:
            for key, data in objects.items():
                assert (root / key).read_bytes() == data, root / key
        # the file server refuses a read without the token the mount got from auth.login
        model = "project/task.1/artifacts/model/model.pt"
        assert http_status(f"http://127.0.0.1:{self.files_port}/{model}") == 401
        out = self.output()
        assert f"md5sum {self.mnt}/http/127.0.0.1:{self.files_port}/{model}" in out, out

    def ctrl_c(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(60)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(60)


def _nothing_left(demo: Demo) -> None:
    assert str(demo.mnt) not in mount_points(), demo.output()
    left = processes_mentioning(str(demo.folder))
    assert not left, f"left running: {left}"


def test_demo_runs_again_after_ctrl_c_and_after_a_kill(tmp_path: Path) -> None:
    s3_port, files_port = free_ports(2)
    demos: list[Demo] = []
    try:
        # first run, then Ctrl-C: everything stops, the data stays
        demos.append(Demo(tmp_path, 1, s3_port, files_port))
        demos[-1].wait_ready()
        demos[-1].check_bytes()
        assert demos[-1].ctrl_c() == 130
        _nothing_left(demos[-1])
        assert (tmp_path / "demo" / "azurite" / "data").is_dir()
        served = tmp_path / "demo" / "fileserver" / "files" / "project" / "README.txt"
        version = served.stat().st_mtime_ns

        # second run on the same data: buckets and containers already exist
        demos.append(Demo(tmp_path, 2, s3_port, files_port))
        demos[-1].wait_ready()
        demos[-1].check_bytes()
        out = demos[-1].output()
        assert "Traceback" not in out and "already exists" not in out, out
        assert f"config {tmp_path / 'demo' / 'clearml.conf'}" in out
        assert str(REPO / ".venv" / "bin" / "clearmount") in out
        assert served.stat().st_mtime_ns == version  # the file server's files are kept
        # killed with its terminal: a dead mount and four orphaned servers stay behind
        demos[-1].kill()
        assert str(demos[-1].mnt) in mount_points()

        # third run cleans both up and works
        demos.append(Demo(tmp_path, 3, s3_port, files_port))
        demos[-1].wait_ready()
        demos[-1].check_bytes()
        out = demos[-1].output()
        assert out.count("stopped a process left by an earlier demo") == 4, out
        assert demos[-1].ctrl_c() == 130
        _nothing_left(demos[-1])
    finally:
        for demo in demos:
            if demo.proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(demo.proc.pid, signal.SIGKILL)
                demo.proc.wait()
        stop_leftovers(tmp_path / "demo")
        if str(tmp_path / "artifacts") in mount_points():
            subprocess.run(["fusermount3", "-u", "-z", str(tmp_path / "artifacts")], check=False)


def test_install_script_and_readme_name_what_building_pyfuse3_needs() -> None:
    listed = subprocess.run(
        [
            "bash",
            "-c",
            'ROOT=. source scripts/lib/install.sh && printf "%s\\n" "${APT_PACKAGES[@]}"',
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # pyfuse3 3.5 ships only a source archive: a compiler, Python's and libfuse's headers
    build = {"gcc", "libc6-dev", "python3-dev", "libfuse3-dev", "pkg-config", "python3-venv"}
    assert build <= set(listed), listed
    readme = (REPO / "README.md").read_text()
    install = readme.split("## Install", 1)[1].split("```", 2)[1]
    apt_line = next(line for line in install.splitlines() if "apt-get install" in line)
    documented = set(apt_line.split("apt-get install", 1)[1].split())
    assert {
        "fuse3",
        "gcc",
        "python3-dev",
        "python3-venv",
        "libfuse3-dev",
        "pkg-config",
    } <= documented
    assert documented <= set(listed), documented - set(listed)
    # real package names in this distribution
    shown = subprocess.run(
        ["apt-cache", "show", *listed], capture_output=True, text=True, check=False
    ).stdout
    known = {line.split()[1] for line in shown.splitlines() if line.startswith("Package: ")}
    assert set(listed) <= known, set(listed) - known

"""The servers and sample artifacts of scripts/demo, until SIGTERM or Ctrl-C:
``python -m devkit.demo --dir demo --mountpoint artifacts [--storages s3,azure,gcs,files]``.

It writes DIR/clearml.conf, DIR/env.sh (the daemon's environment for the emulators) and, once
every server is up, DIR/servers.json. A demo storage is one ``demo_<name>(ctx, args)``
function added to `DEMO_STORAGES`; every one must work again on the data a previous run left
(``ensure_exists`` for its bucket or container). The ``files`` storage is a ClearML-style
file server: nginx serving DIR/fileserver/files, every read checked against tokens from a
stand-in for the API server's ``auth.login`` in a thread of this process. The processes of
a run are written down in DIR/demo-pids.json, so that a later run ends what a killed one
left (`stop_leftovers`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import HOST
from .azurite import AzuriteServer
from .confs import hocon, s3_section, sdk_block
from .fake_gcs import FakeGcsServer
from .fileserver import ClearmlAuthStandIn, NginxServer
from .processes import ServerProcess, poll_until
from .s3 import Identity, S3Server


def demo_objects() -> dict[str, bytes]:
    """Sample artifacts laid out as ClearML stores them."""
    rows = "\n".join(f"{i},{i * 0.5:.1f},{'abc'[i % 3]}" for i in range(200))
    return {
        "project/task.1/artifacts/model/model.pt": hashlib.sha256(b"model").digest() * 256,
        "project/task.1/artifacts/data/train.csv": f"id,x,label\n{rows}\n".encode(),
        "project/task.1/artifacts/data/nested/deeper/notes.txt": b"nested directories work\n",
        "project/task.2/artifacts/model/model.pt": hashlib.sha256(b"model2").digest() * 512,
        "project/README.txt": b"clearmount demo bucket\n",
    }


def already_exists(exc: Exception) -> bool:
    """Whether `exc` is a server's "that bucket/container already exists"."""
    from azure.core.exceptions import ResourceExistsError
    from botocore.exceptions import ClientError
    from google.api_core.exceptions import Conflict

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code")
        return code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
    return isinstance(exc, ResourceExistsError | Conflict)


def ensure_exists(make: Callable[[str], str], name: str) -> str:
    """`make(name)` (a bucket or container), counting "already exists" (the data of an
    earlier demo run) as success; returns `name`."""
    try:
        return make(name)
    except Exception as exc:
        if not already_exists(exc):
            raise
        return name


class DemoError(Exception):
    """A demo that cannot start, said in one line (a port taken, ...)."""


def ensure_port_free(port: int, variable: str) -> None:
    """DemoError naming `variable` (the environment variable that picks another port) when
    something already listens on 127.0.0.1:`port`."""
    import socket

    with socket.socket() as sock:
        if sock.connect_ex((HOST, port)) == 0:
            raise DemoError(
                f"port {HOST}:{port} is in use by another program; "
                f"run with {variable}=<a free port> to use another one"
            )


def write_if_changed(path: Path, data: bytes) -> None:
    """Write `path` (atomically) unless it already holds `data`: a rerun keeps the file and
    its version (ETag), so the mount's cache of an earlier run stays valid."""
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(data)
    temp.rename(path)


DEMO_PIDS = "demo-pids.json"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\x00", b" ").decode().strip()
    except OSError:
        return ""


def record_demo_pids(root: Path, pids: Iterable[int]) -> None:
    """Write down the demo's processes (pid and command line), for `stop_leftovers`."""
    table = {str(pid): _cmdline(pid) for pid in pids}
    (root / DEMO_PIDS).write_text(json.dumps(table, indent=1))


def stop_leftovers(root: Path, grace: float = 10.0) -> list[str]:
    """End what an earlier demo in `root` left running (its devkit.demo process and
    the servers it started, when it was killed with its terminal): the processes it wrote down
    that still run the same command line. SIGTERM, SIGKILL after `grace` seconds. Returns
    their command lines."""
    try:
        table = json.loads((root / DEMO_PIDS).read_text())
    except (OSError, ValueError):
        return []
    found = [
        (int(pid), cmd)
        for pid, cmd in table.items()
        if int(pid) != os.getpid() and cmd and _cmdline(int(pid)) == cmd
    ]
    for pid, _ in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)

    def gone() -> bool:
        return not any(_cmdline(pid) == cmd for pid, cmd in found)

    try:
        poll_until(gone, grace, "the earlier demo's processes to exit")
    except TimeoutError:
        for pid, _ in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        poll_until(gone, grace, "the earlier demo's processes to be killed")
    (root / DEMO_PIDS).unlink(missing_ok=True)
    return [cmd for _, cmd in found]


@dataclass
class DemoContext:
    root: Path  # the demo folder (demo/)
    mountpoint: Path
    servers: list[ServerProcess] = field(default_factory=list)
    conf_sdk: list[str] = field(default_factory=list)  # HOCON fragments inside sdk { }
    conf_top: list[str] = field(default_factory=list)  # top-level HOCON fragments (api { })
    closers: list[Callable[[], None]] = field(default_factory=list)  # in-process servers
    lines: list[str] = field(default_factory=list)  # what to try, printed before mounting
    env: dict[str, str] = field(default_factory=dict)  # the daemon's environment additions

    def cache_hint(self) -> str:
        return str(self.root / "cache" / "storage_manager" / "global")


def demo_s3(ctx: DemoContext, port: int) -> None:
    ensure_port_free(port, "DEMO_S3_PORT")
    admin = Identity("admin", "DEMOADMINKEY", "demo-admin-secret")
    second = Identity("second", "DEMOSECONDKEY", "demo-second-secret")
    server = S3Server(ctx.root / "seaweedfs", port=port, admin=admin, second=second)
    server.start()
    ctx.servers.append(server)
    bucket = ensure_exists(server.make_bucket, "demo-models")
    objects = demo_objects()
    for key, data in objects.items():
        server.put(bucket, key, data)
    ctx.conf_sdk.append(s3_section(server))
    base = ctx.mountpoint / "s3" / server.endpoint / bucket / "project" / "task.1" / "artifacts"
    model = objects["project/task.1/artifacts/model/model.pt"]
    ctx.lines += [
        f"S3 (SeaweedFS) at {server.url}, bucket {bucket}; log {server.log_path}",
        f"  ls {ctx.mountpoint}/s3/{server.endpoint}/{bucket}/project",
        f"  ls -l {base}/model {base}/data",
        f"  cat {base}/data/train.csv | head",
        f"  cat {base}/data/nested/deeper/notes.txt",
        f"  md5sum {base}/model/model.pt     # expect {hashlib.md5(model).hexdigest()}",
        f"  getfattr -d {base}/model/model.pt",
        f"  ls {ctx.cache_hint()}",
    ]


def demo_azure(ctx: DemoContext) -> None:
    server = AzuriteServer(ctx.root / "azurite")
    server.start()
    ctx.servers.append(server)
    container = ensure_exists(server.make_container, "demo-models")
    for key, data in demo_objects().items():
        server.put(container, key, data)
    entry = {
        "account_name": server.ACCOUNT,
        "account_key": server.KEY,
        "container_name": container,
        "endpoint": server.account_url,
    }
    ctx.conf_sdk.append(f"azure.storage {{ containers: [ {hocon(entry)} ] }}")
    base = ctx.mountpoint / "azure" / f"{server.ACCOUNT}.blob.core.windows.net" / container
    ctx.lines += [
        f"Azure Blob (Azurite) at {server.account_url}, container {container}",
        f"  ls {base}/project",
        f"  cat {base}/project/task.1/artifacts/data/nested/deeper/notes.txt",
    ]


def demo_gcs(ctx: DemoContext) -> None:
    server = FakeGcsServer(ctx.root / "fake-gcs")
    server.start()
    ctx.servers.append(server)
    bucket = ensure_exists(server.make_bucket, "demo-datasets")
    for key, data in demo_objects().items():
        server.put(bucket, key, data)
    ctx.conf_sdk.append(
        f'google.storage {{ project: "demo", credentials: [ {{ bucket: "{bucket}" }} ] }}'
    )
    ctx.env.update(server.env)
    base = ctx.mountpoint / "gs" / bucket
    ctx.lines += [
        f"Google Cloud Storage (fake-gcs-server) at {server.url}, bucket {bucket}",
        f"  ls {base}/project",
        f"  head {base}/project/task.1/artifacts/data/train.csv",
    ]


def demo_files(ctx: DemoContext, port: int) -> None:
    """A ClearML file server: nginx on 127.0.0.1:`port`, reads need a token from auth.login."""
    ensure_port_free(port, "DEMO_FILES_PORT")
    workdir = ctx.root / "fileserver"
    workdir.mkdir(parents=True, exist_ok=True)
    auth = ClearmlAuthStandIn("DEMOFILESACCESSKEY", "demo-files-secret")
    ctx.closers.append(auth.stop)
    server = NginxServer(
        workdir,
        port=port,
        root=workdir / "files",
        auth_endpoint=auth.endpoint,
        auth_everywhere=True,
    )
    objects = demo_objects()
    for key, data in objects.items():
        write_if_changed(server.root / key, data)
    server.start()
    ctx.servers.append(server)
    credentials = {"access_key": auth.access_key, "secret_key": auth.secret_key}
    api = {"api_server": auth.url, "files_server": server.url, "credentials": credentials}
    ctx.conf_top.append(f"api {hocon(api)}")
    base = ctx.mountpoint / "http" / server.endpoint / "project" / "task.1" / "artifacts"
    model = objects["project/task.1/artifacts/model/model.pt"]
    ctx.lines += [
        f"ClearML file server (nginx) at {server.url}, files in {server.root};"
        f" log {server.log_path}",
        f"  every read needs a token from auth.login (a stand-in for the API server at {auth.url})",
        "  http has no listing: name the exact path (ls shows only the names looked up)",
        f"  cat {base}/data/train.csv | head",
        f"  md5sum {base}/model/model.pt     # expect {hashlib.md5(model).hexdigest()}",
        f"  ls {base}/model     # now lists model.pt",
        f"  curl -sI {server.url}/project/task.1/artifacts/model/model.pt | head -1"
        "     # 401: no token",
    ]


DEMO_STORAGES: dict[str, Callable[[DemoContext, argparse.Namespace], None]] = {
    "s3": lambda ctx, args: demo_s3(ctx, args.s3_port),
    "azure": lambda ctx, args: demo_azure(ctx),
    "gcs": lambda ctx, args: demo_gcs(ctx),
    "files": lambda ctx, args: demo_files(ctx, args.files_port),
}


def run_demo(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ready = root / "servers.json"
    ready.unlink(missing_ok=True)
    for leftover in stop_leftovers(root):
        print(f"stopped a process left by an earlier demo: {leftover}", file=sys.stderr)
    ctx = DemoContext(root=root, mountpoint=Path(args.mountpoint))
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # run in the foreground
        signal.signal(signal.SIGINT, on_signal)
    try:
        names = args.storages.split(",") if args.storages else list(DEMO_STORAGES)
        unknown = [n for n in names if n not in DEMO_STORAGES]
        if unknown:
            print(f"unknown storage {unknown}; known: {', '.join(DEMO_STORAGES)}")
            return 2
        record_demo_pids(root, [os.getpid()])
        for name in names:
            DEMO_STORAGES[name](ctx, args)
            pids = [s.proc.pid for s in ctx.servers if s.proc is not None]
            record_demo_pids(root, [os.getpid(), *pids])
        top = "".join(f"{fragment}\n" for fragment in ctx.conf_top)
        (root / "clearml.conf").write_text(top + sdk_block(ctx.conf_sdk))
        (root / "clearml.conf").chmod(0o600)
        (root / "env.sh").write_text(
            "".join(f"export {name}={shlex.quote(value)}\n" for name, value in ctx.env.items())
        )
        print("\n".join(ctx.lines), flush=True)
        ready.write_text(
            json.dumps({s.name: getattr(s, "endpoint", "") for s in ctx.servers}, indent=1)
        )
        while not stop:
            for server in ctx.servers:
                if not server.running:
                    print(f"{server.name} died; log {server.log_path}:", file=sys.stderr)
                    print(server.log_tail(), file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        for server in reversed(ctx.servers):
            server.stop()
        for close in reversed(ctx.closers):
            close()
        ready.unlink(missing_ok=True)
        (root / DEMO_PIDS).unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.demo",
        description="Start the sample servers of scripts/demo until SIGTERM or Ctrl-C.",
    )
    parser.add_argument("--dir", default="demo", help="folder for data, logs and clearml.conf")
    parser.add_argument("--mountpoint", default="artifacts", help="shown in the instructions")
    parser.add_argument(
        "--storages", default="", help=f"any of {','.join(DEMO_STORAGES)} (default: all)"
    )
    parser.add_argument("--s3-port", type=int, default=int(os.environ.get("DEMO_S3_PORT", 8333)))
    parser.add_argument(
        "--files-port", type=int, default=int(os.environ.get("DEMO_FILES_PORT", 8081))
    )
    return run_demo(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""The daemon as a production service: the systemd protocol and units, mount(8) and fstab,
permissions seen by another user, `clearmount status`, SIGHUP reloads, the Prometheus
endpoint, and stopping while a fetch is stuck or a file is open.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clearmount import __version__, control, options
from clearmount.errors import UserError
from clearmount.mount_helper import command_line
from clearmount.sd_notify import Notifier
from conftest import MountFactory
from devkit import REPO
from devkit.confs import s3_conf
from devkit.mounts import hermetic_env, mount_points, processes_mentioning
from devkit.processes import free_port, poll_until
from devkit.proxy import Proxy
from devkit.s3 import S3Server
from support import SecretGuard, status_json

MIB = 1 << 20
TEST_USER = "clearmount-test"
VENV_BIN = Path(sys.executable).parent


def clearmount(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clearmount", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def is_mounted(path: Path) -> bool:
    return os.path.realpath(path) in mount_points()


# ----------------------------------------------------------------------------- sd_notify


@dataclass
class Notification:
    fields: dict[str, str]
    mounted: bool  # whether the mount answered when the datagram arrived


class NotifyListener:
    """The systemd side of NOTIFY_SOCKET: a datagram socket the test owns."""

    def __init__(self, path: Path, mountpoint: Path) -> None:
        self.path = path
        self.mountpoint = mountpoint
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.received: list[Notification] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._thread.start()

    def _answers(self) -> bool:
        # The mount answers: it is listed and its root is a different filesystem.
        if not is_mounted(self.mountpoint):
            return False
        return os.stat(self.mountpoint).st_dev != os.stat(self.mountpoint.parent).st_dev

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.partition("=")[::2] for line in data.decode().splitlines())
            mounted = self._answers() if "READY" in fields else False
            self.received.append(Notification(fields, mounted))

    def with_key(self, key: str) -> list[Notification]:
        return [n for n in list(self.received) if key in n.fields]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_sd_notify_ready_status_watchdog_stopping(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    listener = NotifyListener(tmp_path / "notify.sock", mnt)
    try:
        mount = mounted(
            s3_conf(s3_proxy, s3_server.admin),
            mountpoint=mnt,
            env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "300000"},
        )
        ready = poll_until(lambda: listener.with_key("READY"), 30, "READY=1")
        assert ready[0].fields["READY"] == "1"
        assert ready[0].mounted, "READY=1 arrived before the mount answered"
        status = poll_until(lambda: listener.with_key("STATUS"), 30, "STATUS=")
        assert f"serving {mnt}" in status[-1].fields["STATUS"]
        assert "files cached" in status[-1].fields["STATUS"]
        # 0.3 s watchdog: a ping every 0.15 s
        poll_until(lambda: len(listener.with_key("WATCHDOG")) >= 4, 10, "WATCHDOG=1 pings")
        assert mount.proc is not None
        mount.proc.send_signal(signal.SIGTERM)
        assert mount.wait_exit(30) == 0
        poll_until(lambda: listener.with_key("STOPPING"), 5, "STOPPING=1")
        assert len(listener.with_key("READY")) == 1
    finally:
        listener.close()


def test_sd_notify_abstract_socket_and_watchdog_pid() -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"clearmount-test-{os.getpid()}"
    receiver.bind(b"\0" + name.encode())
    receiver.settimeout(5)
    with receiver:
        env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"}
        notifier = Notifier(env)
        assert notifier.watchdog_seconds == 2.0
        notifier.ready()
        notifier.status("hello")
        assert receiver.recv(100) == b"READY=1"
        assert receiver.recv(100) == b"STATUS=hello"
        notifier.close()
    # meant for another process: no watchdog; nothing set: nothing sent, no error
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_seconds is None
    assert Notifier({"WATCHDOG_PID": str(os.getpid()), "WATCHDOG_USEC": "5"}).watchdog_seconds
    quiet = Notifier({})
    assert not quiet.enabled and not quiet.send("READY=1")


# ----------------------------------------------------------------------------- units


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "systemd"],
            check=True,
            env=env,
        )
        found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing and could not be installed"
    return found


def install_service(destdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts/install-service"), "--clearmount", str(VENV_BIN / "clearmount")],
        capture_output=True,
        text=True,
        env={**os.environ, "DESTDIR": str(destdir)},
        check=False,
    )


def test_install_service_is_idempotent_and_units_verify(
    tmp_path: Path, systemd_analyze: str
) -> None:
    root = tmp_path / "root"
    first = install_service(root)
    assert first.returncode == 0, first.stderr
    units = root / "etc/systemd/system"
    installed = sorted(p.name for p in units.iterdir())
    assert installed == ["clearmount.service", "clearmount@.service"]
    assert (root / "etc/clearmount/clearmount.conf.example").is_file()
    assert (root / "etc/clearmount/clearmount.env.example").is_file()
    helper = root / "sbin/mount.fuse.clearmount"
    assert os.readlink(helper) == str(VENV_BIN / "mount.fuse.clearmount")
    before = {p: p.read_bytes() for p in units.iterdir()}
    again = install_service(root)
    assert again.returncode == 0 and "already in place" in again.stderr, again.stderr
    assert {p: p.read_bytes() for p in units.iterdir()} == before

    for unit in units.iterdir():
        text = unit.read_text()
        assert "Type=notify" in text and "WatchdogSec=" in text and "Restart=on-failure" in text
        assert f"ExecStart={VENV_BIN / 'clearmount'} " in text
        assert "--foreground" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
        assert "PrivateTmp" not in text.replace("# No PrivateTmp=", "")
    (units / "clearmount@artifacts.service").symlink_to("clearmount@.service")
    for name in ("clearmount.service", "clearmount@.service", "clearmount@artifacts.service"):
        result = subprocess.run(
            [systemd_analyze, "verify", str(units / name)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert "clearmount" not in result.stderr, result.stderr  # no warnings about our units


def test_example_config_loads_without_warnings(tmp_path: Path) -> None:
    result = clearmount(
        "config",
        "--config",
        str(REPO / "systemd/clearmount.conf.example"),
        env=hermetic_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in (result.stdout + result.stderr).lower()


# ----------------------------------------------------------------------------- mount(8)


def test_helper_command_line() -> None:
    assert command_line(["/etc/c.conf", "/mnt/a", "-o", "rw,allow_other,_netdev"]) == [
        "/mnt/a",
        "--config",
        "/etc/c.conf",
        "-o",
        "rw,allow_other,_netdev",
    ]
    assert command_line(["clearmount", "/mnt/a", "-n", "-ocache_dir=/c,debug,uid=5"]) == [
        "/mnt/a",
        "--cache-dir",
        "/c",
        "--debug",
        "-o",
        "uid=5",
    ]
    assert command_line(["c", "/m", "-f", "-o", "ro"]) is None  # mount -f: pretend
    sloppy = command_line(["c", "/m", "-s", "-o", "allow_other,frobnicate=1"])
    assert sloppy is not None and sloppy[-1] == "allow_other"
    with pytest.raises(UserError):
        command_line(["only-one-argument"])


@pytest.fixture
def mount_helper_installed() -> Iterator[Path]:
    """/sbin/mount.fuse.clearmount linked to this venv's helper for the test, then removed.

    A lock keeps concurrent test runs on this machine from removing each other's link.
    """
    target = VENV_BIN / "mount.fuse.clearmount"
    assert target.exists(), f"{target} missing: reinstall the package (scripts/test does)"
    link = Path("/sbin/mount.fuse.clearmount")
    with open("/run/lock/clearmount-t6-helper.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if link.is_symlink() and "clearmount" in os.readlink(link):
            link.unlink()  # ours, left by an interrupted run
        if link.exists() or link.is_symlink():
            pytest.skip(f"{link} is installed on this machine; not replacing it")
        link.symlink_to(target)
        try:
            yield link
        finally:
            link.unlink()


def wait_daemon_gone(mnt: Path) -> None:
    poll_until(lambda: not processes_mentioning(str(mnt)), 15, "the daemon to exit")


def test_mount_t_fuse_clearmount(
    mount_helper_installed: Path,
    s3_server: S3Server,
    s3_proxy: Proxy,
    tmp_path: Path,
    secret_guard: SecretGuard,
) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "hello.txt", b"via mount(8)")
    conf = tmp_path / "clearml.conf"
    conf.write_text(s3_conf(s3_proxy, s3_server.admin))
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    secret_guard.watch(cache / "clearmount/clearmount.log")
    command = ["mount", "-t", "fuse.clearmount", str(conf), str(mnt)]
    command += ["-o", f"allow_other,_netdev,nofail,x-systemd.automount,cache_dir={cache}"]
    result = subprocess.run(
        command, capture_output=True, text=True, env=hermetic_env(tmp_path), check=False
    )
    try:
        assert result.returncode == 0, result.stderr
        # mount(8) returned: the mount answers at once
        path = mnt / f"s3/{s3_proxy.endpoint}/{bucket}/hello.txt"
        assert path.read_bytes() == b"via mount(8)"
        assert mount_points()[str(mnt)] == "fuse.clearmount"
        assert "allow_other" in _mountinfo_line(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    wait_daemon_gone(mnt)
    assert not is_mounted(mnt)
    assert "ready:" in (cache / "clearmount/clearmount.log").read_text()


def _mountinfo_line(mnt: Path) -> str:
    with open("/proc/self/mountinfo") as table:
        for line in table:
            if line.split()[4] == str(mnt):
                return line
    raise AssertionError(f"{mnt} not in mountinfo")


def test_fstab_line(
    mount_helper_installed: Path,
    s3_server: S3Server,
    s3_proxy: Proxy,
    tmp_path: Path,
    secret_guard: SecretGuard,
) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "model.pt", b"weights")
    conf = tmp_path / "clearml.conf"
    conf.write_text(s3_conf(s3_proxy, s3_server.admin))
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    secret_guard.watch(cache / "clearmount/clearmount.log")
    opts = (
        "allow_other,_netdev,nofail,noauto,x-systemd.automount,x-systemd.mount-timeout=30,"
        f"uid=4242,gid=4343,file_mode=0440,noexec,cache_dir={cache},attr_timeout=30"
    )
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# test fstab\n{conf}  {mnt}  fuse.clearmount  {opts}  0 0\n")
    result = subprocess.run(
        ["mount", "--fstab", str(fstab), str(mnt)],
        capture_output=True,
        text=True,
        env=hermetic_env(tmp_path),
        check=False,
    )
    try:
        assert result.returncode == 0, result.stderr
        info = (mnt / f"s3/{s3_proxy.endpoint}/{bucket}/model.pt").stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4242, 4343, 0o440)
        line = _mountinfo_line(mnt)
        assert "noexec" in line.split()[5]  # per-mount flags, passed to the kernel
        assert "allow_other" in line
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    wait_daemon_gone(mnt)


# ----------------------------------------------------------------------------- permissions


@pytest.fixture(scope="session")
def test_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
            check=True,
        )
        return pwd.getpwnam(TEST_USER)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is root's alone).

    Request it before `mounted`, so it is removed after the mounts in it are gone.
    """
    path = Path(tempfile.mkdtemp(prefix="clearmount-t6-"))
    path.chmod(0o755)
    yield path
    if not any(is_mounted(p) for p in path.iterdir()):
        shutil.rmtree(path, ignore_errors=True)


def as_user(user: pwd.struct_passwd, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *command],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_allow_other_uid_gid_modes_as_another_user(
    public_dir: Path,
    mounted: MountFactory,
    s3_server: S3Server,
    s3_proxy: Proxy,
    test_user: pwd.struct_passwd,
) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "data/file.txt", b"for the job user")
    conf = s3_conf(s3_proxy, s3_server.admin)
    rel = f"s3/{s3_proxy.endpoint}/{bucket}/data/file.txt"

    owned = mounted(
        conf,
        mountpoint=public_dir / "owned",
        options=[
            "allow_other",
            f"uid={TEST_USER}",
            f"gid={test_user.pw_gid}",
            "file_mode=0440",
            "dir_mode=0550",
        ],
    )
    shown = as_user(test_user, "stat", "-c", "%u %g %a", str(owned / rel))
    assert shown.stdout.split() == [str(test_user.pw_uid), str(test_user.pw_gid), "440"]
    folder = as_user(test_user, "stat", "-c", "%a", str((owned / rel).parent))
    assert folder.stdout.strip() == "550"
    read = as_user(test_user, "cat", str(owned / rel))
    assert read.returncode == 0 and read.stdout == "for the job user", read.stderr

    # owned by root, umask=077: the kernel refuses the other user (default_permissions)
    private = mounted(
        conf, mountpoint=public_dir / "private", options=["allow_other", "uid=0", "umask=077"]
    )
    assert oct(stat.S_IMODE((private / rel).stat().st_mode)) == "0o400"
    denied = as_user(test_user, "cat", str(private / rel))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert (private / rel).read_bytes() == b"for the job user"  # root still reads

    # no allow_other: the kernel keeps every other user out of the mount entirely
    closed = mounted(conf, mountpoint=public_dir / "closed", options=[f"uid={TEST_USER}"])
    refused = as_user(test_user, "stat", str(closed / rel))
    assert refused.returncode != 0 and "Permission denied" in refused.stderr


def test_mode_and_owner_options_parse() -> None:
    parsed = options.parse_options(
        ["uid=root,gid=root,umask=027,file_mode=0o640,dir_mode=750,noexec,nosuid,relatime"]
    )
    assert (parsed.uid, parsed.gid, parsed.umask) == (0, 0, 0o027)
    assert (parsed.file_mode, parsed.dir_mode) == (0o640, 0o750)
    assert {"noexec", "nosuid"} <= parsed.fuse_options()
    assert "relatime" not in parsed.fuse_options()
    parsed = options.parse_options(["log_level=warning,metrics=127.0.0.1:9567"])
    assert (parsed.log_level, parsed.metrics) == ("warning", "127.0.0.1:9567")
    for bad in ("umask=9", "file_mode=0o77777", "uid=no-such-user-here", "log_level=loud"):
        with pytest.raises(UserError):
            options.parse_options([bad])
    with pytest.raises(UserError):
        options.parse_options(["metrics=9567"])


def test_fetch_processes_option_parses_and_refuses_bad_values() -> None:
    assert options.parse_options(["fetch_processes=0"]).fetch_processes == 0
    assert options.parse_options(["fetch_processes=4"]).fetch_processes == 4
    # by default: processes only where the daemon may run on more than one core
    expected = 2 if len(os.sched_getaffinity(0)) > 1 else 0
    assert options.parse_options([]).fetch_processes == expected
    for bad in ("-1", "lots", ""):
        with pytest.raises(UserError, match="fetch_processes"):
            options.parse_options([f"fetch_processes={bad}"])


# ----------------------------------------------------------------------------- status


SLOW_BOTO3 = "aws.boto3 { multipart_chunksize: 1048576, max_multipart_concurrency: 1 }"


def test_status_shows_a_slow_fetch_in_flight(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    size = 24 * MIB
    s3_server.put(bucket, "slow.bin", os.urandom(size))
    mount = mounted(s3_conf(s3_proxy, s3_server.admin, sdk_extra=SLOW_BOTO3))
    env = hermetic_env(tmp_path)
    url = f"s3://{s3_proxy.endpoint}/{bucket}/slow.bin"
    # 1 MiB parts, one at a time, each held back 0.25 s by the proxy: about 6 s in all
    s3_proxy.delay(0.25, method="GET", path=f"/{bucket}/slow.bin")
    reader = subprocess.Popen(["cat", str(mount.path_of(url))], stdout=subprocess.DEVNULL)
    try:

        def in_flight() -> list[dict[str, object]]:
            fetches = status_json(mount.path, env)["fetches"]
            assert isinstance(fetches, list)
            return [f for f in fetches if f["url"] == url and 0 < f["bytes_done"] < size]

        first = poll_until(in_flight, 30, "the fetch in `clearmount status`")[0]
        assert first["size"] == size
        later = poll_until(
            lambda: [f for f in in_flight() if f["bytes_done"] > first["bytes_done"]],
            30,
            "the fetch to grow",
        )[0]
        assert later["rate"] > 0

        human = clearmount("status", str(mount.path), env=env)
        assert human.returncode == 0, human.stderr
        assert url in human.stdout and "in flight" in human.stdout
        assert "[#" in human.stdout or "[." in human.stdout  # the progress bar
        assert "MiB /" in human.stdout and "24.0 MiB" in human.stdout
        assert str(mount.cache_dir) in human.stdout

        status = status_json(mount.path, env)
        assert status["mountpoint"] == str(mount.path)
        assert status["config_files"] == [str(mount.config_path)]
        assert mount.proc is not None and status["pid"] == mount.proc.pid
        assert s3_server.admin.secret not in json.dumps(status)
    finally:
        reader.wait(60)
    assert reader.returncode == 0

    _, sock = control.find_socket(mount.path)
    info = sock.stat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()

    done = poll_until(
        lambda: (s := status_json(mount.path, env))["fetches"] == [] and s,
        30,
        "the fetch to leave the status",
    )
    counters = done["counters"]
    assert isinstance(counters, dict)
    assert counters["fetches_completed"] == 1 and counters["opens"] == {"fetched": 1}
    cache = poll_until(
        lambda: (c := status_json(mount.path, env)["cache"])["files"] == 1 and c,  # type: ignore[index]
        10,
        "the cache figures to count the file",
    )
    assert cache["bytes"] == size and cache["partial_files"] == 0
    mount.stop()
    assert not sock.exists()  # the socket goes with the daemon


def test_status_errors(tmp_path: Path, mounted: MountFactory, s3_server: S3Server) -> None:
    env = hermetic_env(tmp_path)
    not_a_mount = clearmount("status", str(tmp_path), env=env)
    assert not_a_mount.returncode == 4 and "not a clearmount mount" in not_a_mount.stderr
    # a socket whose daemon was killed: the next daemon to start removes it
    stale = control.runtime_dirs(os.geteuid())[0] / f"{'0' * 23}t.sock"
    stale.parent.mkdir(exist_ok=True)
    stale.unlink(missing_ok=True)  # an interrupted run's
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))
    mount = mounted(s3_conf(s3_server))
    assert not stale.exists()
    # a client talking nonsense gets an error line and the daemon keeps serving
    _, sock_path = control.find_socket(mount.path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(sock_path))
        sock.sendall(b'not json\n{"op": "frobnicate"}\n{"op": "ping"}\n')
        replies = b""
        while replies.count(b"\n") < 3:
            replies += sock.recv(4096)
    first, second, third = (json.loads(line) for line in replies.splitlines())
    assert first == {"ok": False, "error": "not a JSON line"}
    assert not second["ok"] and "unknown op" in second["error"]
    assert third["ok"] and third["pid"] == (mount.proc.pid if mount.proc else None)
    assert status_json(mount.path, env)["pid"] == third["pid"]


# ----------------------------------------------------------------------------- SIGHUP


def test_sighup_reloads_credentials_and_keeps_the_old_config_when_broken(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "a.txt", b"first")
    s3_server.put(bucket, "b.txt", b"second")
    admin = s3_server.admin
    wrong = {"key": admin.key, "secret": "not-the-secret-0123456789"}
    mount = mounted(s3_conf(s3_proxy, wrong), options=["negative_timeout=0.2"])
    assert mount.proc is not None
    env = hermetic_env(tmp_path)
    a = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/a.txt")
    with pytest.raises(OSError):
        a.read_bytes()

    mount.config_path.write_text(s3_conf(s3_proxy, admin))
    mount.proc.send_signal(signal.SIGHUP)
    poll_until(lambda: "reloaded the configuration" in mount.log_text(), 30, "the reload")

    def readable() -> bytes | None:
        try:
            return a.read_bytes()
        except OSError:
            return None

    assert poll_until(readable, 10, "the new credentials to work") == b"first"
    assert mount.proc.poll() is None and mount.is_mounted()  # no restart, no unmount
    assert status_json(mount.path, env)["reload"]["ok"] is True  # type: ignore[index]

    mount.config_path.write_text("sdk { aws { s3 { key: [unclosed")
    mount.proc.send_signal(signal.SIGHUP)
    poll_until(lambda: "reload failed" in mount.log_text(), 30, "the failed reload")
    line = next(x for x in mount.log_text().splitlines() if "reload failed" in x)
    assert "ERROR" in line and "cannot parse" in line
    # the old (good) credentials still serve a file never fetched before
    b = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/b.txt")
    assert b.read_bytes() == b"second"
    status = status_json(mount.path, env)
    assert status["reload"]["ok"] is False  # type: ignore[index]
    assert "cannot parse" in status["reload"]["message"]  # type: ignore[index]
    messages = [r["message"] for r in status["errors"]["recent"]]  # type: ignore[index]
    assert any("reload failed" in m for m in messages)
    assert any("access denied" in m for m in messages)  # the wrong secret, before the reload
    assert mount.proc.poll() is None and mount.is_mounted()
    rendered = clearmount("status", str(mount.path), env=env).stdout
    assert "RELOAD FAILED" in rendered and "reload failed" in rendered


# ----------------------------------------------------------------------------- metrics


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def test_prometheus_endpoint_counts_reads_fetches_hits_and_errors(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    bucket = s3_server.make_bucket()
    data = os.urandom(3 * MIB)
    s3_server.put(bucket, "weights.bin", data)
    s3_server.put(bucket, "next.bin", os.urandom(3 * MIB))
    port = free_port()
    mount = mounted(
        s3_conf(s3_proxy, s3_server.admin),
        options=[f"metrics=127.0.0.1:{port}"],
        extra_args=["--cache-max-size", "4MiB"],  # room for one of the two files
    )
    base = f"s3://{s3_proxy.endpoint}/{bucket}"
    assert mount.path_of(f"{base}/weights.bin").read_bytes() == data  # a miss
    poll_until(
        lambda: scrape(port).get("clearmount_fetches_completed_total"),
        10,
        "the fetch to complete",
    )
    assert mount.path_of(f"{base}/weights.bin").read_bytes() == data  # a hit
    # not in the bucket, so no listing knows it: the lookup asks the server, which refuses
    s3_proxy.fail(None, 403, path=f"/{bucket}/denied.bin")
    with pytest.raises(PermissionError):
        mount.path_of(f"{base}/denied.bin").stat()

    assert len(mount.path_of(f"{base}/next.bin").read_bytes()) == 3 * MIB  # evicts weights
    poll_until(lambda: scrape(port).get("clearmount_cache_evictions_total"), 15, "an eviction")
    metrics = scrape(port)
    assert metrics["clearmount_reads_total"] > 0
    assert metrics["clearmount_read_bytes_total"] >= len(data)
    assert metrics["clearmount_fetches_started_total"] == 2
    assert metrics["clearmount_fetched_bytes_total"] >= len(data)
    assert metrics["clearmount_cache_hits_total"] >= 1
    assert metrics["clearmount_cache_misses_total"] == 2
    assert metrics["clearmount_opens_total{result=fetched}"] == 2
    assert metrics["clearmount_cache_evicted_bytes_total"] == len(data)
    assert metrics["clearmount_errors_total{kind=AccessDenied,operation=lookup}"] >= 1
    assert metrics["clearmount_read_duration_seconds_count"] > 0
    assert metrics["clearmount_fetch_duration_seconds_count"] >= 1
    assert [k for k in metrics if k.startswith("clearmount_info{")] == [
        f"clearmount_info{{mountpoint={mount.path},version={__version__}}}"
    ]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
        assert resp.status == 200
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=10)
    assert missing.value.code == 404


def fetch_books(status: dict[str, object]) -> dict[str, int]:
    """The fetch counters of a status reply, with the fetches it shows in flight."""
    counters = status["counters"]
    fetches = status["fetches"]
    assert isinstance(counters, dict) and isinstance(fetches, list)
    return {
        "started": counters["fetches_started"],
        "completed": counters["fetches_completed"],
        "failed": sum(counters["fetches_failed"].values()),
        "stopped": counters["fetches_stopped"],
        "in_flight": len(fetches),
        "downloaded": counters["fetched_bytes"],
    }


def balanced(books: dict[str, int]) -> bool:
    ended = books["completed"] + books["failed"] + books["stopped"]
    return books["started"] == ended + books["in_flight"]


def test_status_and_metrics_count_every_fetch_however_quick(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    # Many tiny objects read back to back: each fetch starts and ends within milliseconds,
    # while the daemon measures a cache of many files. Every one must be counted all the
    # same, in `clearmount status` and in the metrics alike.
    bucket = s3_server.make_bucket()
    objects = {f"tiny/{i:03d}.bin": os.urandom(700 + 97 * i) for i in range(40)}
    for key, data in objects.items():
        s3_server.put(bucket, key, data)
    big = os.urandom(3 * MIB // 2)  # more than the cache may hold: streamed
    s3_server.put(bucket, "big.bin", big)
    # a cache of many files, as in production: each scan of it takes long enough for fetches
    # to start and end meanwhile (a monitor polling for fetches counted 17 of these 40)
    cache = tmp_path / "cache"
    filler = cache / "storage_manager" / "global"
    filler.mkdir(parents=True)
    for i in range(20000):
        (filler / f"other-{i:05d}.bin").touch()
    port = free_port()
    mount = mounted(
        s3_conf(s3_proxy, s3_server.admin),
        cache_dir=cache,
        options=[f"metrics=127.0.0.1:{port}"],
        extra_args=["--cache-max-size", "1MiB"],
    )
    env = hermetic_env(tmp_path)
    base = f"s3://{s3_proxy.endpoint}/{bucket}"
    for key, data in objects.items():
        assert mount.path_of(f"{base}/{key}").read_bytes() == data

    def settled() -> dict[str, int] | None:
        books = fetch_books(status_json(mount.path, env))
        assert balanced(books), books
        return books if books["in_flight"] == 0 else None

    books = poll_until(settled, 30, "the fetches to end")
    sizes = sum(len(data) for data in objects.values())
    assert books == {
        "started": len(objects),
        "completed": len(objects),
        "failed": 0,
        "stopped": 0,
        "in_flight": 0,
        "downloaded": sizes,
    }
    data_paths = {f"/{bucket}/{key}" for key in [*objects, "big.bin"]}

    def received() -> int:
        return sum(s.body_bytes for s in s3_proxy.requests("GET") if s.path in data_paths)

    assert received() == sizes

    # Streamed reads download too; a fetch the server refuses fails once.
    assert mount.path_of(f"{base}/big.bin").read_bytes() == big
    s3_proxy.fail(None, 403, method="GET", path=f"/{bucket}/tiny/denied.bin")
    s3_server.put(bucket, "tiny/denied.bin", b"no")
    with pytest.raises(PermissionError):
        mount.path_of(f"{base}/tiny/denied.bin").read_bytes()
    status = poll_until(
        lambda: (s := status_json(mount.path, env))["fetches"] == [] and s,
        30,
        "the failed fetch to end",
    )
    books = fetch_books(status)
    assert balanced(books) and books["started"] == len(objects) + 1
    assert status["counters"]["fetches_failed"] == {"AccessDenied": 1}  # type: ignore[index]
    assert status["counters"]["opens"] == {"fetched": len(objects) + 1, "streamed": 1}  # type: ignore[index]
    # (a stream may read a window twice if the kernel sends reads out of order)
    assert books["downloaded"] == received() >= sizes + len(big)

    metrics = scrape(port)
    assert metrics["clearmount_fetches_started_total"] == books["started"]
    assert metrics["clearmount_fetches_completed_total"] == books["completed"]
    assert metrics["clearmount_fetches_failed_total{kind=AccessDenied}"] == 1
    assert metrics["clearmount_fetches_stopped_total"] == 0
    assert metrics["clearmount_fetches_in_flight"] == 0
    assert metrics["clearmount_fetched_bytes_total"] == books["downloaded"]
    assert metrics["clearmount_fetch_duration_seconds_count"] == books["completed"]
    human = clearmount("status", str(mount.path), env=env).stdout
    assert f"{len(objects) + 1} fetches started, {len(objects)} completed, 1 failed" in human


def test_metrics_port_taken_fails_before_mounting(s3_server: S3Server, tmp_path: Path) -> None:
    conf = tmp_path / "clearml.conf"
    conf.write_text(s3_conf(s3_server))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = clearmount(
            str(mnt),
            "--foreground",
            "--config",
            str(conf),
            "--cache-dir",
            str(tmp_path / "cache"),
            "-o",
            f"metrics=127.0.0.1:{port}",
            env=hermetic_env(tmp_path),
        )
    assert result.returncode == 2, result.stderr
    assert f"metrics=127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
    assert not is_mounted(mnt)


# ----------------------------------------------------------------------------- lifecycle


def test_sigterm_during_a_stalled_fetch_unmounts_within_bounds(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "stuck.bin", os.urandom(8 * MIB))
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    assert mount.proc is not None
    s3_proxy.stall(
        after_bytes=MIB, seconds=120, count=None, method="GET", path=f"/{bucket}/stuck.bin"
    )
    path = mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/stuck.bin")
    reader = subprocess.Popen(["cat", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partials = mount.cache_dir / "storage_manager/global"
    poll_until(lambda: list(partials.glob("*.partially")), 30, "the fetch to start")
    started = time.monotonic()
    mount.proc.send_signal(signal.SIGTERM)
    assert mount.wait_exit(25) == 0
    took = time.monotonic() - started
    assert took < 15, f"stopping took {took:.1f}s"
    assert not mount.is_mounted()
    reader.wait(30)
    assert reader.returncode != 0  # the reader got an error, never short or wrong bytes
    log_text = mount.log_text()
    # the fetch was cancelled, whether a read was waiting on it at that moment or not
    assert "unmounted" in log_text
    assert "cancelling 1 fetch" in log_text or "fetch stopped" in log_text


def test_fusermount_while_a_file_is_open_is_busy_and_serving_goes_on(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    bucket = s3_server.make_bucket()
    data = os.urandom(2 * MIB)
    s3_server.put(bucket, "open.bin", data)
    s3_server.put(bucket, "other.txt", b"still here")
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    base = f"s3://{s3_proxy.endpoint}/{bucket}"
    with open(mount.path_of(f"{base}/open.bin"), "rb") as held:
        assert held.read(MIB) == data[:MIB]
        busy = subprocess.run(
            ["fusermount3", "-u", str(mount.path)], capture_output=True, text=True, check=False
        )
        assert busy.returncode != 0 and "busy" in busy.stderr.lower(), busy.stderr
        assert mount.is_mounted() and mount.returncode is None
        assert held.read() == data[MIB:]
        assert mount.path_of(f"{base}/other.txt").read_bytes() == b"still here"
    subprocess.run(["fusermount3", "-u", str(mount.path)], check=True)
    assert mount.wait_exit(30) == 0


# ----------------------------------------------------------------------------- logs


@pytest.mark.parametrize("matching", [True, False])
def test_journal_priority_prefixes_only_on_the_journal_stream(
    tmp_path: Path, matching: bool
) -> None:
    out = tmp_path / "stderr"
    out.touch()
    info = out.stat()
    journal = f"{info.st_dev}:{info.st_ino}" if matching else "1:1"
    script = (
        "import logging; from clearmount import log; log.setup(); "
        "logging.getLogger('clearmount.x').info('hello'); "
        "logging.getLogger('clearmount.x').error('bad')"
    )
    with open(out, "ab") as stderr:
        subprocess.run(
            [sys.executable, "-c", script],
            stderr=stderr,
            env=hermetic_env(tmp_path, {"JOURNAL_STREAM": journal}),
            check=True,
        )
    lines = out.read_text().splitlines()
    if matching:
        assert lines == ["<6>clearmount.x: hello", "<3>clearmount.x: bad"]
    else:
        assert lines[0].endswith("INFO clearmount.x: hello") and lines[0][0].isdigit()


def test_status_and_helper_docs_are_in_help(tmp_path: Path) -> None:
    result = clearmount("--help", env=hermetic_env(tmp_path))
    for needle in ("clearmount status", "file_mode=", "umask=", "log_level=", "metrics="):
        assert needle in result.stdout, needle

"""The daemon's life as an operator sees it: start, readiness, errors before mounting, clean
stops, a crash and the restart after it, and the helper commands.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from conftest import MountFactory
from devkit.confs import s3_conf
from devkit.mounts import hermetic_env, mount_points
from devkit.processes import poll_until, unique_name
from devkit.proxy import Proxy
from devkit.s3 import Identity, S3Server
from support import Mount

MIB = 1 << 20


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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, signum: int
) -> None:
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    assert mount.proc is not None
    os.listdir(mount.path / "s3")
    mount.proc.send_signal(signum)
    assert mount.wait_exit(30) == 0
    assert not mount.is_mounted()
    assert "unmounted" in mount.log_text()


def test_fusermount_unmount_ends_the_daemon(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    subprocess.run(["fusermount3", "-u", str(mount.path)], check=True)
    assert mount.wait_exit(30) == 0


def test_kill9_then_restart_cleans_stale_mount_and_reuses_cache(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    big = os.urandom(64 * MIB)
    small = os.urandom(1000)
    s3_server.put(bucket, "big.bin", big)
    s3_server.put(bucket, "small.bin", small)
    cache = tmp_path / "cache"
    conf = s3_conf(s3_proxy, s3_server.admin)
    first = mounted(conf, cache_dir=cache)
    base = f"s3://{s3_proxy.endpoint}/{bucket}"
    assert first.path_of(f"{base}/small.bin").read_bytes() == small
    global_dir = cache / "storage_manager/global"
    # a reader has the bytes before the fetch is checked and renamed into place
    poll_until(lambda: list(global_dir.glob("*.small.bin")), 10, "small.bin in the cache")

    # A fetch that hangs half-way: the proxy stalls every body after 1 MiB.
    s3_proxy.stall(
        after_bytes=MIB, seconds=120, count=None, method="GET", path=f"/{bucket}/big.bin"
    )
    reader = subprocess.Popen(
        ["cat", str(first.path_of(f"{base}/big.bin"))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    poll_until(lambda: list(global_dir.glob("*.partially")), 30, "a partial download")
    assert first.proc is not None
    first.proc.kill()
    first.proc.wait(10)
    reader.wait(30)
    assert reader.returncode != 0  # the reader got an error, not short or wrong bytes
    with pytest.raises(OSError):
        os.listdir(first.path)  # Transport endpoint is not connected
    s3_proxy.reset()

    second = mounted(conf, cache_dir=cache, mountpoint=first.path)
    poll_until(lambda: "ready:" in second.log_text(), 30, "the restarted daemon")
    assert "dead mount" in second.log_text() or "stale" in second.log_text()
    assert not list(global_dir.glob("*.partially"))  # the dead writer's partial was swept
    assert second.path_of(f"{base}/small.bin").read_bytes() == small
    assert s3_proxy.count("GET", f"/{bucket}/small.bin") == 0  # cache reused
    data = second.path_of(f"{base}/big.bin").read_bytes()
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(big).hexdigest()


def test_background_mode_returns_once_ready(
    s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "ready.txt", b"ready")
    conf = tmp_path / "clearml.conf"
    conf.write_text(s3_conf(s3_proxy, s3_server.admin))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = hermetic_env(tmp_path)
    result = clearmount(
        str(mnt), "--config", str(conf), "--cache-dir", str(tmp_path / "c"), env=env
    )
    try:
        assert result.returncode == 0, result.stderr
        # no waiting: exit 0 means the mount answers
        assert (mnt / f"s3/{s3_proxy.endpoint}/{bucket}/ready.txt").read_bytes() == b"ready"
        log = (tmp_path / "c/clearmount/clearmount.log").read_text()
        assert "ready:" in log
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    poll_until(lambda: not is_mounted(mnt), 10, "unmount")
    poll_until(
        lambda: not [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).find(str(mnt)) >= 0],
        15,
        "the background daemon to exit",
    )


def test_mount_without_any_config_warns_once_naming_the_files_searched(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = hermetic_env(home)  # no clearml.conf, no CLEARML_CONFIG_FILE
    searched = f"none of {home}/trains.conf, {home}/clearml.conf exists"

    def warnings(text: str) -> list[str]:
        return [line for line in text.splitlines() if "WARNING" in line]

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = clearmount(str(mnt), "--cache-dir", str(tmp_path / "c"), env=env)
    try:
        assert result.returncode == 0, result.stderr
        assert len(warnings(result.stderr)) == 1 and searched in result.stderr, result.stderr
        assert sorted(os.listdir(mnt)) == ["file", "s3"]
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    poll_until(lambda: not is_mounted(mnt), 10, "unmount")

    mnt2, cache2 = str(tmp_path / "mnt2"), str(tmp_path / "c2")
    foreground = Mount(
        path=tmp_path / "mnt2",
        cache_dir=tmp_path / "c2",
        config_path=home / "clearml.conf",
        log_path=tmp_path / "foreground.log",
        argv=[sys.executable, "-m", "clearmount", mnt2, "--foreground", "--cache-dir", cache2],
        env=env,
    ).start()
    try:
        poll_until(lambda: "ready:" in foreground.log_text(), 10, "the daemon to be ready")
        assert len(warnings(foreground.log_text())) == 1, foreground.log_text()
        assert searched in foreground.log_text()
    finally:
        foreground.stop()


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_mount_point_errors_exit_4(
    s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path, mounted: MountFactory
) -> None:
    conf = tmp_path / "clearml.conf"
    conf.write_text(s3_conf(s3_proxy, s3_server.admin))
    env = hermetic_env(tmp_path)
    args = ("--config", str(conf), "--cache-dir", str(tmp_path / "c"), "--foreground")

    missing = clearmount(str(tmp_path / "nope"), *args, env=env)
    assert missing.returncode == 4
    assert "does not exist" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1

    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    not_empty = clearmount(str(full), *args, env=env)
    assert not_empty.returncode == 4 and "not empty" in not_empty.stderr

    live = mounted(s3_conf(s3_proxy, s3_server.admin))
    again = clearmount(str(live.path), *args, env=env)
    assert again.returncode == 4 and "already" in again.stderr
    assert live.is_mounted()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sdk { aws { s3 { key: [unclosed", "cannot parse"),
        (
            "sdk { aws { s3 { secret: ${CLEARMOUNT_TEST_UNSET_VARIABLE} } } }",
            "CLEARMOUNT_TEST_UNSET_VARIABLE",
        ),
    ],
)
def test_bad_config_is_one_line_exit_3_and_nothing_mounted(
    tmp_path: Path, text: str, expected: str
) -> None:
    conf = tmp_path / "clearml.conf"
    conf.write_text(text)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = clearmount(str(mnt), "--config", str(conf), "--foreground", env=hermetic_env(tmp_path))
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not is_mounted(mnt)


def test_unusable_cache_dir_is_exit_3(s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path) -> None:
    conf = tmp_path / "clearml.conf"
    conf.write_text(s3_conf(s3_proxy, s3_server.admin))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = clearmount(
        str(mnt),
        "--config",
        str(conf),
        "--cache-dir",
        str(blocker / "cache"),
        "--foreground",
        env=hermetic_env(tmp_path),
    )
    assert result.returncode == 3
    assert "cache directory" in result.stderr and "not usable" in result.stderr
    assert not is_mounted(mnt)


def test_variables_from_the_environment_reach_the_mount(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy
) -> None:
    bucket = s3_server.make_bucket()
    s3_server.put(bucket, "env.txt", b"from env")
    admin = s3_server.admin
    conf = s3_conf(s3_proxy, {"key": "${TEST_S3_KEY}", "secret": "${TEST_S3_SECRET}"})
    conf = conf.replace('"${TEST_S3_KEY}"', "${TEST_S3_KEY}").replace(
        '"${TEST_S3_SECRET}"', "${TEST_S3_SECRET}"
    )
    mount = mounted(conf, env={"TEST_S3_KEY": admin.key, "TEST_S3_SECRET": admin.secret})
    assert mount.path_of(f"s3://{s3_proxy.endpoint}/{bucket}/env.txt").read_bytes() == b"from env"


def test_config_command_masks_secrets_and_shows_resolution(
    s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    admin, second = s3_server.admin, s3_server.second
    conf = tmp_path / "clearml.conf"
    conf.write_text(
        s3_conf(s3_proxy, {"bucket": "models", "key": second.key, "secret": second.secret}, admin)
    )
    result = clearmount("config", "--config", str(conf), env=hermetic_env(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    for secret in (admin.secret, second.secret):
        assert secret not in out
    assert f"s3://{s3_proxy.endpoint}/models -> sdk.aws.s3.credentials[0]" in out


def test_config_command_shows_the_running_mounts_files(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    admin = s3_server.admin
    first = mounted(s3_conf(s3_proxy, {"bucket": "first-models", **_keys(admin)}, admin))
    second = mounted(s3_conf(s3_proxy, {"bucket": "second-models", **_keys(admin)}, admin))
    home = tmp_path / "home"
    home.mkdir()
    (home / "clearml.conf").write_text(s3_conf(s3_proxy, {"bucket": "home-models", **_keys(admin)}))
    env = hermetic_env(home)

    # named with --mount: that daemon's files, said so in the first line, secrets masked
    chosen = clearmount("config", "--mount", str(second.path), env=env)
    assert chosen.returncode == 0, chosen.stderr
    lines = chosen.stdout.splitlines()
    assert lines[0].startswith(f"configuration of the clearmount mount at {second.path} (pid ")
    assert f"  {second.config_path}" in lines and "second-models" in chosen.stdout
    assert admin.secret not in chosen.stdout + chosen.stderr

    # several running, none named: says how to choose, shows what a new mount would read
    several = clearmount("config", env=env)
    assert several.returncode == 0, several.stderr
    first_line = several.stdout.splitlines()[0]
    assert "clearmount mounts run here" in first_line and "--mount MOUNTPOINT" in first_line
    assert str(first.path) in first_line and str(second.path) in first_line
    assert f"  {home / 'clearml.conf'}" in several.stdout.splitlines()

    # exactly one running: its files. The machine may run other people's mounts, so the
    # command runs in a private mount namespace where only `first` is left mounted.
    ours = os.path.realpath(first.path)
    script = (
        "from clearmount.mounts import clearmount_mounts\n"
        "from clearmount.cli import main\n"
        "import subprocess\n"
        f"for m in clearmount_mounts():\n"
        f"    if str(m) != {ours!r}:\n"
        "        subprocess.run(['umount', '--lazy', '--no-canonicalize', str(m)], check=True)\n"
        "main(['config'])\n"
    )
    alone = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert alone.returncode == 0, alone.stderr
    lines = alone.stdout.splitlines()
    assert lines[0].startswith(f"configuration of the clearmount mount at {ours} (pid "), lines[0]
    assert f"  {first.config_path}" in lines and "first-models" in alone.stdout
    assert "home-models" not in alone.stdout
    assert first.is_mounted() and second.is_mounted()  # only hidden in that namespace


def _keys(who: Identity) -> dict[str, str]:
    return {"key": who.key, "secret": who.secret}


def test_path_and_url_commands_map_both_ways(
    mounted: MountFactory, s3_server: S3Server, s3_proxy: Proxy, tmp_path: Path
) -> None:
    env = hermetic_env(tmp_path)
    relative = clearmount("path", "s3://minio:9000/bucket/a b/c.pt", env=env)
    # relative, or under the one clearmount mount this machine may have
    assert relative.stdout.strip().endswith("s3/minio:9000/bucket/a b/c.pt")
    mount = mounted(s3_conf(s3_proxy, s3_server.admin))
    url = f"s3://{s3_proxy.endpoint}/{unique_name('b')}/dir/x.bin"
    local = clearmount("path", url, "--mountpoint", str(mount.path), env=env)
    assert local.stdout.strip() == str(mount.path_of(url))
    back = clearmount("url", str(mount.path_of(url)), env=env)
    assert back.stdout.strip() == url
    assert clearmount("url", "/etc/passwd", env=env).returncode == 2


def test_help_answers_the_basics(tmp_path: Path) -> None:
    result = clearmount("--help", env=hermetic_env(tmp_path))
    assert result.returncode == 0
    for needle in (
        "MOUNTPOINT",
        "--config",
        "--cache-dir",
        "--foreground",
        "exit codes",
        "attr_timeout",
        "allow_other",
    ):
        assert needle in result.stdout, needle
    bad = clearmount(str(tmp_path), "-o", "no_such_option", env=hermetic_env(tmp_path))
    assert bad.returncode == 2 and "no_such_option" in bad.stderr


def test_every_option_and_flag_is_in_the_help_and_the_readme(tmp_path: Path) -> None:
    from clearmount.options import MountOptions

    help_text = clearmount("--help", env=hermetic_env(tmp_path)).stdout
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("### Mount options (`-o`)", 1)[1].split("\n### ", 1)[0]
    usage = readme.split("## Usage", 1)[1].split("```", 2)[1]
    names = [f.name for f in fields(MountOptions) if f.name != "kernel_flags"]
    for name in names:
        assert name in help_text, f"-o {name} missing from --help"
        assert f"`{name}" in table, f"-o {name} missing from the README's options table"
    for flag in ("--config", "--cache-dir", "--cache-max-size", "--cache-min-free", "-o"):
        assert flag in help_text and flag in usage, flag

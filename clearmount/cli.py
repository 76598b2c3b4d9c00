"""The command line: `clearmount MOUNTPOINT …` and the helper commands.

Owns: argument parsing, exit codes, daemonizing, and printing. Each command loads the
configuration once and hands typed values down; `UserError`s become one line on stderr and
their exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from clearmount import __version__, urls
from clearmount import config as config_module
from clearmount.cache import limits as cache_limits
from clearmount.cache.layout import make_layout
from clearmount.direct import DirectAccess
from clearmount.errors import ConfigError, UserError
from clearmount.mounts import clearmount_mounts, mount_containing

log = logging.getLogger("clearmount")

EXIT_CODES = """exit codes:
  0  mounted and ready (background), or unmounted cleanly (--foreground)
  1  unexpected failure (see the log)
  2  bad command line or -o option
  3  configuration error (clearml.conf unparsable, ${VAR} unset, cache dir unusable)
  4  mount point problem (missing, not a directory, not empty, already mounted)
  5  FUSE could not mount (no /dev/fuse, fuse3 not installed, not permitted)"""

MOUNT_HELP = """Mount every storage that clearml.conf configures under MOUNTPOINT, read-only
unless -o writable.

A path under the mount is the storage URL with "://" replaced by "/":
  s3://bucket/key                 -> MOUNTPOINT/s3/bucket/key
  s3://minio-host:9000/bucket/key -> MOUNTPOINT/s3/minio-host:9000/bucket/key
  gs://bucket/key                 -> MOUNTPOINT/gs/bucket/key
  azure://acct.blob.core.windows.net/container/key
                                  -> MOUNTPOINT/azure/acct.blob.core.windows.net/container/key
Files are fetched into the ClearML cache when opened and shared with the ClearML SDK.

other commands:
  clearmount config [--config FILE | --mount MOUNTPOINT]
                                      print the effective configuration (secrets masked);
                                      by default that of the one running mount, if one runs
  clearmount path URL                 print the mount path of a storage URL
  clearmount url PATH                 print the storage URL of a mount path
  clearmount prefetch URL|PATH...     fetch into the cache before a job (--recursive, --pin)
  clearmount cache ls|du|prune|clear|pin|unpin   inspect and manage the cache
  clearmount status [MOUNTPOINT] [--json]  fetches in flight, cache use, recent errors
"""

OPTIONS_HELP = """mount options (-o, comma separated):
  attr_timeout=S      seconds a file's metadata is trusted before asking the server (60)
  dir_timeout=S       seconds a directory listing is reused (60)
  negative_timeout=S  seconds "no such file" is remembered (5)
  fetch_concurrency=N ranged GETs at once over all downloads (32)
  fetch_processes=N   worker processes that fetch cold files of up to 1 MiB and a zip's
                      headers, off the daemon's GIL (2 on more than one core, else 0: the
                      daemon's threads)
  metadata_concurrency=N  HEAD/LIST requests at once (32)
  uid=N,gid=N         owner shown for every file, number or name (default: the user
                      running clearmount)
  writable            accept writes: new files written sequentially are uploaded, mkdir,
                      rename of files (README "Writing"); `ro` turns it off, `rw` never on
  allow_overwrite     with writable: O_TRUNC of an existing object replaces it (else EPERM)
  allow_delete        with writable: rm removes the object (else EPERM)
  file_mode=M, dir_mode=M  permission bits, octal (0444, 0555; writable: 0644, 0755);
                      checked by the kernel
  umask=M             bits cleared from both modes (0; e.g. 077: the owner only)
  allow_other         let other users read the mount (needs user_allow_other in /etc/fuse.conf)
  allow_root          let root read the mount
  nonempty            allow mounting over a non-empty directory
  nofile              do not show local paths (file:// URLs) under MOUNTPOINT/file
  allow_unlisted_endpoints  let paths reach S3 host:port endpoints (and http(s) hosts)
                      that clearml.conf does not name (off: such paths do not exist)
  noverify            skip the MD5 check of downloads against S3 ETags (SSE-KMS/SSE-C
                      buckets, whose ETags are not MD5s)
  l2_takeover=S       seconds after which a dead node's lease on a shared (L2) cache
                      fetch is taken over (30); the L2 is clearml.conf's
                      ...disk_space_file_size_strategy.secondary.default_base_dir
  l2_timeout=S        seconds one shared (L2) cache operation may take before the
                      bucket is read instead (5)
  log_file=PATH       log file (default: stderr with --foreground, else
                      CACHE/clearmount/clearmount.log)
  log_level=L         debug, info, warning or error (info; --debug means debug)
  metrics=HOST:PORT   serve Prometheus metrics at http://HOST:PORT/metrics
  noexec, nosuid, nodev, noatime  passed to the kernel; other fstab options
                      (_netdev, nofail, noauto, x-systemd.*, ...) are ignored
"""


def _mount_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clearmount",
        description=MOUNT_HELP,
        epilog=OPTIONS_HELP + "\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mountpoint", type=Path, help="an existing, empty directory")
    _add_config_arg(parser)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="cache directory (default: CLEARML_CACHE_DIR, sdk.storage.cache.default_base_dir, "
        "~/.clearml/cache)",
    )
    parser.add_argument(
        "--cache-max-size",
        metavar="SIZE",
        help="most the cache may hold, e.g. 50GB or 200GiB (default: sdk.storage.cache."
        "disk_space_file_size_strategy.size.max_used_bytes, else no limit)",
    )
    parser.add_argument(
        "--cache-min-free",
        metavar="SIZE",
        help="free space to keep on the cache's filesystem (default: ...size.min_free_bytes, "
        "else 5%% of the filesystem)",
    )
    parser.add_argument(
        "-f",
        "--foreground",
        action="store_true",
        help="stay in the foreground and log to stderr (default: return once the mount is "
        "ready and run in the background)",
    )
    parser.add_argument("-d", "--debug", action="store_true", help="log debug messages")
    parser.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPT[,OPT...]",
        help="mount options, see below",
    )
    parser.add_argument("--version", action="version", version=f"clearmount {__version__}")
    return parser


def _add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="clearml.conf to read (default: CLEARML_CONFIG_FILE, else ~/clearml.conf over "
        "~/trains.conf)",
    )


def _load(path: Path | None) -> config_module.Config:
    config = config_module.load(path)
    for warning in config.warnings:
        log.warning("%s", warning)
    return config


def _mount(argv: Sequence[str]) -> int:
    args = _mount_parser().parse_args(argv)
    from clearmount import daemon
    from clearmount import log as logsetup
    from clearmount.options import parse_options

    options = parse_options(args.options)
    # --foreground logs to stderr (the journal, under systemd) unless a file is named
    logsetup.setup(
        debug=args.debug,
        path=options.log_file if args.foreground else None,
        level=options.log_level,
    )
    config = _load(args.config)
    if not config.files:
        searched = ", ".join(map(str, config_module.default_config_paths(os.environ)))
        log.warning(
            "no configuration file: none of %s exists and CLEARML_CONFIG_FILE is not set, so "
            "only what the environment's credentials reach is served (name one with --config)",
            searched,
        )
    cache_root = (args.cache_dir or config.cache.base_dir).expanduser().absolute()
    cache = make_layout(cache_root, config.cache.disk_strategy)
    cache.prepare()
    limits = cache_limits.resolve(config, cache.root, args.cache_max_size, args.cache_min_free)
    low_room = cache_limits.low_room(limits, cache.root)
    if low_room is not None:
        log.warning("%s", low_room)
    mountpoint = args.mountpoint.expanduser().absolute()
    daemon.prepare_mountpoint(mountpoint, options.nonempty)
    daemon.check_rules(config, mountpoint)
    request = daemon.MountRequest(
        mountpoint, config, options, cache, limits, config_arg=args.config
    )
    if args.foreground:
        daemon.serve(request, on_ready=lambda: None)
        return 0
    log_file = options.log_file or str(cache.state_dir / "clearmount.log")
    report = _daemonize()
    logsetup.setup(debug=args.debug, path=log_file, level=options.log_level)
    try:
        daemon.serve(request, on_ready=lambda: report(0, f"mounted {mountpoint}"))
    except UserError as exc:
        log.error("%s", exc)
        report(exc.exit_code, str(exc))
        return exc.exit_code
    return 0


def _daemonize() -> Callable[[int, str], None]:
    """Fork; the parent waits until the child reports ready (exit 0) or failed (its code)."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        code, _, text = message.partition(":")
        if not code:
            print(
                "clearmount: the daemon exited before the mount was ready (see its log)",
                file=sys.stderr,
            )
            os._exit(1)
        if code != "0":
            print(f"clearmount: {text}", file=sys.stderr)
        os._exit(int(code))
    os.close(read_end)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)

    def report(code: int, text: str) -> None:
        try:
            os.write(write_end, f"{code}:{text}".encode())
            os.close(write_end)
        except OSError:
            return
        # Nobody reads our terminal any more: logs go to the log file from here on.
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)

    return report


def _config_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="clearmount config",
        description="Print the effective configuration (secrets masked) and which credentials "
        "entry each configured bucket, host and container resolves to.",
    )
    _add_config_arg(parser)
    parser.add_argument(
        "--mount",
        type=Path,
        metavar="MOUNTPOINT",
        help="show the files this running mount uses (default: those of the only clearmount "
        "mount, when exactly one runs; else the files found as the SDK finds them)",
    )
    args = parser.parse_args(argv)
    from clearmount import log as logsetup

    logsetup.setup()
    config, origin = _config_to_show(args.config, args.mount)
    if origin:
        print(origin)
    for warning in config.warnings:
        log.warning("%s", warning)
    print(config_module.describe(config))
    print("resolution (configured URL -> credentials entry):")
    print(textwrap.indent(urls.describe_matches(config), "  "))
    return 0


def _config_to_show(explicit: Path | None, mount: Path | None) -> tuple[config_module.Config, str]:
    """The configuration `clearmount config` shows, and a first line saying whose it is.

    `--config` wins; then `--mount`; then, with exactly one clearmount mount running, the
    files that mount uses (its daemon says which); else the usual search.
    """
    from clearmount import control

    if explicit is not None:
        return config_module.load(explicit), ""
    if mount is None:
        running = sorted(control.mount_owners())
        if len(running) > 1:
            note = (
                f"{len(running)} clearmount mounts run here ({', '.join(running)}): showing the "
                "files a new mount would read; choose one with --mount MOUNTPOINT"
            )
            return config_module.load(), note
        if not running:
            return config_module.load(), ""
        try:
            status = control.call(None, {"op": "status"})
        except control.ControlError as exc:
            note = f"the clearmount mount at {running[0]} did not answer ({exc}): showing the "
            return config_module.load(), note + "files a new mount would read"
    else:
        status = control.call(mount, {"op": "status"})
    files = tuple(Path(path) for path in status.get("config_files", []))
    origin = (
        f"configuration of the clearmount mount at {status['mountpoint']} (pid {status['pid']}): "
        "its files, read again now (${VAR}s and environment fallbacks from this shell)"
    )
    return config_module.load_files(files), origin


def _path_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="clearmount path", description="Print where a storage URL appears in the mount."
    )
    parser.add_argument("url", help="e.g. s3://bucket/key or s3://host:9000/bucket/key")
    parser.add_argument(
        "--mountpoint",
        type=Path,
        help="the mount point (default: the one clearmount mount, else a relative path)",
    )
    _add_config_arg(parser)
    args = parser.parse_args(argv)
    try:
        config: config_module.Config | None = config_module.load(args.config)
    except ConfigError:
        if args.config:
            raise
        config = None  # the mapping itself needs no configuration
    try:
        relative = urls.url_to_path(args.url, config.s3 if config else None)
    except ValueError as exc:
        raise UserError(f"not a storage URL: {args.url} ({exc})", 2) from None
    mountpoint = args.mountpoint
    if mountpoint is None:
        mounts = clearmount_mounts()
        mountpoint = mounts[0] if len(mounts) == 1 else None
    print(os.path.join(mountpoint, relative) if mountpoint else relative)
    if config is not None:
        direct = DirectAccess(config.direct_access, config.path_substitution, mountpoint)
        target = direct.resolve(args.url)
        if target is not None:
            print(f"direct: {target.path} ({target.rule})")
    return 0


def _url_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="clearmount url", description="Print the storage URL of a path in the mount."
    )
    parser.add_argument("path", help="a path under a clearmount mount, or relative (s3/bucket/k)")
    args = parser.parse_args(argv)
    found = mount_containing(args.path)
    relative = found[1] if found else args.path
    try:
        print(urls.path_to_url(relative))
    except ValueError:
        raise UserError(f"{args.path} is not a path under a clearmount mount", 2) from None
    return 0


def _cache_command(argv: Sequence[str]) -> int:
    from clearmount import cache_cli

    return cache_cli.cache_command(argv)


def _prefetch_command(argv: Sequence[str]) -> int:
    from clearmount import cache_cli

    return cache_cli.prefetch_command(argv)


def _status_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="clearmount status",
        description="Ask a running daemon what it is doing: fetches in flight with their "
        "progress, cache use against its limits, counters, recent errors.",
    )
    parser.add_argument(
        "mountpoint",
        nargs="?",
        type=Path,
        help="the mount point (default: the one clearmount mount on this machine)",
    )
    parser.add_argument("--json", action="store_true", help="print the daemon's reply as JSON")
    args = parser.parse_args(argv)
    from clearmount import control

    reply = control.call(args.mountpoint, {"op": "status"})
    reply.pop("ok", None)
    print(json.dumps(reply, indent=2) if args.json else control.render_status(reply))
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "config": _config_command,
    "path": _path_command,
    "url": _url_command,
    "cache": _cache_command,
    "prefetch": _prefetch_command,
    "status": _status_command,
}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS.get(argv[0]) if argv else None
    try:
        code = command(argv[1:]) if command else _mount(argv)
    except UserError as exc:
        print(f"clearmount: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)

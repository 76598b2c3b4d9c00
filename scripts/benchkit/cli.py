"""The command line and the orchestration: start and seed the site, run, report, exit code."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from devkit.processes import ServerError

from . import contenders, scenarios, sites
from .common import KIB, MIB, WORKDIR, log
from .machine import PageCache, load_average, machine_facts, package_version, unmount
from .measure import Reader
from .report import render
from .results import Results
from .runner import Bench
from .seed import FULL, QUICK, seed
from .session import MountSession, py_spy_binary


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    row_names = list(scenarios.selectable())
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="clearmount vs rclone mount vs s3fs vs the SDK, side by side (as root).",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 1 rep (smoke run)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated contenders (of {', '.join(contenders.load())})",
    )
    parser.add_argument(
        "--rows",
        default="",
        help=f"comma-separated rows to measure (of {', '.join(row_names)}; default all; "
        "warm implies cold)",
    )
    parser.add_argument("--backend", choices=sorted(sites.load()), default="s3")
    parser.add_argument("--out", default="bench-results.md", help="markdown output file")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record py-spy profiles of clearmount (collapsed stacks in .cache/bench/)",
    )
    parser.add_argument(
        "--daemon-cpus",
        default="",
        metavar="LIST",
        help="pin every mount process to these CPUs (taskset -c LIST, e.g. 0 or 0,1): the "
        "DataLoader row at one core and at two",
    )
    parser.add_argument(
        "--clearmount-options",
        default="",
        metavar="OPTIONS",
        help="-o options of the clearmount mount (e.g. fetch_processes=2)",
    )
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    rows = {name.strip() for name in args.rows.split(",") if name.strip()} or set(row_names)
    unknown = rows - set(row_names)
    if unknown:
        parser.error(f"unknown row(s) {', '.join(sorted(unknown))} (of {', '.join(row_names)})")
    for name in list(rows):
        rows.update(scenarios.selectable()[name].implies)
    args.rows = frozenset(rows)
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("scripts/bench: run as root (FUSE mounts, drop_caches)", file=sys.stderr)
        return 2
    known = contenders.load()
    wanted = [n.strip() for n in args.only.split(",") if n.strip()] or list(known)
    unknown = set(wanted) - set(known)
    if unknown:
        print(f"scripts/bench: unknown contender(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if args.backend != "s3":
        wanted = [n for n in wanted if n == "clearmount"]
    sizes = QUICK if args.quick else FULL
    workdir = WORKDIR / args.backend
    for stale in (workdir / "mnt").glob("*"):
        unmount(stale)
    shutil.rmtree(workdir / "sessions", ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    for name in sorted(args.rows):
        only = {s.name: s for s in scenarios.load()}[name].backends
        if only and args.backend not in only:
            log(f"row {name} runs on {', '.join(only)} only: skipped")
    for name, cls in known.items():
        if name in wanted:
            cls.install()
    if args.profile and not py_spy_binary():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=False)

    site = sites.load()[args.backend](workdir)
    results = Results()
    chosen: list[contenders.Contender] = []
    for name in wanted:
        contender = known[name](site)
        reason = contender.unavailable()
        if reason:
            results.notes.append(f"{name} skipped: {reason}")
            log(f"{name} skipped: {reason}")
        else:
            chosen.append(contender)
    page_cache = PageCache()
    if not page_cache.works:
        log(page_cache.problem)
    facts = machine_facts()
    try:
        log(f"starting {site.server_name}")
        site.start()
        selected = [
            s
            for s in scenarios.load()
            if s.name in args.rows and (not s.backends or args.backend in s.backends)
        ]
        parts = frozenset(part for s in selected for part in s.seeds)
        if "base" in parts:
            log(
                f"seeding {sizes.big // MIB} MiB + {sizes.small_count} x "
                f"{sizes.small_size // KIB} KiB + {sizes.tiny_count} tiny objects"
            )
        data = seed(site, sizes, workdir, parts)
        versions = {c.name: c.version() for c in chosen}
        versions[site.server_name] = site.server_version()
        versions["boto3"] = package_version("boto3")
        if site.sdk_package:
            versions[site.sdk_package] = package_version(site.sdk_package)
        bench = Bench(
            site,
            data,
            chosen,
            args.reps,
            page_cache,
            Reader(sizes.big),
            workdir,
            args.profile,
            results,
            selected,
            args.daemon_cpus,
        )
        for contender in chosen:
            if contender.name == "clearmount" and args.clearmount_options:
                contender.options = args.clearmount_options  # type: ignore[attr-defined]
                results.notes.append(f"clearmount mounted with -o {args.clearmount_options}")
        if args.daemon_cpus:
            results.notes.append(f"mount processes pinned to CPU(s) {args.daemon_cpus} (taskset)")
        if args.profile:
            results.notes.append("py-spy was attached to clearmount: its timings are perturbed")
        bench.run()
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    except (ServerError, TimeoutError, OSError) as exc:
        log(f"cannot run the benchmark: {exc}")
        return 2
    finally:
        MountSession.stop_all()
        site.stop()
    facts["load_end"] = load_average()
    report = render(bench, facts, versions, args)
    print(report)
    Path(args.out).write_text(report)
    log(f"written to {args.out}")
    if results.wrong_bytes:
        log(f"{len(results.wrong_bytes)} wrong-bytes failure(s)")
        return 1
    return 0

"""The repetitions: the reference, then each contender, one fresh mount per scenario session.

``Visit`` is what a scenario's measurement sees: who is measured, the site and data set, the
mount (or, for the reference, a fresh scratch directory) and the step, watchdog and profiler
bound to them. A session with a ``proxied`` scenario gets a fresh counting proxy in front of
the server, and its mount is given the proxy's endpoint (``Site.proxy``); ``daemon_cpus``
starts every mount process under ``taskset -c``.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from devkit.proxy import Proxy

from .common import BUCKET, log
from .contenders import Contender
from .machine import PageCache
from .measure import Reader
from .results import Results, step
from .scenarios import Scenario
from .seed import Dataset, Sizes
from .session import MountSession, Profiler, Watchdog
from .sites import Site


@dataclasses.dataclass
class Bench:
    site: Site
    data: Dataset
    contenders: list[Contender]
    reps: int
    page_cache: PageCache
    reader: Reader
    workdir: Path
    profile: bool
    results: Results
    #: the selected scenarios, in measuring order (see scenarios.load)
    scenarios: list[Scenario]
    daemon_cpus: str = ""  # taskset -c list for the mount processes ("" = not pinned)

    @property
    def sizes(self) -> Sizes:
        return self.data.sizes

    def sessions(self) -> Iterator[tuple[str, list[Scenario]]]:
        """(session name, its scenarios), in measuring order."""
        grouped: dict[str, list[Scenario]] = {}
        for scenario in self.scenarios:
            if scenario.session:
                grouped.setdefault(scenario.session, []).append(scenario)
        yield from grouped.items()

    def run(self) -> None:
        for rep in range(1, self.reps + 1):
            log(f"repetition {rep}/{self.reps}: reference")
            self.reference(rep)
            for contender in self.contenders:
                log(f"repetition {rep}/{self.reps}: {contender.name}")
                self.contender(contender, rep)

    def reference(self, rep: int) -> None:
        scratch = self.workdir / "reference"
        for _, scenarios in self.sessions():
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            try:
                visit = Visit(self, "reference", rep, scratch=scratch)
                for scenario in scenarios:
                    if scenario.reference is not None:
                        scenario.reference(visit)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

    def contender(self, contender: Contender, rep: int) -> None:
        for name, scenarios in self.sessions():
            session = MountSession(
                contender,
                self.workdir / "sessions" / f"{contender.name}-{name}",
                self.workdir / "mnt" / contender.name,
                self.daemon_cpus,
            )
            proxy = None
            if any(scenario.proxied for scenario in scenarios):
                proxy = Proxy(self.site.upstream(), name=f"bench-{name}").start()
                self.site.proxy = proxy
            try:
                with step(self.results, "start", contender.name):
                    self.results.add("start", contender.name, session.start())
                    visit = Visit(self, contender.name, rep, session=session, proxy=proxy)
                    for scenario in scenarios:
                        if scenario.contender is not None:
                            scenario.contender(visit)
            finally:
                session.stop()
                if proxy is not None:
                    self.site.proxy = None
                    proxy.stop()


@dataclasses.dataclass
class Visit:
    """One session of the reference or of a contender, as its scenarios see it."""

    bench: Bench
    who: str  # "reference" or the contender's name
    rep: int
    session: MountSession | None = None  # a contender's fresh mount
    scratch: Path | None = None  # a fresh directory for the reference, removed after
    proxy: Proxy | None = None  # between the mount and the server (proxied sessions)
    state: dict[str, Any] = dataclasses.field(default_factory=dict)  # shared by its scenarios

    @property
    def site(self) -> Site:
        return self.bench.site

    @property
    def data(self) -> Dataset:
        return self.bench.data

    @property
    def sizes(self) -> Sizes:
        return self.bench.data.sizes

    @property
    def page_cache(self) -> PageCache:
        return self.bench.page_cache

    @property
    def reader(self) -> Reader:
        return self.bench.reader

    @property
    def mount(self) -> MountSession:
        """The contender's mount (a reference's visit has none)."""
        assert self.session is not None, f"{self.who} has no mount"
        return self.session

    @property
    def root(self) -> Path:
        """The bucket root under the contender's mount."""
        return self.mount.root

    def bucket_bytes(self, key: str) -> int:
        """Response body bytes the server has sent for GETs of `key` through the proxy."""
        assert self.proxy is not None, f"{self.who}'s session has no proxy"
        gets = self.proxy.requests("GET", f"/{BUCKET}/{key}")
        sent = sum(s.body_bytes for s in gets)
        log(f"{self.who}: {len(gets)} GETs of {key}, {sent} bytes")
        return sent

    def add(self, row: str, value: float) -> None:
        self.bench.results.add(row, self.who, value)

    def step(self, row: str) -> AbstractContextManager[None]:
        """A failure inside is recorded against `row` and the benchmark goes on."""
        return step(self.bench.results, row, self.who)

    def watchdog(self, seconds: float, what: str) -> Watchdog:
        """Kills the mount (which unblocks its readers) if the step takes longer."""
        return Watchdog(seconds, self.mount.kill, f"{self.who}: {what}")

    def profiler(self, tag: str, idle: bool = False) -> Profiler:
        """py-spy on clearmount's process while the step runs, when --profile asks for it."""
        out = self.bench.workdir / f"profile-{self.who}-{tag}-{self.rep}.txt"
        enabled = self.bench.profile and self.who == "clearmount"
        return Profiler(enabled, self.mount.proc_pid, out, idle)

"""The cache limits' one owner (`cache.limits`): what fits, when the cache is over, when the
eviction loop acts, the bytes still to come for fetches in flight, and the limits resolved
from the command line over clearml.conf over the defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from clearmount import config
from clearmount.cache.limits import RESCAN_INTERVAL, CacheLimits, eviction_due, resolve
from clearmount.errors import UserError
from memstore import GatedStore, make_fetcher


def test_fits_counts_the_byte_limit_the_free_space_and_the_bytes_to_come() -> None:
    limits = CacheLimits(max_bytes=1000, min_free_bytes=100)
    assert limits.fits(1000, free=None, used=0, reserved=0)
    assert not limits.fits(1001, free=None, used=0, reserved=0)
    # 500 free with 100 kept: 400 bytes of room, plus the 300 that evicting every file frees,
    # minus the 200 still to come for the downloads in flight
    assert limits.fits(500, free=500, used=300, reserved=200)
    assert not limits.fits(501, free=500, used=300, reserved=200)
    assert CacheLimits().fits(10**15, free=0, used=0, reserved=0)


def test_exceeded_counts_the_bytes_to_come() -> None:
    limits = CacheLimits(max_bytes=1000, min_free_bytes=100)
    assert not limits.exceeded(used=800, free=300, reserved=200)
    assert limits.exceeded(used=801, free=10**6, reserved=200)  # the byte limit
    assert limits.exceeded(used=0, free=299, reserved=200)  # the free space
    assert limits.exceeded(used=0, free=None, reserved=0)  # free space unknown: over
    assert not CacheLimits(max_bytes=1000).exceeded(used=0, free=None, reserved=0)


def test_eviction_is_due_when_the_estimate_is_over_or_the_last_scan_is_old() -> None:
    limits = CacheLimits(max_bytes=1000)
    assert not eviction_due(limits, since_scan=1.0, used=500, free=None, reserved=500)
    assert eviction_due(limits, since_scan=1.0, used=500, free=None, reserved=501)
    assert eviction_due(limits, since_scan=RESCAN_INTERVAL, used=0, free=None, reserved=0)


async def test_a_fetch_reserves_the_bytes_it_has_still_to_come(tmp_path: Path) -> None:
    fetcher = make_fetcher(tmp_path)
    data = os.urandom(3 << 20)
    store = GatedStore({"k": data})
    async with trio.open_nursery() as nursery:
        fetcher.start(nursery)
        reader = await fetcher.open("s3://memory/k", store, store.head("k"), True)
        reserved = fetcher.reserved_bytes()
        assert reserved == len(data)  # nothing received yet
        # room for two such objects on the disk, but one of them is on its way
        limits = CacheLimits(None, min_free_bytes=1)
        free = 1 + 2 * len(data)
        assert limits.fits(len(data), free, fetcher.usage_bytes, reserved)
        assert not limits.fits(len(data) + 1, free, fetcher.usage_bytes, reserved)
        assert limits.exceeded(fetcher.usage_bytes, len(data), reserved)
        store.gate.set()
        assert await reader.read(0, len(data)) == data
        reader.close()
    assert fetcher.reserved_bytes() == 0
    assert fetcher.usage_bytes == len(data)


def _conf(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "clearml.conf"
    path.write_text(text)
    return config.load(path, environ={})


def test_limits_resolve_flags_over_clearml_conf_over_the_defaults(tmp_path: Path) -> None:
    conf = _conf(
        tmp_path, 'sdk.storage.cache.size { max_used_bytes: "10GiB", min_free_bytes: 1000 }'
    )
    # the legacy size section turns ClearML 2.1.12's disk strategy on: its margin and threshold
    assert resolve(conf, tmp_path) == CacheLimits(10 << 30, 1000, 0.05, 20.0)
    assert resolve(conf, tmp_path, "1MB", "2k") == CacheLimits(10**6, 2000, 0.05, 20.0)
    vfs = os.statvfs(tmp_path)
    default = _conf(tmp_path, "")
    assert resolve(default, tmp_path) == CacheLimits(None, vfs.f_blocks * vfs.f_frsize // 20)
    with pytest.raises(UserError, match="bad size: not a size: 'lots'"):
        resolve(conf, tmp_path, max_size="lots")


def test_the_cache_commands_do_not_import_the_cli() -> None:
    # cache_cli used to borrow cli.cache_limits: the package's one import cycle
    code = "import sys, clearmount.cache_cli; print('clearmount.cli' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"

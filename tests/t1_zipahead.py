"""Finding a zip's members from its end (`cache.zipahead`), over real archives: written by
Python's zipfile (plain, zip64, with a comment, behind prepended bytes) and by torch.save;
and anything else (a cut tail, garbage) gives no hints and no exception."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearmount.cache import zipahead

TORCH_SAVE = Path(__file__).parent / "data" / "torch_save.pt"


def headers_found(data: bytes, tail_size: int = zipahead.TAIL) -> list[int] | None:
    """What the fetch learns once the last `tail_size` bytes and then the directory are on
    disk: the members' local header offsets, or None (no directory found)."""
    tail_start = max(0, len(data) - tail_size)
    found = zipahead.find_directory(data[tail_start:], tail_start, len(data))
    if found is None:
        return None
    start, end, shift = found
    return zipahead.member_headers(data[start:end], shift, len(data))


def headers_zipfile_sees(data: bytes) -> list[int]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return sorted(info.header_offset for info in archive.infolist())


def make_zip(members: int = 20, comment: bytes = b"", **kwargs: object) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", **kwargs) as archive:  # type: ignore[arg-type]
        for i in range(members):
            archive.writestr(f"dir/member{i}.bin", bytes([i]) * (1000 + 37 * i))
        archive.comment = comment
    return out.getvalue()


@pytest.mark.parametrize(
    ("kind", "comment", "compression"),
    [
        ("stored", b"", zipfile.ZIP_STORED),
        ("deflated", b"", zipfile.ZIP_DEFLATED),
        ("with a comment", b"made by a test", zipfile.ZIP_STORED),
    ],
)
def test_the_members_of_a_zipfile_archive_are_found(
    kind: str, comment: bytes, compression: int
) -> None:
    data = make_zip(comment=comment, compression=compression)
    assert headers_found(data) == headers_zipfile_sees(data), kind


def test_the_members_of_a_torch_save_checkpoint_are_found() -> None:
    # torch.save writes a zip64 end record whatever the size, and pads local headers
    data = TORCH_SAVE.read_bytes()
    assert headers_found(data) == headers_zipfile_sees(data)
    # the 8 KiB page read of its end holds the whole directory
    assert headers_found(data, 8192) == headers_zipfile_sees(data)


def test_zip64_archives_and_prepended_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # past this limit zipfile writes zip64 records and per-member zip64 offsets, as it does
    # for archives over 4 GiB
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 3000)
    data = make_zip()
    assert b"PK\x06\x06" in data[-200:]
    expected = headers_zipfile_sees(data)
    assert max(expected) > 3000 and headers_found(data) == expected
    prefixed = b"#!/bin/sh\nexec python -m x\n" + data  # a self-running archive
    assert headers_found(prefixed) == headers_zipfile_sees(prefixed)


def test_a_tail_cut_before_the_end_records_or_a_directory_cut_short_gives_nothing_wrong() -> None:
    data = TORCH_SAVE.read_bytes()
    expected = headers_zipfile_sees(data)
    for cut in range(1, 140):
        # short of the end records (EOCD, zip64 locator and record): no directory yet
        assert headers_found(data, cut) in (None, expected), cut
    assert headers_found(data, 97) is None and headers_found(data, 98) == expected
    start, end, shift = zipahead.find_directory(data, 0, len(data)) or (0, 0, 0)
    for cut in range(1, end - start):
        # only whole entries count: at most the members they list, never an offset made up
        partial = zipahead.member_headers(data[start : end - cut], shift, len(data))
        assert set(partial) <= set(expected), cut
    assert zipahead.find_directory(data[-100:], 0, len(data)) is None  # not the file's end


def test_a_directory_too_large_to_parse_on_the_loop_gives_nothing() -> None:
    data = make_zip(members=1)
    start, end, shift = zipahead.find_directory(data, 0, len(data)) or (0, 0, 0)
    entry = data[start:end]
    many = entry * (zipahead.MAX_DIRECTORY // len(entry) + 1)
    assert zipahead.member_headers(many, shift, len(data)) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), st.integers(min_value=0, max_value=1 << 40))
def test_garbage_never_raises(tail: bytes, before: int) -> None:
    size = before + len(tail)
    found = zipahead.find_directory(tail, before, size)
    if found is not None:
        start, end, shift = found
        assert 0 <= start <= end <= size and shift >= 0
    for offset in zipahead.member_headers(tail, before, size):
        assert before <= offset < size


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_real_archive_with_bytes_flipped_never_raises(data: st.DataObject) -> None:
    archive = bytearray(TORCH_SAVE.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(len(archive) - 1200, len(archive) - 1))
        archive[at] = data.draw(st.integers(0, 255))
    found = headers_found(bytes(archive))
    assert found is None or all(0 <= h < len(archive) for h in found)

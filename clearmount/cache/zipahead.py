"""Where a zip archive's members start, read from bytes already fetched: the fetch's hints
for a reader that walks a zip's members (torch.load(mmap=True) reads the local header of each
record, one after the other, before it maps the file).

Owns: finding a zip's central directory from its end (the end of central directory record,
and its zip64 record when the archive needs one), and the offsets of the members' local
headers that the directory lists. Pure and defensive: it reads byte strings the fetch took
from its file, does no I/O, and answers None or an empty list for anything that is not a
well-formed zip (a truncated tail, garbage, a directory too large to parse on the loop),
never an exception.
"""

from __future__ import annotations

import struct

_EOCD = struct.Struct("<4sHHHHIIH")  # signature ... comment length
_EOCD_SIG = b"PK\x05\x06"
_LOCATOR = struct.Struct("<4sIQI")  # zip64 end of central directory locator
_LOCATOR_SIG = b"PK\x06\x07"
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")  # zip64 end of central directory record
_EOCD64_SIG = b"PK\x06\x06"
_ENTRY = struct.Struct("<4sHHHHHHIIIHHHHHII")  # central directory file header
_ENTRY_SIG = b"PK\x01\x02"
_ZIP64_EXTRA = 0x0001

#: the end of an archive that holds its end of central directory record, whatever its
#: comment, and the zip64 locator before it
TAIL = _EOCD.size + 0xFFFF + _LOCATOR.size
#: larger directories are not parsed (about 10 000 members): parsing runs on the event loop
MAX_DIRECTORY = 1 << 20


def find_directory(tail: bytes, tail_start: int, size: int) -> tuple[int, int, int] | None:
    """The central directory of a zip of `size` bytes whose last bytes, from offset
    `tail_start`, are `tail`: (where it starts, where it ends, the offset to add to the
    header offsets it records: bytes prepended to the archive). None if `tail` holds no
    end of central directory record (not a zip, or not enough of its tail) or the record
    makes no sense for this size."""
    if tail_start + len(tail) != size:
        return None
    at = tail.rfind(_EOCD_SIG, 0, len(tail) - _EOCD.size + len(_EOCD_SIG))
    while at >= 0:
        found = _directory_at(tail, tail_start, size, at)
        if found is not None:
            return found
        at = tail.rfind(_EOCD_SIG, 0, at)
    return None


def _directory_at(tail: bytes, tail_start: int, size: int, at: int) -> tuple[int, int, int] | None:
    _, disk, cd_disk, _, entries, cd_size, cd_offset, comment = _EOCD.unpack_from(tail, at)
    if at + _EOCD.size + comment != len(tail) or disk != cd_disk:
        return None
    record_start = tail_start + at
    locator = at - _LOCATOR.size
    if locator < 0 and record_start >= _LOCATOR.size:
        return None  # a zip64 locator may precede it: more of the tail is needed to tell
    if locator >= 0 and _LOCATOR.unpack_from(tail, locator)[0] == _LOCATOR_SIG:
        # a zip64 archive (torch.save writes one whatever its size): its zip64 record sits
        # right before the locator, and the directory right before that record
        record = locator - _EOCD64.size
        if record < 0:
            return None
        fields = _EOCD64.unpack_from(tail, record)
        if fields[0] != _EOCD64_SIG:
            return None
        cd_size, cd_offset = fields[8], fields[9]
        record_start = tail_start + record
    elif 0xFFFF in (disk, entries) or 0xFFFFFFFF in (cd_size, cd_offset):
        return None  # a zip64 archive whose zip64 record is missing
    start = record_start - cd_size
    shift = start - cd_offset
    if start < 0 or shift < 0 or record_start > size:
        return None
    return start, record_start, shift


def member_headers(directory: bytes, shift: int, size: int) -> list[int]:
    """The offsets of the local headers of the members that `directory` (a whole central
    directory) lists, sorted, each moved by `shift`; only those inside the archive. Empty
    if the directory is larger than `MAX_DIRECTORY` or is not one."""
    if len(directory) > MAX_DIRECTORY:
        return []
    offsets = []
    at = 0
    while at + _ENTRY.size <= len(directory):
        fields = _ENTRY.unpack_from(directory, at)
        if fields[0] != _ENTRY_SIG:
            return []
        compressed, uncompressed = fields[8], fields[9]
        name_len, extra_len, comment_len = fields[10], fields[11], fields[12]
        offset = fields[16]
        extra_start = at + _ENTRY.size + name_len
        at = extra_start + extra_len + comment_len
        if at > len(directory):
            return []
        if offset == 0xFFFFFFFF:
            found = _zip64_offset(
                directory[extra_start : extra_start + extra_len],
                uncompressed == 0xFFFFFFFF,
                compressed == 0xFFFFFFFF,
            )
            if found is None:
                return []
            offset = found
        offset += shift
        if offset < size:
            offsets.append(offset)
    return sorted(set(offsets))


def _zip64_offset(extra: bytes, has_uncompressed: bool, has_compressed: bool) -> int | None:
    """The local header offset from a zip64 extra field, whose fields are there only for the
    values that overflowed, in a fixed order (uncompressed, compressed, offset)."""
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, at)
        body = at + 4
        if tag == _ZIP64_EXTRA:
            skip = 8 * (has_uncompressed + has_compressed)
            if skip + 8 > length or body + skip + 8 > len(extra):
                return None
            value: int = struct.unpack_from("<Q", extra, body + skip)[0]
            return value
        at = body + length
    return None

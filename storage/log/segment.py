"""Segment files: append-only records, each with a checksum.

A record is a 24-byte header and a payload:

    length u32 | crc32 u32 | seq u64 | committed_ns u64 | payload (length bytes)

The checksum covers the header's seq and time and the payload, so a record that was
half written when the machine died, or bytes that rotted on disk, are detected on
the next start. The payload is the record's line-protocol lines joined by newlines
(a line never holds a raw newline: the encoder escapes them).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "RECORD_HEADER",
    "Record",
    "ScanResult",
    "append_durably",
    "encode_record",
    "read_record",
    "read_records",
    "scan_segment",
]

RECORD_HEADER = struct.Struct("<IIQQ")
_CHECKED = struct.Struct("<QQ")  # the header fields the checksum covers
MAX_RECORD_BYTES = 1 << 30  # a length beyond this is garbage, not a record


@dataclass(slots=True)
class Record:
    """Where a committed record lives, and its lines while they are kept in memory."""

    seq: int
    path: Path
    offset: int
    size: int  # header and payload
    n_lines: int
    committed_ns: int
    lines: list[str] | None = None


@dataclass(slots=True)
class ScanResult:
    records: list[Record] = field(default_factory=list)
    good_bytes: int = 0  # where the last good record ends
    problem: str | None = None  # why the scan stopped before the end of the file
    bad_bytes: int = 0  # what lies after good_bytes
    # The record the scan stopped at, when its header is whole: what it says it is. A
    # record cut short is missing `cut_bytes` (its declared size less what is left).
    torn_seq: int | None = None
    torn_size: int | None = None  # header and payload, as the header declares them
    cut_bytes: int = 0  # at least this much of the file is gone (0: none known)


def encode_record(seq: int, committed_ns: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(_CHECKED.pack(seq, committed_ns)))
    return RECORD_HEADER.pack(len(payload), crc, seq, committed_ns) + payload


def _check(seq: int, committed_ns: int, crc: int, payload: bytes) -> bool:
    return zlib.crc32(payload, zlib.crc32(_CHECKED.pack(seq, committed_ns))) == crc


def read_record(rec: Record) -> list[str]:
    """The lines of a record, read back from its segment (checksum verified)."""
    return read_records([rec])[0]


def read_records(recs: list[Record]) -> list[list[str]]:
    """The lines of consecutive records of one segment, in one read."""
    first = recs[0]
    end = recs[-1].offset + recs[-1].size
    with first.path.open("rb") as f:
        f.seek(first.offset)
        data = f.read(end - first.offset)
    out = []
    for rec in recs:
        at = rec.offset - first.offset
        length, crc, seq, ts = RECORD_HEADER.unpack_from(data, at)
        payload = data[at + RECORD_HEADER.size : at + rec.size]
        if seq != rec.seq or len(payload) != length or not _check(seq, ts, crc, payload):
            raise OSError(f"{rec.path}: record {rec.seq} at offset {rec.offset} changed on disk")
        out.append(payload.decode().split("\n"))
    return out


def scan_segment(path: Path, expect_seq: int | None) -> ScanResult:
    """Validate a segment from its start; stop at the first record that is not whole."""
    out = ScanResult()
    size = os.path.getsize(path)
    hs = RECORD_HEADER.size
    with path.open("rb") as f:
        data = f.read(size)  # what it held when sized: a device file never ends
    size = len(data)
    pos = 0
    while pos < size:
        if size - pos < hs:
            out.problem = f"a record header cut short ({size - pos} of {hs} bytes)"
            out.cut_bytes = hs - (size - pos)  # and the payload, of a length unknown
            break
        length, crc, seq, ts = RECORD_HEADER.unpack_from(data, pos)
        if length > MAX_RECORD_BYTES:
            out.problem = f"a record header that cannot be one (length {length})"
            break
        if pos + hs + length > size:
            out.problem = f"a record cut short (needs {length} bytes, {size - pos - hs} left)"
            out.torn_seq, out.torn_size = seq, hs + length
            out.cut_bytes = pos + hs + length - size
            break
        payload = data[pos + hs : pos + hs + length]
        if not _check(seq, ts, crc, payload):
            out.problem = "a record whose checksum does not match"
            break
        if expect_seq is not None and seq != expect_seq:
            out.problem = f"record {seq} where {expect_seq} was expected"
            break
        out.records.append(
            Record(seq, path, pos, hs + length, payload.count(b"\n") + 1 if length else 0, ts)
        )
        expect_seq = seq + 1
        pos += hs + length
    out.good_bytes = pos
    out.bad_bytes = size - pos
    return out


def append_durably(fd: int, offset: int, data: bytes, directory: Path | None = None) -> None:
    """Append records at `offset` of an open segment and make them durable (blocking:
    run it in a thread). On failure the file is cut back to `offset`, so no torn record
    is left behind. `directory`: the segment is new, so its name is made durable too
    (without it, a power cut could lose the whole file, records and all)."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        # The data and the file's new size (fdatasync flushes what reading it back
        # needs), without the timestamps fsync would also write.
        os.fdatasync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, offset)
        raise
    if directory is not None:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

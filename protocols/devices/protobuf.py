"""A small protocol-buffers wire decoder (and encoder, for tests and simulators).

Enough for Sparkplug B without a dependency on `protobuf`: a message is a list of
(field number, wire type, value) fields; nested messages are decoded on demand by
calling `fields()` on the bytes of a length-delimited field. Every problem is a
`ProtobufError` whose text says what is wrong and where (a byte offset), never an
IndexError from deep inside.

Wire types: 0 varint (an int), 1 64-bit (8 raw bytes), 2 length-delimited (bytes),
5 32-bit (4 raw bytes). Groups (3, 4; deprecated since proto2) are refused.
"""

from __future__ import annotations

import struct

__all__ = [
    "ProtobufError",
    "as_double",
    "as_float",
    "encode_field",
    "encode_varint",
    "fields",
]

VARINT, I64, LEN, I32 = 0, 1, 2, 5

#: A field number above this is not valid protobuf (2^29 - 1).
MAX_FIELD = (1 << 29) - 1

_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")


class ProtobufError(ValueError):
    """The bytes are not a valid protobuf message; the text says why."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Read a varint at `pos`: (value, position after it)."""
    result = 0
    shift = 0
    start = pos
    end = len(buf)
    while True:
        if pos >= end:
            raise ProtobufError(f"truncated varint at byte {start}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:  # ten bytes at most: a 64-bit value
            raise ProtobufError(f"varint longer than 10 bytes at byte {start}")


def fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """Every field of one message, in order: (number, wire type, value).

    Varints are ints; the other wire types are their raw bytes (use `as_float`,
    `as_double` for fixed-width numbers, and `fields()` again for a nested message).
    """
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    end = len(buf)
    while pos < end:
        at = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if not 1 <= number <= MAX_FIELD:
            raise ProtobufError(f"invalid field number {number} at byte {at}")
        value: int | bytes
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire == LEN:
            size, pos = _varint(buf, pos)
            if size > end - pos:
                raise ProtobufError(
                    f"field {number} at byte {at} claims {size} bytes; {end - pos} are left"
                )
            value = bytes(buf[pos : pos + size])
            pos += size
        elif wire in (I64, I32):
            size = 8 if wire == I64 else 4
            if size > end - pos:
                raise ProtobufError(f"field {number} at byte {at}: truncated {size * 8}-bit value")
            value = bytes(buf[pos : pos + size])
            pos += size
        else:
            raise ProtobufError(f"field {number} at byte {at}: unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


def as_float(raw: int | bytes) -> float:
    """A `float` field (wire type 5) as a Python float."""
    if not isinstance(raw, bytes) or len(raw) != 4:
        raise ProtobufError("expected a 32-bit float")
    return float(_F32.unpack(raw)[0])


def as_double(raw: int | bytes) -> float:
    """A `double` field (wire type 1) as a Python float."""
    if not isinstance(raw, bytes) or len(raw) != 8:
        raise ProtobufError("expected a 64-bit double")
    return float(_F64.unpack(raw)[0])


# -- encoding (tests, simulators) -----------------------------------------------------------
def encode_varint(value: int) -> bytes:
    """A non-negative int (negative ones as 64-bit two's complement) as a varint."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_field(number: int, value: int | float | bytes | str, wire: int | None = None) -> bytes:
    """One field: ints as varints, str/bytes length-delimited, floats as `double`
    (or as `float` with wire=I32)."""
    if isinstance(value, bool | int) and wire in (None, VARINT):
        return encode_varint(number << 3 | VARINT) + encode_varint(int(value))
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return encode_varint(number << 3 | LEN) + encode_varint(len(value)) + value
    if wire == I32:
        return encode_varint(number << 3 | I32) + _F32.pack(value)
    return encode_varint(number << 3 | I64) + _F64.pack(value)

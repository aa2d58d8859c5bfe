"""Register words <-> values: pure functions, table-tested.

`decode` turns the words of one entry into its engineering value
(`raw * scale + offset`); `encode` is its inverse, used by the simulators so that
a value goes onto the wire exactly as a meter with that map would send it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from meter_gateway.protocols.modbus.datatypes import DATA_TYPES, ByteOrder, DataType, WordOrder
from meter_gateway.protocols.modbus.registermap import RegisterEntry

__all__ = ["FLOAT32_MAX", "DecodeProblem", "decode", "decode_block", "encode", "nan_words"]


def _to_wire(words: Sequence[int], word_order: WordOrder, byte_order: ByteOrder) -> bytes:
    """Words as received -> the big-endian byte string `struct` unpacks."""
    ordered = reversed(words) if word_order is WordOrder.LITTLE else words
    endian: Literal["little", "big"] = "little" if byte_order is ByteOrder.LITTLE else "big"
    return b"".join(w.to_bytes(2, endian) for w in ordered)


def _from_wire(data: bytes, word_order: WordOrder, byte_order: ByteOrder) -> list[int]:
    endian: Literal["little", "big"] = "little" if byte_order is ByteOrder.LITTLE else "big"
    words = [int.from_bytes(data[i : i + 2], endian) for i in range(0, len(data), 2)]
    return words[::-1] if word_order is WordOrder.LITTLE else words


def decode_raw(words: Sequence[int], entry: RegisterEntry) -> float | int:
    """The unscaled number the words hold."""
    info = DATA_TYPES[entry.type]
    if len(words) != info.registers:
        raise ValueError(f"{entry.type} needs {info.registers} registers, got {len(words)}")
    (raw,) = struct.unpack(
        ">" + info.struct_code, _to_wire(words, entry.word_order, entry.byte_order)
    )
    return raw


def decode(words: Sequence[int], entry: RegisterEntry) -> float:
    """Words of one entry -> value (`raw * scale + offset`); NaN/inf pass through."""
    raw = decode_raw(words, entry)
    if entry.scale == 1.0 and entry.offset == 0.0:
        return float(raw)
    # Scales like 0.1 are "divide by 10": dividing gives 230.1 where multiplying by
    # the binary 0.1 gives 230.10000000000002.
    divisor = 1.0 / entry.scale
    if abs(entry.scale) < 1.0 and divisor == round(divisor):
        return raw / round(divisor) + entry.offset
    return raw * entry.scale + entry.offset


def encode(value: float, entry: RegisterEntry) -> list[int]:
    """Value -> the words a meter with this entry sends (the inverse of `decode`).

    Integers are rounded to the nearest step and clamped to the type's range, as
    a meter's firmware saturates rather than wraps.
    """
    info = DATA_TYPES[entry.type]
    raw: float | int = (value - entry.offset) / entry.scale
    if not info.is_float:
        raw = 0 if math.isnan(raw) else int(min(max(round(raw), info.minimum), info.maximum))
    elif entry.type is DataType.FLOAT32 and math.isfinite(raw):
        raw = min(max(raw, info.minimum), info.maximum)
    data = struct.pack(">" + info.struct_code, raw)
    return _from_wire(data, entry.word_order, entry.byte_order)


def nan_words(entry: RegisterEntry) -> list[int]:
    """What a meter sends for 'no value': a quiet NaN for floats, the type's minimum else."""
    info = DATA_TYPES[entry.type]
    raw: float | int = math.nan if info.is_float else int(info.minimum)
    data = struct.pack(">" + info.struct_code, raw)
    return _from_wire(data, entry.word_order, entry.byte_order)


# The largest float32 (0x7F7FFFFF): what many meters send for "no value" instead of a
# NaN. No quantity a meter measures comes near it (registers end at 10^12 kWh).
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True, slots=True)
class DecodeProblem:
    """A value that cannot be stored (NaN, infinite, the float32 'no value' marker)."""

    entry: RegisterEntry
    words: tuple[int, ...]
    value: float

    def __str__(self) -> str:
        words = " ".join(f"{w:04X}" for w in self.words)
        if math.isnan(self.value):
            kind = "NaN"
        elif math.isinf(self.value):
            kind = "infinite value"
        else:
            kind = "the largest float32 (a 'no value' marker)"
        return f"{kind} in {self.entry.field} at 0x{self.entry.address:04X} (words {words})"


def decode_block(
    words: Sequence[int], start: int, entries: Iterable[RegisterEntry]
) -> tuple[dict[str, float], list[DecodeProblem]]:
    """Decode the entries found in a block read from `start`; NaN, inf and the float32
    'no value' marker (+-3.4e38) become problems."""
    values: dict[str, float] = {}
    problems: list[DecodeProblem] = []
    for entry in entries:
        lo = entry.address - start
        chunk = words[lo : lo + entry.count]
        value = decode(chunk, entry)
        marker = (
            entry.type == DataType.FLOAT32
            and math.isfinite(value)
            and abs(decode_raw(chunk, entry)) >= FLOAT32_MAX
        )
        if math.isfinite(value) and not marker:
            values[entry.field] = value
        else:
            problems.append(DecodeProblem(entry, tuple(chunk), value))
    return values, problems

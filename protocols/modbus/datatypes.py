"""The register data types: one table, Home Assistant style, no logic beyond lookups.

Each type names its `struct` code (big-endian once the words and bytes are put in
wire order) and how many 16-bit registers it occupies. Word and byte order are
separate options because meters differ: Eastron sends the high word first (ABCD),
Carlo Gavazzi the low word first (CDAB), a few devices swap the bytes too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["DATA_TYPES", "ByteOrder", "DataType", "TypeInfo", "WordOrder"]


class DataType(StrEnum):
    """A register data type as written in a map (`type: float32`)."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"


class WordOrder(StrEnum):
    """Order of the 16-bit words of a multi-register value."""

    BIG = "big"  # high word first (ABCD): Eastron, Schneider
    LITTLE = "little"  # low word first (CDAB): Carlo Gavazzi


class ByteOrder(StrEnum):
    """Order of the two bytes inside each word (Modbus itself sends big)."""

    BIG = "big"
    LITTLE = "little"


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """How one data type is packed."""

    struct_code: str
    registers: int
    is_float: bool
    minimum: float
    maximum: float


def _int(code: str, registers: int, signed: bool) -> TypeInfo:
    bits = 16 * registers
    lo = -(2 ** (bits - 1)) if signed else 0
    hi = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return TypeInfo(code, registers, False, lo, hi)


DATA_TYPES: dict[DataType, TypeInfo] = {
    DataType.INT16: _int("h", 1, signed=True),
    DataType.UINT16: _int("H", 1, signed=False),
    DataType.INT32: _int("i", 2, signed=True),
    DataType.UINT32: _int("I", 2, signed=False),
    DataType.INT64: _int("q", 4, signed=True),
    DataType.UINT64: _int("Q", 4, signed=False),
    DataType.FLOAT32: TypeInfo("f", 2, True, -3.4028234663852886e38, 3.4028234663852886e38),
    DataType.FLOAT64: TypeInfo("d", 4, True, -1.7976931348623157e308, 1.7976931348623157e308),
}

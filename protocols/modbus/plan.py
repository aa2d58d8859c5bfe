"""Request planning: merge a map's entries into as few reads as the device allows.

Entries with the same function code are read together while the merged read stays
within `max_registers` and the unused registers between neighbours number at most
`max_gap` (bridging a small gap costs two bytes a register; another request costs a
whole round trip, which on a 9600 baud line is tens of milliseconds).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meter_gateway.protocols.modbus.registermap import RegisterEntry

__all__ = ["ReadRequest", "plan_reads"]

_FUNCTION_NAMES = {3: "holding registers", 4: "input registers"}


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: function code, first wire address, register count, and what it decodes."""

    function: int
    address: int
    count: int
    entries: tuple[RegisterEntry, ...]

    @property
    def end(self) -> int:
        return self.address + self.count

    def describe(self) -> str:
        """`input registers 0x0000-0x004B` for error reports."""
        name = _FUNCTION_NAMES.get(self.function, f"function {self.function}")
        return f"{name} 0x{self.address:04X}-0x{self.end - 1:04X}"


def plan_reads(
    entries: Iterable[RegisterEntry], *, max_registers: int, max_gap: int
) -> list[ReadRequest]:
    """Group entries into reads; each entry must fit `max_registers` (the map checks it)."""
    out: list[ReadRequest] = []
    ordered = sorted(entries, key=lambda e: (e.function, e.address))
    group: list[RegisterEntry] = []

    def flush() -> None:
        if group:
            start, end = group[0].address, max(e.end for e in group)
            out.append(ReadRequest(group[0].function, start, end - start, tuple(group)))
            group.clear()

    for entry in ordered:
        if group:
            start = group[0].address
            end = max(e.end for e in group)
            same_fc = entry.function == group[0].function
            gap = entry.address - end
            if not same_fc or gap > max_gap or entry.end - start > max_registers:
                flush()
        group.append(entry)
    flush()
    return out

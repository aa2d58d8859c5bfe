"""The ground-truth log: one JSON line per injected fault, to score the gateway's events against.

Each line: ``fault_id``, ``type``, ``scope`` (meter, group, transformer, feeder, all), ``meters``
(only those actually affected, e.g. phase loss skips single-phase meters), ``transformer_id`` /
``feeder_id`` for grid-level faults, ``start`` / ``end`` in simulated time (RFC 3339, and as
epoch seconds in ``start_s`` / ``end_s``; ``end`` is null for a fault lasting to the end of the
run and equals ``start`` for a point fault such as one malformed reading), and ``params`` (the
type's settings, e.g. ``{"kind": "nan"}`` for a malformed payload).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import orjson

from meter_gateway.simulators.faults import FaultInstance
from meter_gateway.simulators.meter import rfc3339

__all__ = ["TruthLog", "read_truth", "truth_record"]


def truth_record(fault_id: str, fault: FaultInstance) -> dict[str, Any]:
    return {
        "fault_id": fault_id,
        "type": fault.type,
        "scope": fault.scope,
        "meters": list(fault.meters),
        "transformer_id": fault.transformer_id,
        "feeder_id": fault.feeder_id,
        "start": rfc3339(fault.start),
        "end": None if fault.end is None else rfc3339(fault.end),
        "start_s": fault.start,
        "end_s": fault.end,
        "params": fault.params,
    }


class TruthLog:
    """Appends records as JSON lines, flushed per line so a killed run keeps what it did."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[bytes] | None = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("wb")
        return self

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise RuntimeError("TruthLog is not open: use it as a context manager")
        self._file.write(orjson.dumps(record) + b"\n")
        self._file.flush()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_truth(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ground-truth log, in the order the faults started."""
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines() if line.strip()]

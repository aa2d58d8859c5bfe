"""Why readings are encoded by hand: our encoder vs influxdb-client's Point, same data.

Also times the whole per-reading path without the network (JSON parse, validation,
meter rules, line protocol) for single messages and 100-reading batches.

    .venv/bin/python bench/bench_lineprotocol.py [--n 100000]
"""

from __future__ import annotations

import argparse
import time

import common  # bench/common.py: run as `python bench/<name>.py`
import orjson
from influxdb_client import Point, WritePrecision

from meter_gateway.gateway.pipeline import Pipeline
from meter_gateway.gateway.reading import Reading
from meter_gateway.gateway.validate import MeterRules, Validator
from meter_gateway.protocols.formats import FORMATS
from meter_gateway.storage.lineprotocol import ReadingEncoder

VALUES = {
    "energy_import_kwh": 10432.117,
    "energy_export_kwh": 12.5,
    "power_w": 812.4,
    "voltage_l1_v": 229.8,
    "voltage_l2_v": 231.2,
    "voltage_l3_v": 230.4,
    "current_l1_a": 1.2,
    "current_l2_a": 0.9,
    "current_l3_a": 1.4,
    "power_factor": 0.97,
    "frequency_hz": 50.01,
}


def rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t0)


def ours(n: int) -> None:
    enc = ReadingEncoder("s")
    readings = [
        Reading(f"m-{i % 1000:06d}", (1_800_000_000 + i) * 10**9, "mqtt", VALUES) for i in range(n)
    ]
    "\n".join([enc.encode(r) for r in readings]).encode()


def points(n: int) -> None:
    lines = []
    for i in range(n):
        p = Point("meter_reading").tag("meter_id", f"m-{i % 1000:06d}").tag("source", "mqtt")
        for k, v in VALUES.items():
            p = p.field(k, v)
        p = p.field("quality", "actual").time(1_800_000_000 + i, WritePrecision.S)
        lines.append(p.to_line_protocol())
    "\n".join(lines).encode()


class _Sink:
    paused = False

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)


class _DeadLetter:
    def add(self, record: dict) -> None:
        raise AssertionError(record)


def _pipeline() -> tuple[Pipeline, _Sink]:
    sink = _Sink()
    p = Pipeline(
        validator=Validator(),
        rules=MeterRules(),
        encoder=ReadingEncoder("s"),
        sink=sink,
        dead_letter=_DeadLetter(),
    )  # type: ignore[arg-type]
    return p, sink


def reading_payload(i: int, now: int) -> dict:
    return {
        "ts": now - 86400 + i // 1000,
        "energy_import_kwh": 10432.117 + i,
        "energy_export_kwh": 12.5,
        "power_w": 812.4,
        "voltage_v": [229.8, 231.2, 230.4],
        "current_a": [1.2, 0.9, 1.4],
        "power_factor": 0.97,
        "frequency_hz": 50.01,
    }


def singles(n: int) -> None:
    now = int(time.time())
    msgs = [orjson.dumps(reading_payload(i, now)) for i in range(n)]
    p, sink = _pipeline()
    fmt = FORMATS["json"]
    t0 = time.perf_counter()
    for i, m in enumerate(msgs):
        p.handle_message("meters/x/reading", m, fmt, f"m-{i % 1000:06d}")
    singles.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]
    assert len(sink.lines) == n


def batches(n: int) -> None:
    now = int(time.time())
    msgs = []
    for b in range(n // 100):
        readings = [
            {"meter_id": f"m-{(b * 100 + k) % 1000:06d}", **reading_payload(b * 100 + k, now)}
            for k in range(100)
        ]
        msgs.append(orjson.dumps({"concentrator_id": "dc-1", "readings": readings}))
    p, sink = _pipeline()
    fmt = FORMATS["json-batch"]
    t0 = time.perf_counter()
    for m in msgs:
        p.handle_message("concentrators/dc-1/readings", m, fmt, "dc-1")
    batches.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]
    assert len(sink.lines) == n // 100 * 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    n = ap.parse_args().n
    print("\n".join(common.environment(["influxdb-client", "orjson"])))
    print(f"{n:,} readings with all 11 fields")
    a, b = rate(ours, n), rate(points, n)
    print(f"  encode, ours (ReadingEncoder):       {a:>12,.0f} readings/s")
    print(f"  encode, influxdb-client Point:       {b:>12,.0f} readings/s   (ours x{a / b:.1f})")
    singles(n)
    batches(n)
    print(
        f"  pipeline, single-reading messages:   {n / singles.elapsed:>12,.0f} readings/s "
        "(parse + validate + rules + encode, no network)"
    )
    print(f"  pipeline, 100-reading batches:       {n / batches.elapsed:>12,.0f} readings/s")


if __name__ == "__main__":
    main()

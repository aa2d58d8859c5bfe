"""The event engine's in-process cost: the pipeline's per-reading path with the detectors
off and on, and `Engine.reading` alone.

    .venv/bin/python bench/bench_engine.py [--meters 1000] [--batches 200] [--repeat 5]

No network, no disk: 100-reading `json-batch` payloads (every canonical field, three
phases, healthy, 15-minute stamps; 1,000 meters) go through `Pipeline.handle_message`
with a sink that only counts lines. "off" is the pipeline without an `on_reading`
hook (`events.enabled: false`); "on" feeds every message's stored readings to an `Engine` through
`EventService.readings_hook`, as the gateway does. Two streams:

- **live**: stamps a second before they arrive (the clock advances with the data);
- **back-fill**: stamps hours to three days old arriving now (as in
  `bench_mqtt_ingest.py`).

CPU time (`time.process_time`) per reading, median of `--repeat` runs (each on a fresh
pipeline and engine); the ratio is off/on per-reading cost (1.0: the detectors are
free; the goal is >= 0.85). "engine" is `Engine.reading` alone on the same readings
(already validated `Reading`s, built outside the timing).

The detectors run compiled when the package was built with them (scripts/setup.sh);
`METER_GATEWAY_PURE_PYTHON=1` measures their Python sources. The header says which.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from report import print_table  # bench/report.py: run as `python bench/<name>.py`

from meter_gateway.config.schema import EventsConfig, ValidationConfig
from meter_gateway.gateway.events.engine import Engine
from meter_gateway.gateway.events.service import EventService
from meter_gateway.gateway.pipeline import Pipeline
from meter_gateway.gateway.reading import Reading
from meter_gateway.gateway.validate import MeterRules, Validator
from meter_gateway.protocols.formats import FORMATS
from meter_gateway.storage.lineprotocol import ReadingEncoder

NS = 1_000_000_000
PER_BATCH = 100
INTERVAL_S = 900
TOPIC = "concentrators/dc-1/readings"


class _Sink:
    durable = 1 << 62
    paused = False

    def __init__(self) -> None:
        self.n = 0

    def add(self, line: str) -> int:
        self.n += 1
        return self.n

    async def wait_durable(self, seq: int) -> None:
        return None


class _DeadLetter:
    durable = 1 << 62

    def add(self, *args: Any, **kwargs: Any) -> int:
        return 0


class _Clock:
    """The gateway's clock, stepped by the benchmark (a message's arrival)."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


def _stream(case: str, meters: int, batches: int, t0_s: float) -> list[tuple[int, bytes]]:
    """(arrival ns, payload) per message; meter m's k-th reading at its own phase."""
    out = []
    k = 0
    for b in range(batches):
        items = []
        ts_last = 0.0
        for _ in range(PER_BATCH):
            m = k % meters
            step = k // meters
            k += 1
            if case == "live":
                ts = t0_s + step * INTERVAL_S + m * INTERVAL_S / meters
            else:
                ts = t0_s - 3 * 86400 + step * INTERVAL_S + m
            ts_last = max(ts_last, ts)
            items.append(
                {
                    "meter_id": f"m-{m:05d}",
                    "ts": ts,
                    "energy_import_kwh": 1000 + step * 0.1 + m * 0.001,
                    "energy_export_kwh": 5.0,
                    "power_w": 400.0,
                    "voltage_v": [230.1, 229.8, 231.0],
                    "current_a": [1.0, 1.1, 0.9],
                    "power_factor": 0.95,
                    "frequency_hz": 50.0,
                }
            )
        payload = orjson.dumps({"concentrator_id": "dc-1", "readings": items})
        arrive = int((ts_last + 1) * NS) if case == "live" else int((t0_s + b * 0.01) * NS)
        out.append((arrive, payload))
    return out


class _Service(EventService):
    """EventService's reading hook over a bare engine (no outbox, no drainers)."""

    def __init__(self, engine: Engine, clock: _Clock) -> None:
        self.engine = engine
        self.enabled = True
        self._clock = clock


def _pipeline_run(stream: list[tuple[int, bytes]], detect: bool) -> tuple[float, int]:
    clock = _Clock(stream[0][0])
    events: list[Any] = []
    on_readings = None
    if detect:
        engine = Engine(EventsConfig(), {}, emit=events.append, now_ns=clock())
        on_readings = _Service(engine, clock).readings_hook()
    p = Pipeline(
        validator=Validator(ValidationConfig()),
        rules=MeterRules(16),
        encoder=ReadingEncoder("s", {}),
        sink=_Sink(),  # type: ignore[arg-type]
        dead_letter=_DeadLetter(),  # type: ignore[arg-type]
        on_readings=on_readings,
        clock=clock,
    )
    fmt = FORMATS["json-batch"]
    handle = p.handle_message
    gc.collect()
    t = time.process_time()
    for arrive, payload in stream:
        clock.now_ns = arrive
        handle(TOPIC, payload, fmt, "dc-1")
    dt = time.process_time() - t
    n = sum(p.spooled.values())
    assert n == len(stream) * PER_BATCH, (n, p.rejected)
    return dt / n * 1e6, len(events)


def _engine_run(stream: list[tuple[int, bytes]]) -> float:
    """Engine.reading alone, on the readings the pipeline stores."""
    got: list[tuple[Reading, int]] = []
    clock = _Clock(stream[0][0])
    p = Pipeline(
        validator=Validator(ValidationConfig()),
        rules=MeterRules(16),
        encoder=ReadingEncoder("s", {}),
        sink=_Sink(),  # type: ignore[arg-type]
        dead_letter=_DeadLetter(),  # type: ignore[arg-type]
        on_reading=lambda r: got.append((r, clock.now_ns)),
        clock=clock,
    )
    fmt = FORMATS["json-batch"]
    for arrive, payload in stream:
        clock.now_ns = arrive
        p.handle_message(TOPIC, payload, fmt, "dc-1")
    engine = Engine(EventsConfig(), {}, emit=lambda ev: None, now_ns=stream[0][0])
    reading = engine.reading
    gc.collect()
    t = time.process_time()
    for r, now in got:
        reading(r, now)
    return (time.process_time() - t) / len(got) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print("\n".join(common.environment(["orjson"], detectors=True)))
    print(
        f"{args.meters} meters, {args.batches} x {PER_BATCH}-reading batches, "
        f"median of {args.repeat}"
    )
    t0_s = float(int(time.time()) // INTERVAL_S * INTERVAL_S - 86400)
    rows = []
    for case in ("live", "back-fill"):
        stream = _stream(case, args.meters, args.batches, t0_s if case == "live" else time.time())
        offs, ons, engs = [], [], []
        n_events = 0
        for _ in range(args.repeat):
            offs.append(_pipeline_run(stream, False)[0])
            on, n_events = _pipeline_run(stream, True)
            ons.append(on)
            engs.append(_engine_run(stream))
        off = statistics.median(offs)
        on = statistics.median(ons)
        rows.append(
            [
                case,
                f"{off:.2f}",
                f"{on:.2f}",
                f"{statistics.median(engs):.2f}",
                f"{off / on:.2f}",
                str(n_events),
            ]
        )
    print_table(
        ["stream", "off us/reading", "on us/reading", "engine us/reading", "off/on", "events"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

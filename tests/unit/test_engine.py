"""The event engine: quiet on healthy meters, restart-safe, small per meter.

Pure logic: readings go in with explicit times (`ts` the meter's, `now` the
gateway's clock), events come out through `emit`. The `Harness` here is shared by the
detector tests.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meter_gateway.config.schema import EventsConfig
from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.events import Engine, Event, event_line
from meter_gateway.gateway.reading import Reading
from meter_gateway.gateway.validate import Flag
from meter_gateway.protocols.formats import Signal

S = 1_000_000_000
T0 = 1_800_000_000 * S  # 2027-01-15


class Harness:
    """An engine with a list for its events, and readings built from a few numbers."""

    def __init__(self, topology: dict[str, MeterPlace] | None = None, **config: Any) -> None:
        self.events: list[Event] = []
        self.topology = topology or {}
        self.config = EventsConfig(**config)
        self.engine = Engine(self.config, self.topology, emit=self.events.append, now_ns=T0)
        self.now = T0

    def read(
        self,
        meter: str,
        t: float,
        *,
        now: float | None = None,
        v: tuple[float, ...] = (230.0, 231.0, 229.5),
        **values: float,
    ) -> None:
        """A reading of `meter` at T0 + t s, arriving at T0 + now s (default: at once)."""
        vals = {f"voltage_l{i + 1}_v": x for i, x in enumerate(v)}
        vals.update(values)
        self.now = T0 + round((t if now is None else now) * S)
        self.engine.reading(Reading(meter, T0 + round(t * S), "mqtt", vals), self.now)

    def signal(self, meter: str, value: str, now: float, ts: Any = None) -> None:
        kind = "status" if value in ("online", "offline") else "event"
        self.now = T0 + round(now * S)
        self.engine.signal(Signal(kind, meter, value, ts), self.now)

    def flag(self, meter: str, t: float, kind: str = "register_decrease") -> None:
        self.now = T0 + round(t * S)
        self.engine.flag(Flag(kind, meter, T0 + round(t * S), "went down"), self.now)

    def reject(self, meter: str, t: float, *, now: float, kind: str = "ts_too_old") -> None:
        """A reading of `meter` stamped T0 + t s that validation rejected for its time
        (too old / too far ahead), arriving at T0 + now s: what the pipeline hands on."""
        bound = 7 * 86_400.0 if kind == "ts_too_old" else 300.0
        self.now = T0 + round(now * S)
        flag = Flag(kind, meter, T0 + round(t * S), "ts: rejected", bound)
        self.engine.flag(flag, self.now)

    def tick(self, now: float) -> None:
        self.now = T0 + round(now * S)
        self.engine.tick(self.now)

    def tick_through(self, start: float, end: float, step: float = 1.0) -> None:
        """Ticks about once a second, as the gateway does live."""
        t = start
        while t <= end:
            self.tick(t)
            t += step

    def of(self, type_: str, state: str | None = None) -> list[Event]:
        return [e for e in self.events if e.type == type_ and (state is None or e.state == state)]

    def types(self) -> list[tuple[str, str]]:
        return [(e.type, e.state) for e in self.events]


def healthy(h: Harness, meter: str, start: float, end: float, step: float, seed: int = 1) -> None:
    """Normal load with normal noise: voltages within 2 %, rising registers."""
    rng = random.Random(seed)
    kwh = 1000.0
    t = start
    while t <= end:
        kwh += rng.uniform(0.0, 0.3)
        v = tuple(230 * (1 + rng.uniform(-0.015, 0.015)) for _ in range(3))
        h.read(
            meter,
            t,
            now=t + rng.uniform(0.05, 1.5),
            v=v,
            energy_import_kwh=round(kwh, 3),
            energy_export_kwh=0.0,
            power_w=rng.uniform(50, 3000),
            current_l1_a=rng.uniform(0, 10),
            frequency_hz=50 + rng.uniform(-0.05, 0.05),
        )
        h.tick(t + 1.5)
        t += step


# -- healthy meters ----------------------------------------------------------------------------


def test_healthy_meters_with_duplicates_and_out_of_order_delivery_get_no_events():
    h = Harness()
    healthy(h, "m-1", 0, 6 * 3600, 60, seed=1)
    healthy(h, "m-2", 0, 6 * 3600, 900, seed=2)
    # Redelivered and out-of-order readings of m-1.
    h.read("m-1", 3600, now=6 * 3600 + 10, energy_import_kwh=1001.0)
    h.read("m-1", 3600, now=6 * 3600 + 11, energy_import_kwh=1001.0)
    h.read("m-1", 6 * 3600 - 120, now=6 * 3600 + 12, energy_import_kwh=1002.0)
    h.tick_through(6 * 3600 + 13, 6 * 3600 + 60)
    assert h.events == []
    assert h.engine.active() == []
    assert h.engine.stats()["meters_tracked"] == 2


def test_a_15_minute_meter_is_not_silent_after_90_s():
    h = Harness(offline_after_s=90)
    for i in range(4):
        h.read("m-15", i * 900)
        h.tick_through(i * 900, i * 900 + 899, 10)
    assert h.events == []


def test_late_back_filled_concentrator_data_makes_no_clock_drift_and_no_churn():
    h = Harness()
    # A meter read through a concentrator: live for an hour, then its link is down
    # for 3 h, then the concentrator delivers the 3 h it kept, all at once.
    for i in range(5):
        h.read("m-dc", i * 900, now=i * 900 + 2)
        h.tick_through(i * 900 + 2, i * 900 + 900, 30)
    silence_end = 4 * 900 + 3 * 3600
    h.tick_through(4 * 900 + 900, silence_end, 30)
    assert h.types() == [("comms_loss", "raised")]
    for i in range(5, 17):  # 12 readings of 15 minutes, delivered at once
        h.read("m-dc", i * 900, now=silence_end + 1 + i * 0.01)
    h.tick_through(silence_end + 2, silence_end + 900, 10)
    for i in range(17, 30):  # and live again
        h.read("m-dc", i * 900, now=i * 900 + 2)
        h.tick_through(i * 900 + 2, i * 900 + 900, 30)
    assert h.types() == [("comms_loss", "raised"), ("comms_loss", "cleared")]
    assert h.of("clock_drift") == []


def test_back_filled_old_readings_of_a_live_meter_are_not_judged():
    h = Harness()
    healthy(h, "m-1", 0, 3600, 60)
    # Yesterday's data with a low voltage, delivered now: history, not a live sag.
    for i in range(30):
        h.read("m-1", -86_400 + i * 60, now=3601 + i * 0.01, v=(180.0, 180.0, 180.0))
    h.tick_through(3602, 3700)
    assert h.events == []


def test_an_hourly_batch_concentrator_is_not_silent_between_batches():
    h = Harness()
    for batch in range(1, 8):
        arrive = batch * 3600 + 300
        for i in range(4):
            h.read("m-b", (batch - 1) * 3600 + i * 900, now=arrive + i * 0.01)
        h.tick_through(arrive, arrive + 3599, 15)
    assert h.events == []


# -- restart -----------------------------------------------------------------------------------


def test_snapshot_and_restore_mid_outage_keeps_the_event_and_clears_it_once():
    h = Harness()
    h.read("m-1", 0)
    h.signal("m-1", "last_gasp", now=10, ts=T0 / S + 10)
    (raised,) = h.of("power_outage", "raised")
    blob = h.engine.snapshot()

    # The gateway restarts 10 minutes later; the meter is still without power.
    again = Harness()
    again.engine.restore(blob, T0 + 600 * S)
    assert [e.event_id for e in again.engine.active()] == [raised.event_id]
    again.tick_through(600, 1200, 5)
    again.signal("m-1", "last_gasp", now=1201, ts=T0 / S + 10)  # redelivered
    assert again.events == []  # no second raise, no comms_loss
    again.read("m-1", 1300, now=1300.5)
    (cleared,) = again.of("power_outage", "cleared")
    assert cleared.event_id == raised.event_id
    assert cleared.start_ns == raised.start_ns
    assert cleared.duration_s == 1290.0
    assert cleared.details["momentary"] is False
    assert again.types() == [("power_outage", "cleared")]


def _damaged(blob: bytes, meter_values: list[Any]) -> bytes:
    data = orjson.loads(blob)
    data["meters"]["m-2"] = meter_values
    return orjson.dumps(data)


def test_a_damaged_snapshot_is_refused_whole_and_the_engine_starts_empty():
    h = Harness()
    h.read("m-1", 0)
    h.read("m-2", 900)
    h.signal("m-1", "last_gasp", now=910, ts=T0 / S + 910)
    blob = h.engine.snapshot()
    good = orjson.loads(blob)["meters"]["m-2"]
    damaged = [
        _damaged(blob, ["open bits", *good[1:]]),  # a text where a number goes
        _damaged(blob, [good[0], 1.5, *good[2:]]),  # a float for a time in ns
        _damaged(blob, [*good[:29], 12345, *good[30:]]),  # a baseline that is not text
        _damaged(blob, [*good[:30], "2", *good[31:]]),  # a text for a count
        orjson.dumps({**orjson.loads(blob), "open": [{"type": "power_outage"}]}),
        orjson.dumps([1, 2, 3]),
    ]
    for bad in damaged:
        again = Harness()
        with pytest.raises(ValueError, match="event state"):
            again.engine.restore(bad, T0 + 600 * S)
        assert again.engine.active() == []
        assert again.engine.stats()["meters_tracked"] == 0
        # It goes on: the next readings are judged from a fresh state.
        again.read("m-1", 1200, now=1200.5)
        assert again.engine.stats()["meters_tracked"] == 1


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    position=st.integers(0, 40),
    value=_JSON,
    section=st.sampled_from(["meter", "meters", "open", "transformers", "whole"]),
)
def test_any_damage_to_a_snapshot_is_a_value_error_or_a_state_that_works(
    position: int, value: Any, section: str
):
    # Whatever the file holds, restore either takes it (and the engine goes on judging
    # readings) or refuses it with a ValueError that says why: never another exception,
    # in the compiled build or from the sources.
    h = Harness()
    h.read("m-1", 0)
    h.read("m-1", 900)
    data = orjson.loads(h.engine.snapshot())
    if section == "meter":
        values = data["meters"]["m-1"]
        if position < len(values):
            values[position] = value
        else:
            values.append(value)
    elif section == "whole":
        data = value
    else:
        data[section] = value
    again = Harness()
    refused = ""
    try:
        again.engine.restore(orjson.dumps(data), T0 + 600 * S)
    except ValueError as exc:
        refused = str(exc)
    if refused:
        assert refused.startswith("event state")
        assert again.engine.active() == []
    again.read("m-1", 1800, now=1800.5)
    again.tick_through(1800, 1900, 50)


def test_a_snapshot_keeps_a_clock_half_judged_and_a_clock_drift_open():
    h = Harness(clock_drift_max_s=120)
    for i in range(30):
        h.read("m-1", i * 2, now=i * 2 + 0.1)
    # One reading of a set-back clock, one rejection of a clock 8 days behind: half-way.
    h.read("m-1", 60 - 600, now=60.1)
    h.reject("m-2", 60 - 8 * 86_400, now=60.2)
    blob = h.engine.snapshot()
    saved = orjson.loads(blob)["meters"]
    assert saved["m-1"][30:32] == [1, pytest.approx(-600.1)]
    assert saved["m-2"][30:32] == [1, pytest.approx(-8 * 86_400 - 0.2)]
    again = Harness(clock_drift_max_s=120)
    again.engine.restore(blob, T0 + 61 * S)
    assert orjson.loads(again.engine.snapshot())["meters"] == saved
    # The second of each after the restart raises it.
    again.read("m-1", 62 - 600, now=62.1)
    again.reject("m-2", 62 - 8 * 86_400, now=62.2)
    raised = [(e.type, e.subject["meter_id"], e.details["cause"]) for e in again.events]
    assert raised == [
        ("clock_drift", "m-1", "clock_set_back"),
        ("clock_drift", "m-2", "clock_rejected"),
    ]
    # Open across a second restart; the set-back meter goes on on its new timeline.
    third = Harness(clock_drift_max_s=120)
    third.engine.restore(again.engine.snapshot(), T0 + 63 * S)
    for i in range(5):
        third.read("m-1", 64 + 2 * i - 600, now=64.1 + 2 * i)
    assert third.events == []
    third.read("m-1", 80, now=80.1)
    (clear,) = third.events
    assert (clear.type, clear.state) == ("clock_drift", "cleared")
    assert clear.event_id == again.events[0].event_id


def test_restore_gives_meters_grace_before_comms_loss():
    h = Harness(offline_after_s=90)
    for i in range(10):
        h.read("m-1", i * 10)
    blob = h.engine.snapshot()
    again = Harness(offline_after_s=90)
    again.engine.restore(blob, T0 + 3600 * S)  # an hour later
    again.tick_through(3600, 3600 + 89)
    assert again.events == []
    again.tick_through(3600 + 90, 3600 + 100)
    assert again.types() == [("comms_loss", "raised")]

    without = Harness(offline_after_s=90)
    without.engine.restore(blob, T0 + 3600 * S, downtime_grace=False)
    without.tick(3601)
    assert without.types() == [("comms_loss", "raised")]


def test_reconcile_takes_events_emitted_after_the_snapshot():
    h = Harness()
    h.read("m-1", 0)
    h.read("m-2", 0)
    h.read("m-3", 0)
    h.signal("m-1", "last_gasp", now=5, ts=T0 / S + 5)
    blob = h.engine.snapshot()
    # After the snapshot: m-1 restored, m-2 lost power, m-3 tampered; then a crash.
    mark = len(h.events)
    h.signal("m-1", "power_restored", now=20, ts=T0 / S + 20)
    h.signal("m-2", "last_gasp", now=21, ts=T0 / S + 21)
    h.signal("m-3", "tamper", now=22, ts=T0 / S + 22)
    after = h.events[mark:]
    m2_raise = h.of("power_outage", "raised")[1]

    again = Harness()
    again.engine.restore(blob, T0 + 30 * S)
    again.engine.reconcile(after)
    again.engine.reconcile(after)  # idempotent
    assert [e.event_id for e in again.engine.active()] == [m2_raise.event_id]
    again.signal("m-2", "last_gasp", now=31, ts=T0 / S + 21)  # no second raise
    again.signal("m-3", "cover_open", now=32, ts=T0 / S + 32)  # same tamper episode
    again.signal("m-1", "power_restored", now=33, ts=T0 / S + 33)  # nothing open
    assert again.events == []
    again.signal("m-2", "power_restored", now=40, ts=T0 / S + 40)
    assert [(e.event_id, e.state, e.details["momentary"]) for e in again.events] == [
        (m2_raise.event_id, "cleared", True)
    ]


def test_active_and_stats_count_by_type():
    h = Harness()
    h.read("m-1", 0)
    h.signal("m-1", "last_gasp", now=1, ts=T0 / S + 1)
    h.signal("m-2", "tamper", now=2)
    stats = h.engine.stats()
    assert stats["meters_tracked"] == 2
    assert stats["raised"] == {"power_outage": 1, "tamper": 1}
    assert stats["active"] == {"power_outage": 1}
    assert [e.type for e in h.engine.active()] == ["power_outage"]


def test_the_value_goes_into_the_point_and_the_json():
    h = Harness(voltage_min_duration_s=0)
    h.read("m-1", 0, v=(190.0, 230.0, 230.0))
    (sag,) = h.of("voltage_sag")
    assert sag.value == 190.0
    assert "value=190.0" in event_line(sag, 1)
    assert b'"value":190.0' in sag.to_json("gw-1")


# -- resources ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_state_is_under_2_kib_per_meter_for_100_000_meters():
    n = 100_000
    ids = [f"m-{i:06d}" for i in range(n)]
    topology = {
        m: MeterPlace(m, f"tx-{i // 20}", f"f-{i // 2000}", phases=3) for i, m in enumerate(ids)
    }
    values = {
        "voltage_l1_v": 230.0,
        "voltage_l2_v": 231.0,
        "voltage_l3_v": 229.0,
        "energy_import_kwh": 1000.0,
        "energy_export_kwh": 0.0,
        "power_w": 500.0,
        "frequency_hz": 50.0,
    }
    first = [Reading(m, T0 + i, "mqtt", values) for i, m in enumerate(ids)]
    second = [Reading(m, T0 + 900 * S + i, "mqtt", values) for i, m in enumerate(ids)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        engine = Engine(EventsConfig(), topology, emit=lambda ev: None, now_ns=T0)
        for r in first:
            engine.reading(r, r.ts_ns)
        for r in second:
            engine.reading(r, r.ts_ns)
        engine.tick(T0 + 900 * S + n)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert engine.stats()["meters_tracked"] == n
    assert used / n < 2048, f"{used / n:.0f} bytes per meter"

"""Consumption against the meter's own baseline: spike, sustained high, sustained low,
zero; warm-up, gaps, register resets, outages, weekly shape, memory, restart."""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections.abc import Callable

import orjson

from meter_gateway.config.schema import EventsConfig
from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.events import Engine
from meter_gateway.gateway.events.detectors.consumption import slot_of
from meter_gateway.gateway.reading import Reading
from tests.unit.test_engine import T0, Harness, S

Q = 900  # 15-minute interval
H = 3600
DAY = 86_400
_TYPES = {
    "consumption_spike",
    "sustained_high_consumption",
    "sustained_low_consumption",
    "zero_consumption",
}


def household(t: float) -> float:
    """A household's usual load in kW at T0 + t s: night, morning, evening peaks; at
    weekends a late morning and a midday peak instead of the commute."""
    hour_of_week = int((T0 // S + t) // H + 3 * 24) % 168
    day, hour = divmod(hour_of_week, 24)
    if day >= 5:
        return {8: 0.6, 9: 0.9, 10: 0.9, 11: 0.8, 12: 1.2, 13: 1.0, 18: 1.0, 19: 1.2, 20: 0.9}.get(
            hour, 0.35 if 7 <= hour <= 22 else 0.2
        )
    return {6: 0.7, 7: 0.9, 17: 0.8, 18: 1.1, 19: 1.2, 20: 1.0, 21: 0.7}.get(
        hour, 0.3 if 8 <= hour <= 22 else 0.2
    )


class Meter:
    """One meter's import register, read every 15 minutes."""

    def __init__(self, h: Harness, meter_id: str = "m-1", seed: int = 1) -> None:
        self.h = h
        self.id = meter_id
        self.rng = random.Random(seed)
        self.kwh = 5000.0
        self.t = 0.0

    def run(
        self,
        until: float,
        load: Callable[[float], float] = household,
        *,
        noise: float = 0.35,
        kettles: bool = True,
        step: float = Q,
        **kw: float | tuple[float, ...],
    ) -> None:
        """Readings every `step` s up to `until`, with multiplicative noise and an
        occasional kettle (0.1 kWh)."""
        rng = self.rng
        while self.t + step <= until:
            self.t += step
            kw_avg = load(self.t - step / 2) * rng.uniform(1 - noise, 1 + noise)
            self.kwh += kw_avg * step / H
            if kettles and rng.random() < 0.05:
                self.kwh += 0.1
            self.h.read(self.id, self.t, energy_import_kwh=round(self.kwh, 3), **kw)  # type: ignore[arg-type]

    def add(self, kwh: float, *, step: float = Q) -> None:
        self.t += step
        self.kwh += kwh
        self.h.read(self.id, self.t, energy_import_kwh=round(self.kwh, 3))


def consumption_events(h: Harness) -> list[tuple[str, str]]:
    return [(e.type, e.state) for e in h.events if e.type in _TYPES]


def warmed(days: float = 8, seed: int = 1, **config: float) -> tuple[Harness, Meter]:
    h = Harness(**config)
    m = Meter(h, seed=seed)
    m.run(days * DAY)
    return h, m


# -- warm-up, spike --------------------------------------------------------------------------


def test_no_judgement_before_the_warm_up_then_a_spike_is_raised_and_cleared():
    h = Harness()
    m = Meter(h)
    m.run(6 * DAY)
    m.add(6.0)  # 24 kW for 15 minutes: far above, but not 7 days of data yet
    m.run(6 * DAY + 2 * H)
    assert consumption_events(h) == []
    # Unjudged, it raised the usual high only to the spike cut: it hides no later spike.
    assert h.engine._meters["m-1"].peak_kw < 6.0

    m.run(8 * DAY)
    spike_at = m.t
    m.add(6.0)
    # Far above what this meter ever draws: raised at that interval, from its start.
    assert consumption_events(h) == [("consumption_spike", "raised")]
    m.run(m.t + Q)  # the next interval is normal
    assert consumption_events(h) == [
        ("consumption_spike", "raised"),
        ("consumption_spike", "cleared"),
    ]
    raised, cleared = h.of("consumption_spike")
    assert cleared.state == "cleared"
    assert raised.severity == "minor"
    assert raised.start_ns == T0 + round(spike_at * S)
    assert abs(raised.value - 24.0) < 0.01  # the interval's kW
    assert raised.subject == {"meter_id": "m-1"}
    assert raised.details["score"] > 2  # 24 kW is more than twice the cut
    assert raised.details["usual_high_kw"] < 6.0


def test_a_kettle_on_a_meter_with_a_baseline_near_zero_is_no_spike():
    h = Harness()
    m = Meter(h)
    m.run(8 * DAY, lambda t: 0.004, noise=0.5, kettles=False)  # a vacant flat: 4 W
    for _ in range(3):
        m.add(0.12)  # a kettle: 30 times the baseline, still nothing to report
        m.run(m.t + 4 * H, lambda t: 0.004, noise=0.5, kettles=False)
    assert consumption_events(h) == []


def test_the_weekly_shape_of_a_household_over_three_weeks_gives_no_events():
    h = Harness()
    for i in range(3):
        Meter(h, f"m-{i}", seed=10 + i).run(21 * DAY)
    assert h.events == []
    base = h.engine._meters["m-0"].base
    assert base is not None
    # Saturday 12:00 learned its own midday peak; a weekday noon its low.
    sat_noon = slot_of(T0 + round((DAY - 8 * H + 12 * H) * S))  # T0 is a Friday 08:00
    fri_noon = slot_of(T0 + round(4 * H * S))
    assert base[sat_noon] > 0.9
    assert base[fri_noon] < 0.45


# -- gaps, resets, outages -------------------------------------------------------------------


def test_back_filled_data_after_a_silence_and_a_delta_across_a_gap_are_no_spike():
    h, m = warmed()
    # A concentrator link is down for 6 h, then it delivers the 24 readings it kept,
    # in order, all at once.
    silence_end = m.t + 6 * H
    rng = random.Random(5)
    for _ in range(24):
        m.t += Q
        m.kwh += household(m.t - Q / 2) * rng.uniform(0.7, 1.3) * Q / H
        h.read("m-1", m.t, now=silence_end, energy_import_kwh=round(m.kwh, 3))
    m.run(m.t + DAY)
    # A meter that missed 8 h of readings: one delta spans them (spread, not a spike).
    gap_start = m.t
    m.t += 8 * H
    m.kwh += sum(household(gap_start + i * Q + Q / 2) * Q / H for i in range(32))
    h.read("m-1", m.t, energy_import_kwh=round(m.kwh, 3))
    m.run(m.t + DAY)
    assert consumption_events(h) == []


def test_back_fill_after_a_comms_loss_is_no_consumption_event():
    h, m = warmed()
    last = m.t
    h.tick(last + 6 * H)  # silent for 6 h: comms_loss
    for _ in range(24):  # then the concentrator delivers what it kept, in order
        m.t += Q
        m.kwh += household(m.t - Q / 2) * Q / H
        h.read("m-1", m.t, now=last + 6 * H + 1, energy_import_kwh=round(m.kwh, 3))
    m.run(m.t + DAY)
    assert h.types() == [("comms_loss", "raised"), ("comms_loss", "cleared")]


def test_a_register_reset_is_no_consumption_and_no_spike():
    h, m = warmed()
    m.kwh = 0.0  # the meter was replaced: its register starts from 0
    m.run(m.t + Q)
    m.run(m.t + DAY)
    assert consumption_events(h) == []
    assert [e.type for e in h.events] == ["register_decrease"]


def test_no_zero_consumption_during_a_power_outage():
    h, m = warmed()
    h.signal("m-1", "last_gasp", now=m.t + 60, ts=(T0 // S) + m.t + 60)
    # The meter keeps delivering readings without voltage: its register stands still.
    m.run(m.t + 10 * H, lambda t: 0.0, v=(0.0, 0.0, 0.0))
    h.signal("m-1", "power_restored", now=m.t + 30, ts=(T0 // S) + m.t + 30)
    m.run(m.t + DAY)
    assert [e.type for e in h.events] == ["power_outage", "power_outage"]
    assert consumption_events(h) == []


# -- the sustained conditions -----------------------------------------------------------------


def test_sustained_high_consumption_is_raised_after_its_hours_and_cleared():
    h, m = warmed(10)  # to a Monday 08:00
    start = m.t
    # A 2 kW heater left on: every interval well above its expected, raised after 5 h.
    m.run(m.t + 4.5 * H, lambda t: household(t) + 2.0, noise=0.1, kettles=False)
    assert consumption_events(h) == []
    m.run(m.t + 1 * H, lambda t: household(t) + 2.0, noise=0.1, kettles=False)
    assert consumption_events(h) == [("sustained_high_consumption", "raised")]
    (raised,) = h.of("sustained_high_consumption")
    assert raised.severity == "major"
    assert raised.start_ns == T0 + round(start * S)
    assert 1.5 < raised.value < 2.5  # kW above its expected, on average over the run
    assert raised.details["score"] > 1.5  # past the cut (0.9 kW for this household)
    m.run(m.t + 2 * H)
    assert consumption_events(h) == [
        ("sustained_high_consumption", "raised"),
        ("sustained_high_consumption", "cleared"),
    ]


def test_a_burst_that_stays_is_a_spike_then_a_sustained_high_one_condition_open():
    h, m = warmed(10)
    start = m.t
    # 8 kW, four times the most this household draws, switched on and left on.
    m.run(m.t + Q, lambda t: household(t) + 8.0, noise=0.1, kettles=False)
    assert consumption_events(h) == [("consumption_spike", "raised")]
    m.run(m.t + 5 * H, lambda t: household(t) + 8.0, noise=0.1, kettles=False)
    assert consumption_events(h) == [
        ("consumption_spike", "raised"),
        ("consumption_spike", "cleared"),
        ("sustained_high_consumption", "raised"),
    ]
    cleared = h.of("consumption_spike", "cleared")[0]
    assert cleared.details["superseded_by"] == "sustained_high_consumption"
    assert h.of("sustained_high_consumption")[0].start_ns == T0 + round(start * S)
    assert {e.type for e in h.engine.active()} == {"sustained_high_consumption"}


def lumpy_evening(t: float) -> float:
    """A household whose evenings (17:00-23:00) go between 0.25 and 2.75 kW from one
    interval to the next: cooking, a washer, a dryer, then nothing."""
    hour = int((T0 // S + t) // H) % 24
    if 17 <= hour < 23:
        return 2.75 if int((T0 // S + t) // Q) % 2 else 0.25
    return household(t)


def test_an_added_load_under_an_evening_that_varies_as_much_is_raised_in_time():
    h = Harness()
    m = Meter(h)
    m.run(10 * DAY + 9 * H, lumpy_evening, noise=0.1, kettles=False)  # a Monday, 17:00 UTC
    assert consumption_events(h) == []
    start = m.t
    # 1.5 kW added from 17:00: every other interval is only 0.25 kW above its expected
    # (1.5 kW), but the meter never comes back down to its night floor.
    m.run(m.t + 6 * H, lambda t: lumpy_evening(t) + 1.5, noise=0.1, kettles=False)
    assert consumption_events(h) == [("sustained_high_consumption", "raised")]
    (raised,) = h.of("sustained_high_consumption")
    # From its start (or the next interval: the first one was a quiet one).
    assert T0 + round(start * S) <= raised.start_ns <= T0 + round((start + Q) * S)
    assert raised.details["score"] >= 1.0
    # Not cleared by the quiet intervals either: it goes on while lifted off the floor.
    m.run(m.t + 2 * H, lambda t: lumpy_evening(t) + 1.5, noise=0.1, kettles=False)
    assert consumption_events(h) == [("sustained_high_consumption", "raised")]
    m.run(m.t + 2 * H, lumpy_evening, noise=0.1, kettles=False)
    assert consumption_events(h) == [
        ("sustained_high_consumption", "raised"),
        ("sustained_high_consumption", "cleared"),
    ]


def business(t: float) -> float:
    """A supermarket's load in kW: 12 kW flat while open (weekdays 07:00-22:00), 3 kW
    closed."""
    hour_of_week = int((T0 // S + t) // H + 3 * 24) % 168
    day, hour = divmod(hour_of_week, 24)
    return 12.0 if day < 5 and 7 <= hour < 22 else 3.0


def test_a_business_meter_bypassed_before_a_flat_day_of_opening_hours_is_raised_in_a_day():
    h = Harness()
    m = Meter(h)
    m.run(10 * DAY + 15 * H, business, noise=0.08, kettles=False)  # a Monday, 23:00 UTC
    assert consumption_events(h) == []
    # The meter counts a quarter from then on, its night floor too. Its opening hours
    # are as flat as they always are: raised within a day, on the hours that are low
    # against what they usually do, without waiting for the closing at 22:00 to show
    # use coming and going.
    tampered = m.t
    m.run(m.t + 24 * H, lambda t: 0.25 * business(t), noise=0.08, kettles=False)
    assert consumption_events(h) == [("sustained_low_consumption", "raised")]
    (raised,) = h.of("sustained_low_consumption")
    assert raised.start_ns >= T0 + round(tampered * S)
    assert raised.details["score"] >= 1.0


def test_a_business_closed_for_a_day_is_not_sustained_low():
    h = Harness()
    m = Meter(h)
    m.run(10 * DAY - 8 * H, business, noise=0.08, kettles=False)  # to a Monday, 00:00 UTC
    # Closed on a weekday (a holiday): the closed-hours load all day, the floor kept.
    m.run(m.t + DAY, lambda t: 3.0, noise=0.08, kettles=False)
    m.run(m.t + 2 * DAY, business, noise=0.08, kettles=False)
    assert consumption_events(h) == []


def test_zero_consumption_is_raised_after_its_hours_and_cleared_when_consumption_resumes():
    h, m = warmed()
    start = m.t
    m.run(m.t + 5.5 * H, lambda t: 0.0, kettles=False)  # the register stands still
    assert consumption_events(h) == []
    m.run(m.t + 36 * H, lambda t: 0.0, kettles=False)
    assert consumption_events(h) == [("zero_consumption", "raised")]
    (raised,) = h.of("zero_consumption")
    assert raised.severity == "major"
    assert raised.start_ns == T0 + round(start * S)
    m.run(m.t + Q)
    m.run(m.t + 2 * DAY)
    # Resumed: cleared, and no sustained_low left over from the zero hours.
    assert consumption_events(h) == [
        ("zero_consumption", "raised"),
        ("zero_consumption", "cleared"),
    ]


def theft(t: float) -> float:
    """What a bypassed or tampered meter counts of the household: a quarter."""
    return 0.25 * household(t)


def test_sustained_low_consumption_is_raised_within_a_day_and_cleared_when_back():
    h, m = warmed()
    tampered = m.t
    m.run(m.t + 8 * H, theft, kettles=False)
    assert consumption_events(h) == []
    m.run(tampered + 24 * H, theft, kettles=False)
    assert consumption_events(h) == [("sustained_low_consumption", "raised")]
    (raised,) = h.of("sustained_low_consumption")
    assert raised.severity == "major"
    assert raised.start_ns >= T0 + round(tampered * S)
    assert raised.value < 0.55  # the day's consumption against its expected
    assert raised.details["score"] >= 1
    m.run(m.t + 12 * H, theft, kettles=False)
    m.run(m.t + DAY)  # the meter is repaired
    assert consumption_events(h) == [
        ("sustained_low_consumption", "raised"),
        ("sustained_low_consumption", "cleared"),
    ]


def test_a_household_away_for_a_long_weekend_is_not_sustained_low():
    h, m = warmed()
    # Nobody home for three days: the fridge and standby only, no pattern of use.
    m.run(m.t + 3 * DAY, lambda t: 0.08, noise=0.2, kettles=False)
    m.run(m.t + 2 * DAY)  # back home
    assert consumption_events(h) == []


def test_a_quiet_day_at_home_is_not_sustained_low():
    h, m = warmed()
    # A day at a third of the usual use, the fridge and standby as always at night.
    m.run(m.t + DAY, lambda t: max(0.2, household(t) / 3), kettles=False)
    m.run(m.t + DAY)
    assert consumption_events(h) == []


def test_a_meter_low_then_at_zero_has_one_condition_zero():
    h, m = warmed()
    m.run(m.t + 30 * H, theft, kettles=False)
    assert consumption_events(h) == [("sustained_low_consumption", "raised")]
    m.run(m.t + 8 * H, lambda t: 0.0, kettles=False)
    assert consumption_events(h) == [
        ("sustained_low_consumption", "raised"),
        ("sustained_low_consumption", "cleared"),
        ("zero_consumption", "raised"),
    ]
    assert h.of("sustained_low_consumption", "cleared")[0].details["superseded_by"] == (
        "zero_consumption"
    )
    assert {e.type for e in h.engine.active()} == {"zero_consumption"}


def test_a_prosumer_is_not_judged_its_import_is_net_of_its_pv():
    h = Harness({"m-1": MeterPlace("m-1", prosumer=True)})
    m = Meter(h)
    m.run(8 * DAY)
    m.run(m.t + DAY, lambda t: 0.0, kettles=False)  # a sunny day: no import at all
    m.add(6.0)
    assert consumption_events(h) == []
    assert h.engine._meters["m-1"].base is None


def test_an_hour_of_a_big_appliance_or_a_car_charging_is_no_spike():
    h = Harness()
    m = Meter(h)
    # A 3.5 kW appliance for an hour every day, at any hour: the meter's usual high.
    rng = random.Random(3)
    runs = {day * 24 + rng.randrange(24) for day in range(21)}
    m.run(21 * DAY, lambda t: household(t) + (3.5 if int(t // H) in runs else 0.0), noise=0.1)
    assert consumption_events(h) == []
    m.run(m.t + H, lambda t: household(t) + 3.5, noise=0.1, kettles=False)
    # Oven, hob and kettle together at 6 kW for half an hour: within 1.8 x its usual
    # high, no spike.
    m.run(m.t + 0.5 * H, lambda t: household(t) + 6.0, noise=0.1, kettles=False)
    # A car charging at 3 kW (13 A) for three hours, at an hour it never did: no spike,
    # and not sustained high either (shorter than sustained_high_hours).
    m.run(m.t + 2 * H)
    m.run(m.t + 3 * H, lambda t: household(t) + 3.0, noise=0.1, kettles=False)
    m.run(m.t + 2 * H)
    assert consumption_events(h) == []
    # The same load at night for longer than that is a sustained high, from its start,
    # once it holds RUN_MARGIN x the energy of the charge (its longest usual run).
    m.run((m.t // DAY + 1) * DAY)
    start = m.t
    m.run(m.t + 4.75 * H, lambda t: household(t) + 3.0, noise=0.1, kettles=False)
    assert consumption_events(h) == []
    m.run(m.t + 2 * H, lambda t: household(t) + 3.0, noise=0.1, kettles=False)
    assert consumption_events(h) == [("sustained_high_consumption", "raised")]
    (raised,) = h.of("sustained_high_consumption")
    assert raised.start_ns == T0 + round(start * S)
    m.run(m.t + 2 * H)
    del h.events[:]
    m.add(4.0)  # but 16 kW for 15 minutes: a spike
    m.run(m.t + Q)
    assert consumption_events(h) == [
        ("consumption_spike", "raised"),
        ("consumption_spike", "cleared"),
    ]


# -- restart, memory --------------------------------------------------------------------------


def test_the_baseline_survives_a_restart_and_an_older_snapshot_starts_fresh():
    h, m = warmed()
    blob = h.engine.snapshot()
    again = Harness()
    again.engine.restore(blob, T0 + round((m.t + 1) * S), downtime_grace=False)
    m.h = again
    m.add(6.0)
    m.run(m.t + Q)
    assert consumption_events(again) == [
        ("consumption_spike", "raised"),
        ("consumption_spike", "cleared"),
    ]

    # A snapshot written before baselines: the meter's list stops at tamper_ts.
    data = orjson.loads(blob)
    data["meters"]["m-1"] = data["meters"]["m-1"][:19]
    older = Harness()
    older.engine.restore(orjson.dumps(data), T0 + round((m.t + 1) * S), downtime_grace=False)
    st = older.engine._meters["m-1"]
    assert st.base is None
    assert st.learned_h == 0.0
    m.h = older
    m.add(6.0)
    assert older.events == []


def test_state_with_a_judging_baseline_is_under_2_kib_per_meter():
    n = 2000
    ids = [f"m-{i:06d}" for i in range(n)]
    topology = {
        m: MeterPlace(m, f"tx-{i // 20}", f"f-{i // 2000}", phases=3) for i, m in enumerate(ids)
    }

    def rounds(k: int, kwh: float) -> list[Reading]:
        values = {
            "voltage_l1_v": 230.0,
            "voltage_l2_v": 231.0,
            "voltage_l3_v": 229.0,
            "energy_import_kwh": kwh,
            "energy_export_kwh": 0.0,
            "power_w": 500.0,
            "frequency_hz": 50.0,
        }
        return [Reading(m, T0 + k * 60 * S + i, "mqtt", values) for i, m in enumerate(ids)]

    # Five learned intervals in one slot, then one judged.
    kwh = (1000.0, 1000.1, 1000.2, 1000.3, 1000.4, 1000.4)
    batches = [rounds(k, v) for k, v in enumerate(kwh)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        engine = Engine(EventsConfig(), topology, emit=lambda ev: None, now_ns=T0)
        for k, batch in enumerate(batches):
            if k == 5:  # warmed up: the last round is judged (a zero interval starts a run)
                for st in engine._meters.values():
                    st.learned_h = 1e6
            for r in batch:
                engine.reading(r, r.ts_ns)
        engine.tick(T0 + 5 * 60 * S + n)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    st = engine._meters[ids[-1]]
    assert st.base is not None
    assert st.hours is not None
    assert st.zero_since
    assert used / n < 2048, f"{used / n:.0f} bytes per meter"

"""Meter alarms: register_decrease, reverse_energy, clock_drift, tamper."""

from __future__ import annotations

import pytest

from meter_gateway.config.topology import MeterPlace
from tests.unit.test_engine import T0, Harness, S


def test_a_register_decrease_is_one_point_event_per_episode():
    h = Harness()
    h.read("m-1", 0, energy_import_kwh=100.0)
    h.read("m-1", 900, energy_import_kwh=5.0)  # the meter was replaced
    h.flag("m-1", 900)  # the validator's finding of the same decrease
    (ev,) = h.events
    assert (ev.type, ev.state, ev.severity) == ("register_decrease", "raised", "major")
    assert ev.start_ns == T0 + 900 * S
    h.read("m-1", 1800, energy_import_kwh=4.0)  # still the same episode
    assert len(h.events) == 1
    h.read("m-1", 2700, energy_import_kwh=4.5)  # rises normally again
    h.flag("m-1", 3600)
    assert [e.state for e in h.of("register_decrease")] == ["raised", "raised"]


def test_reverse_energy_on_a_consumer_once_per_episode_and_never_on_a_prosumer():
    topology = {"m-c": MeterPlace("m-c"), "m-p": MeterPlace("m-p", prosumer=True)}
    h = Harness(topology)
    for m in ("m-c", "m-p"):
        h.read(m, 0, energy_export_kwh=0.0, power_w=400.0)
        for i in range(1, 5):
            h.read(m, i * 900, energy_export_kwh=0.5 * i, power_w=-1500.0)
    (ev,) = h.events
    assert (ev.type, ev.subject["meter_id"], ev.value) == ("reverse_energy", "m-c", -1500.0)
    assert ev.start_ns == T0 + 900 * S
    # Four readings and an hour without reverse flow end the episode.
    for i in range(5, 10):
        h.read("m-c", i * 900, energy_export_kwh=2.0, power_w=300.0)
    h.read("m-c", 10 * 900, energy_export_kwh=2.0, power_w=-900.0)
    assert len(h.of("reverse_energy")) == 2


def test_a_drifting_clock_is_raised_on_two_steady_readings_and_cleared():
    h = Harness(clock_drift_max_s=120)
    for i in range(3):
        h.read("m-1", i * 900, now=i * 900 + 1)
    h.read("m-1", 3 * 900 - 300, now=3 * 900 + 1)  # 300 s behind: once is not enough
    assert h.events == []
    h.read("m-1", 4 * 900 - 301, now=4 * 900 + 1)
    (ev,) = h.events
    assert (ev.type, ev.severity, ev.value) == ("clock_drift", "minor", -302.0)
    h.read("m-1", 5 * 900 - 310, now=5 * 900 + 1)
    h.read("m-1", 6 * 900, now=6 * 900 + 1)  # set right
    assert h.types() == [("clock_drift", "raised"), ("clock_drift", "cleared")]


def test_a_clock_set_back_right_clears_on_its_first_reading_on_time():
    h = Harness(clock_drift_max_s=60)
    for i in range(4):
        h.read("m-1", i * 10 + 120, now=i * 10)  # 2 minutes ahead
    assert h.types() == [("clock_drift", "raised")]
    h.read("m-1", 40, now=40.2)  # set right: older than its newest, but on time
    assert h.types() == [("clock_drift", "raised"), ("clock_drift", "cleared")]
    h.read("m-1", 50, now=50.2)
    assert len(h.events) == 2


def test_a_back_filled_batch_in_order_is_no_clock_drift():
    h = Harness(clock_drift_max_s=120)
    # A concentrator's first delivery: 3 h of 15-minute readings at once, then hourly.
    for i in range(12):
        h.read("m-1", i * 900, now=3 * 3600 + i * 0.01)
    for batch in range(1, 4):
        for i in range(4):
            t = 3 * 3600 + (batch - 1) * 3600 + i * 900
            h.read("m-1", t, now=3 * 3600 + batch * 3600 + i * 0.01)
    # Minute meters back-filled after a link outage, then live.
    for i in range(60):
        h.read("m-2", i * 60, now=3600 + i * 0.01)
    for i in range(60, 70):
        h.read("m-2", i * 60, now=i * 60 + 0.5)
    assert h.of("clock_drift") == []


def test_tamper_is_a_point_event_once_per_hour():
    h = Harness()
    h.signal("m-1", "cover_open", now=10, ts=T0 / S + 10)
    h.signal("m-1", "tamper", now=20, ts=T0 / S + 20)
    h.signal("m-1", "tamper", now=4000, ts=T0 / S + 4000)
    assert [(e.type, e.state, e.details["cause"]) for e in h.events] == [
        ("tamper", "raised", "cover_open"),
        ("tamper", "raised", "tamper"),
    ]
    assert h.events[0].severity == "major"


def test_an_unreadable_signal_time_falls_back_to_the_clock():
    h = Harness()
    h.signal("m-1", "tamper", now=10, ts="yesterday")
    h.signal("m-2", "tamper", now=11, ts=1_800_000_005)
    assert [e.start_ns for e in h.events] == [T0 + 10 * S, T0 + 5 * S]


def test_a_clock_running_fast_is_clock_drift_though_its_offset_grows():
    h = Harness(clock_drift_max_s=120)
    # 90 s gained per hour on a 15-minute meter: 22.5 s more every reading.
    for i in range(12):
        h.read("m-1", i * 900 + 100 + 22.5 * i, now=i * 900 + 1)
    assert h.types() == [("clock_drift", "raised")]


# -- clock_drift: a clock set back, a clock so wrong that every reading is rejected --------


class Live:
    """A meter reading every `step` s, arriving 0.1 s after its (true) time; its clock
    reads `offset` s off (set back: negative)."""

    def __init__(self, h: Harness, meter: str, step: float = 2.0) -> None:
        self.h, self.meter, self.step = h, meter, step
        self.t = 0.0  # true time of the next reading
        self.offset = 0.0
        self.kwh = 1000.0

    def read(self, n: int = 1, **values: float) -> None:
        for _ in range(n):
            self.kwh += 0.001
            vals: dict[str, float] = {"energy_import_kwh": round(self.kwh, 4), **values}
            self.h.read(self.meter, self.t + self.offset, now=self.t + 0.1, **vals)
            self.h.tick(self.t + 1.1)
            self.t += self.step


def test_a_clock_set_back_at_a_2_s_rate_is_clock_drift_on_its_second_reading():
    h = Harness(clock_drift_max_s=120)
    m = Live(h, "m-1")
    m.read(30)  # a minute live, on time
    m.offset = -600.0  # the RTC is reset: 10 minutes behind
    m.read()
    assert h.events == []
    m.read()
    (ev,) = h.events
    assert (ev.type, ev.state, ev.details["cause"]) == ("clock_drift", "raised", "clock_set_back")
    assert ev.details["set_back_s"] == pytest.approx(600.0, abs=0.01)
    assert ev.value == pytest.approx(-600.1, abs=0.01)
    assert "set back by 600 s" in ev.message
    assert "behind by 600 s" in ev.message
    assert ev.start_ns == T0 + round((m.t - m.step - 600) * S)  # the reading that confirmed it
    # Judged on its new timeline: still behind (no second event, no register decrease
    # though its readings are older than the last one before the reset), and a register
    # that really goes down is seen at once.
    m.read(20)
    assert h.types() == [("clock_drift", "raised")]
    m.kwh -= 5.0
    m.read()
    assert h.types() == [("clock_drift", "raised"), ("register_decrease", "raised")]
    # Set right: the first reading within the limit clears it.
    m.offset = 0.0
    m.read()
    assert h.of("clock_drift", "cleared")
    assert h.of("clock_drift", "cleared")[0].event_id == ev.event_id
    m.read(10)
    assert len(h.of("clock_drift")) == 2
    assert not h.of("comms_loss")


def test_a_clock_set_back_on_a_15_minute_meter_too():
    h = Harness(clock_drift_max_s=120)
    m = Live(h, "m-15", step=900.0)
    m.read(8)
    m.offset = -3 * 3600.0
    m.read(2)
    assert h.types() == [("clock_drift", "raised")]
    assert h.events[0].details["set_back_s"] == pytest.approx(3 * 3600.0, abs=0.01)


def test_a_clock_set_back_while_ahead_keeps_its_clock_drift_and_is_judged_on():
    h = Harness(clock_drift_max_s=120)
    m = Live(h, "m-1")
    m.offset = 900.0
    m.read(5)
    assert h.types() == [("clock_drift", "raised")]
    m.offset = -900.0  # set back too far: behind now, still wrong
    m.read(3)
    assert h.types() == [("clock_drift", "raised")]
    m.offset = 0.0  # its new timeline goes on: on time is newer than it, and clears
    m.read()
    assert h.types() == [("clock_drift", "raised"), ("clock_drift", "cleared")]


def test_a_back_filled_batch_of_a_live_2_s_meter_is_no_clock_drift():
    h = Harness(clock_drift_max_s=120)
    m = Live(h, "m-1")
    m.read(30)
    # Ten minutes of its readings kept by a concentrator, delivered at once; then in
    # several small batches, one every 2 s (each bunched, their drift an interval apart).
    for i in range(300):
        h.read("m-1", m.t - 900 + i * 2, now=m.t + 0.5 + i * 0.001, energy_import_kwh=999.0)
    m.read(5)
    for batch in range(10):
        arrive = m.t + 0.5
        for i in range(4):
            ts = m.t - 1800 + batch * 3600 + i * 900 - 3 * 86_400
            h.read("m-1", ts, now=arrive + i * 0.01, energy_import_kwh=900.0)
        m.read()
    # Old 15-minute readings resent one a message at the live rate: their drift moves
    # by the interval each time.
    for i in range(10):
        h.read("m-1", -86_400 + i * 900, now=m.t + 0.5, energy_import_kwh=900.0)
        m.t += 2.0
    m.read(5)
    assert h.events == []


def test_redelivered_duplicates_are_no_clock_drift():
    h = Harness(clock_drift_max_s=120, offline_after_s=900)
    m = Live(h, "m-1")
    m.read(30)
    newest, old = m.t - m.step, m.t - 700
    # Minutes later (a link or broker outage), its newest reading and an older one are
    # delivered again and again, each on its own, at the live rate: far off the clock,
    # but the same ts again is no second reading.
    m.t += 300
    for ts in (newest, old):
        for _ in range(5):
            h.read("m-1", ts, now=m.t + 0.1, energy_import_kwh=999.0)
            m.t += 2.0
    m.read(3)
    # A set-back clock's one reading, delivered three times, is still one reading.
    m.offset = -600.0
    ts = m.t - 600
    for _ in range(3):
        h.read("m-1", ts, now=m.t + 0.1, energy_import_kwh=m.kwh)
        m.t += 2.0
    assert h.events == []
    m.read(2)  # readings of its own time again: now it is one
    assert h.types() == [("clock_drift", "raised")]


def test_a_meter_whose_readings_are_all_rejected_is_clock_drift_and_not_comms_loss():
    h = Harness(clock_drift_max_s=120, offline_after_s=6)
    m = Live(h, "m-old")
    m.read(30)  # known, on time, every 2 s
    # Its clock falls 8 days behind: validation rejects every reading as too old.
    for i in range(150):  # five minutes of rejections
        h.reject("m-old", m.t - 8 * 86_400, now=m.t + 0.1)
        # ... and a meter whose every reading ever was 1 day ahead
        h.reject("m-ahead", m.t + 86_400, now=m.t + 0.2, kind="ts_in_future")
        h.tick(m.t + 1.1)
        m.t += 2.0
        if i == 1:
            assert h.types() == [("clock_drift", "raised")] * 2
    old, ahead = (h.of("clock_drift")[i] for i in (0, 1))
    assert old.subject["meter_id"] == "m-old"
    assert old.details == {
        "cause": "clock_rejected",
        "limit_s": 120.0,
        "rejected": "ts_too_old",
        "bound_s": 7 * 86_400.0,
    }
    assert old.value == pytest.approx(-8 * 86_400 - 0.1, abs=0.01)
    assert "behind by 691200 s" in old.message
    assert "older than 7 days" in old.message
    assert old.start_ns == T0 + round((m.t - 150 * 2 + 0.1) * S)  # the first one's arrival
    assert ahead.subject["meter_id"] == "m-ahead"
    assert ahead.details["rejected"] == "ts_in_future"
    assert "ahead by 86400 s" in ahead.message
    assert "more than 300 s in the future" in ahead.message
    assert len(h.events) == 2  # no comms_loss: its rejections are the meter talking
    # Set right: its first reading on time clears it.
    m.read()
    assert h.types()[-1] == ("clock_drift", "cleared")
    assert h.of("clock_drift", "cleared")[0].event_id == old.event_id
    # Silent for real: comms_loss comes (m-ahead's too: it was heard).
    h.tick_through(m.t, m.t + 30)
    assert {e.subject["meter_id"] for e in h.of("comms_loss")} == {"m-old", "m-ahead"}


def test_a_bunched_batch_of_rejected_old_data_is_no_clock_drift():
    h = Harness(clock_drift_max_s=120)
    # A concentrator delivers 8 days old 15-minute data, hourly batches of 4.
    for batch in range(6):
        arrive = batch * 3600.0 + 5
        for i in range(4):
            t = batch * 3600 + i * 900 - 8 * 86_400
            h.reject("m-dc", t, now=arrive + i * 0.01)
    # The same old reading rejected again and again (a redelivery) is one reading.
    for i in range(5):
        h.reject("m-re", -8 * 86_400, now=i * 2.0)
    assert h.events == []

"""Meter alarms: register_decrease, reverse_energy, clock_drift, tamper."""

from __future__ import annotations

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

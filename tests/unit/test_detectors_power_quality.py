"""Power quality: phase loss, sag, swell, imbalance, overcurrent, frequency."""

from __future__ import annotations

from meter_gateway.config.topology import MeterPlace
from tests.unit.test_engine import T0, Harness, S


def test_a_sag_is_raised_after_its_minimum_duration_and_cleared_back_inside():
    h = Harness(voltage_min_duration_s=60)
    h.read("m-1", 0)
    for t in (10, 40, 69):  # 59 s outside: not yet
        h.read("m-1", t, v=(200.0, 201.0, 202.0))
    assert h.events == []
    h.read("m-1", 70, v=(199.0, 201.0, 202.0))
    (sag,) = h.events
    assert (sag.type, sag.severity, sag.value) == ("voltage_sag", "minor", 199.0)
    assert sag.start_ns == T0 + 10 * S  # the first reading outside
    h.read("m-1", 80)
    assert h.types() == [("voltage_sag", "raised"), ("voltage_sag", "cleared")]
    assert h.events[1].duration_s == 70.0


def test_a_short_dip_is_no_sag():
    h = Harness(voltage_min_duration_s=60)
    for t in range(0, 600, 10):
        h.read("m-1", t, v=(200.0, 230.0, 230.0) if t in (100, 110) else (230.0, 231.0, 229.0))
    assert h.events == []


def test_a_swell_with_zero_duration_is_raised_at_once_on_the_meters_own_nominal():
    h = Harness(
        {"m-us": MeterPlace("m-us", phases=1, nominal_voltage_v=120.0)}, voltage_min_duration_s=0
    )
    h.read("m-us", 0, v=(121.0,))
    h.read("m-us", 10, v=(135.0,))
    (swell,) = h.events
    assert (swell.type, swell.value, swell.start_ns) == ("voltage_swell", 135.0, T0 + 10 * S)
    h.read("m-us", 20, v=(120.0,))
    assert h.types() == [("voltage_swell", "raised"), ("voltage_swell", "cleared")]


def test_phase_loss_is_one_event_not_also_a_sag_or_imbalance():
    h = Harness(voltage_min_duration_s=0)
    h.read("m-1", 0)
    for t in range(10, 200, 10):
        h.read("m-1", t, v=(230.0, 0.0, 229.0))
    (loss,) = h.events
    assert (loss.type, loss.severity, loss.details["phases"]) == ("phase_loss", "major", ["L2"])
    h.read("m-1", 200)
    assert h.types() == [("phase_loss", "raised"), ("phase_loss", "cleared")]


def test_a_single_phase_meter_has_no_phase_loss():
    h = Harness({"m-1": MeterPlace("m-1", phases=1)}, voltage_min_duration_s=0)
    h.read("m-1", 0, v=(230.0, 0.0, 0.0))
    assert h.events == []


def test_imbalance_is_raised_and_cleared():
    h = Harness(voltage_min_duration_s=20, voltage_unbalance_max=0.02)
    h.read("m-1", 0)
    for t in (10, 20, 30):
        h.read("m-1", t, v=(222.0, 236.0, 232.0))  # 3.2 % from the mean; inside the band
    (imb,) = h.events
    assert imb.type == "phase_imbalance"
    assert imb.start_ns == T0 + 10 * S
    assert 0.03 < imb.value < 0.035
    h.read("m-1", 40)
    assert h.types() == [("phase_imbalance", "raised"), ("phase_imbalance", "cleared")]


def test_no_power_quality_during_a_power_outage():
    h = Harness(voltage_min_duration_s=0)
    h.read("m-1", 0)
    h.signal("m-1", "last_gasp", now=5, ts=T0 / S + 5)
    h.read("m-1", 3, now=6, v=(150.0, 150.0, 150.0))  # from before the gasp, late
    assert h.types() == [("power_outage", "raised")]


def test_overcurrent_and_frequency_are_raised_and_cleared():
    h = Harness(overcurrent_a=60, frequency_tolerance_hz=0.5)
    h.read("m-1", 0, current_l1_a=10.0, current_l2_a=12.0, frequency_hz=50.02)
    h.read("m-1", 10, current_l1_a=10.0, current_l2_a=75.0, frequency_hz=49.3)
    h.read("m-1", 20, current_l1_a=10.0, current_l2_a=70.0, frequency_hz=49.4)
    assert sorted(h.types()) == [("frequency_deviation", "raised"), ("overcurrent", "raised")]
    assert h.of("overcurrent")[0].value == 75.0
    assert h.of("frequency_deviation")[0].value == 49.3
    h.read("m-1", 30, current_l1_a=10.0, current_l2_a=12.0, frequency_hz=50.1)
    assert len(h.of("overcurrent", "cleared")) == 1
    assert len(h.of("frequency_deviation", "cleared")) == 1


def test_overcurrent_is_not_judged_without_a_limit():
    h = Harness()
    h.read("m-1", 0, current_l1_a=500.0)
    assert h.events == []

"""Outages: power_outage, comms_loss, transformer_outage."""

from __future__ import annotations

from meter_gateway.config.topology import MeterPlace
from meter_gateway.gateway.events import event_id
from tests.unit.test_engine import T0, Harness, S


def live(h: Harness, meters: list[str], start: float, end: float, step: float = 10) -> None:
    """Meters reading every `step` s, ticked as they go."""
    t = start
    while t <= end:
        for m in meters:
            h.read(m, t, now=t + 0.2)
        h.tick(t + 0.5)
        t += step


# -- power_outage ------------------------------------------------------------------------------


def test_a_last_gasp_raises_at_once_and_power_restored_clears_momentary():
    h = Harness(topology={"m-1": MeterPlace("m-1", "tx-1", "f-1")})
    live(h, ["m-1"], 0, 100)
    h.signal("m-1", "last_gasp", now=105, ts="2027-01-15T08:01:44Z")
    (raised,) = h.events
    assert (raised.type, raised.state, raised.severity) == ("power_outage", "raised", "critical")
    assert raised.subject == {"meter_id": "m-1", "transformer_id": "tx-1", "feeder_id": "f-1"}
    assert list(raised.subject) == ["meter_id", "transformer_id", "feeder_id"]
    assert raised.start_ns == T0 + 104 * S  # the meter's own time
    assert raised.detected_ns == T0 + 105 * S
    assert raised.event_id == event_id("power_outage", "m-1", T0 + 104 * S)
    assert raised.details["cause"] == "last_gasp"
    h.tick_through(106, 200)  # silent, but its silence is explained: no comms_loss
    h.signal("m-1", "power_restored", now=205, ts=T0 / S + 204)
    (cleared,) = h.of("power_outage", "cleared")
    assert cleared.event_id == raised.event_id
    assert cleared.duration_s == 100.0
    assert cleared.details["momentary"] is True
    h.read("m-1", 206)
    h.tick_through(207, 290)  # under offline_after_s of silence after it: nothing more
    assert len(h.events) == 2


def test_a_long_outage_is_not_momentary_and_a_reading_clears_it():
    h = Harness(momentary_max_s=300)
    live(h, ["m-1"], 0, 100)
    h.signal("m-1", "last_gasp", now=101, ts=T0 / S + 101)
    h.tick_through(102, 2000, 5)
    h.read("m-1", 1000, now=2001)  # from before? no: after the gasp, voltage back
    (cleared,) = h.of("power_outage", "cleared")
    assert cleared.details["momentary"] is False
    assert cleared.duration_s == 899.0
    assert h.of("comms_loss") == []


def test_a_late_reading_from_before_the_outage_does_not_clear_it():
    h = Harness()
    h.read("m-1", 0)
    h.signal("m-1", "last_gasp", now=50, ts=T0 / S + 50)
    h.read("m-1", 40, now=51)  # sent before the gasp, delivered after it
    assert h.types() == [("power_outage", "raised")]


def test_lwt_offline_then_silence_raises_and_a_reading_after_online_clears():
    h = Harness(offline_after_s=60)
    live(h, ["m-1"], 0, 100)
    h.signal("m-1", "offline", now=102)
    h.tick_through(103, 161)
    assert h.events == []
    h.tick(162)
    (raised,) = h.events
    assert raised.type == "power_outage"
    assert raised.details["cause"] == "lwt_offline"
    assert raised.start_ns == T0 + 102 * S
    h.signal("m-1", "online", now=400)
    assert len(h.events) == 1  # online alone says the link is back, not the power
    h.read("m-1", 401)
    assert h.types() == [("power_outage", "raised"), ("power_outage", "cleared")]


def test_lwt_offline_followed_by_a_reading_is_nothing():
    h = Harness(offline_after_s=60)
    live(h, ["m-1"], 0, 100)
    h.signal("m-1", "offline", now=102)
    live(h, ["m-1"], 110, 400)
    assert h.events == []


def test_zero_voltage_on_every_phase_raises_and_voltage_back_clears():
    h = Harness(voltage_min_duration_s=0)
    live(h, ["m-1"], 0, 50)
    h.read("m-1", 60, v=(0.0, 3.1, 0.0), energy_import_kwh=10.0)
    h.read("m-1", 70, v=(0.0, 0.0, 0.0), energy_import_kwh=10.0)
    (raised,) = h.events
    assert (raised.type, raised.details["cause"], raised.value) == (
        "power_outage",
        "zero_voltage",
        3.1,
    )
    assert raised.start_ns == T0 + 60 * S
    h.read("m-1", 80)
    assert h.types() == [("power_outage", "raised"), ("power_outage", "cleared")]
    assert h.events[1].duration_s == 20.0
    assert h.events[1].details["momentary"] is True


# -- comms_loss --------------------------------------------------------------------------------


def test_one_meters_comms_dropout_is_comms_loss_not_power_outage():
    topology = {m: MeterPlace(m, "tx-1") for m in ("m-1", "m-2", "m-3", "m-4")}
    h = Harness(topology, offline_after_s=90, transformer_outage_window_s=120)
    live(h, ["m-1", "m-2", "m-3", "m-4"], 0, 300)
    # m-4 goes quiet; the others carry on.
    t = 310
    while t <= 900:
        for m in ("m-1", "m-2", "m-3"):
            h.read(m, t, now=t + 0.2)
        h.tick(t + 0.5)
        t += 10
    (raised,) = h.events
    assert (raised.type, raised.severity, raised.subject["meter_id"]) == (
        "comms_loss",
        "major",
        "m-4",
    )
    assert raised.start_ns == T0 + 300 * S  # its last reading
    assert raised.details["cause"] == "silence"
    # Its neighbours kept reporting, so no roll-up can come: raised on time, at 90 s.
    assert raised.detected_ns >= T0 + (300 + 90) * S
    assert raised.detected_ns < T0 + (300 + 90 + 11) * S
    h.read("m-4", 901, now=950)
    assert h.types() == [("comms_loss", "raised"), ("comms_loss", "cleared")]
    assert h.of("power_outage") == []
    assert h.of("transformer_outage") == []


def test_a_15_minute_meter_is_comms_loss_after_its_missed_intervals():
    h = Harness(offline_after_s=90, offline_missed_intervals=3)
    for i in range(4):
        h.read("m-15", i * 900)
        h.tick_through(i * 900, i * 900 + 899, 10)
    h.tick_through(4 * 900, 3 * 900 + 2690, 10)
    assert h.events == []
    h.tick_through(3 * 900 + 2700, 3 * 900 + 2710)
    assert h.types() == [("comms_loss", "raised")]


def test_a_back_filled_old_reading_is_a_reading_arriving():
    h = Harness(offline_after_s=90)
    live(h, ["m-1"], 0, 100)
    h.tick_through(101, 300, 5)
    assert h.types() == [("comms_loss", "raised")]
    h.read("m-1", 50, now=301)  # old data, late: the link works
    h.tick_through(302, 350)
    assert h.types() == [("comms_loss", "raised"), ("comms_loss", "cleared")]


# -- transformer_outage ------------------------------------------------------------------------


def test_a_transformer_outage_names_its_meters_and_makes_no_comms_loss():
    meters = [f"m-{i}" for i in range(10)]
    topology = {m: MeterPlace(m, "tx-1", "f-1") for m in meters}
    topology["m-other"] = MeterPlace("m-other", "tx-2", "f-1")
    h = Harness(topology, offline_after_s=90, transformer_outage_window_s=120)
    live(h, [*meters, "m-other"], 0, 600)
    # The transformer trips at 605: three meters send a last gasp, the rest go silent.
    for m in meters[:3]:
        h.signal(m, "last_gasp", now=605.5, ts=T0 / S + 605)
    t = 610
    while t <= 3600:
        h.read("m-other", t, now=t + 0.2)
        h.tick(t + 0.5)
        t += 10
    (tx,) = h.of("transformer_outage")
    assert tx.subject == {"transformer_id": "tx-1", "feeder_id": "f-1"}
    assert tx.severity == "critical"
    # The meters out when it was raised (the ratio reached); the others joined after.
    assert set(tx.details["meter_ids"]) < set(meters)
    assert tx.value == len(tx.details["meter_ids"]) >= 6
    assert tx.start_ns >= T0 + 600 * S
    outages = h.of("power_outage", "raised")
    assert sorted(e.subject["meter_id"] for e in outages) == meters
    silent = [e for e in outages if e.details["cause"] == "transformer_outage"]
    assert len(silent) == 7
    assert all(e.details["transformer_id"] == "tx-1" for e in silent)
    assert h.of("comms_loss") == []
    # Power back: the meters read again; the transformer clears once most are back.
    t = 3700
    for m in meters:
        h.read(m, t, now=t + 0.2)
        t += 1
    assert len(h.of("power_outage", "cleared")) == 10
    (tx_clear,) = h.of("transformer_outage", "cleared")
    assert tx_clear.event_id == tx.event_id
    assert h.of("comms_loss") == []


def test_a_few_meters_out_are_not_a_transformer_outage():
    meters = [f"m-{i}" for i in range(10)]
    h = Harness({m: MeterPlace(m, "tx-1") for m in meters}, offline_after_s=90)
    live(h, meters, 0, 300)
    h.signal("m-0", "last_gasp", now=305, ts=T0 / S + 305)
    h.signal("m-1", "last_gasp", now=305, ts=T0 / S + 305)
    live(h, meters[2:], 310, 1200)
    assert h.of("transformer_outage") == []
    assert len(h.of("power_outage", "raised")) == 2
    assert h.of("comms_loss") == []


def test_meters_out_at_different_times_are_not_one_transformer_outage():
    meters = [f"m-{i}" for i in range(5)]
    h = Harness({m: MeterPlace(m, "tx-1") for m in meters}, transformer_outage_window_s=120)
    live(h, meters, 0, 100)
    for i, m in enumerate(meters):  # one an hour: separate faults
        h.signal(m, "last_gasp", now=200 + i * 3600, ts=T0 / S + 200 + i * 3600)
    assert h.of("transformer_outage") == []

"""Sparkplug B: what hostile BIRTHs can make the format remember is bounded, and a
Sparkplug death is called what it is in the outage it raises."""

from __future__ import annotations

import tracemalloc

from meter_gateway.protocols.devices import sparkplug
from meter_gateway.protocols.devices.protobuf import encode_field
from meter_gateway.protocols.devices.sparkplug import MAX_ALIASES, SparkplugB
from tests.unit.test_engine import T0, Harness, S

MS = T0 // 1_000_000


def metric(name: str, alias: int, value: float = 1.0) -> bytes:
    return (
        encode_field(1, name)
        + encode_field(2, alias)
        + encode_field(4, 10)
        + encode_field(13, value)
    )


def payload(*metrics: bytes, ts_ms: int = MS) -> bytes:
    out = encode_field(1, ts_ms)
    for m in metrics:
        out += encode_field(2, m)
    return out + encode_field(3, 0)


def birth(n_aliases: int, first: int = 0) -> bytes:
    return payload(*(metric(f"m{first + i}", first + i) for i in range(n_aliases)))


def test_a_birth_with_too_many_aliases_is_rejected_and_keeps_none() -> None:
    fmt = SparkplugB()
    ok = fmt(payload(metric("Power W", 1, 5.0)), "spBv1.0/g/NBIRTH/edge-1")
    assert not ok.rejections
    assert ok.signals
    out = fmt(birth(MAX_ALIASES + 1), "spBv1.0/g/NBIRTH/edge-1")
    assert not out.signals
    assert not out.readings
    (rej,) = out.rejections
    assert rej.field == "alias"
    assert rej.reason == (
        "sparkplug-b: NBIRTH from g/edge-1 for 'edge-1' defines 10,001 aliases, more than the "
        "10,000 one birth may define; nothing of it is kept (fewer metrics per node or device)"
    )
    # The aliases of the session before are stale now: DATA using them asks for a rebirth.
    data = fmt(
        payload(encode_field(2, 1) + encode_field(4, 10) + encode_field(13, 6.0)),
        "spBv1.0/g/NDATA/edge-1",
    )
    assert not data.readings
    assert "rebirth" in data.rejections[0].reason
    assert fmt.alias_count == 0


def test_a_device_birth_over_the_bound_is_rejected_too() -> None:
    fmt = SparkplugB()
    fmt(birth(3), "spBv1.0/g/NBIRTH/edge-1")
    out = fmt(birth(MAX_ALIASES + 1), "spBv1.0/g/DBIRTH/edge-1/dev-1")
    assert not out.signals
    assert "DBIRTH" in out.rejections[0].reason
    assert fmt.alias_count == 3
    fmt(birth(5), "spBv1.0/g/DBIRTH/edge-1/dev-1")
    assert fmt.alias_count == 8
    fmt(birth(2), "spBv1.0/g/DBIRTH/edge-1/dev-1")  # a rebirth replaces its aliases
    assert fmt.alias_count == 5
    fmt(payload(), "spBv1.0/g/DDEATH/edge-1/dev-1")
    assert fmt.alias_count == 3
    fmt(payload(), "spBv1.0/g/NDEATH/edge-1")
    assert fmt.alias_count == 0


def test_hostile_births_keep_memory_bounded(monkeypatch) -> None:
    # What independent testing sent (40 BIRTHs of 65,000 aliases, RSS +343 MB), scaled
    # down with the bounds: the total across nodes stays within its bound too.
    monkeypatch.setattr(sparkplug, "MAX_ALIASES", 200)
    monkeypatch.setattr(sparkplug, "MAX_ALIASES_TOTAL", 1000)
    fmt = SparkplugB()
    over = birth(201)
    tracemalloc.start()
    try:
        for i in range(40):
            out = fmt(over, f"spBv1.0/g/NBIRTH/edge-{i}")
            assert out.rejections
            assert not out.signals
        base, _ = tracemalloc.get_traced_memory()
        assert fmt.alias_count == 0
        for i in range(40):
            out = fmt(birth(150), f"spBv1.0/g/NBIRTH/node-{i}")
            assert not out.rejections
            assert fmt.alias_count <= 1000
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 1,000 aliases at most (40 x 150 were sent): well under 400 kB, whatever was sent.
    assert held - base < 400_000, held - base


def test_a_sparkplug_ddeath_outage_is_not_called_an_mqtt_last_will() -> None:
    fmt = SparkplugB()
    fmt(payload(metric("Power W", 1, 5.0)), "spBv1.0/g/NBIRTH/edge-1")
    fmt(payload(metric("Power W", 2, 5.0)), "spBv1.0/g/DBIRTH/edge-1/meter-7")
    h = Harness(offline_after_s=60)
    h.read("edge-1:meter-7", 0, now=0)
    (death,) = fmt(payload(), "spBv1.0/g/DDEATH/edge-1/meter-7").signals
    h.now = T0 + 10 * S
    h.engine.signal(death, h.now)
    h.tick_through(11, 80)
    (raised,) = h.of("power_outage", "raised")
    assert raised.details["cause"] == "lwt_offline"
    assert "MQTT last will" not in raised.message
    assert raised.message == (
        "edge-1:meter-7: reported offline at 2027-01-15T08:00:10Z (last will or Sparkplug "
        "NDEATH/DDEATH) and silent since, for 60 s"
    )
    assert not raised.message.endswith("since")

"""Example payload formats for meter-gateway, installed as a plugin."""

from __future__ import annotations

from meter_gateway.protocols.formats import Decoded, Rejection


def key_values(payload: bytes, topic_id: str | None) -> Decoded:
    """`power_w=812.5 ts=1795797300` -> one reading for the topic's meter."""
    out = Decoded()
    reading: dict[str, object] = {"meter_id": topic_id}
    for pair in payload.decode("utf-8", "replace").split():
        key, sep, value = pair.partition("=")
        try:
            reading[key] = float(value)
        except ValueError:
            out.rejections.append(Rejection(f"example-kv: {pair!r} is not key=number", key))
            return out
        if not sep:
            out.rejections.append(Rejection(f"example-kv: {pair!r} is not key=number", key))
            return out
    out.readings.append(reading)
    return out

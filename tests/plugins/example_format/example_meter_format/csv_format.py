"""A format that registers itself on import: `ts,power_w`."""

from __future__ import annotations

from meter_gateway.protocols.formats import Decoded, Rejection, register_format


@register_format("example-csv")
def csv_reading(payload: bytes, topic_id: str | None) -> Decoded:
    out = Decoded()
    try:
        ts, power = (float(x) for x in payload.decode().split(","))
    except ValueError:
        out.rejections.append(Rejection("example-csv: expected 'ts,power_w'"))
        return out
    out.readings.append({"meter_id": topic_id, "ts": ts, "power_w": power})
    return out

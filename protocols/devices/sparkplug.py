"""Sparkplug B (Eclipse Sparkplug 3.0): `spBv1.0/<group>/<type>/<edge node>[/<device>]`.

Payloads are protobuf (`org.eclipse.tahu.protobuf.Payload` of Tahu's
sparkplug_b.proto), decoded by the small wire decoder in `protobuf.py`:
Payload{timestamp=1, metrics=2, seq=3, uuid=4, body=5}, Metric{name=1, alias=2,
timestamp=3, datatype=4, is_historical=5, is_transient=6, is_null=7, ...,
int_value=10, long_value=11, float_value=12, double_value=13, boolean_value=14,
string_value=15, bytes_value=16, dataset=17, template=18}.

The format needs the whole topic (message type, edge node, device), so it is
registered with `full_topic=True`: subscribe to `spBv1.0/#` (or one group's
`spBv1.0/<group>/#`).

- Meter id: `<edge node>` for node messages (N*), `<edge node>:<device>` for device
  messages (D*). Aliases are kept per group and edge node (and device).
- NBIRTH / DBIRTH: a status signal `online`, the aliases of its metrics are
  remembered for the DATA messages that follow, and its values make a reading.
- NDATA / DDATA: readings. Metrics are named by `name`, or by an `alias` from the
  last BIRTH. An alias no BIRTH defined (the gateway started after the birth) cannot
  be read: the message is rejected with the aliases in the reason (the readings of
  the metrics that could be read are kept); the edge node must be asked to rebirth.
- NDEATH: `offline` for the node and every device of it known; DDEATH: `offline`
  for the device. A NDEATH whose `bdSeq` is not the one of the node's last NBIRTH
  is a stale last will from an earlier session and is ignored (as the Sparkplug B
  specification says).
- Other types (NCMD, DCMD, STATE) are ignored.
- Ids: the edge node and device ids make the meter id, so each follows the gateway's id
  rule (`formats.ID_RULE`), as does `<edge node>:<device>`; a message on a topic whose
  ids break it is rejected before anything of it is kept or signalled.
- Bounds: a BIRTH defining more than `MAX_ALIASES` aliases is rejected (its node or
  device keeps no aliases); across all nodes at most `MAX_ALIASES_TOTAL` are kept.
- Time: each metric's `timestamp` (ms), else the payload's, else the arrival time.
  Metrics of one message with different timestamps make one reading per timestamp.

Metric names map to reading fields through `DEFAULT_METRICS` (below), overridable:
`SparkplugB.set_metrics({...})` on the registered format (`FORMATS["sparkplug-b"]`)
or a second format made with `SparkplugB(metrics)`. A mapping's value is
`"field"`, `"field[i]"` (phase i of voltage_v / current_a, 0-2) and an optional
scale, `"energy_import_kwh*0.001"` (for Wh). A name matches exactly, or by its
tail after folders (`Meter 1/Power W` matches `Power W`). Proposed config key:
`mqtt.formats.sparkplug-b.metrics: {"<metric name>": "<field>[i]*scale"}`.
Phases reported by exception (only L2 changed) are completed from the last values
known for that meter; a phase never seen leaves the field out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meter_gateway.protocols import devices
from meter_gateway.protocols.devices.protobuf import (
    I32,
    I64,
    LEN,
    VARINT,
    ProtobufError,
    as_double,
    as_float,
    fields,
)
from meter_gateway.protocols.formats import (
    METER_ID,
    Decoded,
    Rejection,
    Signal,
    id_problem,
    register_format,
)

__all__ = ["DEFAULT_METRICS", "MetricValue", "SparkplugB", "decode_payload", "parse_mapping"]

_id_ok = METER_ID.fullmatch

NAMESPACE = "spBv1.0"
MESSAGE_TYPES = frozenset({"NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH"})

#: Metric name -> reading field: "field", "field[phase]", with an optional "*scale".
DEFAULT_METRICS: dict[str, str] = {
    "Energy/Import kWh": "energy_import_kwh",
    "Energy/Export kWh": "energy_export_kwh",
    "Energy/Import Wh": "energy_import_kwh*0.001",
    "Energy/Export Wh": "energy_export_kwh*0.001",
    "Energy Import kWh": "energy_import_kwh",
    "Energy Export kWh": "energy_export_kwh",
    "Power W": "power_w",
    "Power kW": "power_w*1000",
    "Voltage": "voltage_v",
    "Voltage V": "voltage_v",
    "Voltage L1": "voltage_v[0]",
    "Voltage L2": "voltage_v[1]",
    "Voltage L3": "voltage_v[2]",
    "Current": "current_a",
    "Current A": "current_a",
    "Current L1": "current_a[0]",
    "Current L2": "current_a[1]",
    "Current L3": "current_a[2]",
    "Power Factor": "power_factor",
    "Frequency": "frequency_hz",
    "Frequency Hz": "frequency_hz",
}

READING_FIELDS = frozenset(
    {
        "energy_import_kwh",
        "energy_export_kwh",
        "power_w",
        "voltage_v",
        "current_a",
        "power_factor",
        "frequency_hz",
    }
)
PHASED = frozenset({"voltage_v", "current_a"})
_TARGET = re.compile(r"^(\w+)(?:\[([0-2])\])?(?:\*([0-9.eE+-]+))?$")

# Sparkplug data types
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
_SIGNED_BITS = {INT8: 8, INT16: 16, INT32: 32, INT64: 64}

#: Bounds on what hostile topics can make the format remember.
MAX_NODES = 10_000
MAX_NAMES = 10_000
#: Aliases one BIRTH may define (per edge node, per device): far more metrics than a
#: meter has; a BIRTH defining more is rejected, and its node or device keeps none.
MAX_ALIASES = 10_000
#: Aliases kept across every node and device: past it, all are forgotten (as nodes are
#: past MAX_NODES) and the edge nodes asked to rebirth by the DATA they send next.
MAX_ALIASES_TOTAL = 500_000

Target = tuple[str, int | None, float]  # field, phase or None, scale


def parse_mapping(metrics: Mapping[str, str]) -> dict[str, Target]:
    """Check and compile a metric mapping; ValueError naming the bad entry."""
    out: dict[str, Target] = {}
    for name, spec in metrics.items():
        m = _TARGET.match(spec) if type(spec) is str else None
        if m is None or m.group(1) not in READING_FIELDS:
            raise ValueError(
                f"sparkplug-b metric {name!r}: {spec!r} is not 'field', 'field[0-2]' or "
                f"'field*scale' with a field among {', '.join(sorted(READING_FIELDS))}"
            )
        fld, phase, scale = m.group(1), m.group(2), m.group(3)
        if phase is not None and fld not in PHASED:
            raise ValueError(f"sparkplug-b metric {name!r}: {fld} has no phases")
        try:
            factor = float(scale) if scale else 1.0
        except ValueError:
            raise ValueError(f"sparkplug-b metric {name!r}: bad scale {scale!r}") from None
        out[name] = (fld, int(phase) if phase is not None else None, factor)
    return out


@dataclass(slots=True)
class MetricValue:
    """One decoded metric (only what the gateway uses)."""

    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None
    datatype: int | None = None
    is_null: bool = False
    value: Any = None


def _signed(v: int, datatype: int | None) -> int:
    bits = _SIGNED_BITS.get(datatype or 0)
    if bits is None:
        return v
    if bits < 64 and v >= 1 << 31:  # sign-extended into the uint32 field
        v -= 1 << 32
    if v >= 1 << (bits - 1):
        v -= 1 << bits
    return v


def _metric(buf: bytes) -> MetricValue:
    m = MetricValue()
    for number, wire, raw in fields(buf):
        if number == 1 and wire == LEN:
            m.name = raw.decode("utf-8", "replace")  # type: ignore[union-attr]
        elif number == 2 and wire == VARINT:
            m.alias = raw  # type: ignore[assignment]
        elif number == 3 and wire == VARINT:
            m.timestamp = raw  # type: ignore[assignment]
        elif number == 4 and wire == VARINT:
            m.datatype = raw  # type: ignore[assignment]
        elif number == 7 and wire == VARINT:
            m.is_null = bool(raw)
        elif number in (10, 11) and wire == VARINT:
            m.value = raw
        elif number == 12 and wire == I32:
            m.value = as_float(raw)
        elif number == 13 and wire == I64:
            m.value = as_double(raw)
        elif number == 14 and wire == VARINT:
            m.value = bool(raw)
        elif number == 15 and wire == LEN:
            m.value = raw.decode("utf-8", "replace")  # type: ignore[union-attr]
        elif number in (10, 11, 12, 13, 14, 15):
            raise ProtobufError(f"metric field {number} has the wrong wire type ({wire})")
        elif number in (16, 17, 18, 19):
            m.value = None  # bytes, data sets, templates: not a reading's value
    if type(m.value) is int:
        m.value = _signed(m.value, m.datatype)
    return m


def decode_payload(buf: bytes) -> tuple[int | None, list[MetricValue], int | None]:
    """A Sparkplug B payload: (timestamp ms, metrics, seq). Raises ProtobufError."""
    ts: int | None = None
    seq: int | None = None
    metrics: list[MetricValue] = []
    for number, wire, raw in fields(buf):
        if number == 1 and wire == VARINT:
            ts = raw  # type: ignore[assignment]
        elif number == 2 and wire == LEN:
            try:
                metrics.append(_metric(raw))  # type: ignore[arg-type]
            except ProtobufError as exc:
                raise ProtobufError(f"metrics[{len(metrics)}]: {exc}") from None
        elif number == 3 and wire == VARINT:
            seq = raw  # type: ignore[assignment]
        elif number in (1, 2, 3):
            raise ProtobufError(f"payload field {number} has the wrong wire type ({wire})")
    return ts, metrics, seq


def _epoch_s(ms: int) -> int | float:
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


@dataclass(slots=True)
class _Node:
    aliases: dict[int, str] = field(default_factory=dict)
    bdseq: int | None = None
    devices: dict[str, dict[int, str]] = field(default_factory=dict)  # device -> aliases
    phases: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # meter -> last


class SparkplugB:
    """The `sparkplug-b` payload format: one instance per mapping, with its own state.

    Called as any format, `(payload, topic)`, with the whole topic (`full_topic`).
    State (aliases, bdSeq, last phase values) lives in the instance; the gateway
    calls formats from its event loop only, so it needs no lock.
    """

    full_topic = True

    def __init__(self, metrics: Mapping[str, str] | None = None) -> None:
        self._nodes: dict[tuple[str, str], _Node] = {}
        self._alias_total = 0  # aliases held across every node and device
        self.set_metrics(DEFAULT_METRICS if metrics is None else metrics)

    def set_metrics(self, metrics: Mapping[str, str]) -> None:
        """Replace the metric-name mapping (checked first: ValueError if wrong)."""
        self._map = parse_mapping(metrics)
        self._resolved: dict[str, Target | None] = {}

    def reset(self) -> None:
        """Forget every node's aliases and state (tests; a reconnect without session)."""
        self._nodes.clear()
        self._alias_total = 0

    @property
    def alias_count(self) -> int:
        """Aliases held across every node and device."""
        return self._alias_total

    def _forget_node(self, key: tuple[str, str]) -> None:
        node = self._nodes.pop(key, None)
        if node is not None:
            self._alias_total -= len(node.aliases) + sum(len(a) for a in node.devices.values())

    def _clear_nodes(self) -> None:
        self._nodes.clear()
        self._alias_total = 0

    def _target(self, name: str) -> Target | None:
        hit = self._resolved.get(name, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        target = self._map.get(name)
        tail = name
        while target is None and "/" in tail:
            tail = tail.partition("/")[2]
            target = self._map.get(tail)
        if len(self._resolved) >= MAX_NAMES:
            self._resolved.clear()
        self._resolved[name] = target
        return target

    def __call__(self, payload: bytes, topic: str | None) -> Decoded:
        out = Decoded()
        levels = topic.split("/") if topic else []
        if not levels or levels[0] != NAMESPACE:
            out.rejections.append(
                Rejection(
                    f"sparkplug-b: needs the whole topic ({NAMESPACE}/<group>/<type>/<edge>"
                    f"[/<device>]), got {topic!r}",
                    "topic",
                )
            )
            return out
        if len(levels) < 4 or levels[2] not in MESSAGE_TYPES:
            return out  # STATE, NCMD, DCMD: not the gateway's
        group, kind, edge = levels[1], levels[2], levels[3]
        device = "/".join(levels[4:]) or None
        if (kind[0] == "D") != (device is not None):
            want = "a device level" if kind[0] == "D" else "no device level"
            out.rejections.append(Rejection(f"sparkplug-b: {kind} takes {want}", "topic"))
            return out
        meter = edge if device is None else f"{edge}:{device}"
        if not (edge and _id_ok(meter)):  # one match when all is well; else say which
            problem = id_problem(edge, f"sparkplug-b: {kind}: edge node id")
            if problem is None and device is not None:
                problem = id_problem(device, f"sparkplug-b: {kind}: device id")
            if problem is None:
                problem = id_problem(meter, f"sparkplug-b: {kind}: meter id")
            out.rejections.append(Rejection(problem or "", "meter_id"))
            return out
        try:
            ts_ms, metrics, _seq = decode_payload(payload)
        except ProtobufError as exc:
            out.rejections.append(Rejection(f"sparkplug-b: invalid protobuf: {exc}", "protobuf"))
            return out
        key = (group, edge)
        if kind.endswith("BIRTH"):
            defined = sum(1 for m in metrics if m.name is not None and m.alias is not None)
            if defined > MAX_ALIASES:
                # Its aliases are not kept, and the ones before it are stale: DATA that
                # uses them is rejected asking for a rebirth, never misread.
                if kind == "NBIRTH":
                    self._forget_node(key)
                else:
                    self._forget_device(key, device)  # type: ignore[arg-type]
                out.rejections.append(
                    Rejection(
                        f"sparkplug-b: {kind} from {group}/{edge} for {meter!r} defines "
                        f"{defined:,} aliases, more than the {MAX_ALIASES:,} one birth may "
                        "define; nothing of it is kept (fewer metrics per node or device)",
                        "alias",
                    )
                )
                return out
            if self._alias_total + defined > MAX_ALIASES_TOTAL:
                self._clear_nodes()
        node = self._nodes.get(key)
        if kind == "NDEATH":
            bdseq = next((m.value for m in metrics if m.name == "bdSeq"), None)
            if node is not None and None not in (node.bdseq, bdseq) and node.bdseq != bdseq:
                return out  # the will of an earlier session, published late
            out.signals.append(Signal("status", meter, "offline", _epoch_or_none(ts_ms)))
            if node is not None:
                for dev in node.devices:
                    sig = Signal("status", f"{edge}:{dev}", "offline", _epoch_or_none(ts_ms))
                    out.signals.append(sig)
                self._forget_node(key)
            return out
        if kind == "NBIRTH":
            if len(self._nodes) >= MAX_NODES and key not in self._nodes:
                self._clear_nodes()
            self._forget_node(key)
            node = self._nodes[key] = _Node()
            node.bdseq = next((m.value for m in metrics if m.name == "bdSeq"), None)
        elif node is None:
            if kind == "DBIRTH":  # a device born while its node's birth was missed
                if len(self._nodes) >= MAX_NODES:
                    self._clear_nodes()
                node = self._nodes[key] = _Node()
            else:
                node = _Node()  # not kept: DATA from a node never born
        if kind == "DDEATH":
            out.signals.append(Signal("status", meter, "offline", _epoch_or_none(ts_ms)))
            gone = node.devices.pop(device, None)  # type: ignore[arg-type]
            if gone is not None and self._nodes.get(key) is node:
                self._alias_total -= len(gone)
            node.phases.pop(meter, None)
            return out
        if kind == "DBIRTH":
            if len(node.devices) >= MAX_NODES and device not in node.devices:
                self._alias_total -= sum(len(a) for a in node.devices.values())
                node.devices.clear()
            self._forget_device(key, device)  # type: ignore[arg-type]
            node.devices[device] = {}  # type: ignore[index]
        aliases = node.aliases if device is None else node.devices.get(device, {})
        if kind.endswith("BIRTH"):
            out.signals.append(Signal("status", meter, "online", _epoch_or_none(ts_ms)))
            before = len(aliases)
            for m in metrics:
                if m.name is not None and m.alias is not None:
                    aliases[m.alias] = m.name
            self._alias_total += len(aliases) - before
        self._readings(out, metrics, aliases, meter, node, ts_ms, kind, f"{group}/{edge}")
        return out

    def _forget_device(self, key: tuple[str, str], device: str) -> None:
        node = self._nodes.get(key)
        if node is not None:
            gone = node.devices.pop(device, None)
            if gone is not None:
                self._alias_total -= len(gone)

    def _readings(
        self,
        out: Decoded,
        metrics: list[MetricValue],
        aliases: dict[int, str],
        meter: str,
        node: _Node,
        ts_ms: int | None,
        kind: str,
        where: str,
    ) -> None:
        by_ts: dict[int | None, dict[str, Any]] = {}
        unknown: list[int] = []
        for m in metrics:
            name = m.name
            if name is None:
                if m.alias is None:
                    continue
                name = aliases.get(m.alias)
                if name is None:
                    unknown.append(m.alias)
                    continue
            if m.is_null or m.value is None:
                continue
            target = self._target(name)
            if target is None:
                continue
            fld, phase, scale = target
            value = m.value
            if scale != 1.0 and type(value) in (int, float):
                value = value * scale
            values = by_ts.setdefault(m.timestamp if m.timestamp is not None else ts_ms, {})
            if phase is None:
                values[fld] = value
            else:
                slot = values.get(fld)
                if type(slot) is not list:
                    slot = values[fld] = [None, None, None]
                slot[phase] = value
        if len(node.phases) >= MAX_NODES and meter not in node.phases:
            node.phases.clear()  # hostile device names must not grow this without bound
        last = node.phases.setdefault(meter, {}) if by_ts else {}
        for t in sorted(by_ts, key=lambda x: -1 if x is None else x):
            values = by_ts[t]
            for fld in PHASED:
                slot = values.get(fld)
                if type(slot) is not list:
                    continue
                known = last.setdefault(fld, [None, None, None])
                for i in range(3):
                    if slot[i] is None:
                        slot[i] = known[i]
                    else:
                        known[i] = slot[i]
                if any(v is None for v in slot):
                    del values[fld]
            if values:
                ts = devices.arrival_ts() if t is None else _epoch_s(t)
                out.readings.append({"meter_id": meter, "ts": ts, **values})
        if unknown:
            shown = ", ".join(str(a) for a in sorted(set(unknown))[:10])
            out.rejections.append(
                Rejection(
                    f"sparkplug-b: {kind} from {where} for {meter!r} uses alias(es) {shown} that "
                    "no BIRTH seen since the gateway started defined; the edge node must "
                    "rebirth (NCMD 'Node Control/Rebirth')",
                    "alias",
                )
            )


def _epoch_or_none(ms: int | None) -> int | float | None:
    return None if ms is None else _epoch_s(ms)


sparkplug_b = register_format("sparkplug-b", full_topic=True)(SparkplugB())

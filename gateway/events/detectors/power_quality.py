"""Power quality from each meter's newest reading: phase loss, sag, swell, imbalance,
overcurrent, frequency.

- `phase_loss` (3-phase meters): one or two phases below 10 % of nominal while another
  has voltage; at once. It stands for the whole episode: no sag or imbalance on that
  meter meanwhile.
- `voltage_sag` / `voltage_swell`: a phase outside nominal x (1 +- voltage_tolerance)
  for voltage_min_duration_s of reading time (raised on the first reading at which the
  excursion has lasted that long; start = the first reading outside).
- `phase_imbalance`: max |V_i - mean| / mean over 3 phases above voltage_unbalance_max,
  for voltage_min_duration_s likewise.
- `overcurrent` (when overcurrent_a is set) and `frequency_deviation`: at once.

Each is cleared by the first reading back inside. The caller does not ask while the
meter is in a power outage.
"""

from __future__ import annotations

from meter_gateway.config.schema import EventsConfig
from meter_gateway.gateway.events.detectors import Book
from meter_gateway.gateway.events.state import (
    FREQUENCY,
    IMBALANCE,
    OVERCURRENT,
    PHASE_LOSS,
    SAG,
    SWELL,
    MeterState,
)

__all__ = ["PowerQuality"]

_NS = 1_000_000_000


class PowerQuality:
    """Decides what the engine does not decide inline (`Engine.reading`: a healthy
    reading costs no call here): each method takes the newest reading's values for its
    kind, with the meter's state as it was."""

    def __init__(self, config: EventsConfig, book: Book) -> None:
        self._book = book
        self._min_ns = int(config.voltage_min_duration_s * _NS)
        # The thresholds the engine's inline decision compares with, too.
        self.unbalance_max = config.voltage_unbalance_max
        self.overcurrent_a = config.overcurrent_a
        self.f_nominal = config.frequency_nominal_hz
        self.f_tolerance = config.frequency_tolerance_hz

    # -- voltage -----------------------------------------------------------------------------

    def voltage(
        self,
        st: MeterState,
        ts: int,
        v1: float,
        v2: float | None,
        v3: float | None,
        now_ns: int,
    ) -> None:
        """The voltages of a reading the engine did not find healthy (a phase outside the
        band, or a voltage condition open): phase loss, sag, swell and, on three phases,
        imbalance."""
        lim = st.limits
        # Judged on three phases when it has three (unless the topology says one); the
        # imbalance after sag and swell.
        unbalance: float | None = None
        if v2 is not None and v3 is not None and st.three_phase is not False:
            z = lim.zero_v
            if v1 < z or v2 < z or v3 < z:
                lost = [i + 1 for i, v in enumerate((v1, v2, v3)) if v < z]
                self._phase_lost(st, ts, lost, now_ns)
                return
            if st.open & PHASE_LOSS:
                self._book.clear_meter(
                    st, "phase_loss", ts, now_ns, f"{st.meter_id}: all phases back"
                )
            vmin = min(v1, v2, v3)
            vmax = max(v1, v2, v3)
            mean = (v1 + v2 + v3) / 3
            unbalance = max(abs(v1 - mean), abs(v2 - mean), abs(v3 - mean)) / mean
        else:
            vmin = vmax = v1
        book = self._book
        # Sag: the lowest phase below the band.
        if vmin < lim.low_v:
            if not st.sag_since:
                st.sag_since = ts
            if not st.open & SAG and ts - st.sag_since >= self._min_ns:
                book.raise_meter(
                    st,
                    "voltage_sag",
                    st.sag_since,
                    now_ns,
                    {"cause": "low_voltage", "limit_v": round(lim.low_v, 3)},
                    f"{st.meter_id}: voltage {vmin:g} V below {lim.low_v:g} V",
                    value=vmin,
                )
        else:
            st.sag_since = 0
            if st.open & SAG:
                book.clear_meter(st, "voltage_sag", ts, now_ns, f"{st.meter_id}: voltage back")
        # Swell: the highest phase above it.
        if vmax > lim.high_v:
            if not st.swell_since:
                st.swell_since = ts
            if not st.open & SWELL and ts - st.swell_since >= self._min_ns:
                book.raise_meter(
                    st,
                    "voltage_swell",
                    st.swell_since,
                    now_ns,
                    {"cause": "high_voltage", "limit_v": round(lim.high_v, 3)},
                    f"{st.meter_id}: voltage {vmax:g} V above {lim.high_v:g} V",
                    value=vmax,
                )
        else:
            st.swell_since = 0
            if st.open & SWELL:
                book.clear_meter(st, "voltage_swell", ts, now_ns, f"{st.meter_id}: voltage back")
        if unbalance is not None:
            self.imbalance(st, ts, unbalance, now_ns)

    def _phase_lost(self, st: MeterState, ts: int, lost: list[int], now_ns: int) -> None:
        """One condition for the episode: a dead phase is not also a sag or imbalance."""
        book = self._book
        for type_, bit in (
            ("voltage_sag", SAG),
            ("voltage_swell", SWELL),
            ("phase_imbalance", IMBALANCE),
        ):
            if st.open & bit:
                book.clear_meter(st, type_, ts, now_ns, f"{st.meter_id}: phase lost")
        st.sag_since = st.swell_since = st.imbalance_since = 0
        if not st.open & PHASE_LOSS:
            names = ", ".join(f"L{i}" for i in lost)
            book.raise_meter(
                st,
                "phase_loss",
                ts,
                now_ns,
                {"cause": "zero_voltage", "phases": [f"L{i}" for i in lost]},
                f"{st.meter_id}: no voltage on {names}",
                value=float(len(lost)),
            )

    def imbalance(self, st: MeterState, ts: int, unbalance: float, now_ns: int) -> None:
        """`unbalance`, max |V_i - mean| / mean of a three-phase reading, when the engine
        found it above the limit (or from `voltage`)."""
        if unbalance > self.unbalance_max:
            if not st.imbalance_since:
                st.imbalance_since = ts
            if not st.open & IMBALANCE and ts - st.imbalance_since >= self._min_ns:
                self._book.raise_meter(
                    st,
                    "phase_imbalance",
                    st.imbalance_since,
                    now_ns,
                    {"cause": "voltage_unbalance", "limit": self.unbalance_max},
                    f"{st.meter_id}: voltage unbalance {unbalance:.1%}"
                    f" above {self.unbalance_max:.1%}",
                    value=round(unbalance, 6),
                )
        else:
            st.imbalance_since = 0
            if st.open & IMBALANCE:
                self._book.clear_meter(
                    st, "phase_imbalance", ts, now_ns, f"{st.meter_id}: phases balanced"
                )

    # -- current, frequency ------------------------------------------------------------------

    def current(self, st: MeterState, ts: int, values: dict[str, float], now_ns: int) -> None:
        """Every reading's currents, when overcurrent_a is set."""
        currents = [
            v
            for v in (
                values.get("current_l1_a"),
                values.get("current_l2_a"),
                values.get("current_l3_a"),
            )
            if v is not None
        ]
        if not currents:
            return
        limit = self.overcurrent_a
        assert limit is not None
        imax = max(currents)
        if imax > limit:
            if not st.open & OVERCURRENT:
                self._book.raise_meter(
                    st,
                    "overcurrent",
                    ts,
                    now_ns,
                    {"cause": "current", "limit_a": limit},
                    f"{st.meter_id}: current {imax:g} A above {limit:g} A",
                    value=imax,
                )
        elif st.open & OVERCURRENT:
            self._book.clear_meter(st, "overcurrent", ts, now_ns, f"{st.meter_id}: current back")

    def frequency(self, st: MeterState, ts: int, f: float, now_ns: int) -> None:
        """A frequency outside the tolerance, or any while frequency_deviation is open."""
        if abs(f - self.f_nominal) > self.f_tolerance:
            if not st.open & FREQUENCY:
                self._book.raise_meter(
                    st,
                    "frequency_deviation",
                    ts,
                    now_ns,
                    {"cause": "frequency", "nominal_hz": self.f_nominal},
                    f"{st.meter_id}: frequency {f:g} Hz, nominal {self.f_nominal:g}"
                    f" +- {self.f_tolerance:g} Hz",
                    value=f,
                )
        elif st.open & FREQUENCY:
            self._book.clear_meter(
                st, "frequency_deviation", ts, now_ns, f"{st.meter_id}: frequency back"
            )

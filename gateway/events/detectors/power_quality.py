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
    def __init__(self, config: EventsConfig, book: Book) -> None:
        self._book = book
        self._min_ns = int(config.voltage_min_duration_s * _NS)
        self._unbalance_max = config.voltage_unbalance_max
        self._overcurrent_a = config.overcurrent_a
        self._f_nominal = config.frequency_nominal_hz
        self._f_tolerance = config.frequency_tolerance_hz

    def reading(
        self,
        st: MeterState,
        ts: int,
        values: dict[str, float],
        v1: float | None,
        v2: float | None,
        v3: float | None,
        now_ns: int,
    ) -> None:
        if v1 is not None:
            self._voltage(st, ts, v1, v2, v3, now_ns)
        if self._overcurrent_a is not None:
            self._current(st, ts, values, now_ns)
        f = values.get("frequency_hz")
        if f is not None:
            self._frequency(st, ts, f, now_ns)

    # -- voltage -----------------------------------------------------------------------------

    def _voltage(
        self,
        st: MeterState,
        ts: int,
        v1: float,
        v2: float | None,
        v3: float | None,
        now_ns: int,
    ) -> None:
        lim = st.limits
        three = v2 is not None and v3 is not None
        if st.three_phase is not None:
            three = three and st.three_phase
        if three:
            z = lim.zero_v
            if v1 < z or v2 < z or v3 < z:  # type: ignore[operator]
                lost = [i + 1 for i, v in enumerate((v1, v2, v3)) if v < z]  # type: ignore[operator]
                self._phase_lost(st, ts, lost, now_ns)
                return
            if st.open & PHASE_LOSS:
                self._book.clear_meter(
                    st, "phase_loss", ts, now_ns, f"{st.meter_id}: all phases back"
                )
            vmin = min(v1, v2, v3)  # type: ignore[type-var]
            vmax = max(v1, v2, v3)  # type: ignore[type-var]
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
        if three:
            mean = (v1 + v2 + v3) / 3  # type: ignore[operator]
            unbalance = max(abs(v1 - mean), abs(v2 - mean), abs(v3 - mean)) / mean  # type: ignore[operator]
            self._imbalance(st, ts, unbalance, now_ns)

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

    def _imbalance(self, st: MeterState, ts: int, unbalance: float, now_ns: int) -> None:
        if unbalance > self._unbalance_max:
            if not st.imbalance_since:
                st.imbalance_since = ts
            if not st.open & IMBALANCE and ts - st.imbalance_since >= self._min_ns:
                self._book.raise_meter(
                    st,
                    "phase_imbalance",
                    st.imbalance_since,
                    now_ns,
                    {"cause": "voltage_unbalance", "limit": self._unbalance_max},
                    f"{st.meter_id}: voltage unbalance {unbalance:.1%}"
                    f" above {self._unbalance_max:.1%}",
                    value=round(unbalance, 6),
                )
        else:
            st.imbalance_since = 0
            if st.open & IMBALANCE:
                self._book.clear_meter(
                    st, "phase_imbalance", ts, now_ns, f"{st.meter_id}: phases balanced"
                )

    # -- current, frequency ------------------------------------------------------------------

    def _current(self, st: MeterState, ts: int, values: dict[str, float], now_ns: int) -> None:
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
        limit = self._overcurrent_a
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

    def _frequency(self, st: MeterState, ts: int, f: float, now_ns: int) -> None:
        if abs(f - self._f_nominal) > self._f_tolerance:
            if not st.open & FREQUENCY:
                self._book.raise_meter(
                    st,
                    "frequency_deviation",
                    ts,
                    now_ns,
                    {"cause": "frequency", "nominal_hz": self._f_nominal},
                    f"{st.meter_id}: frequency {f:g} Hz, nominal {self._f_nominal:g}"
                    f" +- {self._f_tolerance:g} Hz",
                    value=f,
                )
        elif st.open & FREQUENCY:
            self._book.clear_meter(
                st, "frequency_deviation", ts, now_ns, f"{st.meter_id}: frequency back"
            )

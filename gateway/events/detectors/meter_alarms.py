"""What a meter says about itself or its registers: decreases, reverse energy, a wrong
clock, tamper.

- `register_decrease` (point event): the validator's `register_decrease` flag, or the
  import register below the meter's previous newest reading. Once per episode: the
  next one only after the register rose normally again.
- `reverse_energy` (point event, not on prosumers): the export register rising or
  power_w below -REVERSE_W. Once per episode; the episode ends after REVERSE_CLEAN
  readings without reverse flow and REVERSE_QUIET_S of reading time since the last.
- `clock_drift`: drift = the newest reading's ts - the arrival clock, beyond
  clock_drift_max_s on two consecutive newest readings whose drift is stable. Late
  back-filled data is not drift: its readings are older than the meter's newest (not
  judged at all), or a batch whose drift changes by the interval from one reading to
  the next (arrivals bunched, ts spaced), where a wrong clock keeps a constant offset.
  Cleared by a newest reading within the limit.
- `tamper` (point event): a `tamper` or `cover_open` meter event, once per TAMPER_S.
"""

from __future__ import annotations

from meter_gateway.config.schema import EventsConfig
from meter_gateway.gateway.events.detectors import Book
from meter_gateway.gateway.events.state import CLOCK, MeterState

__all__ = ["REVERSE_CLEAN", "REVERSE_QUIET_S", "REVERSE_W", "TAMPER_S", "MeterAlarms"]

_NS = 1_000_000_000
# Net power below this is reverse flow (a few watts of noise at no load is not).
REVERSE_W = 10.0
REVERSE_CLEAN = 4
REVERSE_QUIET_S = 3600.0
TAMPER_S = 3600.0
# How far two consecutive drifts may differ and still be one steady offset: a few
# seconds of delivery jitter, never a reading interval of back-filled data.
_DRIFT_JITTER_S = 5.0
_DRIFT_JITTER_SHARE = 0.05


class MeterAlarms:
    def __init__(self, config: EventsConfig, book: Book) -> None:
        self._book = book
        self._drift_max_s = config.clock_drift_max_s
        self._jitter_s = max(_DRIFT_JITTER_S, _DRIFT_JITTER_SHARE * config.clock_drift_max_s)
        self._reverse_quiet_ns = int(REVERSE_QUIET_S * _NS)
        self._tamper_ns = int(TAMPER_S * _NS)

    def reading(
        self,
        st: MeterState,
        ts: int,
        prev_ts: int,
        arrival_gap_ns: int,
        values: dict[str, float],
        now_ns: int,
    ) -> None:
        """A newest reading (ts above every earlier one of the meter)."""
        imp = values.get("energy_import_kwh")
        if imp is not None:
            last = st.last_import
            st.last_import = imp
            if imp < last:  # False while last is NaN (nothing to compare with)
                self.register_decrease(
                    st,
                    ts,
                    now_ns,
                    f"{st.meter_id}: energy_import_kwh went down from {last!r} to {imp!r}",
                )
            elif imp > last:
                st.decrease_episode = False  # rose normally again: the episode is over
        exp = values.get("energy_export_kwh")
        if not st.prosumer:
            self._reverse(st, ts, exp, values.get("power_w"), now_ns)
        if exp is not None:
            st.last_export = exp
        self._clock(st, ts, prev_ts, arrival_gap_ns, now_ns)

    # -- register_decrease -------------------------------------------------------------------

    def register_decrease(self, st: MeterState, ts: int, now_ns: int, message: str) -> None:
        """From the validator's flag or the reading itself: whichever comes first."""
        if st.decrease_episode:
            return
        st.decrease_episode = True
        self._book.raise_meter(
            st,
            "register_decrease",
            ts,
            now_ns,
            {"cause": "register_decrease"},
            message,
        )

    # -- reverse_energy ----------------------------------------------------------------------

    def _reverse(
        self, st: MeterState, ts: int, exp: float | None, power: float | None, now_ns: int
    ) -> None:
        exported = exp is not None and exp > st.last_export
        negative = power is not None and power < -REVERSE_W
        if exported or negative:
            if not st.reverse_ts:
                if negative:
                    what, value = f"power {power:g} W", power
                else:
                    what, value = (
                        f"export register up {exp - st.last_export:.3f} kWh",  # type: ignore[operator]
                        exp - st.last_export,  # type: ignore[operator]
                    )
                self._book.raise_meter(
                    st,
                    "reverse_energy",
                    ts,
                    now_ns,
                    {"cause": "negative_power" if negative else "export_register"},
                    f"{st.meter_id}: reverse energy flow on a meter not marked prosumer ({what})",
                    value=value,
                )
            st.reverse_ts = ts
            st.reverse_clean = 0
        elif st.reverse_ts:
            st.reverse_clean += 1
            if st.reverse_clean >= REVERSE_CLEAN and ts - st.reverse_ts >= self._reverse_quiet_ns:
                st.reverse_ts = 0
                st.reverse_clean = 0

    # -- clock_drift -------------------------------------------------------------------------

    def _clock(
        self, st: MeterState, ts: int, prev_ts: int, arrival_gap_ns: int, now_ns: int
    ) -> None:
        drift = (ts - now_ns) / _NS
        prev = st.drift_prev_s
        st.drift_prev_s = drift
        limit = self._drift_max_s
        if -limit <= drift <= limit:
            if st.open & CLOCK:
                self._book.clear_meter(
                    st, "clock_drift", ts, now_ns, f"{st.meter_id}: clock within {limit:g} s"
                )
            return
        if st.open & CLOCK or not (abs(prev) > limit):  # NaN: no previous reading
            return
        self._drifted(st, ts, prev_ts, arrival_gap_ns, drift, prev, now_ns)

    def _drifted(
        self,
        st: MeterState,
        ts: int,
        prev_ts: int,
        arrival_gap_ns: int,
        drift: float,
        prev: float,
        now_ns: int,
    ) -> None:
        """This reading and the one before it both beyond the limit, no clock_drift open."""
        limit = self._drift_max_s
        # A steady offset on readings arriving at their own cadence: a wrong clock.
        # Back-fill arrives bunched: the drift moves by the interval each reading.
        # A clock running fast or slow moves its drift by a little each reading; back-fill
        # by a whole interval (it arrived bunched).
        ts_gap = ts - prev_ts
        steady = max(self._jitter_s, 0.25 * ts_gap / _NS)
        if abs(drift - prev) > steady or 2 * arrival_gap_ns < ts_gap:
            return
        self._book.raise_meter(
            st,
            "clock_drift",
            prev_ts,
            now_ns,
            {"cause": "clock", "limit_s": limit},
            f"{st.meter_id}: clock {'ahead' if drift > 0 else 'behind'} by {abs(drift):.0f} s",
            value=round(drift, 3),
        )

    def clock_on_time(self, st: MeterState, ts: int, now_ns: int) -> None:
        """An older reading stamped within the limit of now clears an open clock_drift:
        the clock was set right and stepped back behind its newest reading."""
        if st.open & CLOCK and abs(ts - now_ns) <= self._drift_max_s * _NS:
            self._book.clear_meter(st, "clock_drift", ts, now_ns, f"{st.meter_id}: clock set right")
            st.drift_prev_s = (ts - now_ns) / _NS

    # -- tamper ------------------------------------------------------------------------------

    def tamper(self, st: MeterState, kind: str, ts: int, now_ns: int) -> None:
        if st.tamper_ts and 0 <= ts - st.tamper_ts < self._tamper_ns:
            return  # the same episode
        st.tamper_ts = ts
        self._book.raise_meter(
            st,
            "tamper",
            ts,
            now_ns,
            {"cause": kind},
            f"{st.meter_id}: {kind.replace('_', ' ')}",
        )

"""What a meter says about itself or its registers: decreases, reverse energy, a wrong
clock, tamper.

- `register_decrease` (point event): the validator's `register_decrease` flag, or the
  import register below the meter's previous newest reading. Once per episode: the
  next one only after the register rose normally again.
- `reverse_energy` (point event, not on prosumers): the export register rising or
  power_w below -REVERSE_W. Once per episode; the episode ends after REVERSE_CLEAN
  readings without reverse flow and REVERSE_QUIET_S of reading time since the last.
- `clock_drift`: drift = a reading's ts - the arrival clock, beyond clock_drift_max_s
  on two consecutive readings whose drift is stable and that arrive as far apart as
  their timestamps. Late back-filled data is not drift: it arrives bunched (readings
  within a second of each other), or its drift changes by the interval from one
  reading to the next, where a wrong clock keeps a constant offset.
  - newest readings (`clock`, `drifted`): a clock gaining, losing or off;
  - readings older than the meter's newest, each alone (`set_back`): a clock set back
    (an RTC reset); raised on the second one, and the meter is judged on its new
    timeline from there (the engine takes the reading as its newest);
  - readings rejected by validation as too old or too far in the future (`rejected`,
    from the engine's `flag`): a clock so wrong that nothing of the meter is stored.
  The same count (`clock_n`, `clock_prev_s`) serves the last two; a duplicate (the
  same ts again) never makes the second. Cleared by a newest reading within the limit,
  or an older one on time (a clock set right).
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
    """Decides what the engine does not decide inline (`Engine.reading`: a newest reading
    with registers rising, no reverse flow and its clock within the limit costs no call
    here; the register decrease it decides itself), and the meter's signals and
    rejected readings."""

    def __init__(self, config: EventsConfig, book: Book) -> None:
        self._book = book
        # The limit the engine's inline decision compares with, too.
        self.drift_max_s = config.clock_drift_max_s
        self._jitter_s = max(_DRIFT_JITTER_S, _DRIFT_JITTER_SHARE * config.clock_drift_max_s)
        self._reverse_quiet_ns = int(REVERSE_QUIET_S * _NS)
        self._tamper_ns = int(TAMPER_S * _NS)

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

    def reverse(
        self, st: MeterState, ts: int, exp: float | None, power: float | None, now_ns: int
    ) -> None:
        """A consumer's newest reading that shows reverse flow, or any while an episode is
        under way (`reverse_ts`); before its export register becomes the last one."""
        exported = exp is not None and exp > st.last_export
        negative = power is not None and power < -REVERSE_W
        if exported or negative:
            if not st.reverse_ts:
                if negative:
                    what, value = f"power {power:g} W", power
                else:
                    assert exp is not None  # (exported)
                    what, value = (
                        f"export register up {exp - st.last_export:.3f} kWh",
                        exp - st.last_export,
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

    def clock(
        self, st: MeterState, ts: int, prev_ts: int, arrival_gap_ns: int, now_ns: int
    ) -> None:
        """A newest reading's clock. The engine calls it while clock_drift is open; else
        it decides inline, calling `drifted` for a second reading beyond the limit."""
        drift = (ts - now_ns) / _NS
        prev = st.drift_prev_s
        st.drift_prev_s = drift
        limit = self.drift_max_s
        if -limit <= drift <= limit:
            if st.open & CLOCK:
                self._book.clear_meter(
                    st, "clock_drift", ts, now_ns, f"{st.meter_id}: clock within {limit:g} s"
                )
            return
        if st.open & CLOCK or not (abs(prev) > limit):  # NaN: no previous reading
            return
        self.drifted(st, ts, prev_ts, arrival_gap_ns, drift, prev, now_ns)

    def drifted(
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
        limit = self.drift_max_s
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

    def _steady(self, st: MeterState, drift: float, arrival_gap_ns: int) -> bool:
        """One more reading or rejection off by `drift` (beyond the limit), arrived alone
        (`arrival_gap_ns`, 1 s or more, since the meter's previous arrival, which was the
        previous one counted while `clock_n` is set): True when it is the second in a row
        and both show one steady offset.

        Their timestamps are `arrival gap + drift moved` apart: a steady offset moves by
        a few seconds at most (a quarter of the spacing), and the timestamps advance
        about as the arrivals do (within a factor of 2 either way). The same ts again (a
        redelivery) does not advance: it starts the count again."""
        n = st.clock_n
        prev = st.clock_prev_s
        st.clock_prev_s = drift
        if n:
            gap_s = arrival_gap_ns / _NS
            moved = drift - prev
            ts_gap_s = gap_s + moved
            if (
                abs(moved) <= max(self._jitter_s, 0.25 * ts_gap_s)
                and gap_s <= 2 * ts_gap_s
                and ts_gap_s <= 2 * gap_s
            ):
                st.clock_n = 2
                return True
        st.clock_n = 1
        return False

    def set_back(
        self,
        st: MeterState,
        ts: int,
        newest_ts: int,
        arrival_gap_ns: int,
        drift: float,
        now_ns: int,
    ) -> bool:
        """A reading older than the meter's newest (`newest_ts`), off by more than the
        limit, arrived alone: a clock set back when it is the second in a row with a
        steady offset. True then (clock_drift raised, or open already): the engine takes
        it as the meter's newest reading, its new timeline."""
        if not self._steady(st, drift, arrival_gap_ns):
            return False
        if not st.open & CLOCK:
            before = st.drift_prev_s  # the newest reading's drift
            back_s = before - drift if before == before else (newest_ts - ts) / _NS
            self._book.raise_meter(
                st,
                "clock_drift",
                ts,
                now_ns,
                {
                    "cause": "clock_set_back",
                    "limit_s": self.drift_max_s,
                    "set_back_s": round(back_s, 3),
                },
                f"{st.meter_id}: clock set back by {back_s:.0f} s "
                f"({'ahead' if drift > 0 else 'behind'} by {abs(drift):.0f} s)",
                value=round(drift, 3),
            )
        return True

    def rejected(
        self,
        st: MeterState,
        kind: str,
        ts: int,
        bound_s: float,
        arrival_gap_ns: int,
        now_ns: int,
    ) -> None:
        """A reading of the meter rejected by validation for its time (`kind`: ts_too_old
        or ts_in_future, beyond `bound_s`), arrived alone: clock_drift on the second in a
        row with a steady offset. Its start is the first one's arrival (the meter's own
        time is what is wrong: it may be decades off)."""
        drift = (ts - now_ns) / _NS
        if not self._steady(st, drift, arrival_gap_ns) or st.open & CLOCK:
            return
        if kind == "ts_in_future":
            why = f"more than {bound_s:.0f} s in the future"
        else:
            why = f"older than {_duration(bound_s)}"
        self._book.raise_meter(
            st,
            "clock_drift",
            now_ns - arrival_gap_ns,
            now_ns,
            {
                "cause": "clock_rejected",
                "limit_s": self.drift_max_s,
                "rejected": kind,
                "bound_s": bound_s,
            },
            f"{st.meter_id}: clock {'ahead' if drift > 0 else 'behind'} by {abs(drift):.0f} s: "
            f"its readings are rejected ({why})",
            value=round(drift, 3),
        )

    def clock_on_time(self, st: MeterState, ts: int, now_ns: int) -> None:
        """An older reading stamped within the limit of now clears an open clock_drift:
        the clock was set right and stepped back behind its newest reading."""
        if st.open & CLOCK and abs(ts - now_ns) <= self.drift_max_s * _NS:
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


def _duration(seconds: float) -> str:
    if seconds >= 86_400 and seconds % 86_400 == 0:
        return f"{seconds / 86_400:.0f} days"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds:.0f} s"

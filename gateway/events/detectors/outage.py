"""Outages: a meter without power, a meter gone silent, a transformer's meters all out.

- `power_outage` (meter): a last gasp at once; a status `offline` (an MQTT last will:
  `lwt`, `shelly-online`; or a Sparkplug NDEATH / DDEATH) followed by `offline_after_s`
  of silence; a reading with every phase near 0 V. Cleared by
  `power_restored` or a reading (newer than the outage's start) with voltage back;
  `momentary` when shorter than `momentary_max_s` (IEEE 1366).
- `comms_loss` (meter): silent longer than max(offline_after_s, offline_missed_intervals
  x its own learned spacing) with no sign of a power loss. Silence is judged on the
  arrival clock, so late back-filled data counts as arriving. Cleared by any reading.
- `transformer_outage`: transformer_outage_ratio of its meters (topology) out with
  outages that began within transformer_outage_window_s of each other. Its silent
  meters get `power_outage` (cause `transformer_outage`), not `comms_loss`: a meter
  behind a transformer waits the window longer before `comms_loss`, and counts in the
  roll-up already once its next reading is offline_after_s overdue.
"""

from __future__ import annotations

from typing import Any

from meter_gateway.config.schema import EventsConfig
from meter_gateway.gateway.events.detectors import Book
from meter_gateway.gateway.events.state import (
    COMMS,
    IMBALANCE,
    PHASE_LOSS,
    POWER,
    SAG,
    SWELL,
    MeterState,
    TransformerState,
)
from meter_gateway.gateway.validate import format_ts

__all__ = ["DEFAULT_SPACING_S", "Outage"]

_NS = 1_000_000_000
# A meter seen once has no spacing yet: assume the common 15-minute interval rather
# than call it silent after offline_after_s (a 15-minute meter is not offline at 90 s).
DEFAULT_SPACING_S = 900.0
_OUT = POWER | COMMS
# What a power outage supersedes on the same meter (one condition, one event).
_SUPERSEDED = (
    ("phase_loss", PHASE_LOSS),
    ("voltage_sag", SAG),
    ("voltage_swell", SWELL),
    ("phase_imbalance", IMBALANCE),
)
_MIN_METERS_OUT = 2
_MAX_LISTED = 100  # meter ids named in a transformer event


class Outage:
    def __init__(self, config: EventsConfig, book: Book, meters: dict[str, MeterState]) -> None:
        self._book = book
        self._meters = meters
        self._off_s = config.offline_after_s
        self.off_ns = int(config.offline_after_s * _NS)
        self._missed = config.offline_missed_intervals
        self._window_ns = int(config.transformer_outage_window_s * _NS)
        self._ratio = config.transformer_outage_ratio
        self._momentary_s = config.momentary_max_s
        # After a restart: no silence verdict before this (the gateway was away).
        self.grace_until = 0

    def spacing_s(self, st: MeterState) -> float:
        """The meter's usual spacing: of its readings' ts, or of batch arrivals if longer.

        Before a second batch shows how batches are spaced, a batch of n readings is
        taken to cover n intervals.
        """
        arrival = st.arrival_spacing_s or st.burst * st.ts_spacing_s
        sp = max(st.ts_spacing_s, arrival)
        return sp if sp > 0 else DEFAULT_SPACING_S

    # -- readings ----------------------------------------------------------------------------

    def arrived(self, st: MeterState, now_ns: int) -> None:
        """Any reading arrived (back-filled too): the meter talks. Called only when needed."""
        st.lwt_offline_ns = 0
        st.suspect = False
        if st.open & COMMS:
            self._book.clear_meter(
                st, "comms_loss", now_ns, now_ns, f"{st.meter_id}: readings arrive again"
            )
        if st.tx is not None and not st.open & POWER:
            self._back(st, now_ns)

    def reading(
        self,
        st: MeterState,
        ts: int,
        v1: float | None,
        v2: float | None,
        v3: float | None,
        now_ns: int,
    ) -> bool:
        """Judge a newest reading's voltages; True when the meter has no power."""
        if v1 is not None:
            z = st.limits.zero_v
            if v1 < z and (v2 is None or v2 < z) and (v3 is None or v3 < z):
                if not st.open & POWER:
                    v = max(v for v in (v1, v2, v3) if v is not None)
                    self.raise_power(
                        st,
                        ts,
                        now_ns,
                        "zero_voltage",
                        f"{st.meter_id}: no voltage on any phase ({v:g} V)",
                        value=v,
                    )
                return True
        if st.open & POWER:
            start = self._book.start_of("power_outage", st.meter_id)
            if ts <= start:  # a reading from before the outage, delivered late
                return True
            self.clear_power(st, ts, now_ns, "reading")
        return False

    # -- signals -----------------------------------------------------------------------------

    def meter_event(self, st: MeterState, kind: str, ts: int, now_ns: int) -> None:
        if kind == "last_gasp":
            if not st.open & POWER:
                self.raise_power(
                    st, ts, now_ns, "last_gasp", f"{st.meter_id}: last gasp (power lost)"
                )
        elif kind == "power_restored" and st.open & POWER:
            self.clear_power(st, ts, now_ns, "power_restored")

    def status(self, st: MeterState, online: bool, now_ns: int) -> int:
        """A status signal (a last will, a Sparkplug BIRTH or DEATH); the time to check the
        meter again (0: no need)."""
        if online:
            st.lwt_offline_ns = 0
            return 0
        if st.open & _OUT or st.lwt_offline_ns:
            return 0
        st.lwt_offline_ns = now_ns
        return now_ns + self.off_ns

    # -- silence -----------------------------------------------------------------------------

    def check(self, st: MeterState, now_ns: int) -> int:
        """Decide on a meter whose check came due; when to check it next (0: not before
        it talks again)."""
        nxt = 0
        if st.lwt_offline_ns:
            due = st.lwt_offline_ns + self.off_ns
            if now_ns >= due:
                at = st.lwt_offline_ns
                st.lwt_offline_ns = 0
                if not st.open & _OUT:
                    # The detectors are told offline, not by what: a last will and a
                    # Sparkplug death certificate both say it, so the message names both.
                    silent_s = (now_ns - at) / _NS
                    self.raise_power(
                        st,
                        at,
                        now_ns,
                        "lwt_offline",
                        f"{st.meter_id}: reported offline at {format_ts(at)} (last will or "
                        f"Sparkplug NDEATH/DDEATH) and silent since, for {silent_s:.0f} s",
                    )
            else:
                return due  # an LWT offline is a sign of a power loss: no comms verdict
        if st.open & _OUT:
            return nxt  # silence explained, or already reported
        # Engine._quiet_until repeats the steps from here to the overdue time in compiled
        # code (the common case, decided once per reading): change both together.
        sp_s = self.spacing_s(st)
        sp_ns = int(sp_s * _NS)
        limit_ns = int(max(self._off_s, self._missed * sp_s) * _NS)
        heard = st.last_heard
        tx = st.tx
        if tx is None:
            due = max(heard + limit_ns, self.grace_until)
            if now_ns < due:
                return _earliest(nxt, due)
            self._raise_comms(st, now_ns, sp_s)
            return nxt
        overdue = max(heard + min(limit_ns, sp_ns + self.off_ns), self.grace_until)
        if now_ns < overdue:
            return _earliest(nxt, overdue)
        tx_start = self._book.start_of("transformer_outage", tx.transformer_id)
        if tx_start:
            self._behind_transformer(st, tx, tx_start, now_ns)
            return nxt
        if not st.suspect:
            # Its next reading is overdue: count it for the roll-up, decide later.
            st.suspect = True
            lo = st.last_ts or heard
            self._out(st, lo, lo + sp_ns, now_ns)
            if st.open & POWER:  # the roll-up found the transformer out
                return nxt
        # Wait for the roll-up only when enough of its neighbours went quiet around the
        # same time for a transformer outage to be possible; a lone silent meter gets its
        # comms_loss on time.
        wait_ns = self._window_ns if self._could_roll_up(tx, now_ns) else 0
        due = max(heard + limit_ns + wait_ns, self.grace_until)
        if now_ns < due:
            return _earliest(nxt, due)
        st.suspect = False
        self._raise_comms(st, now_ns, sp_s)
        return nxt

    def _could_roll_up(self, tx: TransformerState, now_ns: int) -> bool:
        """Whether enough of the transformer's meters are quiet now (out, or not heard for
        more than one and a half of their intervals) to make a transformer outage."""
        need = max(self._ratio * tx.n_meters, _MIN_METERS_OUT)
        quiet = 0
        for mid in tx.meter_ids:
            other = self._meters.get(mid)
            if (
                other is None
                or mid in tx.out
                or now_ns - other.last_heard > 1.5 * self.spacing_s(other) * _NS + _NS
            ):
                quiet += 1
                if quiet >= need:
                    return True
        return False

    def _silent_s(self, st: MeterState, now_ns: int) -> float:
        return round((now_ns - st.last_heard) / _NS, 3)

    def _raise_comms(self, st: MeterState, now_ns: int, sp_s: float) -> None:
        silent_s = self._silent_s(st, now_ns)
        start = st.last_ts or st.last_heard
        self._book.raise_meter(
            st,
            "comms_loss",
            start,
            now_ns,
            {"cause": "silence", "silent_s": silent_s, "interval_s": round(sp_s, 3)},
            f"{st.meter_id}: no reading for {silent_s:.0f} s (usual interval {sp_s:.0f} s),"
            " no sign of a power loss",
            value=silent_s,
        )
        if st.tx is not None and st.meter_id not in st.tx.out:
            self._out(st, start, start + int(sp_s * _NS), now_ns)

    # -- power_outage ------------------------------------------------------------------------

    def raise_power(
        self,
        st: MeterState,
        start_ns: int,
        now_ns: int,
        cause: str,
        message: str,
        value: float | None = None,
        transformer_id: str | None = None,
    ) -> None:
        tx = st.tx
        details: dict[str, Any] = {"cause": cause}
        if tx is not None and (
            transformer_id or self._book.start_of("transformer_outage", tx.transformer_id)
        ):
            details["transformer_id"] = tx.transformer_id
        book = self._book
        for type_, bit in _SUPERSEDED:
            if st.open & bit:
                book.clear_meter(st, type_, start_ns, now_ns, f"{st.meter_id}: {cause}")
        st.sag_since = st.swell_since = st.imbalance_since = 0
        st.suspect = False
        book.raise_meter(st, "power_outage", start_ns, now_ns, details, message, value)
        if tx is not None:
            self._out(st, start_ns, start_ns, now_ns)

    def clear_power(self, st: MeterState, at_ns: int, now_ns: int, how: str) -> None:
        start = self._book.start_of("power_outage", st.meter_id)
        duration_s = max(at_ns - start, 0) / _NS
        momentary = duration_s < self._momentary_s
        self._book.clear_meter(
            st,
            "power_outage",
            at_ns,
            now_ns,
            f"{st.meter_id}: power back after {duration_s:.0f} s ({how})"
            + (", momentary" if momentary else ""),
            {"momentary": momentary, "restored_by": how},
        )
        if st.tx is not None and not st.open & COMMS:
            self._back(st, now_ns)

    # -- transformer_outage ------------------------------------------------------------------

    def _out(self, st: MeterState, lo: int, hi: int, now_ns: int) -> None:
        tx = st.tx
        assert tx is not None
        tx.out[st.meter_id] = (lo, hi)
        if self._book.start_of("transformer_outage", tx.transformer_id):
            tx.cluster.add(st.meter_id)
        else:
            self._roll_up(tx, now_ns)

    def _back(self, st: MeterState, now_ns: int) -> None:
        tx = st.tx
        assert tx is not None
        if tx.out.pop(st.meter_id, None) is None:
            return
        tx.cluster.discard(st.meter_id)
        if not self._book.start_of("transformer_outage", tx.transformer_id):
            return
        # Cleared when fewer than half the ratio are still out.
        if len(tx.cluster) < self._ratio * tx.n_meters / 2:
            n_back = tx.n_meters - len(tx.cluster)
            self._book.clear(
                "transformer_outage",
                tx.transformer_id,
                now_ns,
                now_ns,
                f"transformer {tx.transformer_id}: {n_back} of {tx.n_meters} meters back",
            )
            tx.cluster.clear()

    def _roll_up(self, tx: TransformerState, now_ns: int) -> None:
        """Raise the transformer's outage when enough of its meters went out together."""
        # One meter out is that meter's outage, whatever the size of its transformer.
        need = max(self._ratio * tx.n_meters, _MIN_METERS_OUT)
        if len(tx.out) < need:
            return
        w = self._window_ns
        items = list(tx.out.items())
        members: list[str] = []
        # Meters whose outage could have begun within the window of one moment: try
        # each start as that moment, latest first (older outages are other causes).
        for anchor in sorted({lo for _, (lo, _) in items}, reverse=True):
            members = [m for m, (lo, hi) in items if lo <= anchor + w and hi >= anchor - w]
            if len(members) >= need:
                break
        else:
            return
        start = max(tx.out[m][0] for m in members)
        members.sort()
        self._book.raise_(
            "transformer_outage",
            tx.subject(),
            start,
            now_ns,
            {
                "cause": "meters_out",
                "meters_out": len(members),
                "meters": tx.n_meters,
                "meter_ids": members[:_MAX_LISTED],
            },
            f"transformer {tx.transformer_id}: {len(members)} of {tx.n_meters} meters out",
            value=float(len(members)),
        )
        tx.cluster = set(members)
        for m in members:
            st = self._meters.get(m)
            if st is not None and not st.open & _OUT:
                self._behind_transformer(st, tx, start, now_ns)

    def _behind_transformer(
        self, st: MeterState, tx: TransformerState, tx_start: int, now_ns: int
    ) -> None:
        """A silent meter behind a transformer that is out: no power, not no comms."""
        self.raise_power(
            st,
            max(tx_start, st.last_ts),
            now_ns,
            "transformer_outage",
            f"{st.meter_id}: transformer {tx.transformer_id} is out",
            transformer_id=tx.transformer_id,
        )


def _earliest(a: int, b: int) -> int:
    """The earlier of two due times, 0 meaning none."""
    return b if not a or b < a else a

"""The interval store: each meter's register samples, one append-only file per local day.

    <data_dir>/intervals/meters.jsonl        ["meter id", "source"] per line; line n is meter n
    <data_dir>/intervals/YYYY-MM-DD.bin       records of the local day YYYY-MM-DD

A record is 29 bytes, little-endian: meter number u32, ts ns i64, import kWh f64,
export kWh f64, flags u8 (0; reserved). NaN stands for a register the meter did not
send. Records are appended in arrival order, so a day file holds late samples after
the rest; readers sort, and for one meter and time the last record wins (a corrected
value replaces an older one).

Only what the daily figures and the estimates need is kept: the samples around every
grid boundary (the last one before it and the first one at or after it), and every
sample that arrives late. A meter reporting every 2 s costs about 2 records per
interval, not 450.

A meter's line in meters.jsonl is written (to the OS) before any record of it, so a
kill -9 cannot leave records of a number the file does not hold; damage can (a power
cut, the disk), and such records are left out (`unknown`).

The store is derived data: every reading is durable in the spool first. Records are
handed to the OS once a second and on every compute; a kill -9 loses at most that
second of samples here, and with them only the precision of an interpolated boundary,
never a reading.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson

from meter_gateway.gateway.vee.estimate import Sample
from meter_gateway.gateway.vee.localday import day_bounds, day_of

__all__ = ["RECORD", "IntervalStore"]

log = logging.getLogger("meter_gateway.vee")

RECORD = struct.Struct("<IqddB")
_NAN = math.nan
MAX_BUFFERED = 64 << 20  # bytes of samples kept while the disk refuses them
CACHE_RECORDS = 4_000_000  # parsed records kept in memory (about 100 bytes each)


class IntervalStore:
    """Append samples by meter number; read them back by day."""

    def __init__(self, folder: Path, tz: ZoneInfo) -> None:
        self.folder = folder
        self.tz = tz
        folder.mkdir(parents=True, exist_ok=True)
        self.meter_ids: list[str] = []
        self.sources: list[str] = []
        self._index: dict[str, int] = {}
        self._meters_path = folder / "meters.jsonl"
        self._load_meters()
        self._buffers: dict[date, bytearray] = {}
        self._fds: dict[date, int] = {}  # days written lately, their files kept open
        # day -> bytes of its file: kept here, not asked of the disk (plans ask often)
        self._sizes: dict[date, int] = {}
        for p in folder.glob("????-??-??.bin"):
            try:
                self._sizes[date.fromisoformat(p.stem)] = p.stat().st_size
            except (ValueError, OSError):
                continue
        self.problem: str | None = None  # why the last flush failed, while it does
        self.dropped = 0  # days of buffered samples dropped while the disk refused them
        self.unknown = 0  # records of meter numbers meters.jsonl does not hold (damage)
        # day -> (file size, samples by meter, records): see `read`
        self._cache: dict[date, tuple[int, dict[int, list[Sample]], int]] = {}
        self._day = date(1970, 1, 1)  # the day whose bounds are cached
        self._day_lo = self._day_hi = 0

    # -- meters --------------------------------------------------------------------------
    def _load_meters(self) -> None:
        if not self._meters_path.exists():
            return
        good = 0
        with self._meters_path.open("rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn by a crash: the meter gets its number again
                try:
                    meter_id, source = orjson.loads(line)
                except (orjson.JSONDecodeError, ValueError, TypeError):
                    break
                self._index[meter_id] = len(self.meter_ids)
                self.meter_ids.append(str(meter_id))
                self.sources.append(str(source))
                good += len(line)
        if good != self._meters_path.stat().st_size:
            os.truncate(self._meters_path, good)

    def meter(self, meter_id: str, source: str) -> int:
        """The meter's number; a new meter is appended to meters.jsonl at once."""
        n = self._index.get(meter_id)
        if n is None:
            n = self._index[meter_id] = len(self.meter_ids)
            self.meter_ids.append(meter_id)
            self.sources.append(source)
            with self._meters_path.open("ab") as f:
                f.write(orjson.dumps([meter_id, source]) + b"\n")
        elif self.sources[n] != source:
            # Its readings' series now carry this source (estimates must land on the
            # same series): rewritten whole, so that line numbers stay meter numbers.
            self.sources[n] = source
            rows = (
                orjson.dumps([m, s]) + b"\n"
                for m, s in zip(self.meter_ids, self.sources, strict=True)
            )
            tmp = self._meters_path.with_suffix(".tmp")
            tmp.write_bytes(b"".join(rows))
            os.replace(tmp, self._meters_path)
        return n

    # -- writing -------------------------------------------------------------------------
    def day_of(self, ts_ns: int) -> date:
        """The local day of an instant; the current day's bounds are cached."""
        if self._day_lo <= ts_ns < self._day_hi:
            return self._day
        d = day_of(ts_ns, self.tz)
        self._day, (self._day_lo, self._day_hi) = d, day_bounds(d, self.tz)
        return d

    def bounds(self, d: date) -> tuple[int, int]:
        """The day's [start, end) in UTC ns; the current day's are cached."""
        if d == self._day and self._day_hi:
            return self._day_lo, self._day_hi
        return day_bounds(d, self.tz)

    def append(self, meter: int, ts_ns: int, imp: float | None, exp: float | None) -> date:
        """Buffer one sample; returns its local day."""
        d = self.day_of(ts_ns)
        buf = self._buffers.get(d)
        if buf is None:
            buf = self._buffers[d] = bytearray()
        buf += RECORD.pack(
            meter, ts_ns, _NAN if imp is None else imp, _NAN if exp is None else exp, 0
        )
        return d

    def flush(self) -> None:
        """Hand the buffered records to the OS (no fsync: derived data, see above).

        Never raises: it runs inside the spool's group commit. A disk that refuses
        keeps the records buffered (up to MAX_BUFFERED, then the oldest go, counted in
        `dropped`) and is logged once until it takes them again.
        """
        if not self._buffers:
            return
        for d in sorted(self._buffers):
            buf = self._buffers[d]
            try:
                self._write(d, buf)
            except OSError as exc:
                fd = self._fds.pop(d, None)  # opened afresh next time (the disk may change)
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                if self.problem is None:
                    log.warning(
                        "daily: cannot write the interval store %s (%s); samples wait in "
                        "memory; free the disk",
                        self.folder,
                        exc.strerror or exc,
                    )
                self.problem = str(exc.strerror or exc)
                self._bound()
                return
            del self._buffers[d]
        if self.problem is not None:
            log.info("daily: the interval store %s is writable again", self.folder)
            self.problem = None

    def _write(self, d: date, buf: bytearray) -> None:
        fd = self._fds.get(d)
        if fd is None:
            if len(self._fds) >= 4:  # back-fill touches old days now and then
                for old in sorted(self._fds)[:-3]:
                    os.close(self._fds.pop(old))
            fd = os.open(self.folder / f"{d.isoformat()}.bin", os.O_WRONLY | os.O_CREAT, 0o644)
            self._fds[d] = fd
        start = os.lseek(fd, 0, os.SEEK_END)
        start -= start % RECORD.size  # a torn record of an earlier crash is overwritten
        view = memoryview(buf)
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(fd, view[done:], start + done)
        except OSError:
            # No half record may stay: the next append would be misaligned after it.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
        self._sizes[d] = start + done

    def _bound(self) -> None:
        total = sum(len(b) for b in self._buffers.values())
        while total > MAX_BUFFERED and self._buffers:
            oldest = min(self._buffers)
            total -= len(self._buffers.pop(oldest))
            self.dropped += 1

    def close(self) -> None:
        """Everything to the OS, and the files closed."""
        self.flush()
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def size(self, d: date) -> int:
        """Bytes of the day's file, with what is still buffered."""
        return self._sizes.get(d, 0) + len(self._buffers.get(d, b""))

    def days(self) -> list[date]:
        """Every day with a file, oldest first."""
        return sorted(self._sizes)

    def prune(self, before: date) -> None:
        """Delete the files of days before `before` (older than any estimate needs)."""
        for d in self.days():
            if d < before:
                self._cache.pop(d, None)
                self._sizes.pop(d, None)
                fd = self._fds.pop(d, None)
                if fd is not None:
                    os.close(fd)
                (self.folder / f"{d.isoformat()}.bin").unlink(missing_ok=True)

    # -- reading -------------------------------------------------------------------------
    def day(self, d: date) -> Mapping[int, list[Sample]]:
        """One day's samples by meter, sorted, one per time: the cached lists themselves
        (read-only for the caller; no copy, as `read` makes)."""
        return self._parsed(d)

    def read(self, days: Iterable[date], meters: set[int] | None = None) -> dict[int, list[Sample]]:
        """The samples of those days by meter, sorted by time, one per time (last wins).

        Reads what is on disk (`flush` first). A parsed day is cached while its file
        keeps its size: the days around each computed day are read again and again.
        """
        by_meter: dict[int, list[Sample]] = {}
        for d in days:
            for n, samples in self._parsed(d).items():
                if meters is None or n in meters:
                    by_meter.setdefault(n, []).extend(samples)
        return by_meter

    def _parsed(self, d: date) -> dict[int, list[Sample]]:
        path = self.folder / f"{d.isoformat()}.bin"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return {}
        size -= size % RECORD.size  # a torn last record is left out
        hit = self._cache.get(d)
        if hit is not None and hit[0] == size:
            return hit[1]
        # A file that grew (the current day, a back-filled one) is parsed from where the
        # cached part ends: appending costs what was appended, not the whole day.
        start, per = (hit[0], hit[1]) if hit is not None and hit[0] < size else (0, {})
        with path.open("rb") as f:
            f.seek(start)
            data = f.read(size - start)
        size = start + len(data) - len(data) % RECORD.size
        unsorted: set[int] = set()
        known = len(self.meter_ids)
        for n, ts, imp, exp, _flags in RECORD.iter_unpack(memoryview(data)[: size - start]):
            samples = per.get(n)
            if samples is None:
                if n >= known:
                    # A number meters.jsonl does not hold: its line is written before
                    # any record of the meter, so only damage (a power cut, a disk)
                    # leaves such records; whose they were is unknown.
                    self.unknown += 1
                    continue
                samples = per[n] = []
            elif ts <= samples[-1][0]:
                unsorted.add(n)  # late or corrected: sorted below, the last one wins
            samples.append(Sample(ts, None if imp != imp else imp, None if exp != exp else exp))
        for n in unsorted:
            by_ts = {x[0]: x for x in per[n]}  # later records replace earlier ones
            per[n] = [by_ts[t] for t in sorted(by_ts)]
        self._cache[d] = (size, per, size // RECORD.size)
        while sum(c[2] for c in self._cache.values()) > CACHE_RECORDS and len(self._cache) > 1:
            del self._cache[min(k for k in self._cache if k != d)]
        return per


def day_range(first: date, last: date) -> list[date]:
    """The days from first to last, both included."""
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]

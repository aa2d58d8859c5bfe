"""VEE in the gateway: which samples are kept, when days are computed, what is written,
and what survives a restart, a corrupt state file and a full disk."""

from __future__ import annotations

import logging
import os
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from meter_gateway.config.schema import Config
from meter_gateway.gateway.reading import Reading
from meter_gateway.gateway.vee.service import VeeService
from meter_gateway.gateway.vee.store import RECORD
from meter_gateway.storage.lineprotocol import ReadingEncoder

NS = 1_000_000_000
UTC_ZONE = ZoneInfo("UTC")
DAY = date(2026, 11, 2)
START = int(datetime(2026, 11, 2, tzinfo=UTC).timestamp())  # UTC: a plain 96-interval day
END = START + 86_400


class Lines(list[str]):
    def add(self, line: str) -> int:
        self.append(line)
        return len(self)

    def of(self, measurement: str) -> list[str]:
        return [x for x in self if x.startswith(measurement + ",")]


def service(folder: Path, lines: Lines, **daily: object) -> VeeService:
    config = Config.model_validate(
        {"daily": {"settle_s": 0, "recompute_every_s": 60, **daily}, "storage": {"precision": "s"}}
    )
    encoder = ReadingEncoder("s")
    return VeeService(
        config,
        {},
        folder=folder,
        add_line=lines.add,
        prefix=encoder.prefix,
        precision_divisor=NS,
    )


def reading(t: int, kwh: float, meter: str = "m1") -> Reading:
    return Reading(meter, t * NS, "mqtt", {"energy_import_kwh": kwh, "power_w": 100.0})


def feed_day(vee: VeeService, *, skip: range = range(0), every: int = 900) -> None:
    """A day at 0.1 kWh per 15 minutes (0.4 kW), from 1000 kWh, and its next midnight."""
    for t in range(START, END + 901, every):
        if t not in skip:
            vee.reading(reading(t, 1000 + (t - START) / 9000))


def fields(line: str) -> dict[str, str]:
    body = line.split(" ")[1]
    return dict(kv.split("=", 1) for kv in body.split(","))


def test_a_closed_day_gets_its_figures_and_its_gap_estimated(tmp_path: Path) -> None:
    lines = Lines()
    vee = service(tmp_path, lines)
    vee.plan(START * NS)  # first start: nothing before today is closed
    feed_day(vee, skip=range(START + 3600, START + 3 * 3600, 900))  # 01:00..02:45 missing
    assert vee.compute((END - 60) * NS) is None  # the day has not ended
    res = vee.compute((END + 1) * NS)
    assert res is not None
    assert res.days == 1
    estimates = lines.of("meter_reading")
    assert len(estimates) == 8
    first = fields(estimates[0])
    assert first["quality"] == '"estimated"'
    assert first["estimation_method"] == '"linear"'
    assert float(first["energy_import_kwh"]) == pytest.approx(1000.4)
    assert estimates[0].endswith(f" {START + 3600}")
    daily = lines.of("meter_daily")
    assert len(daily) == 1
    f = fields(daily[0])
    assert float(f["energy_import_kwh"]) == pytest.approx(9.6)
    assert float(f["completeness"]) == pytest.approx(87 / 96)  # 9 intervals touch the gap
    assert f["intervals_estimated"] == "9i"
    assert daily[0].endswith(f" {START}")


def test_a_late_actual_replaces_its_estimate_and_recomputes_the_day(tmp_path: Path) -> None:
    lines = Lines()
    vee = service(tmp_path, lines)
    vee.plan(START * NS)
    feed_day(vee, skip=range(START + 3600, START + 3 * 3600, 900))
    vee.compute((END + 1) * NS)
    lines.clear()
    # The concentrator back-fills one slot: its method goes, the day is computed again
    # with one estimate fewer.
    t = START + 3600 + 900
    vee.reading(reading(t, 1000 + 3600 / 9000 + 0.1))
    assert lines == [f'meter_reading,meter_id=m1,source=mqtt estimation_method="" {t}']
    lines.clear()
    res = vee.compute((END + 120) * NS)
    assert res is not None
    assert res.days == 1
    assert len(lines.of("meter_reading")) == 7
    assert all(f" {t}" not in x for x in lines.of("meter_reading"))
    assert vee.stats["estimates_replaced"] == 1


def test_a_meter_reporting_every_2_s_keeps_2_samples_an_interval(tmp_path: Path) -> None:
    lines = Lines()
    vee = service(tmp_path, lines)
    vee.plan(START * NS)
    for t in range(START - 2, START + 3601, 2):  # 1,800 readings over an hour
        vee.reading(reading(t, 1000 + (t - START) / 9000))
    vee.store.flush()
    records = (tmp_path / f"{DAY.isoformat()}.bin").stat().st_size // RECORD.size
    assert 6 <= records <= 10  # around 4 boundaries, not 1,800
    kept = vee.store.read([DAY])[0]
    assert [s.ts_ns // NS for s in kept][:3] == [START, START + 898, START + 900]


def test_state_survives_a_restart_and_a_corrupt_state_recomputes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = Lines()
    vee = service(tmp_path, lines)
    vee.plan(START * NS)
    feed_day(vee)
    vee.compute((END + 1) * NS)
    vee.close()
    again = service(tmp_path, Lines())
    assert again.closed_through == DAY
    assert again.compute((END + 600) * NS) is None  # nothing changed: nothing to do
    (tmp_path / "state.json").write_bytes(b"{not json")
    lines = Lines()
    third = service(tmp_path, lines)
    assert "unreadable" in caplog.text
    third.closed_through = DAY
    res = third.compute((END + 900) * NS)
    assert res is not None
    assert len(lines.of("meter_daily")) == 1


def test_a_full_disk_keeps_samples_until_it_has_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "meter_gateway.vee")
    lines = Lines()
    vee = service(tmp_path, lines)
    vee.plan(START * NS)
    path = tmp_path / f"{DAY.isoformat()}.bin"
    os.symlink("/dev/full", path)  # every write fails with ENOSPC
    feed_day(vee)
    vee.store.flush()  # never raises: it runs inside the spool's commit
    assert vee.store.problem is not None
    assert "No space left" in caplog.text
    path.unlink()  # room again
    vee.store.flush()
    assert vee.store.problem is None
    assert len(vee.store.read([DAY])[0]) == 96
    assert "writable again" in caplog.text


# -- arrival order does not change the result -------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

N = 3 * 96  # three days of 15-minute registers


def _final(vee: VeeService, lines: Lines) -> tuple[dict[str, dict[str, str]], dict[int, set[int]]]:
    """The last meter_daily of each day, and the estimates standing."""
    daily: dict[str, dict[str, str]] = {}
    for line in lines.of("meter_daily"):
        f = fields(line)
        daily[f["date"]] = f
    return daily, {n: set(s) for n, s in vee._slots.items() if s}


@settings(max_examples=40, deadline=None)
@given(
    never=st.lists(st.tuples(st.integers(1, N - 20), st.integers(1, 10)), max_size=3),
    late=st.lists(
        st.tuples(st.integers(1, N - 30), st.integers(1, 30), st.integers(1, 200)), max_size=4
    ),
)
def test_late_data_in_any_order_ends_where_in_order_data_does(
    tmp_path_factory: pytest.TempPathFactory,
    never: list[tuple[int, int]],
    late: list[tuple[int, int, int]],
) -> None:
    """Readings back-filled late (chunks held back and delivered any number of readings
    later, days closing meanwhile) give, once every day is computed again, the same
    daily figures and the same standing estimates as the same readings in order."""
    lost = {i for a, k in never for i in range(a, a + k)}
    stream = [i for i in range(N + 1) if i not in lost]
    held: dict[int, list[int]] = {}
    for a, k, delay in late:
        chunk = [i for i in stream if a <= i < a + k and all(i not in c for c in held.values())]
        if chunk:
            at = min(stream.index(chunk[-1]) + delay, len(stream) - 1)
            held.setdefault(stream[at], []).extend(chunk)
    order: list[int] = []
    for i in stream:
        if not any(i in c for c in held.values()):
            order.append(i)
        order += held.get(i, [])
    assert sorted(order) == stream

    def run(indices: list[int]) -> tuple[dict, dict]:
        lines = Lines()
        vee = service(tmp_path_factory.mktemp("vee"), lines)
        vee.plan(START * NS)
        now = START
        for i in indices:
            t = START + i * 900
            vee.reading(reading(t, 1000 + i * 0.1 + (i % 5) * 0.01))
            if t > now:
                now = t
                if vee.due(now * NS):
                    vee.compute(now * NS)
        vee.compute((START + N * 900 + 2 * 86_400) * NS)
        return _final(vee, lines)

    assert run(order) == run(stream)


def test_a_store_torn_by_a_crash_reads_back_what_was_whole(tmp_path: Path) -> None:
    """A kill -9 mid-write leaves a half line in meters.jsonl and a half record in a day
    file: both are left out (and overwritten), the rest reads back."""
    from meter_gateway.gateway.vee.store import IntervalStore

    store = IntervalStore(tmp_path, UTC_ZONE)
    a, b = store.meter("m1", "mqtt"), store.meter("m2", "modbus")
    store.append(a, START * NS, 1.0, None)
    store.append(b, START * NS, 2.0, 0.5)
    store.flush()
    store.close()
    with (tmp_path / "meters.jsonl").open("ab") as f:
        f.write(b'["m3", "mq')  # torn
    with (tmp_path / f"{DAY.isoformat()}.bin").open("ab") as f:
        f.write(RECORD.pack(a, START * NS + 900 * NS, 1.1, 0.0, 0)[:17])  # torn
    again = IntervalStore(tmp_path, UTC_ZONE)
    assert again.meter_ids == ["m1", "m2"]
    assert again.sources == ["mqtt", "modbus"]
    assert again.meter("m3", "mqtt") == 2  # numbered again, after the whole ones
    samples = again.read([DAY])
    assert [(s.ts_ns, s.imp, s.exp) for s in samples[a]] == [(START * NS, 1.0, None)]
    assert [(s.ts_ns, s.imp, s.exp) for s in samples[b]] == [(START * NS, 2.0, 0.5)]
    again.append(a, START * NS + 900 * NS, 1.1, None)  # overwrites the torn half
    again.flush()
    assert (tmp_path / f"{DAY.isoformat()}.bin").stat().st_size == 3 * RECORD.size
    assert [s.imp for s in again.read([DAY])[a]] == [1.0, 1.1]

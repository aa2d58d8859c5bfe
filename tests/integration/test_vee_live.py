"""The running gateway (`meter-gateway run`, real mosquitto and InfluxDB 1.x): a day of
15-minute registers back-filled by a concentrator, the gateway SIGKILLed right after
the broker has its acks, restarted: the day's figures are complete and the gap is
estimated; the late actuals then replace the estimates and the day is recomputed."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest
import yaml

from tests.conftest import Publisher, make_config, wait_until
from tests.faults import GatewayProcess

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Europe/Berlin")
METERS = ("m-1", "m-2", "m-3")
GAP = range(4, 12)  # m-2 misses 01:00 .. 02:45 (8 slots)


def yesterday() -> list[int]:
    """The boundaries of yesterday (local, Berlin): 93, 97 or 101 of them."""
    today = datetime.now(TZ).date()
    day = today - timedelta(days=1)
    start = int(datetime(day.year, day.month, day.day, tzinfo=TZ).timestamp())
    end = int(datetime(today.year, today.month, today.day, tzinfo=TZ).timestamp())
    return list(range(start, end + 1, 900))


def kwh(meter: int, i: int) -> float:
    return round(5000 + meter * 100 + i * 0.25 * (meter + 1), 6)


def batch(items: list[tuple[str, int, float]]) -> bytes:
    return orjson.dumps(
        {
            "concentrator_id": "dc-1",
            "readings": [
                {"meter_id": m, "ts": ts, "energy_import_kwh": v, "power_w": 100.0}
                for m, ts, v in items
            ],
        }
    )


async def test_a_sigkill_after_the_acks_loses_no_sample_of_the_day(tmp_path, mosquitto, influx1):
    cfg = make_config(
        tmp_path,
        mosquitto,
        gateway={"timezone": "Europe/Berlin"},
        storage={"api": "v1", "url": influx1.url, "database": "meters", "precision": "s"},
        events={"enabled": False},
        daily={"settle_s": 0, "recompute_every_s": 3600},  # no computation before the kill
    )
    gw = GatewayProcess(cfg, tmp_path / "gw")
    gw.start()
    await wait_until(gw.connected, within=30, what="the gateway to connect")
    state = gw.data_dir / "intervals" / "state.json"
    await wait_until(state.exists, within=10, what="the first daily plan")
    grid = yesterday()
    items = [
        (m, ts, kwh(j, i))
        for i, ts in enumerate(grid)
        for j, m in enumerate(METERS)
        if not (m == "m-2" and i in GAP)
    ]
    pub = Publisher(mosquitto)
    try:
        pub.publish_many(
            [
                ("concentrators/dc-1/readings", batch(items[k : k + 50]))
                for k in range(0, len(items), 50)
            ]
        )
        gw.kill()  # every message is acknowledged: its samples must be on file

        data = yaml.safe_load(gw.config_file.read_text())
        data["daily"]["recompute_every_s"] = 0.5
        gw.config_file.write_text(yaml.safe_dump(data))
        gw.start()
        await wait_until(gw.connected, within=30, what="the gateway to connect again")

        day = datetime.fromtimestamp(grid[0], TZ).date().isoformat()

        def daily() -> dict[str, dict]:
            rows = influx1.query(
                f"SELECT * FROM meter_daily WHERE \"date\" = '{day}' GROUP BY meter_id"
            )
            return {r["meter_id"]: r for r in rows}

        await wait_until(lambda: len(daily()) == 3, within=30, what="meter_daily of 3 meters")
        n = len(grid) - 1
        got = daily()
        for j, m in enumerate(METERS):
            assert got[m]["energy_import_kwh"] == pytest.approx(kwh(j, n) - kwh(j, 0))
            assert got[m]["intervals"] == n
        assert got["m-1"]["completeness"] == 1.0
        assert got["m-2"]["completeness"] == pytest.approx((n - 9) / n)
        estimates = influx1.query(
            "SELECT energy_import_kwh, estimation_method FROM meter_reading "
            "WHERE quality = 'estimated'"
        )
        assert [r["time"] for r in estimates] == [grid[i] for i in GAP]
        assert all(r["estimation_method"] == "linear" for r in estimates)
        assert estimates[0]["energy_import_kwh"] == pytest.approx(kwh(1, GAP[0]))

        # The concentrator back-fills the gap: actual wins, the day is recomputed.
        pub.publish(
            "concentrators/dc-1/readings", batch([("m-2", grid[i], kwh(1, i)) for i in GAP])
        )
        await wait_until(
            lambda: daily()["m-2"]["completeness"] == 1.0, within=30, what="m-2's day recomputed"
        )
        assert (
            influx1.query(
                "SELECT count(energy_import_kwh) FROM meter_reading WHERE quality = 'estimated'"
            )
            == []
        )
        rows = influx1.query(
            "SELECT energy_import_kwh, quality, estimation_method FROM meter_reading "
            f"WHERE meter_id = 'm-2' AND time >= {grid[GAP[0]]}s AND time <= {grid[GAP[-1]]}s"
        )
        assert [(r["quality"], r["estimation_method"]) for r in rows] == [("actual", "")] * len(GAP)
    finally:
        pub.close()
        gw.stop()

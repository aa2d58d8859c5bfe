"""Profiles and noise: stable across processes, in range, shaped like real load."""

from __future__ import annotations

import subprocess
import sys

import pytest

from meter_gateway.simulators.profiles import (
    grid_frequency_hz,
    pv_clear_sky,
    shape,
    stable_seed,
    unit,
)


def test_stable_seed_is_the_same_in_another_process() -> None:
    # hash() would differ between processes (PYTHONHASHSEED); the seed must not.
    code = "from simulators.profiles import stable_seed; print(stable_seed(42, 'm-000001'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == stable_seed(42, "m-000001")
    assert stable_seed(42, "m-000001") != stable_seed(42, "m-000002")


def test_unit_is_uniform_enough_and_in_range() -> None:
    values = [unit(7, k, 1) for k in range(20_000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert sum(values) / len(values) == pytest.approx(0.5, abs=0.01)
    assert sum(v < 0.1 for v in values) / len(values) == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("profile", ["household", "commercial"])
def test_shapes_average_one_over_a_weekday(profile: str) -> None:
    monday = 1795392000.0  # 2026-11-23T00:00:00Z
    samples = [shape(profile, monday + m * 60) for m in range(1440)]  # type: ignore[arg-type]
    assert sum(samples) / len(samples) == pytest.approx(1.0, rel=0.01)


def test_commercial_load_is_low_at_weekends_and_pv_dark_at_night() -> None:
    monday_noon = 1795392000.0 + 12 * 3600
    assert shape("commercial", monday_noon + 5 * 86400) < 0.5 * shape("commercial", monday_noon)
    assert pv_clear_sky(monday_noon) == pytest.approx(1.0)
    assert pv_clear_sky(monday_noon - 10 * 3600) == 0.0


def test_grid_frequency_stays_close_to_50() -> None:
    freqs = [grid_frequency_hz(1795392000.0 + k * 60) for k in range(1440)]
    assert all(49.9 < f < 50.1 for f in freqs)
    assert len({round(f, 2) for f in freqs}) > 3

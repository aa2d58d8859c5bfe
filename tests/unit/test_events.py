"""The event model: one id per condition, kept across a restart; JSON and line protocol."""

from __future__ import annotations

import orjson
import pytest

from meter_gateway.gateway.events import Condition, Event, event_line


def test_a_condition_keeps_its_id_across_a_restart_and_clears_once(tmp_path):
    cond = Condition(tmp_path, "storage_backpressure", {"gateway_id": "gw-1"}, "major")
    raised = cond.raise_("full", {"cause": "disk"})
    assert raised is not None
    assert cond.raise_("full again", {}) is None  # raised once, never repeated
    again = Condition(tmp_path, "storage_backpressure", {"gateway_id": "gw-1"}, "major")
    assert again.raise_("full", {}) is None  # still the same condition after a crash
    cleared = again.clear("below half")
    assert cleared is not None
    assert cleared.event_id == raised.event_id
    assert cleared.start_ns == raised.start_ns
    assert again.clear("twice?") is None
    assert (
        Condition(tmp_path, "storage_backpressure", {"gateway_id": "gw-1"}, "major").active is None
    )
    body = orjson.loads(cleared.to_json("gw-1"))
    assert body["state"] == "cleared"
    assert body["type"] == "storage_backpressure"
    assert body["gateway_id"] == "gw-1"
    assert body["duration_s"] >= 0
    assert body["ts"].endswith("Z")
    line = event_line(cleared, 1_000_000_000)
    assert line.startswith("meter_event,gateway_id=gw-1,severity=major,type=storage_backpressure ")
    assert f'event_id="{raised.event_id}"' in line
    assert 'state="cleared"' in line


def test_an_unreadable_state_file_is_ignored(tmp_path):
    (tmp_path / "storage_backpressure.json").write_text("{not json")
    cond = Condition(tmp_path, "storage_backpressure", {"gateway_id": "gw-1"}, "major")
    assert cond.active is None
    assert cond.raise_("full", {}) is not None


def test_a_clear_in_the_same_second_as_its_raise_is_still_its_own_point():
    raised = Event(
        "power_outage", "raised", "critical", {"meter_id": "m-1"}, 10_400_000_000, 0, "id-1"
    )
    cleared = Event(
        "power_outage",
        "cleared",
        "critical",
        {"meter_id": "m-1"},
        10_400_000_000,
        0,
        "id-1",
        cleared_ns=10_480_000_000,
    )
    at_raise = event_line(raised, 1_000_000_000).rsplit(" ", 1)[1]
    at_clear = event_line(cleared, 1_000_000_000).rsplit(" ", 1)[1]
    assert (at_raise, at_clear) == ("10", "11")
    assert event_line(cleared, 1).rsplit(" ", 1)[1] == "10480000000"  # ns: no shift needed


def test_a_condition_raised_on_a_full_disk_keeps_its_id_across_a_crash(tmp_path):
    # The backpressure condition is raised when the disk is full: its file is reserved
    # at start and overwritten in place, so a crash before the disk has room again
    # still finds the raise, and the clear that follows carries its id.
    import os

    from tests.faults import tmpfs

    with tmpfs(tmp_path / "disk", "1m") as disk:
        cond = Condition(disk, "storage_backpressure", {"gateway_id": "gw-1"}, "major")
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError, match="No space left"):  # the case is tested
                _write_until_full(fd)
        finally:
            os.close(fd)
        raised = cond.raise_("full", {"cause": "disk"})
        assert raised is not None
        after_crash = Condition(disk, "storage_backpressure", {"gateway_id": "gw-1"}, "major")
        assert after_crash.active is not None
        assert after_crash.active.event_id == raised.event_id
        cleared = after_crash.clear("room again")
        assert cleared is not None
        assert cleared.event_id == raised.event_id
        assert (
            Condition(disk, "storage_backpressure", {"gateway_id": "gw-1"}, "major").active is None
        )


def _write_until_full(fd: int) -> None:
    import os

    while True:
        os.write(fd, b"\0" * 4096)

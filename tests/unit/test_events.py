"""The event model: one id per condition, kept across a restart; JSON and line protocol."""

from __future__ import annotations

import orjson

from meter_gateway.gateway.events import Condition, event_line


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

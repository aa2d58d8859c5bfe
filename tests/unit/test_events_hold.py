"""What a restart needs to restore open conditions is kept: before the first snapshot
the outbox holds every event from the first, and a snapshot is kept only once every
event it covers is on disk."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from pathlib import Path

import pytest

from meter_gateway.gateway.events.outbox import Outbox
from meter_gateway.gateway.events.service import STATE_FILE, EventService
from meter_gateway.storage.log import segments as outbox_module
from tests.unit.test_events_from_memory import service as events_service
from tests.unit.test_outbox import TWO_A_SEGMENT, Collector, ids, make_event


async def deliver_all(directory: Path, n: int, *, hold: int | None) -> None:
    """n events appended, all delivered (the cursor on disk), then a crash: no close()."""
    dest = Collector()
    ob = Outbox(directory, ["a"], segment_bytes=TWO_A_SEGMENT)
    await ob.open(hold=hold)
    run = asyncio.create_task(ob.run())
    deliver = asyncio.create_task(ob.deliver("a", dest.send))
    for i in range(n):
        await ob.wait_durable(ob.append(make_event(i)))
    await dest.wait_for(n)
    for t in (run, deliver):
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
    await asyncio.to_thread(ob._write_cursor, "a", n)  # as the drainer had
    ob._segments.close()


async def test_with_no_snapshot_yet_delivered_events_survive_compaction_and_a_restart(
    tmp_path, caplog
):
    await deliver_all(tmp_path, 5, hold=1)
    caplog.set_level(logging.WARNING)
    ob = Outbox(tmp_path, ["a"], segment_bytes=TWO_A_SEGMENT)
    await ob.open(hold=1)  # still no snapshot: the caller needs them all
    assert ids(ob.events_since(1)) == [f"ev-{i}" for i in range(5)]
    assert "no longer on disk" not in caplog.text
    ob.hold(6)  # the first snapshot covers them: now they may go
    assert ob.events_since(6) == []
    assert sorted(tmp_path.glob("*.seg")) == []
    await ob.close()


async def test_without_a_hold_they_would_be_gone(tmp_path, caplog):
    """What a restart found before there was any snapshot: the delivered events were
    compacted at open, and the open conditions had nothing to be restored from."""
    await deliver_all(tmp_path, 5, hold=None)
    ob = Outbox(tmp_path, ["a"], segment_bytes=TWO_A_SEGMENT)
    await ob.open()
    assert ob.events_since(1) == []
    assert "events 1 to 5 are no longer on disk" in caplog.text
    await ob.close()


async def test_the_caller_s_hold_wins_over_a_later_hold_file(tmp_path):
    await deliver_all(tmp_path, 6, hold=1)
    (tmp_path / "hold").write_text("5\n")  # a snapshot that covered 1-4
    ob = Outbox(tmp_path, ["a"], segment_bytes=TWO_A_SEGMENT)
    await ob.open(hold=3)  # but the state that is there covers 1-2 only
    assert ids(ob.events_since(3)) == ["ev-2", "ev-3", "ev-4", "ev-5"]
    await ob.close()


# -- the service: a snapshot never covers an event that is not on disk --------------------------


def service(tmp_path: Path) -> EventService:
    return events_service(tmp_path, None)


async def test_no_snapshot_covers_an_event_the_outbox_could_not_write(tmp_path, monkeypatch):
    svc = service(tmp_path)
    await svc.open()
    state = tmp_path / "events" / STATE_FILE
    svc.emit(make_event(1))
    await svc._snapshot()
    assert state.read_bytes().split(b"\n")[1] == b"1"  # covers event 1, on disk

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outbox_module, "append_durably", full)
    svc.emit(make_event(2))
    await svc._snapshot()
    # Not kept: after a crash the input behind event 2 comes again and must raise it.
    assert state.read_bytes().split(b"\n")[1] == b"1"
    monkeypatch.undo()
    await svc._snapshot()
    assert state.read_bytes().split(b"\n")[1] == b"2"
    assert svc.outbox.durable == 2
    await svc.outbox.close()


@pytest.mark.parametrize("damage", [b"", b"MGEV1\nnot a number\n{}", b"something else"])
async def test_an_unusable_state_keeps_every_event_until_the_next_snapshot(tmp_path, damage):
    # A first run that never got to a snapshot (or whose state was lost since).
    await deliver_all(tmp_path / "events" / "outbox", 4, hold=1)
    if damage:
        (tmp_path / "events" / STATE_FILE).write_bytes(damage)
    svc = service(tmp_path)
    await svc.open()
    assert svc.outbox.stats()["hold"] == 1
    assert len(svc.outbox.events_since(1)) == 4
    await svc.outbox.close()

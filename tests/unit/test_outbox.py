"""The event outbox: group commit, per-destination cursors, recovery after damage and
crashes (a real SIGKILL), hold and compaction, a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from meter_gateway.gateway.events import Event
from meter_gateway.gateway.events.outbox import Outbox, decode_event, encode_event
from meter_gateway.storage.log.segment import RECORD_HEADER, scan_segment
from tests.conftest import wait_until
from tests.faults import tmpfs

ROOT = Path(__file__).resolve().parents[2]


def make_event(i: int, state: str = "raised") -> Event:
    start = 1_700_000_000_000_000_000 + i * 1_000_000_000
    return Event(
        "meter_offline",
        state,
        "major",
        {"meter_id": f"m-{i}", "transformer_id": "t-1"},
        start,
        start + 5,
        f"ev-{i}",
        {"silent_s": i},
        cleared_ns=start + 60 * 10**9 if state == "cleared" else None,
        message=f"meter m-{i} is silent",
    )


class Collector:
    """A destination: takes batches, fails while `failing`, signals when it has `seq`."""

    def __init__(self) -> None:
        self.got: list[tuple[int, str]] = []
        self.failing = False
        self.calls = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.failed = asyncio.Event()

    async def send(self, items: list[tuple[int, Event]]) -> None:
        self.calls += 1
        if self.failing:
            self.failed.set()
            raise ConnectionError("the destination is down")
        self.got += [(seq, ev.event_id) for seq, ev in items]
        last = items[-1][0]
        for seq, fut in self._waiters:
            if seq <= last and not fut.done():
                fut.set_result(None)

    async def wait_for(self, seq: int) -> None:
        if any(s >= seq for s, _ in self.got):
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, fut))
        await asyncio.wait_for(fut, 20)


@contextlib.asynccontextmanager
async def running(
    outbox: Outbox, **senders: Callable[[list[tuple[int, Event]]], Awaitable[None]]
) -> AsyncIterator[Outbox]:
    """The outbox opened, committing, and delivering to `senders`; closed at the end."""
    await outbox.open()
    tasks = [asyncio.create_task(outbox.run())]
    tasks += [
        asyncio.create_task(outbox.deliver(name, send, batch=2, max_retry_delay_s=0.02))
        for name, send in senders.items()
    ]
    try:
        yield outbox
    finally:
        await outbox.close()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


#: segment_bytes for two events a segment (make_event(i), i < 10, are all this size).
TWO_A_SEGMENT = 2 * (RECORD_HEADER.size + len(encode_event(make_event(0)))) + 8


def ids(events: list[Event]) -> list[str]:
    return [ev.event_id for ev in events]


# -- the format -------------------------------------------------------------------------------


def test_an_event_reads_back_whatever_fields_the_other_side_knows():
    ev = make_event(1, "cleared")
    assert decode_event(encode_event(ev)) == ev
    # Written by a newer version with a field this one lacks; read by an older one
    # that never wrote `message`: neither is an error.
    newer = encode_event(ev)[:-1] + b',"from_a_newer_version":3.5}'
    assert decode_event(newer) == ev
    older = b'{"type":"t","state":"raised","severity":"minor","subject":{"gateway_id":"g"},'
    older += b'"start_ns":1,"detected_ns":2,"event_id":"x"}'
    assert decode_event(older).message == ""
    with pytest.raises(ValueError, match="event_id"):
        decode_event(b'{"type":"t"}')


# -- commit and delivery ------------------------------------------------------------------------


async def test_events_are_delivered_in_order_once_durable(tmp_path):
    dest = Collector()
    async with running(Outbox(tmp_path, ["a"]), a=dest.send) as outbox:
        seqs = [outbox.append(make_event(i)) for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
        assert outbox.durable == 0  # nothing on disk before the commit runs
        await outbox.wait_durable(5)
        await dest.wait_for(5)
        assert dest.got == [(i + 1, f"ev-{i}") for i in range(5)]
        assert outbox.backlog("a") == 0
        assert outbox.stats()["fsyncs"] < 5  # one commit for what came together
    assert (tmp_path / "cursor.a").read_text().strip() == "5"


async def test_two_destinations_each_at_its_own_cursor(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="meter_gateway.events.outbox")
    fast, slow = Collector(), Collector()
    slow.failing = True
    async with running(Outbox(tmp_path, ["fast", "slow"]), fast=fast.send, slow=slow.send) as ob:
        for i in range(4):
            ob.append(make_event(i))
        await fast.wait_for(4)
        await slow.failed.wait()
        st = ob.stats()["destinations"]
        assert st["fast"]["cursor"] == 4
        assert st["slow"]["cursor"] == 0
        assert st["slow"]["backlog"] == 4
        assert st["slow"]["last_error"] == "the destination is down"
        # Appending goes on while a destination is down.
        assert ob.append(make_event(4)) == 5
        await fast.wait_for(5)
        await wait_until(lambda: slow.calls >= 3, what="retries")
        slow.failing = False
        await slow.wait_for(5)
    assert [s for s, _ in slow.got] == [1, 2, 3, 4, 5]
    outage = [r for r in caplog.records if "delivering" in r.message and r.levelno >= logging.ERROR]
    assert len(outage) == 1, "one line per outage, not one per retry"
    assert "slow takes events again" in caplog.text


async def test_a_cursor_survives_a_reopen(tmp_path):
    first = Collector()
    async with running(Outbox(tmp_path, ["a"]), a=first.send) as ob:
        for i in range(5):
            ob.append(make_event(i))
        await first.wait_for(4)
        first.failing = True  # the batch with event 5 is never acknowledged
        ob.append(make_event(5))
        await first.failed.wait()
    acked = max(s for s, _ in first.got)
    again = Collector()
    async with running(Outbox(tmp_path, ["a"]), a=again.send) as ob:
        await again.wait_for(6)
        assert ob.last_seq == 6
    # Nothing acknowledged comes again; everything after it does, with its id.
    assert again.got == [(s, f"ev-{s - 1}") for s in range(acked + 1, 7)]


# -- damage and crashes -------------------------------------------------------------------------


async def _write(directory: Path, n: int, **kw) -> None:
    ob = Outbox(directory, ["a"], **kw)
    await ob.open()
    for i in range(n):
        ob.append(make_event(i))
        await ob.commit()  # one commit each: several segments when they are small
    await ob.close()


async def test_a_torn_tail_is_cut_and_the_good_records_kept(tmp_path, caplog):
    await _write(tmp_path, 3)
    (seg,) = tmp_path.glob("*.seg")
    with seg.open("r+b") as f:
        f.truncate(seg.stat().st_size - 7)  # mid-way through the last record
    ob = Outbox(tmp_path, ["a"])
    await ob.open()
    assert ids(ob.events_since(1)) == ["ev-0", "ev-1"]
    assert ob.stats()["damaged"] == 1
    assert "if the gateway was killed or lost power while writing them" in caplog.text
    assert "the file cannot tell which" in caplog.text
    # The torn event was never durable: its number is free again, and appends go on.
    assert ob.append(make_event(9)) == 3
    await ob.close()
    again = Outbox(tmp_path, ["a"])
    await again.open()
    assert ids(again.events_since(1)) == ["ev-0", "ev-1", "ev-9"]
    assert again.stats()["damaged"] == 0  # cut: not reported twice


async def test_a_corrupt_record_is_skipped_with_what_follows_it_in_its_segment(tmp_path, caplog):
    await _write(tmp_path, 6, segment_bytes=TWO_A_SEGMENT)  # two events a segment
    segs = sorted(tmp_path.glob("*.seg"))
    assert len(segs) == 3
    second = scan_segment(segs[0], None).records[1]
    with segs[0].open("r+b") as f:
        f.seek(second.offset + second.size - 3)  # a flipped byte in event 2's payload
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    ob = Outbox(tmp_path, ["a"])
    await ob.open()
    assert ids(ob.events_since(1)) == ["ev-0", "ev-2", "ev-3", "ev-4", "ev-5"]
    assert "checksum does not match" in caplog.text
    assert ob.stats()["damaged"] == 1
    dest = Collector()
    task = asyncio.create_task(ob.deliver("a", dest.send))
    await dest.wait_for(6)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert [s for s, _ in dest.got] == [1, 3, 4, 5, 6]
    await ob.close()


CRASH_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from meter_gateway.gateway.events.outbox import Outbox
    from tests.unit.test_outbox import make_event

    async def main(directory):
        ob = Outbox(Path(directory), ["a"], segment_bytes=16384)
        await ob.open()
        asyncio.create_task(ob.run())
        while True:
            seqs = [ob.append(make_event(ob.last_seq + 1)) for _ in range(7)]
            await ob.wait_durable(seqs[-1])
            print(*seqs, flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.slow
def test_every_event_reported_durable_survives_a_sigkill(tmp_path):
    printed: list[int] = []
    for _ in range(3):  # kill, reopen and go on appending, three times over
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        before = len(printed)
        for line in proc.stdout:
            printed += [int(s) for s in line.split()]
            if len(printed) - before >= 300:
                break
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == -signal.SIGKILL, err
        printed += [int(s) for s in out.split()]  # durable before the kill, read after it

        async def reopen() -> list[Event]:
            ob = Outbox(tmp_path, ["a"])
            await ob.open()
            return ob.events_since(1)

        events = asyncio.run(reopen())
        got = [ev.event_id for ev in events]
        assert len(set(got)) == len(got)
        # The event appended as seq s was made as make_event(s): its id says its seq.
        on_disk = {int(i.removeprefix("ev-")) for i in got}
        missing = sorted(set(printed) - on_disk)
        assert not missing, f"{len(missing)} durable events lost, e.g. {missing[:5]}"
    assert len(printed) >= 900


# -- hold, compaction, events_since --------------------------------------------------------------


async def test_hold_keeps_delivered_events_for_the_engine_and_compaction_frees_the_rest(tmp_path):
    dest = Collector()
    async with running(Outbox(tmp_path, ["a"], segment_bytes=TWO_A_SEGMENT), a=dest.send) as ob:
        ob.hold(3)
        for i in range(6):
            ob.append(make_event(i))
            await ob.commit()
        await dest.wait_for(6)
        assert ob.backlog("a") == 0
        # Segments of two: [1,2] is delivered and below the hold point, so gone;
        # [3,4] is held; [5,6] is being appended to.
        assert sorted(p.name[-8:] for p in tmp_path.glob("*.seg")) == ["0003.seg", "0005.seg"]
        assert ids(ob.events_since(3)) == ["ev-2", "ev-3", "ev-4", "ev-5"]
        ob.append(make_event(6))  # not yet committed: still part of the answer
        assert ids(ob.events_since(6)) == ["ev-5", "ev-6"]
        await ob.wait_durable(7)
        await dest.wait_for(7)
        ob.hold(8)  # a new snapshot: everything delivered may go
        assert [p.name[-8:] for p in tmp_path.glob("*.seg")] == ["0007.seg"]  # current
    # After a restart nothing is current: all of it goes, and numbers are not reused.
    ob = Outbox(tmp_path, ["a"])
    await ob.open()
    assert list(tmp_path.glob("*.seg")) == []
    assert ob.events_since(8) == []
    assert ob.append(make_event(7)) == 8
    await ob.close()


async def test_over_max_bytes_the_oldest_events_go_even_if_a_destination_lacks_them(
    tmp_path, caplog
):
    dest = Collector()
    dest.failing = True
    async with running(
        Outbox(tmp_path, ["a"], segment_bytes=TWO_A_SEGMENT, max_bytes=2500), a=dest.send
    ) as ob:
        for i in range(10):
            ob.append(make_event(i))
            await ob.commit()
        assert ob.bytes <= 2500 + 1024
        st = ob.stats()["destinations"]["a"]
        assert st["skipped"] > 0
        assert st["cursor"] == st["skipped"]
        assert "dropped before a took them" in caplog.text
        dest.failing = False
        await dest.wait_for(10)
    assert [s for s, _ in dest.got] == list(range(st["skipped"] + 1, 11))


# -- a full disk ---------------------------------------------------------------------------------


async def test_a_full_disk_keeps_events_in_memory_and_commits_them_later(
    tmp_path, monkeypatch, caplog
):
    real_write = os.write
    full = True

    def write(fd: int, data) -> int:
        if full and os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    ob = Outbox(tmp_path, ["a"], max_pending=3)
    await ob.open()
    assert [ob.append(make_event(i)) for i in range(2)] == [1, 2]
    assert await ob.commit() is False
    assert ob.append(make_event(2)) == 3
    assert await ob.commit() is False
    assert ob.append(make_event(3)) == 0  # memory at its bound: dropped, counted
    st = ob.stats()
    assert (st["disk_full"], st["write_errors"], st["durable"], st["dropped"]) == (True, 2, 0, 1)
    assert len([r for r in caplog.records if "cannot write" in r.message]) == 1
    assert list(tmp_path.glob("*.seg")) == []  # no empty or torn segment left behind
    full = False
    assert await ob.commit() is True
    assert ob.durable == 3
    assert not ob.stats()["disk_full"]
    await ob.close()
    again = Outbox(tmp_path, ["a"])
    await again.open()
    assert ids(again.events_since(1)) == ["ev-0", "ev-1", "ev-2"]


async def test_a_real_full_filesystem_does_not_crash_the_commit_loop(tmp_path):
    try:
        ctx = tmpfs(tmp_path / "small", "256k")
        directory = ctx.__enter__()
    except PermissionError as exc:
        pytest.skip(str(exc))
    try:
        filler = directory / "filler"
        with contextlib.suppress(OSError), filler.open("wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
        ob = Outbox(directory / "outbox", ["a"], retry_s=0.01)
        await ob.open()
        task = asyncio.create_task(ob.run())
        seqs = [ob.append(make_event(i)) for i in range(20)]
        await wait_until(lambda: ob.write_errors >= 2, what="failed commits")
        assert ob.durable == 0
        assert ob.disk_full
        assert not task.done()
        filler.unlink()
        await asyncio.wait_for(ob.wait_durable(seqs[-1]), 20)
        await ob.close()
        await task
        again = Outbox(directory / "outbox", ["a"])
        await again.open()
        assert len(again.events_since(1)) == 20
    finally:
        ctx.__exit__(None, None, None)

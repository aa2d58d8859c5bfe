"""A condition of the gateway itself (the spool full), kept across restarts.

The active condition is a small JSON file under `<data_dir>/events/`: after a crash
the same condition keeps the same `event_id` and start, and is cleared once, not
raised again as a new one.

The condition that matters most (`storage_backpressure`) is raised when the disk is
full, which is exactly when a new file cannot be written. So the file is made at start,
`SLOT` bytes of padding, and a raise or clear overwrites those bytes in place: blocks
already allocated need no free space (on a copy-on-write filesystem such as btrfs they
do, and the write falls back to a new file, which may then fail like any other).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from meter_gateway.gateway.events.event import Event, event_id

__all__ = ["Condition"]

log = logging.getLogger("meter_gateway.events")

SLOT = 4096  # bytes reserved for the condition's file; its JSON is padded with spaces
_NONE = b'{"event_id": null}'


class Condition:
    def __init__(self, directory: Path, type_: str, subject: dict[str, str], severity: str) -> None:
        self._path = Path(directory) / f"{type_}.json"
        self._type = type_
        self._subject = subject
        self._severity = severity
        self.active: Event | None = self._load()
        if self.active is None:
            self._write(_NONE)  # reserve the slot while the disk has room

    def raise_(self, message: str, details: dict[str, Any]) -> Event | None:
        """The raised event, or None when the condition is already raised."""
        if self.active is not None:
            return None
        now = time.time_ns()
        subject_id = next(iter(self._subject.values()))
        ev = Event(
            self._type,
            "raised",
            self._severity,
            dict(self._subject),
            now,
            now,
            event_id(self._type, subject_id, now),
            dict(details),
            message=message,
        )
        self._save(ev)
        self.active = ev
        return ev

    def clear(self, message: str) -> Event | None:
        """The clearing event (same id), or None when nothing is raised."""
        ev = self.active
        if ev is None:
            return None
        now = time.time_ns()
        cleared = Event(
            ev.type,
            "cleared",
            ev.severity,
            ev.subject,
            ev.start_ns,
            now,
            ev.event_id,
            ev.details,
            cleared_ns=now,
            message=message,
        )
        if not self._write(_NONE):
            try:
                self._path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("events: cannot remove %s: %s", self._path, exc)
        self.active = None
        return cleared

    def _save(self, ev: Event) -> None:
        state = {
            "event_id": ev.event_id,
            "start_ns": ev.start_ns,
            "details": ev.details,
            "message": ev.message,
        }
        if not self._write(json.dumps(state).encode()):
            # The event still goes out; only its id would not survive a crash meanwhile.
            log.warning("events: cannot keep %s in %s", self._type, self._path)

    def _write(self, data: bytes) -> bool:
        """Put `data` in the file durably: in place within the reserved slot when it
        fits, else as a new file. False (and logged) when the disk refused both."""
        if len(data) <= SLOT:
            try:
                fd = os.open(self._path, os.O_WRONLY)
            except OSError:
                pass  # no slot yet: a new file below
            else:
                try:
                    if os.fstat(fd).st_size >= SLOT:
                        os.pwrite(fd, data.ljust(SLOT), 0)
                        os.fsync(fd)
                        return True
                except OSError as exc:
                    log.warning("events: cannot write %s in place: %s", self._path, exc)
                finally:
                    os.close(fd)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_suffix(".tmp")
            with tmp.open("wb") as f:
                f.write(data.ljust(SLOT))
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self._path)
            return True
        except OSError as exc:
            log.warning("events: cannot write %s: %s", self._path, exc)
            return False

    def _load(self) -> Event | None:
        try:
            state = json.loads(self._path.read_text())
            if state.get("event_id") is None:
                return None  # the reserved slot, nothing raised
            start = int(state["start_ns"])
            return Event(
                self._type,
                "raised",
                self._severity,
                dict(self._subject),
                start,
                start,
                str(state["event_id"]),
                dict(state.get("details") or {}),
                message=str(state.get("message") or ""),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("events: ignoring unreadable %s: %s", self._path, exc)
            return None

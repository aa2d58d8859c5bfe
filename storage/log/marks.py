"""Marks: one number in a small file (a cursor, the spool's ledger, a hold point).

A mark is written to `<name>.tmp` and renamed over the old one, so a reader finds
either the old number or the new one, never half of one. A mark that cannot be read
counts as absent: every user of one loses nothing by that (what is past it is
delivered or written again), so it is a warning, not an error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["read_mark", "write_mark"]


def read_mark(path: Path, log: logging.Logger) -> int | None:
    """The number in `path`; None when the file is missing, empty or unreadable."""
    try:
        text = path.read_text().strip()
        return int(text) if text else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None


def write_mark(path: Path, value: int, *, sync: bool = True) -> None:
    """Replace the number in `path` atomically. `sync`: on disk before the rename (a
    mark that may only lag, like the spool's ledger, skips it). Raises OSError."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(f"{value}\n")
        if sync:
            f.flush()
            os.fdatasync(f.fileno())
    tmp.replace(path)

"""Logging to stderr: text for people (default), JSON lines for machines.

Two guards sit on the one handler, because what is logged is partly written by
others (meter ids, topics, event subjects; library messages about hostile peers):

- text shown as it is would let a client rewrite the log (a newline forges a line,
  U+202E reverses what follows, zero-width characters hide in an id) or fill it (a
  5,000-character id). `printable` escapes control, bidi and zero-width characters
  (`\\u202e`) and cuts long text, saying how long it was;
- the libraries' loggers (pymodbus, asyncio, aiohttp's server, paho) pass the same
  kind of limit the gateway's own repeated messages have (`LibraryLimit`): at most one
  line per kind a minute with a count, tracebacks of peers' faults as one line, and
  pymodbus's frame hex dumps (other devices' traffic on a shared line) only at DEBUG.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import unicodedata
from datetime import UTC, datetime
from typing import IO, Any

import orjson

__all__ = ["LIBRARY_LOGGERS", "LibraryLimit", "printable", "setup_logging"]

# Characters that change how text reads rather than what it says: C0/C1 controls,
# bidi embeddings, overrides and isolates, zero-width and invisible formatting.
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_INVISIBLE = "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u2060\u2061"
_INVISIBLE += "\u2062\u2063\u2064\u3164\ufeff\uffa0"
_UNSAFE = re.compile(
    f"[\\x00-\\x1f\\x7f-\\x9f{_BIDI}{_INVISIBLE}\\u2028\\u2029\\ufff9-\\ufffb\\U000e0000-\\U000e007f]"
)

# What a library message may be before it is cut; a gateway message's own arguments
# (ids, topics, reasons) are cut at `ARG_LIMIT` each.
MESSAGE_LIMIT = 4000
ARG_LIMIT = 500


def _escape(m: re.Match[str]) -> str:
    c = m.group(0)
    code = ord(c)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str, limit: int | None = None) -> str:
    """`text` as it may be shown to a person: control, bidi and zero-width characters
    escaped (`\\u202e`), and at most `limit` characters of it, then `…` and the full
    length (`… (5,000 characters)`)."""
    cut = limit is not None and len(text) > limit
    head = text[:limit] if cut else text
    if _UNSAFE.search(head) or any(unicodedata.category(c) == "Cf" for c in head):
        head = _UNSAFE.sub(_escape, head)
        # Other invisible format characters (Cf) a future Unicode may add.
        head = "".join(_escape_cf(c) for c in head)
    if cut:
        return f"{head}… ({len(text):,} characters)"
    return head


def _escape_cf(c: str) -> str:
    if unicodedata.category(c) != "Cf":
        return c
    code = ord(c)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _safe_message(record: logging.LogRecord) -> str:
    """The record's message with its text arguments made printable and cut; the
    message itself (written here, or by a library) escaped and capped."""
    args = record.args
    if isinstance(args, tuple) and args:
        record.args = tuple(printable(a, ARG_LIMIT) if isinstance(a, str) else a for a in args)
    try:
        message = record.getMessage()
    finally:
        record.args = args
    return printable(message, MESSAGE_LIMIT)


class _TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _safe_message(record)
        return super().formatMessage(record)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _safe_message(record),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


# Libraries whose messages are about peers the gateway does not control.
LIBRARY_LOGGERS = ("pymodbus", "asyncio", "aiohttp", "paho", "meter_gateway.mqtt.paho")
# Tracebacks worth keeping (once a minute): a task of ours failing unseen is a bug.
_KEEP_TRACEBACK = ("asyncio",)
_HEX_DUMP = re.compile(r"(?:0x[0-9a-fA-F]{1,2}[ ,]*){4,}|(?:\b[0-9a-fA-F]{2}[ :]){8,}")
_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")


class LibraryLimit(logging.Filter):
    """A handler filter: library records at most once per kind per window, with a count.

    The kind is the logger and the message with its numbers folded (`got id=7` and
    `got id=9` are one kind). The first of a kind passes at once; the rest within the
    window are counted and the count rides on the next one that passes, or on
    `flush()` (called about once a minute). pymodbus messages holding a frame dump go
    to DEBUG; tracebacks of library records are cut to their last line (the peer's
    fault, not the gateway's), except asyncio's."""

    def __init__(self, window_s: float = 60.0, max_keys: int = 1000) -> None:
        super().__init__()
        self.window_s = window_s
        self.max_keys = max_keys
        self.debug = False  # at --log-level debug everything passes as it is
        # kind -> [time of the last line passed, suppressed count, logger name, level, message]
        self._kinds: dict[tuple[str, int, str], list[Any]] = {}
        self.suppressed = 0

    @staticmethod
    def is_library(name: str) -> bool:
        return any(name == n or name.startswith(n + ".") for n in LIBRARY_LOGGERS)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.debug or getattr(record, "_limited", False) or not self.is_library(record.name):
            return True
        message = record.getMessage()
        if record.name.startswith("pymodbus"):
            # pymodbus appends its last frames to an error (`>>>>> recv: 0x0 0x1 ...`):
            # bytes of whatever is on the line, other devices' traffic included. The
            # message stays, the dump is for --log-level debug only.
            head, dump, _ = message.partition("\n>>>>>")
            if dump:
                message = f"{head} (frame dump at --log-level debug)"
                record.msg, record.args = message, None
            if _HEX_DUMP.search(message):
                return False  # a message that is a frame dump: DEBUG only
        now = time.monotonic()
        kind = (record.name, record.levelno, _NUMBERS.sub("#", message)[:200])
        entry = self._kinds.get(kind)
        if entry is not None and now - entry[0] < self.window_s:
            entry[1] += 1
            entry[4] = message
            self.suppressed += 1
            return False
        more = entry[1] if entry is not None else 0
        if entry is None and len(self._kinds) >= self.max_keys:
            self.flush(final=True)  # a bound on memory; the cost is an early count line
        self._kinds[kind] = [now, 0, record.name, record.levelno, message]
        if more:
            record.msg = f"{message} (and {more} more like it in the last {self.window_s:.0f} s)"
            record.args = None
        if record.exc_info and not record.name.startswith(_KEEP_TRACEBACK):
            exc = record.exc_info[1]
            if exc is not None:
                record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
                record.args = None
            record.exc_info = None
            record.exc_text = None
        return True

    def flush(self, *, final: bool = False) -> None:
        """Log the counts held back for kinds whose window has passed (all: `final`)."""
        now = time.monotonic()
        for kind, entry in list(self._kinds.items()):
            if now - entry[0] < self.window_s and not final:
                continue
            del self._kinds[kind]
            held = entry[1]
            if held:
                more = f" (and {held - 1} more like it in the last {self.window_s:.0f} s)"
                logging.getLogger(entry[2]).log(
                    entry[3],
                    "%s%s",
                    entry[4],
                    more if held > 1 else "",
                    extra={"_limited": True},
                )


_library_limit = LibraryLimit()


def library_limit() -> LibraryLimit:
    """The filter on the handler `setup_logging` installed (for its once-a-minute flush)."""
    return _library_limit


def setup_logging(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    debug = level.lower() == "debug"
    _library_limit.debug = debug
    handler.addFilter(_library_limit)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho logs every packet at DEBUG; keep it to warnings unless asked.
    paho_level = logging.DEBUG if debug else logging.WARNING
    logging.getLogger("meter_gateway.mqtt.paho").setLevel(paho_level)
    # pymodbus warns on every reconnect attempt to a dead meter; our poller already
    # logs state changes once and counts the rest.
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if debug else logging.ERROR)

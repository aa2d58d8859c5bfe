"""Text others wrote (ids, event subjects, messages) is shown escaped and cut, on the
status page and in the log; library loggers pass the gateway's rate limit."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from meter_gateway.gateway.app import Gateway
from meter_gateway.gateway.logs import library_limit, printable, setup_logging
from meter_gateway.gateway.status import render_page, status_snapshot
from tests.conftest import make_config

RTL = "m-\u202eliam\u202c"  # shows as "m-mail" reversed: a forged id
HIDDEN = "m-1\u200b"  # looks like m-1
LONG = "E" * 5000


def test_printable_escapes_what_changes_how_text_reads() -> None:
    assert printable(RTL) == "m-\\u202eliam\\u202c"
    assert printable(HIDDEN) == "m-1\\u200b"
    assert printable("a\nb\x1b[31m") == "a\\x0ab\\x1b[31m"
    assert printable("\u2066x\u2069\ufeff") == "\\u2066x\\u2069\\ufeff"
    assert printable("Zähler-1 ✓") == "Zähler-1 ✓"  # letters and symbols are text


def test_printable_cuts_long_text_and_says_how_long() -> None:
    assert printable(LONG, 80) == "E" * 80 + "… (5,000 characters)"
    assert printable("short", 80) == "short"


def test_the_page_shows_event_subjects_escaped_and_cut(tmp_path) -> None:
    nowhere = SimpleNamespace(host="127.0.0.1", port=1)
    gw = Gateway(make_config(tmp_path, nowhere))  # type: ignore[arg-type]
    s = status_snapshot(gw)
    active = [
        {
            "type": "power_outage",
            "severity": "critical",
            "meter_id": meter_id,
            "since": "2026-01-02T03:04:05.000Z",
            "age_s": 3.0,
            "event_id": "x",
            "message": f"{meter_id}: last gasp",
        }
        for meter_id in (RTL, HIDDEN, LONG)
    ]
    s["events"] = {**s["events"], "active": active, "active_total": len(active)}
    page = render_page(s)
    for raw in ("\u202e", "\u202c", "\u200b", "E" * 301):
        assert raw not in page
    assert "power_outage m-\\u202eliam\\u202c" in page
    assert "power_outage m-1\\u200b" in page
    assert "power_outage " + "E" * 80 + "… (5,000 characters)" in page
    assert "E" * 300 + "… (5,011 characters)" in page  # the message cell


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    setup_logging("info", "text", stream=stream)
    library_limit().flush(final=True)
    stream.truncate(0)
    yield stream
    library_limit().flush(final=True)
    pymodbus = logging.getLogger("pymodbus")
    pymodbus.setLevel(logging.NOTSET)


def test_the_log_shows_arguments_escaped_and_cut(log_stream: io.StringIO) -> None:
    log = logging.getLogger("meter_gateway.events")
    log.warning("event power_outage raised %s: %s", RTL, LONG)
    log.warning("forged\nline %s", HIDDEN)
    out = log_stream.getvalue()
    assert out.count("\n") == 2  # one line each: a newline cannot forge a second
    assert "\u202e" not in out
    assert "\u200b" not in out
    assert "raised m-\\u202eliam\\u202c: " + "E" * 500 + "… (5,000 characters)" in out
    assert "forged\\x0aline m-1\\u200b" in out


def test_library_loggers_pass_the_rate_limit(log_stream: io.StringIO) -> None:
    pymodbus = logging.getLogger("pymodbus.logging")
    for unit in range(50):
        pymodbus.error("ERROR: request ask for id=1 but got id=%d, Skipping.", unit)
        # A frame dump, other devices' traffic included: never above DEBUG.
        pymodbus.error("Processing: 0x0 0x1 0x0 0x0 0x0 0x6 0x%x 0x3 0x0 0x0 0x0 0x2", unit)
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError as exc:
        for _ in range(30):
            logging.getLogger("asyncio").error("Fatal error on transport", exc_info=exc)
            logging.getLogger("aiohttp.server").error("Error handling request", exc_info=exc)
    out = log_stream.getvalue()
    lines = out.splitlines()
    assert sum("request ask for id=1 but got id=" in x for x in lines) == 1
    assert "Processing:" not in out
    assert sum("Fatal error on transport" in x for x in lines) == 1
    assert out.count("Traceback") == 1  # asyncio's, once: a task of ours may be failing
    server = [x for x in lines if "Error handling request" in x]
    assert server == [server[0]]
    assert server[0].endswith(
        "Error handling request: ConnectionResetError: [Errno 104] Connection reset by peer"
    )
    library_limit().flush(final=True)
    counts = log_stream.getvalue().splitlines()[len(lines) :]
    assert any("got id=49, Skipping. (and 48 more like it in the last 60 s)" in x for x in counts)
    assert any("Fatal error on transport (and 28 more like it" in x for x in counts)

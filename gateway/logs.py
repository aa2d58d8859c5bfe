"""Logging to stderr: text for people (default), JSON lines for machines."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson

__all__ = ["setup_logging"]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho logs every packet at DEBUG; keep it to warnings unless asked.
    logging.getLogger("meter_gateway.mqtt.paho").setLevel(
        logging.DEBUG if level.lower() == "debug" else logging.WARNING
    )
    # pymodbus warns on every reconnect attempt to a dead meter; our poller already
    # logs state changes once and counts the rest.
    logging.getLogger("pymodbus").setLevel(
        logging.DEBUG if level.lower() == "debug" else logging.ERROR
    )

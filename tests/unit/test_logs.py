from __future__ import annotations

import json
import logging

from meter_gateway.gateway.logs import setup_logging


def test_json_logs_are_one_object_per_line(capsys):
    setup_logging("info", "json")
    logging.getLogger("meter_gateway.mqtt").error("mqtt: cannot connect to %s", "h:1883")
    logging.getLogger("meter_gateway.mqtt").debug("not shown at info")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["level"] == "error"
    assert rec["logger"] == "meter_gateway.mqtt"
    assert rec["message"] == "mqtt: cannot connect to h:1883"
    assert rec["ts"].endswith("Z")


def test_text_logs_name_level_and_logger(capsys):
    setup_logging("warning", "text")
    logging.getLogger("meter_gateway.storage").warning("storage: 5 lines waiting")
    err = capsys.readouterr().err
    assert "WARNING meter_gateway.storage: storage: 5 lines waiting" in err

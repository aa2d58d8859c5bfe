"""The alert rules pass `promtool check rules`, and their unit tests `promtool test rules`.

That every metric they use is one the gateway exports is checked against a running
gateway in test_dashboard.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "meter-gateway.rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "meter-gateway.rules.test.yml"

# What the brief for the rules asks to be covered, by alert name.
EXPECTED_ALERTS = {
    "MeterGatewayDown",
    "MeterGatewayBrokerDown",
    "MeterGatewayStorageFailing",
    "MeterGatewaySpoolFilling",
    "MeterGatewaySpoolPaused",
    "MeterGatewayModbusDeviceDown",
    "MeterGatewayIngestStalled",
    "MeterGatewayEventStorm",
    "MeterGatewayDeadLetterGrowing",
}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: run scripts/setup.sh (Debian package prometheus)"
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_promtool_checks_the_rules():
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


def test_promtool_check_refuses_a_broken_rule(tmp_path):
    """The check above can fail: the same file with a PromQL syntax error does."""
    bad = tmp_path / "bad.rules.yml"
    bad.write_text(
        RULES.read_text().replace("meter_gateway_mqtt_connected == 0", "rate(x[5m) == 0")
    )
    out = promtool("check", "rules", str(bad))
    assert out.returncode != 0
    assert "MeterGatewayBrokerDown" in out.stdout + out.stderr or "parse" in out.stderr


def test_every_alert_can_be_acted_on():
    found = rules()
    names = [r["alert"] for r in found]
    assert len(names) == len(set(names)), "alert names must be unique"
    assert set(names) >= EXPECTED_ALERTS
    for r in found:
        assert r["labels"]["severity"] in {"critical", "warning"}, r["alert"]
        assert set(r["annotations"]) >= {"summary", "description"}, r["alert"]
        assert len(r["annotations"]["description"]) > 80, f"{r['alert']}: say what to do"
        # A counter's increase fires once per window by itself; a level needs `for:`.
        if "increase(" not in r["expr"]:
            assert "for" in r, f"{r['alert']}: a level alert needs for:"


def test_promtool_unit_tests_of_the_alerts():
    out = promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
    tested = {
        t["alertname"]
        for case in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for t in case["alert_rule_test"]
        if t["exp_alerts"]
    }
    assert {"MeterGatewayBrokerDown", "MeterGatewaySpoolFilling"} <= tested
    assert len(tested) >= 8


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # a threshold moved: the spool test's 85 % no longer fires
        (
            "meter_gateway_spool_bytes / meter_gateway_spool_max_bytes > 0.8",
            "meter_gateway_spool_bytes / meter_gateway_spool_max_bytes > 0.9",
        ),
        # a `for:` shortened: the broker alert fires while the test expects it pending
        (
            "expr: meter_gateway_mqtt_connected == 0\n        for: 3m",
            "expr: meter_gateway_mqtt_connected == 0\n        for: 1m",
        ),
    ],
)
def test_promtool_unit_tests_catch_a_changed_rule(tmp_path, old, new):
    """The unit tests can fail: run them against a copy of the rules with one change."""
    text = RULES.read_text()
    assert old in text
    (tmp_path / RULES.name).write_text(text.replace(old, new))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    out = promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert out.returncode != 0
    assert "FAILED" in out.stdout + out.stderr

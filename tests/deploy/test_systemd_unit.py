"""deploy/systemd: `systemd-analyze verify` finds no error or warning in the unit (and in
the unit with the serial drop-in), a broken copy is refused, the hardening scores well,
and systemd-sysusers can create the service user from the sysusers.d file."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
UNIT = SYSTEMD / "meter-gateway.service"
DROPIN = SYSTEMD / "serial.conf"
SYSUSERS = SYSTEMD / "meter-gateway.sysusers"
INSTALLED = "/opt/meter-gateway/.venv/bin/meter-gateway"
# This checkout's entry point stands in for the installed one: verify checks that
# ExecStart= names an executable that exists.
HERE = Path(sys.executable).with_name("meter-gateway")


def tool(name: str) -> str:
    exe = shutil.which(name)
    assert exe, f"{name} is missing: run scripts/setup.sh (Debian package systemd)"
    return exe


def local_copy(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart= pointing at this checkout, under its own name."""
    assert HERE.is_file(), HERE
    assert INSTALLED in text
    path = tmp_path / "meter-gateway.service"
    path.write_text(text.replace(INSTALLED, str(HERE)))
    return path


def verify(unit: Path) -> tuple[int, list[str]]:
    """Exit status and the lines about our unit (verify also reads the units it names)."""
    out = subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=unit.parent,
    )
    lines = (out.stdout + out.stderr).splitlines()
    return out.returncode, [ln for ln in lines if unit.name in ln or str(unit) in ln]


def service_section(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        if section == "[Service]":
            out.setdefault(key, []).append(value)
    return out


def test_unit_verifies_cleanly(tmp_path):
    rc, problems = verify(local_copy(tmp_path, UNIT.read_text()))
    assert rc == 0, problems
    assert problems == [], "systemd-analyze verify warns:\n" + "\n".join(problems)


def test_unit_with_the_serial_dropin_verifies_cleanly(tmp_path):
    # A drop-in's assignments come after the unit's: the same as appending them.
    rc, problems = verify(local_copy(tmp_path, UNIT.read_text() + "\n" + DROPIN.read_text()))
    assert rc == 0, problems
    assert problems == [], "\n".join(problems)
    merged = service_section(UNIT.read_text() + "\n" + DROPIN.read_text())
    assert merged["PrivateDevices"][-1] == "no"
    assert merged["SupplementaryGroups"][-1] == "dialout"
    assert merged["DevicePolicy"] == ["closed"]


@pytest.mark.parametrize(
    ("old", "new", "said"),
    [
        ("Type=exec", "Type=bogus", "service type"),
        ("Restart=on-failure", "Restartt=on-failure", "Unknown key"),
        ("KillSignal=SIGTERM", "KillSignal=SIGBOGUS", "signal"),
        (
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "RestrictAddressFamilies=AF_BOGUS",
            "address family",
        ),
        ("SystemCallFilter=@system-service", "SystemCallFilter=@bogus", "system call group"),
        ("TimeoutStopSec=60s", "TimeoutStopSec=sixty", "time value"),
    ],
)
def test_a_broken_unit_is_caught(tmp_path, old, new, said):
    text = UNIT.read_text()
    assert old in text
    _, problems = verify(local_copy(tmp_path, text.replace(old, new)))
    assert problems, f"verify said nothing about {new}"
    assert any(said.lower() in p.lower() for p in problems), problems


def test_a_missing_executable_is_a_fatal_error(tmp_path):
    path = tmp_path / "meter-gateway.service"
    path.write_text(UNIT.read_text())  # /opt/meter-gateway does not exist here
    rc, problems = verify(path)
    assert rc != 0
    assert any("not executable" in p for p in problems), problems


def test_unit_runs_the_gateway_as_the_layout_says():
    s = service_section(UNIT.read_text())
    assert s["Type"] in (["simple"], ["exec"])
    start = s["ExecStart"][0].split()
    assert start[:4] == [INSTALLED, "run", "-c", "/etc/meter-gateway/gateway.yaml"]
    assert s["User"] == ["meter-gateway"]
    assert s["StateDirectory"] == ["meter-gateway"]
    assert s["Restart"] == ["on-failure"]
    assert s["KillSignal"] == ["SIGTERM"]
    assert "2" in s["RestartPreventExitStatus"][0].split()  # a bad configuration
    # systemd must give the gateway its whole --shutdown-timeout, and more, before SIGKILL.
    shutdown = float(start[start.index("--shutdown-timeout") + 1])
    stop = re.fullmatch(r"(\d+)s?", s["TimeoutStopSec"][0])
    assert stop, s["TimeoutStopSec"]
    assert int(stop.group(1)) >= shutdown + 15
    for key, want in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }.items():
        assert s[key] == [want], key
    assert "@system-service" in s["SystemCallFilter"]


def test_hardening_exposure_is_low(tmp_path):
    out = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=yes", "--no-pager",
         str(local_copy(tmp_path, UNIT.read_text()))],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", out.stdout)
    assert found, out.stdout[-2000:] + out.stderr
    assert float(found.group(1)) <= 2.5, out.stdout  # "OK" is <= 4.9; we do better


def test_sysusers_creates_the_service_user(tmp_path):
    (tmp_path / "etc").mkdir()
    out = subprocess.run(
        [tool("systemd-sysusers"), f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text().splitlines()
    user = [ln.split(":") for ln in passwd if ln.startswith("meter-gateway:")]
    assert len(user) == 1
    assert user[0][5] == "/var/lib/meter-gateway"
    assert user[0][6].endswith("nologin")
    assert "meter-gateway:" in (tmp_path / "etc" / "group").read_text()


def test_unit_parses_as_ini():
    """No duplicate sections and nothing outside one (configparser is strict on both)."""
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    assert cp.sections() == ["Unit", "Service", "Install"]
    assert cp["Install"]["WantedBy"] == "multi-user.target"

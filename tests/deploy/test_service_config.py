"""deploy/gateway.yaml and deploy/topology.csv: `meter-gateway check-config` accepts them
in the service layout (laid out under a temporary root), and they agree with the unit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from meter_gateway.config.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CLI = Path(sys.executable).with_name("meter-gateway")
CREDENTIALS = "/run/credentials/meter-gateway.service"
# Every absolute path of the sample lives in one of these, laid out under tmp_path.
LAYOUT = {
    CREDENTIALS: "creds",
    "/etc/meter-gateway": "etc",
    "/var/lib/meter-gateway": "var",
}
SYSTEM_FILES = {"/etc/ssl/certs/ca-certificates.crt"}  # used as they are


def lay_out(tmp_path: Path, topology: str | None = None) -> Path:
    text = (DEPLOY / "gateway.yaml").read_text()
    for path in absolute_paths(yaml.safe_load(text)):
        inside = any(path == p or path.startswith(p + "/") for p in LAYOUT)
        assert inside or path in SYSTEM_FILES, path
    (tmp_path / "etc").mkdir()
    (tmp_path / "creds").mkdir()
    (tmp_path / "etc" / "topology.csv").write_text(
        topology if topology is not None else (DEPLOY / "topology.csv").read_text()
    )
    for name in credential_names():
        (tmp_path / "creds" / name).write_text(f"secret-{name}-0123456789\n")
    for prefix, sub in LAYOUT.items():
        text = text.replace(prefix, str(tmp_path / sub))
    cfg = tmp_path / "etc" / "gateway.yaml"
    cfg.write_text(text)
    return cfg


def absolute_paths(node: object) -> list[str]:
    if isinstance(node, dict):
        return [p for v in node.values() for p in absolute_paths(v)]
    if isinstance(node, list):
        return [p for v in node for p in absolute_paths(v)]
    return [node] if isinstance(node, str) and node.startswith("/") else []


def credential_names() -> list[str]:
    unit = (DEPLOY / "systemd" / "meter-gateway.service").read_text()
    return re.findall(r"^LoadCredential=([\w-]+):", unit, flags=re.M)


def check_config(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "check-config", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},  # no METER_GATEWAY__* overrides from outside
    )


def test_check_config_accepts_the_sample(tmp_path):
    out = check_config(lay_out(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "OK (gateway gw-01" in out.stdout
    assert "1 Modbus devices" in out.stdout


def test_check_config_refuses_a_broken_topology(tmp_path):
    """The check can fail: a topology with an unknown column is exit 2, naming it."""
    bad = (DEPLOY / "topology.csv").read_text().replace("prosumer", "prosumr", 1)
    out = check_config(lay_out(tmp_path, topology=bad))
    assert out.returncode == 2
    assert "topology.file" in out.stderr
    assert "prosumr" in out.stderr


def test_check_config_refuses_a_missing_secret(tmp_path):
    cfg = lay_out(tmp_path)
    (tmp_path / "creds" / "influx-token").unlink()
    out = check_config(cfg)
    assert out.returncode == 2
    assert "token_file" in out.stderr


def test_sample_matches_the_unit():
    data = yaml.safe_load((DEPLOY / "gateway.yaml").read_text())
    unit = (DEPLOY / "systemd" / "meter-gateway.service").read_text()
    assert data["gateway"]["data_dir"] == "/var/lib/meter-gateway"
    assert "StateDirectory=meter-gateway\n" in unit
    assert data["topology"]["file"] == "/etc/meter-gateway/topology.csv"
    used = {
        Path(v).name
        for v in (
            data["mqtt"]["password_file"],
            data["storage"]["token_file"],
            data["http"]["token_file"],
        )
        if v.startswith(CREDENTIALS + "/")
    }
    assert used == set(credential_names())
    # Prometheus scrapes from another host; the port is the one deploy/README.md names.
    assert data["http"]["listen"].endswith(":9108")


def test_sample_topology_reads_and_names_the_sample_modbus_device():
    places = load_topology(DEPLOY / "topology.csv")
    data = yaml.safe_load((DEPLOY / "gateway.yaml").read_text())
    assert {d["meter_id"] for d in data["modbus"]["devices"]} <= set(places)
    assert {p.transformer_id for p in places.values()} == {"tx-17", "tx-18"}

"""deploy/grafana/meter-gateway.json: a well-formed dashboard whose every metric, like
every metric of the alert rules, is one a running gateway really exports (scraped from
its /metrics), and whose InfluxDB queries run against what the gateway stored."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Publisher, make_config, wait_until
from tests.deploy.promql import grouping_labels, matcher_labels, metric_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "meter-gateway.json"
RULES = DEPLOY / "prometheus" / "meter-gateway.rules.yml"
# Series Prometheus makes itself (not the gateway), and the labels it adds to every one.
PROMETHEUS_SERIES = {"up"}
TARGET_LABELS = {"job", "instance"}


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def prom_targets(dash: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, expr, legendFormat) of every Prometheus query."""
    return [
        (p["title"], t["expr"], t.get("legendFormat", ""))
        for p in all_panels(dash)
        if p.get("datasource", {}).get("type") == "prometheus"
        for t in p["targets"]
    ]


def influx_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (p["title"], t["query"])
        for p in all_panels(dash)
        if p.get("datasource", {}).get("type") == "influxdb"
        for t in p["targets"]
    ]


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def variable_metrics(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """label_values(metric..., label) of the Prometheus template variables: (metric, label)."""
    out = []
    for v in dash["templating"]["list"]:
        if v["type"] == "query" and v["datasource"]["type"] == "prometheus":
            m = re.fullmatch(r"label_values\(([a-z_:]+)(\{[^}]*\})?, *(\w+)\)", v["definition"])
            assert m, v["definition"]
            out.append((m.group(1), m.group(3)))
    return out


# -- structure -----------------------------------------------------------------------------


def test_dashboard_structure():
    dash = load()
    assert dash["uid"] == "meter-gateway"
    assert 36 <= dash["schemaVersion"] <= 41
    names = {v["name"]: v for v in dash["templating"]["list"]}
    assert names["datasource"]["type"] == "datasource"
    assert names["datasource"]["query"] == "prometheus"
    assert names["influxdb"]["query"] == "influxdb"
    ids = [p["id"] for p in all_panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in all_panels(dash):
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        assert pos["w"] > 0, p["title"]
        assert pos["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        ds = p["datasource"]
        assert ds["uid"] == {"prometheus": "${datasource}", "influxdb": "${influxdb}"}[ds["type"]]
        for t in p["targets"]:
            assert t["datasource"] == ds, p["title"]
    refids = [[t["refId"] for t in p.get("targets", [])] for p in all_panels(dash)]
    assert all(len(r) == len(set(r)) for r in refids)
    titles = {p["title"] for p in all_panels(dash)}
    for wanted in (
        "Ingest rate by source",
        "Rejections by reason",
        "Spool fill",
        "Spool depth and age",
        "Storage writes",
        "MQTT connection",
        "Modbus devices down",
        "Events raised by type",
        "Open conditions by type",
        "Outbox backlog by destination",
        "Power per transformer",
    ):
        assert wanted in titles
    # Every Prometheus query is scoped to the chosen gateways.
    for title, expr, _ in prom_targets(dash):
        for metric in metric_names(expr):
            assert re.search(rf'{metric}\{{job="\$job",instance=~"\$instance"', expr), (
                title,
                metric,
            )


def test_metric_name_extraction_finds_names_and_only_names():
    expr = (
        'sum by (job, instance) (rate(a_total{x="b c",y=~"$v"}[$__rate_interval])) / b'
        " > 0.8 and on (job) c == 1e3 or vector(0) unless d offset 5m"
    )
    assert metric_names(expr) == {"a_total", "b", "c", "d"}
    assert grouping_labels(expr) == {"job", "instance"}
    assert matcher_labels(expr) == {"a_total": {"x", "y"}}


# -- against a running gateway ---------------------------------------------------------------


def valid_series(families: list[Any]) -> tuple[set[str], dict[str, set[str]]]:
    """Series names a query may select (from the declared types as well as the samples),
    and the label names each one carries."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    suffixes = {
        "counter": ["_total", "_created"],
        "gauge": [""],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "summary": ["", "_sum", "_count", "_created"],
        "untyped": [""],
    }
    for fam in families:
        for suffix in suffixes[fam.type]:
            names.add(fam.name + suffix)
        for s in fam.samples:
            names.add(s.name)
            labels.setdefault(s.name, set()).update(s.labels)
            # The family's other series carry the same labels.
            for suffix in suffixes[fam.type]:
                labels.setdefault(fam.name + suffix, set()).update(s.labels)
    return names, labels


def problems_with(
    where: str, expr: str, names: set[str], labels: dict[str, set[str]], legend: str = ""
) -> list[str]:
    out = []
    used = metric_names(expr)
    if not used:
        out.append(f"{where}: no metric found in {expr!r}")
    for m in sorted(used - names - PROMETHEUS_SERIES):
        out.append(f"{where}: {m} is not exported by the gateway")
    known = set(TARGET_LABELS)
    for m in used:
        known |= labels.get(m, set())
    wanted = grouping_labels(expr) | set(re.findall(r"\{\{ *(\w+) *\}\}", legend))
    for m, matched in matcher_labels(expr).items():
        if m in PROMETHEUS_SERIES:
            continue
        missing = matched - TARGET_LABELS - labels.get(m, set())
        out.extend(f"{where}: {m} has no label {lb}" for lb in sorted(missing))
    out.extend(f"{where}: no metric of {expr!r} has label {lb}" for lb in sorted(wanted - known))
    return out


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


def influxql(query: str) -> str:
    """Grafana's macros and variables as Grafana fills them in for "last hour, all"."""
    return (
        query.replace("$timeFilter", "time > now() - 1h")
        .replace("$__interval", "1m")
        .replace("/^$transformer$/", "/^.*$/")
    )


async def test_every_metric_is_exported_and_influx_queries_run(
    tmp_path, mosquitto, influx1, modbus_meters, run_gateway
):
    server = await modbus_meters(
        2, model="sdm630", values={"power_w": 812.4, "voltage_l1_v": 231.0}
    )
    server.set_fault(2, "silent")  # a device that is down: Modbus error and breaker series
    device = {"model": "sdm630", "host": "127.0.0.1", "port": server.port, "interval_s": 0.2}
    cfg = make_config(
        tmp_path,
        mosquitto,
        storage={"api": "v1", "url": influx1.url, "database": "meters"},
        topology={"file": str(DEPLOY / "topology.csv")},
        modbus={
            "devices": [
                {**device, "meter_id": "sdm-0001", "unit": 1},
                {**device, "meter_id": "sdm-0002", "unit": 2, "timeout_s": 0.2, "retries": 0},
            ]
        },
    )
    gw = await run_gateway(cfg)
    assert gw.http.port

    # Readings ten minutes ago (their own minute in the database), one per meter and
    # transformer; a register that goes down (suspect); a bad payload (rejected); a last
    # gasp (a power_outage event).
    t0 = (int(time.time()) // 60 - 10) * 60
    power = {"m-000001": 1000.0, "m-000002": 500.0, "m-000004": 300.0}
    pub = Publisher(mosquitto)
    try:
        items: list[tuple[str, bytes | str]] = [
            (
                f"meters/{mid}/reading",
                orjson.dumps(
                    {"ts": t0, "power_w": w, "voltage_v": 230.0, "energy_import_kwh": 100.0}
                ),
            )
            for mid, w in power.items()
        ]
        items.append(
            ("meters/m-000001/reading", orjson.dumps({"ts": t0 + 5, "energy_import_kwh": 90.0}))
        )
        items.append(("meters/m-000002/reading", b'{"ts": "yesterday", "power_w": "x"}'))
        items.append(("meters/m-000005/event", orjson.dumps({"ts": t0, "type": "last_gasp"})))
        await asyncio.to_thread(pub.publish_many, items)
    finally:
        pub.close()

    await wait_until(lambda: sum(gw.pipeline.stats()["rejected"].values()) >= 1, what="rejection")
    await wait_until(lambda: gw.pipeline.stats()["flagged"], what="a suspect reading")
    await wait_until(lambda: gw.events.counts, what="an event raised")
    await wait_until(
        lambda: (
            gw.modbus is not None
            and gw.modbus.stats()["sdm-0002"].errors
            and gw.modbus.stats()["sdm-0001"].readings >= 2
        ),
        what="Modbus polls and errors",
    )
    await wait_until(
        lambda: gw.writer.stats()["lines_written"] >= 6, what="readings in the database"
    )

    text = await asyncio.to_thread(scrape, gw.http.port)
    families = list(text_string_to_metric_families(text))
    names, labels = valid_series(families)
    assert labels["meter_gateway_events_total"] >= {"type", "state"}
    assert labels["meter_gateway_modbus_errors_total"] >= {"meter_id", "kind"}

    dash = load()
    # The scenario gives every family the dashboard and the rules use samples, so the
    # labels each one carries are known (a family with none has no labels to check).
    used = {m for _, e, _ in prom_targets(dash) for m in metric_names(e)}
    used |= {m for _, e in rule_exprs() for m in metric_names(e)}
    empty = sorted(m for m in used & names if m not in labels)
    assert empty == [], f"no samples in this scenario for {empty}"
    problems: list[str] = []
    for title, expr, legend in prom_targets(dash):
        problems += problems_with(f"panel {title!r}", expr, names, labels, legend)
    for alert, expr in rule_exprs():
        problems += problems_with(f"alert {alert}", expr, names, labels)
    for metric, label in variable_metrics(dash):
        if metric not in names:
            problems.append(f"variable: {metric} is not exported")
        if label not in labels.get(metric, set()) | TARGET_LABELS:
            problems.append(f"variable: {metric} has no label {label}")
    assert problems == [], "\n".join(problems)

    # The checker can fail: a name the gateway does not export is reported.
    assert problems_with("x", "meter_gateway_mqtt_conected == 0", names, labels)
    wrong_labels = 'sum by (meter) (meter_gateway_modbus_breaker_open{k="v"})'
    assert len(problems_with("x", wrong_labels, names, labels)) == 2

    # -- the InfluxDB panels, on what this gateway stored
    queries = dict(influx_queries(dash))
    assert queries
    for title, q in queries.items():
        await asyncio.to_thread(influx1.query, influxql(q))  # raises on a query error
        assert "meter_reading" in q or "meter_event" in q, title

    rows = await asyncio.to_thread(influx1.query, influxql(queries["Power per transformer"]))
    at_t0 = {r["transformer_id"]: r["sum"] for r in rows if r["time"] == t0}
    assert at_t0 == {"tx-17": pytest.approx(1500.0), "tx-18": pytest.approx(300.0)}
    assert {r["transformer_id"] for r in rows} == {"tx-17", "tx-18"}  # Modbus too (tx-18)

    variable = next(v for v in dash["templating"]["list"] if v["name"] == "transformer")
    values = await asyncio.to_thread(influx1.query, variable["definition"])
    assert {r["value"] for r in values} == {"tx-17", "tx-18"}

    await wait_until(
        lambda: influx1.query(influxql(queries["Events (meter_event)"])),
        what="the event in meter_event",
    )
    events = influx1.query(influxql(queries["Events (meter_event)"]))
    assert any(e["type"] == "power_outage" and e["meter_id"] == "m-000005" for e in events)

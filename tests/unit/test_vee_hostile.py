"""Hostile input on the new paths: whatever bytes a crash or a disk leaves in the interval
store and its state, and whatever text reaches `report billing` / `report customers`
as a period, nothing escapes: the store reads what is whole, and a command exits with a
reason in words, never a traceback."""

from __future__ import annotations

import socket
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meter_gateway.config.schema import Config
from meter_gateway.gateway.cli import main
from meter_gateway.gateway.vee.service import VeeService
from meter_gateway.gateway.vee.store import RECORD, IntervalStore
from meter_gateway.storage.lineprotocol import ReadingEncoder

NS = 1_000_000_000
DAY = date(2026, 11, 2)
START = int(datetime(2026, 11, 2, tzinfo=UTC).timestamp())
HOSTILE = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HOSTILE
@given(
    meters=st.binary(max_size=300),
    day=st.binary(max_size=40 * RECORD.size),
    state=st.binary(max_size=300),
)
def test_any_bytes_in_the_store_load_and_read(
    tmp_path_factory: pytest.TempPathFactory, meters: bytes, day: bytes, state: bytes
) -> None:
    folder = tmp_path_factory.mktemp("store")
    (folder / "meters.jsonl").write_bytes(meters)
    (folder / f"{DAY.isoformat()}.bin").write_bytes(day)
    (folder / "state.json").write_bytes(state)
    vee = VeeService(
        Config.model_validate({"daily": {"settle_s": 0}}),
        {},
        folder=folder,
        add_line=lambda line: 0,
        prefix=ReadingEncoder("s").prefix,
        precision_divisor=NS,
    )
    store = vee.store
    assert len(store.meter_ids) == len(store.sources)
    # Meter numbers stay line numbers: a new meter comes after the whole lines.
    n = store.meter("m-new", "mqtt")
    assert store.meter_ids[n] == "m-new"
    for samples in store.read([DAY]).values():
        times = [s.ts_ns for s in samples]
        assert times == sorted(set(times))
    # And it goes on working: a computation over whatever was there ends.
    store.append(n, START * NS, 1.0, None)
    vee.compute((START + 3 * 86_400) * NS)
    again = IntervalStore(folder, ZoneInfo("UTC"))
    assert again.meter_ids[: len(store.meter_ids)] == store.meter_ids


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nobody answers there


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    (folder / "topology.csv").write_text("meter_id,customer_id\nm-1,c-1\n")
    config = folder / "gateway.yaml"
    config.write_text(
        "gateway: {timezone: Europe/Berlin}\n"
        f"storage: {{api: v1, url: 'http://127.0.0.1:{_dead_port()}', timeout_s: 2}}\n"
        f"topology: {{file: '{folder / 'topology.csv'}'}}\n"
    )
    return config


@pytest.mark.slow
@HOSTILE
@given(
    command=st.sampled_from(["billing", "customers"]),
    start=st.one_of(st.text(max_size=40), st.dates().map(str), st.datetimes().map(str)),
    end=st.one_of(st.text(max_size=40), st.dates().map(str), st.datetimes().map(str)),
)
def test_any_period_gives_a_reason_not_a_traceback(
    config_file: Path, capsys: pytest.CaptureFixture[str], command: str, start: str, end: str
) -> None:
    """A period the command cannot take exits 2 saying why; one it can take meets a
    database that does not answer (a dead peer) and exits 1 naming it."""
    try:
        rc = main(["report", command, "-c", str(config_file), "--from", start, "--to", end])
    except SystemExit as exc:  # argparse: an argument it refuses
        rc = exc.code
    err = capsys.readouterr().err
    assert rc in (1, 2), err
    assert "Traceback" not in err
    if rc == 2:
        assert "--from" in err or "--to" in err or "not an RFC 3339" in err, err
    else:
        assert "cannot reach the database" in err, err

"""The topology CSV: a bad file or row is an error naming the file, the line and the fix."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter_gateway.config.topology import TopologyError, load_topology


def test_a_good_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "\ufeffmeter_id,transformer_id,feeder_id,customer_id,phases,nominal_voltage_v,prosumer\n"
        "m-1,tx-1,f-1,c-1,3,230,yes\nm-2,,,,,,\n"
    )
    places = load_topology(path)
    assert places["m-1"].transformer_id == "tx-1"
    assert places["m-1"].phases == 3
    assert places["m-1"].prosumer is True
    assert places["m-2"].feeder_id is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("meter_id,feeder_id\nm\xe9,f\n".encode("latin-1"), "not UTF-8 text (byte 0xe9)"),
        (b"meter_id,nominal_voltage_v\nm-1,inf\n", "line 2: nominal_voltage_v inf is not a"),
        (b"meter_id,phases\nm-1,2\n", "line 2: phases must be 1 or 3"),
        (b"meter_id,phases\n,3\n", "line 2: meter_id is empty"),
        (b"meter,phases\nm-1,3\n", "line 1: the header must name the columns"),
        (b"meter_id,colour\nm-1,red\n", "line 1: unknown column(s) colour"),
        (b'meter_id,feeder_id\nm-1,"' + b"x" * 200_000 + b'"\n', "not a readable CSV file"),
    ],
)
def test_bad_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


FULL_HEADER = b"meter_id,transformer_id,feeder_id,phases,nominal_voltage_v,prosumer\n"


@settings(max_examples=300, deadline=None)
@given(
    header=st.sampled_from(
        [
            b"meter_id,transformer_id,feeder_id,phases,nominal_voltage_v,prosumer\n",
            b"meter_id\n",
            b"",
        ]
    ),
    body=st.binary(max_size=300)
    | st.lists(
        st.lists(st.text(max_size=12), max_size=7).map(lambda cells: ",".join(cells)),
        max_size=6,
    ).map(lambda rows: "\n".join(rows).encode("utf-8", "surrogatepass")),
)
def test_any_file_is_places_or_an_error_naming_the_file(tmp_path_factory, header, body):
    path = tmp_path_factory.mktemp("topo") / "t.csv"
    path.write_bytes(header + body)
    problem = ""
    try:
        places = load_topology(path)
    except TopologyError as exc:
        problem = str(exc)
        places = {}
    if problem:
        assert problem.startswith(str(path))
        assert "Error(" not in problem
    assert all(isinstance(k, str) and k for k in places)


@pytest.mark.parametrize(
    ("cell", "what"),
    [
        ("tx-1\\", "a backslash at the end"),
        ('"tx\n1"', "a newline"),
        ('"tx\r1"', "a carriage return"),
        ('"tx\\,1"', "a backslash before ','"),
        ('"tx\\ 1"', "a backslash before a space"),
    ],
)
def test_ids_the_database_cannot_store_are_refused(tmp_path, cell, what):
    path = tmp_path / "t.csv"
    path.write_bytes(b"meter_id,transformer_id\nm-1,tx-2\nm-2," + cell.encode() + b"\n")
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    message = str(info.value)
    line = 3 + cell.count("\n") + cell.count("\r")  # csv counts to the row's last line
    assert f"line {line}: transformer_id {cell.strip(chr(34))!r} contains {what}" in message
    assert "InfluxDB cannot store in a tag" in message


def test_storable_odd_ids_are_kept(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('meter_id,feeder_id,customer_id\nm-1,"f 1,a=b",c\\d\n', encoding="utf-8")
    place = load_topology(path)["m-1"]
    assert (place.feeder_id, place.customer_id) == ("f 1,a=b", "c\\d")


def test_check_config_refuses_an_id_the_database_cannot_store(tmp_path, capsys):
    from meter_gateway.gateway.cli import main

    topo = tmp_path / "topology.csv"
    topo.write_bytes(b'meter_id,feeder_id\nm-1,f-1\nm-2,"f,meter_id=m-v2\\"\n')
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"gateway: {{data_dir: {tmp_path / 'var'}}}\ntopology: {{file: {topo}}}\n")
    assert main(["check-config", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "topology.file" in err
    assert "line 3: feeder_id 'f,meter_id=m-v2\\\\' contains a backslash at the end" in err


@pytest.mark.parametrize("meter_id", ["<img src=x>", "m 1", "m\u202e1", "E" * 65])
def test_meter_ids_outside_the_id_rule_are_refused(tmp_path, meter_id):
    # Such a row could never match a reading: every format refuses the id.
    path = tmp_path / "t.csv"
    path.write_text(f'meter_id,feeder_id\nm-1,f\n"{meter_id}",f\n', encoding="utf-8")
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert "line 3: meter_id:" in str(info.value)
    assert "(the id rule)" in str(info.value)

"""Mutation test: 400 damaged copies of config/example.yaml through `check-config`.

Each must be answered with exit 0 or 2 and never a traceback; and every copy that
is accepted must also build the gateway the way `run` does, up to where it would
connect. A few files go through the installed `meter-gateway` as a subprocess.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import math
import os
import random
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from meter_gateway.config.loader import load_config
from meter_gateway.config.schema import Config
from meter_gateway.gateway.cli import _run_loop, main

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.yaml"
METER_GATEWAY = Path(sys.executable).with_name("meter-gateway")
SEED = 20_260_611
COUNT = 400

# A value of another type, out of range, not finite, badly tagged, too big, not YAML.
VALUES = [
    "",
    "~",
    "null",
    "-1",
    "0",
    "1",
    "-0.5",
    "0.0001",
    "1e-300",
    "1.0e-300",
    ".inf",
    "-.inf",
    ".nan",
    "1.0e+400",
    "1e308",
    "1.0e+308",
    str(10**400),
    "9" * 5000,
    "true",
    "yes",
    "[]",
    "[1, 2]",
    "{}",
    "{a: 1}",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "'x'",
    '"a\\0b"',
    '"\\ud800"',
    "!!float 'x'",
    "!!int '0x'",
    "!!int ''",
    "!!bool x",
    "!!binary aGk=",
    "!!timestamp x",
    "!!timestamp 2020-13-45",
    "!!python/object:os.system {}",
    "!!python/name:os.system",
    "!!set {a}",
    "!!omap [a]",
    "!foo x",
    "&x 1",
    "*x",
    "*undefined",
    "2024-01-01",
    "'" + "a" * 70_000 + "'",
    "x" * 300,
    "127.0.0.1:0",
    "[::1]:0",
    "localhost:0",
    "999.1.1.1:80",
    "a b:80",
    "http://[::1",
    "http://x:99999",
    "http://127.0.0.1:1/?q=1",
    "ftp://x",
    "/dev/zero",
    "/etc/passwd",
    "/nonexistent/x",
    "/",
    "./var",
    "v1",
    "ns",
    "1:2",
    "@",
    "`",
    "|",
    ">",
    "%",
    "? x",
    "- x",
    "{",
    "[",
    "'unterminated",
    "\t1",
    "=",
    "<<",
]
KEYS = ["port", "host", "password_file", "token_file", "file", "data_dir", "<<", "1", "null"]
BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else '0'] * 9)}]\n" for i in range(10))
_VALUE_LINE = re.compile(r"^(\s*(?:- )?[A-Za-z_]+:[ \t]+)(.*?)([ \t]+#.*)?$")


def _value_lines(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if (m := _VALUE_LINE.match(line)) and m[2]]


# -- mutations: each takes the text as lines (or bytes) and the random generator ----------


def delete_line(lines: list[str], rng: random.Random) -> str:
    i = rng.randrange(len(lines))
    del lines[i]
    return f"delete line {i + 1}"


def duplicate_line(lines: list[str], rng: random.Random) -> str:
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    return f"duplicate line {i + 1}"


def swap_lines(lines: list[str], rng: random.Random) -> str:
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return f"swap lines {i + 1} and {j + 1}"


def reindent(lines: list[str], rng: random.Random) -> str:
    i = rng.randrange(len(lines))
    how = rng.choice(["  ", " ", "\t", "-1", "-2", "    "])
    lines[i] = lines[i][int(how[1:]) :] if how.startswith("-") else how + lines[i]
    return f"indent line {i + 1} by {how!r}"


def replace_value(lines: list[str], rng: random.Random) -> str:
    i = rng.choice(_value_lines(lines))
    m = _VALUE_LINE.match(lines[i])
    assert m is not None
    value = rng.choice(VALUES)
    lines[i] = f"{m[1]}{value}{m[3] or ''}"
    return f"line {i + 1}: value {m[2][:30]!r} -> {value[:30]!r}"


def rename_key(lines: list[str], rng: random.Random) -> str:
    i = rng.choice(_value_lines(lines))
    key = rng.choice(KEYS)
    lines[i] = re.sub(r"[A-Za-z_]+:", f"{key}:", lines[i], count=1)
    return f"line {i + 1}: key -> {key!r}"


def insert_line(lines: list[str], rng: random.Random) -> str:
    i = rng.randrange(len(lines) + 1)
    text = rng.choice(
        [
            f"{rng.choice(KEYS)}: {rng.choice(VALUES)}",
            f"  {rng.choice(KEYS)}: {rng.choice(VALUES)}",
            rng.choice(VALUES),
            "---",
            "%YAML 1.1",
            "...",
            "x: &x {a: *x}",
            BOMB,
            "deep: " + "[" * 200 + "]" * 200,
        ]
    )
    lines.insert(i, text)
    return f"insert at line {i + 1}: {text[:40]!r}"


TEXT_MUTATIONS: list[Callable[[list[str], random.Random], str]] = [
    delete_line,
    duplicate_line,
    swap_lines,
    reindent,
    replace_value,
    replace_value,
    replace_value,
    rename_key,
    insert_line,
]


def truncate(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    n = rng.randrange(len(blob))
    return blob[:n], f"truncate at byte {n}"


def insert_bytes(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    n = rng.randrange(len(blob))
    junk = rng.choice(
        [b"\x00", b"\xff", b"\xc3", b"\x1b[0m", rng.randbytes(8), b"\r", b"\xef\xbb\xbf"]
    )
    return blob[:n] + junk + blob[n:], f"insert {junk!r} at byte {n}"


def flip_byte(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    n = rng.randrange(len(blob))
    return blob[:n] + bytes([blob[n] ^ (1 << rng.randrange(8))]) + blob[n + 1 :], f"flip byte {n}"


def latin1(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    text = blob.decode("utf-8", "replace").replace("gw-01", "gw-\xe9", 1)
    return text.encode("latin-1", "replace") + "# caf\xe9\n".encode("latin-1"), "as Latin-1"


def utf16(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    codec = rng.choice(["utf-16", "utf-16-le", "utf-16-be"])
    return blob.decode("utf-8", "replace").encode(codec), f"as {codec}"


def utf8_bom(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    return b"\xef\xbb\xbf" + blob, "with a UTF-8 byte-order mark"


BYTE_MUTATIONS = [truncate, insert_bytes, flip_byte, latin1, utf16, utf8_bom]


def mutations(count: int = COUNT, seed: int = SEED) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    original = EXAMPLE.read_text(encoding="utf-8").splitlines()
    out = []
    for _ in range(count):
        lines = list(original)
        what = [rng.choice(TEXT_MUTATIONS)(lines, rng) for _ in range(rng.choice([1, 1, 2, 3]))]
        blob = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
        if rng.random() < 0.2:
            blob, how = rng.choice(BYTE_MUTATIONS)(blob, rng)
            what.append(how)
        out.append(("; ".join(what), blob))
    return out


# -- what `run` does with an accepted configuration, short of connecting ------------------


async def _build_like_run(cfg: Config) -> None:
    from meter_gateway.gateway.app import Gateway
    from meter_gateway.gateway.status import render_page, status_snapshot

    gw = Gateway(cfg, shutdown_timeout_s=1)
    # start(): the data directory, then the status server's address.
    data_dir = cfg.gateway.data_dir
    if not data_dir.is_absolute():  # the test runs in a temporary directory
        data_dir.mkdir(parents=True, exist_ok=True)
    host, _, port = cfg.http.listen.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass  # a name: resolving it is connecting somewhere
    else:
        socket.getaddrinfo(host, int(port), flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST)
    # What the running tasks compute from the configuration straight away (private
    # helpers: looked up, so that a rename there does not break this test).
    if make_client := getattr(gw.mqtt, "_make_client", None):
        make_client()  # CONNECT properties, TLS parameters: no connection yet
    if backoff := getattr(gw.writer, "_backoff", None):
        backoff(1, None)
        backoff(99, 1e9)
    render_page(status_snapshot(gw))
    gw.ready()
    int(cfg.storage.timeout_s * 1000)  # the v2 client's timeout, in ms
    # Every wait the tasks ask the event loop for (the loop `run` uses: uvloop).
    st, mb = cfg.storage, cfg.modbus
    delays = [cfg.mqtt.reconnect_min_s * 1.2, cfg.mqtt.reconnect_max_s * 1.2]
    delays += [st.flush_interval_s, st.max_retry_delay_s, st.timeout_s]
    delays += [mb.connect_timeout_s, mb.reconnect_delay_s, mb.reconnect_max_delay_s]
    for dev in mb.devices:
        delays += [dev.timeout_s, dev.breaker.backoff_s * 1.2, dev.breaker.max_backoff_s * 1.2]
        slot = math.floor(time.time() / dev.interval_s) + 1  # the poller's schedule
        delays.append(slot * dev.interval_s - time.time())
    loop = asyncio.get_running_loop()
    for delay in delays:
        loop.call_later(delay, lambda: None).cancel()
    await gw.client.close()


def build_like_run(cfg: Config) -> None:
    _run_loop(_build_like_run(cfg))


@pytest.mark.slow
def test_400_mutated_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths in the copies (./var) land here
    for var in [v for v in os.environ if v.startswith("METER_GATEWAY__")]:
        monkeypatch.delenv(var)
    failures: list[str] = []
    exits = {0: 0, 2: 0}
    for n, (what, blob) in enumerate(mutations()):
        path = tmp_path / f"m{n:03d}.yaml"
        path.write_bytes(blob)
        try:
            code = main(["check-config", "-c", str(path)])
        except SystemExit as exc:  # argparse, never expected here
            code = exc.code  # type: ignore[assignment]
        except BaseException as exc:
            failures.append(f"#{n} ({what}): check-config raised {type(exc).__name__}: {exc}")
            continue
        out = capsys.readouterr()
        if code not in (0, 2):
            failures.append(f"#{n} ({what}): exit {code}")
        if "Traceback" in out.err + out.out:
            failures.append(f"#{n} ({what}): a traceback:\n{out.err}")
        if code == 2 and not all(
            line.startswith(f"  {path}") or line.startswith(f"{path}:")
            for line in out.err.splitlines()
        ):
            failures.append(f"#{n} ({what}): an error line that names no source:\n{out.err}")
        exits[code] = exits.get(code, 0) + 1
        if code != 0:
            continue
        try:
            build_like_run(load_config(path, env={}))
        except Exception as exc:
            failures.append(f"#{n} ({what}): accepted, but run would fail: {exc!r}")
    assert not failures, "\n".join(failures)
    # Not vacuous: both answers are common.
    assert exits[0] >= 40, exits
    assert exits[2] >= 200, exits


EXTREMES = [
    float("inf"),
    float("-inf"),
    float("nan"),
    1e308,
    -1e308,
    1e-300,
    -1,
    0,
    2**63,
    10**400,
    True,
    "1e400",
    "x" * 70_000,
]


def _every_key(defaults: dict[str, Any], path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for key, value in defaults.items():
        if isinstance(value, dict):
            out.extend(_every_key(value, (*path, key)))
        else:
            out.append((*path, key))
    return out


def test_every_key_with_extreme_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each key of the schema (and of a Modbus device) set to each extreme: refused, or
    usable by `run`. Numbers that pass `gt=0` and then overflow a sleep, a nanosecond
    count or a protocol field are what this is for."""
    monkeypatch.chdir(tmp_path)
    base = Config().model_dump(mode="json")
    device = {"port": 502, "unit": 1, "interval_s": 10, "timeout_s": 1, "retries": 2}
    device |= {"max_registers_per_request": 40, "max_gap": 10}
    breaker = {"failures": 3, "backoff_s": 10, "max_backoff_s": 300}
    base["modbus"]["devices"] = [
        {"meter_id": "m1", "model": "sdm630", "host": "127.0.0.1", **device, "breaker": breaker},
        {"meter_id": "m2", "model": "sdm120", "transport": "rtu", "serial": {"port": "/dev/x"}},
    ]
    # Paths are the loader's to check (it stats them); the mutations cover them.
    keys = [
        k
        for k in _every_key({k: v for k, v in base.items() if k != "modbus"})
        if not k[-1].endswith(("file", "data_dir"))
    ]
    keys += [("modbus", k) for k in base["modbus"] if k != "devices"]
    keys += [("modbus", "devices", 0, k) for k in device]
    keys += [("modbus", "devices", 0, "breaker", k) for k in breaker]
    keys += [("modbus", "devices", 1, "serial", "baudrate")]
    failures = []
    accepted = 0
    for key in keys:
        for value in EXTREMES:
            data = copy.deepcopy(base)
            node: Any = data
            for part in key[:-1]:
                node = node[part]
            node[key[-1]] = value
            try:
                cfg = Config.model_validate(data)
            except ValidationError:
                continue
            accepted += 1
            try:
                build_like_run(cfg)
            except Exception as exc:
                failures.append(f"{'.'.join(map(str, key))} = {value!r:.40}: {exc!r}")
    assert not failures, "\n".join(failures)
    assert accepted > 50  # and the rest refused with an error naming the key


def test_mutations_are_deterministic() -> None:
    assert mutations(20) == mutations(20)


# -- the installed command, on a few nasty files -------------------------------------------

NASTY = {
    "utf16.yaml": EXAMPLE.read_text().encode("utf-16"),
    "latin1.yaml": "gateway:\n  id: gw-\xe9\n".encode("latin-1"),
    "float-x.yaml": b"validation:\n  max_age_s: !!float 'x'\n",
    "inf.yaml": b"validation:\n  max_age_s: .inf\n",
    "laughs.yaml": BOMB.encode(),
}


installed = pytest.mark.skipif(not METER_GATEWAY.exists(), reason="meter-gateway is not installed")


@pytest.mark.slow
@installed
def test_installed_check_config_refuses_nasty_files(tmp_path: Path) -> None:
    procs = {}
    for name, blob in NASTY.items():
        (tmp_path / name).write_bytes(blob)
        procs[name] = subprocess.Popen(
            [str(METER_GATEWAY), "check-config", "-c", str(tmp_path / name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (name, out, err)
        assert "Traceback" not in err, (name, err)
        assert f"{tmp_path / name}: " in err, (name, err)


@pytest.mark.parametrize("name", sorted(NASTY))
def test_run_refuses_nasty_files_in_process(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(NASTY[name])
    assert main(["run", "-c", str(tmp_path / name)]) == 2


def _read_until(proc: subprocess.Popen[str], marker: str, timeout_s: float) -> str:
    """What the process printed until `marker`, EOF or the timeout, without blocking."""
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while marker not in seen and time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
    return seen


@pytest.mark.slow
@installed
def test_installed_run_starts_with_accepted_configs(tmp_path: Path) -> None:
    """The example and an accepted mutation: `run` starts, then stops on SIGTERM (exit 0).

    Nothing needs to listen on the broker or database addresses: the gateway starts
    and retries them; the status page takes a free port."""
    accepted = []
    for n, (_, blob) in enumerate(mutations()):
        path = tmp_path / f"m{n}.yaml"
        path.write_bytes(blob)
        try:
            load_config(path, env={})
        except Exception:
            continue
        if blob != EXAMPLE.read_bytes():
            accepted.append(path)
            break
    env = {
        "METER_GATEWAY__HTTP__LISTEN": "127.0.0.1:0",
        "METER_GATEWAY__GATEWAY__DATA_DIR": str(tmp_path / "var"),
        "PATH": "/usr/bin:/bin",
    }
    procs = [
        subprocess.Popen(
            [str(METER_GATEWAY), "run", "-c", str(p), "--shutdown-timeout", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        for p in [EXAMPLE, *accepted]
    ]
    try:
        for proc in procs:
            seen = _read_until(proc, " starting: ", timeout_s=30)
            assert " starting: " in seen, seen
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            rest, _ = proc.communicate(timeout=30)
            assert proc.returncode == 0, rest
            assert "Traceback" not in rest, rest
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

"""The checks `run` would otherwise only meet at start-up: the data directory can be
created and written, the topology file reads, the TLS files load as the MQTT client
will load them. Made when the configuration is loaded, so that what `check-config`
accepts, `run` starts with."""

from __future__ import annotations

import contextlib
import csv
import os
import ssl
import stat
from pathlib import Path
from typing import Any

from meter_gateway.config.errors import KeyPath
from meter_gateway.config.schema import GatewayConfig, MqttConfig, TopologyConfig, shown
from meter_gateway.config.topology import TopologyError, load_topology

__all__ = ["section", "startup_problems"]


def _errno_text(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _data_dir_problem(path: Path) -> str | None:
    """Why `run` could not create or write `path`, or None."""
    try:
        target = path if path.is_absolute() else Path.cwd() / path
    except OSError as exc:
        return f"cannot resolve {shown(path)}: {_errno_text(exc)}"
    probe = target
    while True:
        try:
            st = os.stat(probe)
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                return f"cannot create {shown(path)}: no existing parent directory"
            probe = probe.parent
            continue
        except (OSError, ValueError) as exc:
            return f"cannot use {shown(path)}: {_errno_text(exc)} at {shown(probe)}"
        break
    if not stat.S_ISDIR(st.st_mode):
        if probe == target:
            return f"{shown(path)} exists and is not a directory"
        return f"cannot create {shown(path)}: {shown(probe)} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == target else f"cannot be created in {shown(probe)}"
        return f"{shown(path)} {what} by this user; fix the permissions or choose another data_dir"
    return None


def _topology_problem(path: Path) -> str | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        return f"cannot read {shown(path)}: {_errno_text(exc)}"
    if not stat.S_ISREG(st.st_mode):
        return f"{shown(path)} is not a regular file"
    try:
        load_topology(path)
    except TopologyError as exc:
        return str(exc)
    except UnicodeDecodeError as exc:
        return f"{shown(path)} is not UTF-8 text (byte offset {exc.start}); save it as UTF-8"
    except (OSError, ValueError, csv.Error) as exc:
        return f"{shown(path)}: cannot be read as topology CSV: {_errno_text(exc)}"
    return None


def _tls_problems(mqtt: MqttConfig) -> list[tuple[KeyPath, str]]:
    """Load the files the way the MQTT client will when it connects."""
    tls = mqtt.tls
    if not tls.enabled:
        return []
    out: list[tuple[KeyPath, str]] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.ca_file))
        except (ssl.SSLError, OSError, ValueError) as exc:
            out.append(
                (
                    ("mqtt", "tls", "ca_file"),
                    f"{shown(tls.ca_file)} is not a PEM CA certificate file: {_errno_text(exc)}",
                )
            )
    if tls.cert_file is not None and tls.key_file is not None:

        def no_passphrase() -> bytes:
            # Never the interactive prompt OpenSSL falls back to: a service has no terminal.
            raise ValueError("the key is encrypted; the gateway cannot be given a passphrase")

        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=no_passphrase)
        except (ssl.SSLError, OSError, ValueError) as exc:
            out.append(
                (
                    ("mqtt", "tls", "cert_file"),
                    f"{shown(tls.cert_file)} with key {shown(tls.key_file)} cannot be used as a "
                    f"client certificate: {_errno_text(exc)}",
                )
            )
    return out


def startup_problems(
    gateway: GatewayConfig | None, topology: TopologyConfig | None, mqtt: MqttConfig | None
) -> list[tuple[KeyPath, str]]:
    out: list[tuple[KeyPath, str]] = []
    if gateway is not None:
        problem = _data_dir_problem(gateway.data_dir)
        if problem:
            out.append((("gateway", "data_dir"), problem))
    if topology is not None and topology.file is not None:
        problem = _topology_problem(topology.file)
        if problem:
            out.append((("topology", "file"), problem))
    if mqtt is not None:
        out.extend(_tls_problems(mqtt))
    return out


def section(model: type[Any], data: dict[str, Any], key: str) -> Any:
    """A section validated on its own, for the start-up checks when another one is bad."""
    with contextlib.suppress(Exception):
        return model.model_validate(data.get(key) or {})
    return None

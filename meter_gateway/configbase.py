"""What every configuration section shares: the strict base model, host names,
secret files. Here, below every layer, so that the adapters (which may not import
each other) and the configuration layer use one definition and speak one language.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["MAX_TEXT", "Section", "file_problem", "host_problem", "read_secret", "shown"]

# RFC 1123 labels; `_` too, since Docker and Compose service names have it and resolve.
_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?$")
# MQTT's limit for a string; far above any real name, token or path, and it keeps a
# pasted megabyte out of error messages and logs.
MAX_TEXT = 65_535
# A secret file holds one password or token; more means the wrong file was named.
_SECRET_MAX_BYTES = 65_536


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, str_max_length=MAX_TEXT
    )


def host_problem(host: str) -> str | None:
    """Why `host` is neither an IP address nor a host name; None when it is one."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return None
    if len(host) > 253 or not _HOSTNAME.match(host):
        return (
            f"{host!r} is not an IP address or a host name "
            "(letters, digits, '-', '_', dot-separated labels of at most 63)"
        )
    return None


def shown(path: Path | str) -> str:
    """A path for a message: quoted, and cut short when it is absurdly long."""
    text = repr(str(path))
    return text if len(text) <= 120 else f"{text[:80]}...{text[-30:]}"


def file_problem(path: Path) -> str | None:
    """Why `path` is not a regular file that exists, or None."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"no such file {shown(path)}"
    except (OSError, ValueError) as exc:
        return f"cannot use {shown(path)}: {getattr(exc, 'strerror', None) or exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"{shown(path)} is not a regular file"
    return None


def read_secret(data: Any, key: str) -> Any:
    """Fill `key` from `<key>_file` (Docker/Kubernetes secrets), never both."""
    if not isinstance(data, dict) or data.get(f"{key}_file") is None:
        return data
    data = dict(data)
    raw = data.pop(f"{key}_file")
    if data.get(key) is not None:
        raise ValueError(f"set either `{key}` or `{key}_file`, not both")
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)  # a file named by digits, as YAML or the environment reads it
    if not isinstance(raw, str | os.PathLike):
        raise ValueError(f"`{key}_file` must be a file path (got {type(raw).__name__})")
    path = Path(raw)
    try:
        # Checked before opening: a FIFO would block, and /dev/zero would never end.
        if not stat.S_ISREG(path.stat().st_mode):
            raise ValueError(f"`{key}_file`: {shown(path)} is not a regular file")
        with path.open("rb") as f:
            blob = f.read(_SECRET_MAX_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"`{key}_file`: cannot read {shown(path)}: {exc.strerror}") from None
    if len(blob) > _SECRET_MAX_BYTES:
        raise ValueError(
            f"`{key}_file`: {shown(path)} is larger than {_SECRET_MAX_BYTES} bytes; "
            "a secret file holds only the secret"
        )
    try:
        data[key] = blob.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"`{key}_file`: {shown(path)} is not UTF-8 text (byte {blob[exc.start]:#04x} at offset "
            f"{exc.start}); write the secret as UTF-8"
        ) from None
    return data

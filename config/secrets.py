"""What may be shown of a secret: nothing of its value.

Every place that shows configuration to a person (check-config's errors and its OK
line, the start-up log, /status, the status page) passes values through here:

- `redact_url`: a URL with its credentials (`user:pass@`) and secret query values masked;
- `redact_text`: the same for every URL inside a free text (an error message);
- `describe`: what a secret is without what it holds (`text of 12 characters`);
- `is_secret_key`: which configuration keys hold secrets;
- `scrub` / `scrub_message`: a value, or a validator's message about it, as it may be
  shown.

URLs are redacted by the storage adapter's rule (`redacted_url`), through this module:
the one place the gateway and the configuration layer take it from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from meter_gateway.storage.influxdb.config import redacted_url

__all__ = [
    "MASK",
    "describe",
    "is_secret_key",
    "redact_text",
    "redact_url",
    "scrub",
    "scrub_message",
]

MASK = "***"

# Keys whose value is a secret wherever they appear (mqtt.password, storage.token,
# http.token, ...). `*_file` keys name a file: a path, not a secret.
_SECRET_NAMES = frozenset(
    {"password", "passwd", "token", "secret", "api_key", "apikey", "credentials", "auth"}
)
_SECRET_SUFFIXES = ("_password", "_token", "_secret", "_api_key", "_credentials")

# scheme://userinfo@ : the userinfo is everything up to the last '@' before the host
# part ends (a password may hold '@'; RFC 3986 says it must be escaped, people don't).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/?#\s]*)@")
_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s'\"<>]*")


def is_secret_key(key: str | int | None) -> bool:
    """True for a key whose value must never be shown (`password`, `token`, ...)."""
    if not isinstance(key, str):
        return False
    k = key.lower()
    return k in _SECRET_NAMES or k.endswith(_SECRET_SUFFIXES)


def redact_url(url: str) -> str:
    """`http://user:pass@host:8086/x?token=abc` -> `http://***@host:8086/x?token=***`.

    The storage adapter's rule (it owns the URLs it is given), taken from there so
    that every place shows a URL the same way. Works on any text that looks like a URL,
    valid or not (an error message may be about a URL that does not parse)."""
    return redacted_url(url)


def redact_text(text: str) -> str:
    """Every URL in `text` redacted (`redact_url`); the rest unchanged."""
    if "://" not in text:
        return text
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def describe(value: Any) -> str:
    """What a value is, without what it holds: for secrets in messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        n = len(value)
        return f"text of {n} character{'' if n == 1 else 's'}"
    if isinstance(value, dict):
        n = len(value)
        return f"a mapping of {n} key{'' if n == 1 else 's'}"
    if isinstance(value, list | tuple):
        n = len(value)
        return f"a list of {n} item{'' if n == 1 else 's'}"
    return f"a {type(value).__name__}"


def scrub(value: Any, path: Sequence[str | int] = (), _depth: int = 0) -> Any:
    """`value` as it may be shown: secrets replaced by `describe(...)`, URLs redacted.

    `path` is where `value` sits in the configuration (its last key decides)."""
    key = path[-1] if path else None
    if is_secret_key(key):
        return f"<{describe(value)}>"
    if isinstance(value, str):
        return redact_text(value)
    if _depth > 32:
        return "<...>"
    if isinstance(value, dict):
        return {k: scrub(v, (*path, k), _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, (*path, i), _depth + 1) for i, v in enumerate(value)]
    return value


def scrub_message(message: str, value: Any, path: Sequence[str | int]) -> str:
    """A validator's message about `value` at `path`, with the secret parts of `value`
    taken out wherever the message repeats them (a URL parser's error quotes the URL)."""
    key = path[-1] if path else None
    if isinstance(value, str) and value:
        if is_secret_key(key) and len(value) >= 3:
            message = message.replace(value, MASK)
        m = _USERINFO.search(value)
        if m:
            info = m.group(2)
            _, _, password = info.partition(":")
            for part in (info, password):
                if len(part) >= 3:
                    message = message.replace(part, MASK)
    return redact_text(message)

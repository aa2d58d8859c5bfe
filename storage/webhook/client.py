"""One HTTP endpoint that takes JSON documents by POST, over aiohttp.

`post()` either returns (a 2xx answer) or raises `WebhookError` with a reason a
person can act on. The error carries the retry decision, so the caller's loop stays
generic: `permanent` (a 4xx other than 408 and 429, or a redirect: sending the same
body again cannot change the answer) and `retry_after` (seconds, from the server's
`Retry-After`, in either of its forms).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

import aiohttp
from yarl import URL

__all__ = ["WebhookClient", "WebhookError"]

#: 4xx answers that mean "later" rather than "never".
RETRYABLE_4XX = frozenset({408, 429})


class WebhookError(Exception):
    """The endpoint did not take the document; `str()` says why, in words."""

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        permanent: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.permanent = permanent
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` in seconds: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class WebhookClient:
    """POSTs to `url`; one connection pool for the life of the client."""

    def __init__(
        self, url: str, timeout_s: float, headers: Mapping[str, str] | None = None
    ) -> None:
        self.url = url
        # For messages: a URL may hold a password, a log must not.
        self.target = str(URL(url).with_user(None).with_password(None))
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._session: aiohttp.ClientSession | None = None

    async def post(self, body: bytes) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        try:
            # No redirects: aiohttp would follow a 301/302 with a GET, and the body lost.
            async with self._session.post(self.url, data=body, allow_redirects=False) as resp:
                if 200 <= resp.status < 300:
                    return
                text = " ".join((await resp.text(errors="replace")).split())[:200]
                raise _status_error(self.target, resp, text)
        except TimeoutError:
            raise WebhookError(
                f"no answer from {self.target} within {self._timeout_s:g} s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise WebhookError(f"cannot reach {self.target}: {exc or type(exc).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _status_error(target: str, resp: aiohttp.ClientResponse, text: str) -> WebhookError:
    status = resp.status
    said = f": {text}" if text else ""
    if 300 <= status < 400:
        where = resp.headers.get("Location", "elsewhere")
        return WebhookError(
            f"{target} answered HTTP {status}, a redirect to {where}; set the webhook URL "
            "to the final address",
            status=status,
            permanent=True,
        )
    permanent = 400 <= status < 500 and status not in RETRYABLE_4XX
    return WebhookError(
        f"{target} answered HTTP {status} {resp.reason or ''}".rstrip() + said,
        status=status,
        permanent=permanent,
        retry_after=parse_retry_after(resp.headers.get("Retry-After")),
    )

"""Write errors carry the retry decision, so the batching loop stays generic.

WriteError
 +-- RetryableWriteError      connection refused/reset, timeout, 429, 5xx: wait and retry
 +-- PayloadTooLargeError     413: split the batch and retry the halves
 +-- BadPointsError           400/422: some lines are bad; bisect to find them
 +-- FatalWriteError          401/403/404: nothing will change until an operator
                              acts (token, database); the data is kept and the
                              batch retried with the same capped backoff
"""

from __future__ import annotations

__all__ = [
    "BadPointsError",
    "FatalWriteError",
    "PayloadTooLargeError",
    "RetryableWriteError",
    "WriteError",
    "error_for_status",
]


class WriteError(Exception):
    """A batch was not accepted by the database."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetryableWriteError(WriteError):
    """Try the same batch again later; `retry_after` (s) is the server's wish, if any."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class PayloadTooLargeError(WriteError):
    """The request body is over the server's limit (413)."""


class BadPointsError(WriteError):
    """The server refused some lines (400/422); the rest may be fine."""


class FatalWriteError(RetryableWriteError):
    """Authentication, authorisation or a missing database/bucket (401/403/404).

    Retried, because dropping data is never right, but it needs an operator.
    """


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; rare for InfluxDB, our own backoff applies


def error_for_status(status: int, body: str, retry_after: str | None) -> WriteError:
    """Map an HTTP answer (not 2xx) onto the error tree."""
    text = " ".join(body.split())[:300]
    message = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    if status == 413:
        return PayloadTooLargeError(message, status=status)
    if status in (400, 422):
        return BadPointsError(message, status=status)
    if status in (401, 403, 404):
        return FatalWriteError(message, status=status, retry_after=_retry_after(retry_after))
    return RetryableWriteError(message, status=status, retry_after=_retry_after(retry_after))

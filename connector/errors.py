"""What went wrong, grouped by what the caller should do about it.

::

    ConnectorError
    ├── RetryableError          try again later (connection errors, timeouts, 408/423/429/5xx)
    │   └── RetryableHTTPError  carries the status and the wait the server asked for
    ├── PermanentError          dead-letter at once, never retry (other 4xx, bad events)
    │   ├── MappingError        the event cannot become a request (message in the reference's words)
    │   └── PermanentHTTPError  carries the status and a bounded excerpt of the response
    ├── SkipEvent               nothing to do, by design (disabled action, filter, no customer)
    └── ConfigurationError      the deployment is wrong; surfaces at start-up
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Root of every error the connector raises on purpose."""


class RetryableError(ConnectorError):
    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Seconds the remote side asked us to wait (Retry-After / X-Rate-Limit-Retry), if any.
        self.retry_after = retry_after


class RetryableHTTPError(RetryableError):
    def __init__(
        self, status: int, message: str, *, retry_after: float | None = None, body: str = ""
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.body = body


class PermanentError(ConnectorError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MappingError(PermanentError):
    """The event cannot be mapped, e.g. ``The root value is missing the required field 'source_id'.``"""


class PermanentHTTPError(PermanentError):
    def __init__(self, status: int, message: str, *, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class SkipEvent(ConnectorError):
    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class ConfigurationError(ConnectorError):
    pass

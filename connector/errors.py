"""What the connector raises on purpose, grouped by what the caller should do about it.

The whole tree, each class with the module that raises it; nothing else derives from
:class:`ConnectorError`, and every class below is raised somewhere::

    ConnectorError                 root: an error the connector raises on purpose
    ├── ConfigError                the deployment is wrong: every problem listed at once, the
    │   │                          process stops with status 2 (connector.config, routing)
    │   └── UnknownRegion          a region no table knows (connector.regions)
    ├── MappingError               this event cannot become a request: dead letter
    │                              ``mapping_error``, never retried (the mappings, the envelope)
    ├── SkipEvent                  nothing to do, by design: acknowledged, counted by ``reason``
    │                              (the mappings)
    └── TransportFailure           no HTTP answer at all (refused, reset, timed out, a bad URL);
                                   ``retryable`` says which (workers.delivery.transport)

An HTTP *answer*, even a 500, is not an exception: the classification table
(:mod:`workers.delivery.classify`) turns it into a verdict.  Errors that never leave the module
that raises them (the web's ``ApiError`` answer, the trigger parser's ``TriggerError``, the
metadata schema's ``SchemaUnavailable``, ``connector map``'s ``MapInputError``, ``make run``'s
``RunError`` and ``RunFileError``) are declared there and caught there.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Root of every error the connector raises on purpose."""


class ConfigError(ConnectorError):
    """All configuration problems found, one per line (each once, in the order found)."""

    def __init__(self, problems: list[str] | str) -> None:
        listed = [problems] if isinstance(problems, str) else problems
        self.problems = list(dict.fromkeys(listed))
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))

    def report(self, process: str) -> str:
        """The short text a process prints before exiting: the list, no traceback."""
        count = len(self.problems)
        head = f"connector {process}: invalid configuration ({count} problem{'s' if count != 1 else ''}):"
        return "\n".join([head, *(f"  - {p}" for p in self.problems), "Fix these and start again."])


class UnknownRegion(ConfigError):
    """A region that no table of :mod:`connector.regions` knows (never a silent default)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class MappingError(ConnectorError):
    """The event cannot be mapped, e.g. ``The root value is missing the required field 'source_id'.``"""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SkipEvent(ConnectorError):
    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class TransportFailure(ConnectorError):
    """No HTTP answer: connection refused/reset, DNS, timeout, broken body, bad URL."""

    def __init__(self, message: str, *, retryable: bool, latency: float = 0.0) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.latency = latency

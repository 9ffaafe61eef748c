"""Logging: one JSON object per line (or a readable line on a terminal), secrets redacted.

Fields passed with ``extra={...}`` become JSON keys.  A last-line filter masks anything that
looks like a credential (Basic/Bearer tokens, ``X-App-Token: ...``, ``secret_key=...``) in case a
library logs a header or a URL; secrets are wrapped in :class:`connector.secrets.Secret`
everywhere else, so this is a second line of defence, not the first.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

from connector.config import LogOptions, log_options

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}

_PATTERNS = [
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?:basic|bearer)\s+)[A-Za-z0-9+/=._-]+"),
    re.compile(
        r"(?i)((?:x-app-token|secret-key|secret_key|write_key|writekey|webhook_secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"
    ),
    re.compile(r"(redis(?:s)?://[^:/@\s]*:)[^@\s]+@"),
]


# Every pattern above needs one of these words: lines without any (nearly all of them, e.g. the
# per-event outcome lines) skip the regexes, which were ~10 % of a busy worker's CPU.
_TRIGGERS = ("authorization", "token", "secret", "write_key", "writekey", "redis")


def redact(text: str) -> str:
    lowered = text.lower()
    if not any(word in lowered for word in _TRIGGERS):
        return text
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "****" + ("@" if m.group(0).endswith("@") else ""), text)
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, process_type: str) -> None:
        super().__init__()
        self.process_type = process_type

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process_type,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(data, default=str).decode())


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_") and v is not None  # "x=None" says nothing
        )
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line += f"  [{extras}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


# Celery's two lines per task ("Task ...[id] received", "Task ...[id] succeeded in 0.1s: None"),
# by their format strings (celery.app.trace.LOG_RECEIVED and LOG_SUCCESS).  At INFO they tripled a
# busy worker's log around the one line that says something (the connector's own outcome line):
# they are DEBUG lines here.  Celery's failure, retry and rejection lines are not these and stay.
_CELERY_TASK_CHATTER = {
    ("celery.worker.strategy", "Task %(name)s[%(id)s] received"),
    ("celery.app.trace", "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s"),
}


class CeleryChatterToDebug(logging.Filter):
    """Demote Celery's per-task received/succeeded lines to DEBUG, then let them through only
    when the configured level shows DEBUG.  (Celery decides once, from its loggers' level,
    whether to log them at INFO; lowering the record here leaves its other INFO lines alone.)"""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and (record.name, record.msg) in _CELERY_TASK_CHATTER:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self.level <= logging.DEBUG
        return True


def configure_logging(process_type: str, options: LogOptions | None = None) -> None:
    """JSON lines unless stderr is a terminal (or ``LOG_FORMAT=human``); ``options`` default to
    the environment's (:func:`connector.config.log_options`): logging starts before the settings."""
    options = options or log_options()
    fmt = options.format or ("human" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(HumanFormatter() if fmt == "human" else JsonFormatter(process_type))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(options.level.upper())
    handler.addFilter(CeleryChatterToDebug(root.level))
    # Libraries that log request URLs or headers at DEBUG stay quiet unless asked for.
    for noisy in ("urllib3", "requests", "kombu", "amqp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

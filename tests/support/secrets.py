"""Every secret the test suite hands to a process, and a scan of every log the suite wrote.

SPEC 1/7: secrets never appear in logs.  Rather than trusting each test to look, the suite
remembers the credentials it used and, at the end of the session (``tests/conftest.py``),
reads every ``*.log`` file under pytest's base temp directory and under the directories
registered here (fakes started without a ``log_dir``), and fails the run if one holds a secret.

Secrets are registered automatically by the fakes (their keys) and by
:class:`tests.support.processes.Stack` (the connection file and ``*_SECRET*``/``*_KEY*``
variables of each process's environment); tests can add more with :func:`register`.
Values shorter than ``MIN_LENGTH`` are ignored: a secret like ``"s"`` would match everything.
"""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

MIN_LENGTH = 8

_lock = threading.Lock()
_secrets: set[str] = set()
_dirs: set[Path] = set()

# Keys of connections.toml (and the env shorthand) that hold credentials.
_SECRET_KEYS = {"secret_key", "write_key", "write_keys", "webhook_secret", "segment_webhook_secret"}
_SECRET_ENV = (
    "VOUCHERIFY_SECRET_KEY",
    "VOUCHERIFY_WEBHOOK_SECRET",
    "SEGMENT_WRITE_KEY",
    "SEGMENT_WEBHOOK_SECRET",
    "INGEST_WRITE_KEYS",
    "FAKE_VOUCHERIFY_SECRET_KEY",
    "FAKE_SEGMENT_WRITE_KEYS",
)


def register(*values: str | None) -> None:
    with _lock:
        for value in values:
            for part in (value or "").split(","):
                part = part.strip()
                if len(part) >= MIN_LENGTH and "${" not in part:
                    _secrets.add(part)


def watch_dir(path: Path | str) -> None:
    """A directory outside pytest's temp dir whose ``*.log`` files must be scanned too."""
    with _lock:
        _dirs.add(Path(path))


def _walk(table: Any) -> Iterator[str]:
    if isinstance(table, Mapping):
        for key, value in table.items():
            if key in _SECRET_KEYS:
                if isinstance(value, str):
                    yield value
                elif isinstance(value, list):
                    yield from (v for v in value if isinstance(v, str))
            else:
                yield from _walk(value)
    elif isinstance(table, list):
        for item in table:
            yield from _walk(item)


def register_env(env: Mapping[str, str]) -> None:
    """Credentials a process gets: its connection file's and the shorthand variables."""
    register(*(env.get(name) for name in _SECRET_ENV))
    path = env.get("CONNECTIONS_FILE")
    if path:
        try:
            with open(path, "rb") as fh:
                document = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError):
            return
        # ${VAR} references resolve from the environment; literal values are registered as is.
        values = list(_walk(document))
        register(*values)
        for value in values:
            if value.startswith("${") and value.endswith("}"):
                register(env.get(value[2:-1]))


def secrets() -> set[str]:
    with _lock:
        return set(_secrets)


def log_files(roots: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    with _lock:
        dirs = set(_dirs)
    for root in [*roots, *dirs]:
        if root.is_dir():
            found.extend(p for p in root.rglob("*.log") if p.is_file())
    return sorted(set(found))


def scan(roots: Iterable[Path]) -> list[tuple[Path, int, str]]:
    """``(file, line number, masked secret)`` for every secret found in a log file."""
    values = sorted(secrets(), key=len, reverse=True)
    leaks: list[tuple[Path, int, str]] = []
    if not values:
        return leaks
    for path in log_files(roots):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if not any(v in text for v in values):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for value in values:
                if value in line:
                    leaks.append((path, number, value[:3] + "…"))
                    break
    return leaks

"""Every secret the test suite hands to a process, and a scan of every log the suite wrote.

SPEC 1/7: secrets never appear in logs.  Rather than trusting each test to look, the suite
remembers the credentials it used and, at the end of the session (``tests/conftest.py``),
reads every ``*.log`` file under the directories registered here (pytest's base temp directory,
registered through the public ``tmp_path_factory`` fixture, and the fakes' log directories), and
fails the run if one holds a secret.

What counts as a secret: every credential of a connection (``app_id`` included: the connector
treats it as one), the fakes' keys, and the shorthand variables.  Each is looked for as it is
and in the encodings it travels in: ``base64(value)`` (the ``secret-key`` and ``authorization``
headers of the segmentio mode) and ``base64(value + ":")`` (HTTP Basic with a write key).

A credential shorter than ``MIN_LENGTH`` cannot be scanned for (``"s"`` would match every
line).  It is not skipped silently: the session fails, naming it (masked), so that the test that
used it gets a longer, distinctive value.  Nor can the scan silently scan nothing: when a process
was started and no log file was found, the session fails too.
"""

from __future__ import annotations

import base64
import threading
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

MIN_LENGTH = 8

_lock = threading.Lock()
_secrets: set[str] = set()
_too_short: set[str] = set()
_dirs: set[Path] = set()
_processes = 0

# Keys of connections.toml (and the env shorthand) that hold credentials.
_SECRET_KEYS = {
    "app_id",
    "secret_key",
    "write_key",
    "write_keys",
    "webhook_secret",
    "segment_webhook_secret",
}
_SECRET_ENV = (
    "REDIS_SENTINEL_PASSWORD",
    "VOUCHERIFY_APP_ID",
    "VOUCHERIFY_SECRET_KEY",
    "VOUCHERIFY_WEBHOOK_SECRET",
    "SEGMENT_WRITE_KEY",
    "SEGMENT_WEBHOOK_SECRET",
    "INGEST_WRITE_KEYS",
    "FAKE_VOUCHERIFY_APP_ID",
    "FAKE_VOUCHERIFY_SECRET_KEY",
    "FAKE_SEGMENT_WRITE_KEYS",
    "STATUS_TOKEN",
    "METRICS_TOKEN",
)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def forms(value: str) -> set[str]:
    """The strings a log line would contain if ``value`` leaked, as is or encoded."""
    return {value, _b64(value), _b64(value + ":")}


def register(*values: str | None) -> None:
    with _lock:
        for value in values:
            for part in (value or "").split(","):
                part = part.strip()
                if not part or "${" in part:
                    continue
                if len(part) < MIN_LENGTH:
                    _too_short.add(part)
                else:
                    _secrets.update(forms(part))


def watch_dir(path: Path | str) -> None:
    """A directory whose ``*.log`` files (recursively) the end-of-session scan reads."""
    with _lock:
        _dirs.add(Path(path))


def process_started() -> None:
    """A process got credentials: the scan must then find logs to read."""
    global _processes
    with _lock:
        _processes += 1


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
    process_started()
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


def log_files(roots: Iterable[Path] = ()) -> list[Path]:
    found: list[Path] = []
    with _lock:
        dirs = set(_dirs)
    for root in [*roots, *dirs]:
        if root.is_dir():
            found.extend(p for p in root.rglob("*.log") if p.is_file())
    return sorted(set(found))


def _mask(value: str) -> str:
    return value[:3] + "…"


def problems(roots: Iterable[Path] = ()) -> list[str]:
    """Everything that makes the session fail: leaks, unscannable credentials, nothing scanned."""
    out: list[str] = []
    with _lock:
        short, processes = sorted(_too_short), _processes
    if short:
        out.append(
            f"credentials shorter than {MIN_LENGTH} characters were handed to processes and cannot be"
            f" scanned for (give the tests longer, distinctive values): {[_mask(s) for s in short]}"
        )
    files = log_files(roots)
    if processes and not files:
        out.append(f"{processes} processes were started but no log file was found to scan")
    out += [f"{path}:{number}: contains a secret ({masked})" for path, number, masked in scan(files)[:50]]
    return out


def scan(files: Iterable[Path], values: Iterable[str] | None = None) -> list[tuple[Path, int, str]]:
    """``(file, line number, masked secret)`` for every secret (default: the registered ones, in
    all their forms) found in one of ``files``."""
    values = sorted(secrets() if values is None else set(values), key=len, reverse=True)
    leaks: list[tuple[Path, int, str]] = []
    if not values:
        return leaks
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if not any(v in text for v in values):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for value in values:
                if value in line:
                    leaks.append((path, number, _mask(value)))
                    break
    return leaks

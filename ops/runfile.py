"""How a ``connector`` command in another shell finds a running ``make run``.

``make run`` (:mod:`ops.run`) writes ``.run/cli.env`` while it runs and removes it when it
stops: the Redis it uses (the embedded one's URL in particular), the connections file (the
sandbox's), and the ``.env`` file it merged.  The CLI applies that file only when the shell sets
none of the configuration variables, and always says so on stderr: it never silently reads a
Redis the operator did not name.

File format: ``NAME=value`` lines (values are paths and URLs without credentials; a Redis URL
with a password is never written), ``#`` comments.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from connector import config

ROOT = Path(__file__).resolve().parent.parent
FILE_NAME = "cli.env"
PID_KEY = "CONNECTOR_RUN_PID"
ENV_FILE_KEY = "CONNECTOR_RUN_ENV_FILE"
# Set when the run's REDIS_URL holds a password (never written down): the CLI says so.
HIDDEN_URL_KEY = "CONNECTOR_RUN_REDIS_URL_HIDDEN"
# Any of these set in the shell: the operator chose a configuration; the run file stays unused.
CONFIG_VARS = ("REDIS_URL", "CONNECTIONS_FILE", "INGEST_WRITE_KEYS", "VOUCHERIFY_APP_ID")
# What the run file may carry into the CLI's environment.
CARRIED = ("REDIS_URL", "CONNECTIONS_FILE", "CONNECTOR_KEY_PREFIX", "REDIS_TLS_VERIFY")


def run_dir(env: Mapping[str, str] | None = None) -> Path:
    env = config.environment() if env is None else env
    return Path(env.get("CONNECTOR_RUN_DIR") or ROOT / ".run")


def path(env: Mapping[str, str] | None = None) -> Path:
    return run_dir(env) / FILE_NAME


def has_password(url: str) -> bool:
    netloc = url.partition("://")[2].split("/", 1)[0]
    userinfo, at, _ = netloc.rpartition("@")
    return bool(at) and ":" in userinfo and bool(userinfo.split(":", 1)[1])


def write(target: Path, values: Mapping[str, str], pid: int) -> None:
    lines = [
        f"# Written by `make run` (pid {pid}) for `connector` commands in other shells;",
        "# removed when it stops.  Used only when the shell sets none of " + ", ".join(CONFIG_VARS) + ".",
        f"{PID_KEY}={pid}",
    ]
    lines += [f"{key}={value}" for key, value in values.items() if value]
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o600)
    tmp.replace(target)


def remove(target: Path, pid: int) -> None:
    """Remove the file if it is still ours (a newer run may have replaced it)."""
    if parse(target).get(PID_KEY) == str(pid):
        with contextlib.suppress(FileNotFoundError):
            target.unlink()


def parse(target: Path) -> dict[str, str]:
    try:
        text = target.read_text()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a live ``ops.run`` (its command line is checked where /proc exists)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        with contextlib.suppress(OSError):
            return b"ops.run" in cmdline.read_bytes()
    return True


class RunFileError(Exception):
    """The running ``make run`` cannot be reached with what its file says."""


@dataclass
class Running:
    pid: int
    values: dict[str, str] = field(default_factory=dict)

    @property
    def redis_url(self) -> str | None:
        return self.values.get("REDIS_URL")


def running(env: Mapping[str, str] | None = None) -> Running | None:
    """The ``make run`` currently running from this checkout, if any."""
    values = parse(path(env))
    try:
        pid = int(values.get(PID_KEY, ""))
    except ValueError:
        return None
    return Running(pid, values) if pid_alive(pid) else None


def _dotenv(file: str) -> dict[str, str]:
    try:
        from honcho.environ import parse as parse_env
    except ImportError:  # pragma: no cover - honcho is a dependency
        return {}
    try:
        return dict(parse_env(Path(file).read_text()))
    except OSError:
        return {}


def apply(environ: MutableMapping[str, str]) -> str | None:
    """Point ``environ`` at the running ``make run`` when it names no configuration.

    Returns a note for stderr (what was used, or why nothing was), or None when nothing needs
    saying (a configuration is set and no ``make run`` runs from this checkout).  Raises
    :class:`RunFileError` rather than let the command fall back to another Redis.
    """
    run = running(environ)
    chosen = [name for name in CONFIG_VARS if environ.get(name)]
    if chosen:
        url = environ.get("REDIS_URL")
        if run is not None and run.redis_url and url and url != run.redis_url:
            return (
                f"note: REDIS_URL is set in this shell; the running `make run` (pid {run.pid}) uses "
                f"{run.redis_url} (unset REDIS_URL and CONNECTIONS_FILE to use it)"
            )
        return None
    if run is None:
        return (
            "note: no REDIS_URL or connection configured in this shell and no `make run` running "
            "from this checkout: using the defaults (redis://localhost:6379/0)"
        )
    env_file = run.values.get(ENV_FILE_KEY)
    if env_file:
        for key, value in _dotenv(env_file).items():
            environ.setdefault(key, value)
    for key in CARRIED:
        if run.values.get(key):
            environ[key] = run.values[key]
    if run.values.get(HIDDEN_URL_KEY) and not environ.get("REDIS_URL"):
        raise RunFileError(
            f"the running `make run` (pid {run.pid}) uses a Redis URL with a password, which is not "
            "written down: set REDIS_URL (and CONNECTIONS_FILE if it uses one) in this shell"
        )
    described = ", ".join(
        f"{k}={run.values[k]}" for k in ("REDIS_URL", "CONNECTIONS_FILE") if run.values.get(k)
    )
    extra = f", and {env_file}" if env_file else ""
    return f"using the running `make run` (pid {run.pid}): {described}{extra} (from {path(environ)})"

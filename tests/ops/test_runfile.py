"""``.run/cli.env``: how a ``connector`` command in another shell finds a running ``make run``,
and never silently falls back to another Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import runfile
from tests.support.faultkit import connector_cli
from tests.support.processes import ROOT, base_env, wait_until


@pytest.fixture
def fake_run() -> Iterator[int]:
    """A live process whose command line names ops.run (as `make run`'s launcher)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "ops.run"])
    if Path("/proc").is_dir():  # until it has exec'd, the child's command line is still pytest's
        wait_until(lambda: b"ops.run" in Path(f"/proc/{proc.pid}/cmdline").read_bytes(), timeout=10)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def write(run_dir: Path, pid: int, **values: str) -> None:
    run_dir.mkdir(exist_ok=True)
    runfile.write(run_dir / runfile.FILE_NAME, values, pid)


def test_a_shell_without_configuration_uses_the_running_make_run(tmp_path: Path, fake_run: int) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("LOG_LEVEL=DEBUG\nREDIS_URL=redis://from-dotenv:6379/0\n")
    write(
        tmp_path,
        fake_run,
        REDIS_URL="redis://127.0.0.1:6390/0",
        CONNECTIONS_FILE="/x/sandbox-connections.toml",
        CONNECTOR_RUN_ENV_FILE=str(dotenv),
    )
    assert (tmp_path / runfile.FILE_NAME).stat().st_mode & 0o077 == 0  # private to its owner
    environ = {"CONNECTOR_RUN_DIR": str(tmp_path), "LOG_LEVEL": "WARNING"}
    note = runfile.apply(environ)
    assert note is not None and f"pid {fake_run}" in note and "redis://127.0.0.1:6390/0" in note
    assert environ["REDIS_URL"] == "redis://127.0.0.1:6390/0"  # the run's decision beats its .env
    assert environ["CONNECTIONS_FILE"] == "/x/sandbox-connections.toml"
    assert environ["LOG_LEVEL"] == "WARNING"  # the shell's own variables stay


def test_a_configured_shell_is_left_alone_but_told(tmp_path: Path, fake_run: int) -> None:
    write(tmp_path, fake_run, REDIS_URL="redis://127.0.0.1:6390/0")
    environ = {"CONNECTOR_RUN_DIR": str(tmp_path), "REDIS_URL": "redis://elsewhere:6379/0"}
    note = runfile.apply(environ)
    assert environ["REDIS_URL"] == "redis://elsewhere:6379/0"
    assert note is not None and "uses redis://127.0.0.1:6390/0" in note
    assert runfile.apply({"CONNECTOR_RUN_DIR": str(tmp_path), "INGEST_WRITE_KEYS": "k"}) is None


def test_no_run_or_a_stale_file_means_the_defaults_said_aloud(tmp_path: Path) -> None:
    environ = {"CONNECTOR_RUN_DIR": str(tmp_path)}
    assert "using the defaults" in (runfile.apply(environ) or "")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write(tmp_path, dead.pid, REDIS_URL="redis://127.0.0.1:6390/0")  # make run killed -9
    assert "using the defaults" in (runfile.apply(environ) or "")
    assert "REDIS_URL" not in environ
    write(tmp_path, 1, REDIS_URL="redis://127.0.0.1:6390/0")  # a live pid that is not make run
    assert "using the defaults" in (runfile.apply(environ) or "")


def test_a_password_is_never_written_and_never_guessed(tmp_path: Path, fake_run: int) -> None:
    assert runfile.has_password("redis://:s3cret@host:6379/0")
    assert runfile.has_password("rediss://user:s3cret@host:6379/0")
    assert not runfile.has_password("redis://127.0.0.1:6390/0")
    assert not runfile.has_password("redis://user@host/0")
    write(tmp_path, fake_run, **{runfile.HIDDEN_URL_KEY: "1"})
    with pytest.raises(runfile.RunFileError, match="set REDIS_URL"):
        runfile.apply({"CONNECTOR_RUN_DIR": str(tmp_path)})


def test_remove_keeps_a_newer_runs_file(tmp_path: Path, fake_run: int) -> None:
    write(tmp_path, fake_run, REDIS_URL="redis://127.0.0.1:6390/0")
    runfile.remove(tmp_path / runfile.FILE_NAME, fake_run + 1)  # an older run stopping late
    assert (tmp_path / runfile.FILE_NAME).exists()
    runfile.remove(tmp_path / runfile.FILE_NAME, fake_run)
    assert not (tmp_path / runfile.FILE_NAME).exists()


# --- the suite itself is isolated from a developer's running `make run` --------------------------


def test_the_suite_never_finds_the_checkouts_running_make_run(tmp_path: Path) -> None:
    """tests/conftest.py points CONNECTOR_RUN_DIR at an empty directory of the session's, in this
    process and in the children ``base_env`` starts: a ``make run`` in the checkout (``.run/``)
    cannot redirect a test's CLI nor add a note to the output it parses."""
    mine = runfile.run_dir()
    assert mine != runfile.ROOT / ".run"
    assert not (mine / runfile.FILE_NAME).exists()
    child = subprocess.run(
        [sys.executable, "-c", "from ops import runfile; print(runfile.run_dir())"],
        env=base_env("redis://127.0.0.1:1/0"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert child.stdout.strip() == str(mine)


def test_json_output_parses_while_the_cli_notes_a_running_make_run(
    tmp_path: Path, fake_run: int, redis_url: str
) -> None:
    """The note goes to stderr, the JSON alone to stdout: a script reading stdout still parses it."""
    write(tmp_path, fake_run, REDIS_URL="redis://127.0.0.1:1/0")  # another Redis than the shell's
    env = base_env(redis_url, CONNECTOR_RUN_DIR=str(tmp_path))
    result = connector_cli(env, "dlq", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert f"the running `make run` (pid {fake_run}) uses redis://127.0.0.1:1/0" in result.stderr
    assert json.loads(result.stdout) == []

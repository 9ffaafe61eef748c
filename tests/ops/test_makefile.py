"""The Makefile's install levels, read with ``make -n`` (nothing is installed): ``make run`` needs
the runtime dependencies only, ``make test`` / ``make bench`` the dev and bench extras, and the
stamps let one switch between them without installing twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry(target: str, venv: Path) -> str:
    result = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def installs(output: str) -> list[str]:
    return [
        line.split("pip install --quiet ", 1)[1]
        for line in output.splitlines()
        if "pip install --quiet -e" in line
    ]


def fresh_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()  # "the virtualenv exists" for make
    return venv


def touch_newer_than_pyproject(path: Path) -> None:
    path.touch()
    later = (ROOT / "pyproject.toml").stat().st_mtime + 10
    os.utime(path, (later, later))


def test_run_installs_only_the_runtime_and_test_the_extras(tmp_path: Path) -> None:
    venv = fresh_venv(tmp_path)
    assert installs(dry("run", venv)) == ["-e ."]
    assert installs(dry("test", venv)) == ["-e '.[dev,bench]'"]
    assert installs(dry("bench", venv)) == ["-e '.[dev,bench]'"]


def test_switching_between_run_and_test_installs_nothing_twice(tmp_path: Path) -> None:
    venv = fresh_venv(tmp_path)
    # After `make test` (dev stamp written, run stamp with it): `make run` installs nothing.
    touch_newer_than_pyproject(venv / ".installed-dev")
    touch_newer_than_pyproject(venv / ".installed-run")
    assert installs(dry("run", venv)) == []
    assert installs(dry("test", venv)) == []
    # After only `make run`: `make test` adds the extras, `make run` stays as it is.
    (venv / ".installed-dev").unlink()
    assert installs(dry("test", venv)) == ["-e '.[dev,bench]'"]
    assert installs(dry("run", venv)) == []
    # pyproject.toml changed since: both levels are redone when next used.
    # (Older than pyproject.toml itself, not than "now": a checkout can be hours old.)
    old = (ROOT / "pyproject.toml").stat().st_mtime - 3600
    os.utime(venv / ".installed-run", (old, old))
    assert installs(dry("run", venv)) == ["-e ."]

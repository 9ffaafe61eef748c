"""The end-of-session secret scan (``tests/support/secrets.py``) finds what it must find.

It is the suite's one check that no process logs a credential, so it is checked itself: a
credential is found as it is and in the encodings the connector sends it in (segmentio's base64
headers, HTTP Basic), an unrelated line is not a finding, and a value too short to scan for is
reported rather than skipped.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import secrets
from tests.support.processes import ROOT


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_a_credential_is_found_plain_and_in_its_encoded_forms(tmp_path: Path) -> None:
    app_id = "app-id-of-the-scan-test"
    log = tmp_path / "worker.log"
    log.write_text(
        "\n".join(
            [
                '{"msg": "nothing here"}',
                f'{{"auth": ["Basic {b64(app_id)}"]}}',  # segmentio's authorization header
                f"secret-key: {b64(app_id)}",
                f"Authorization: Basic {b64(app_id + ':')}",  # a write key as HTTP Basic user
                f"plain {app_id} in a line",
            ]
        )
        + "\n"
    )
    leaks = secrets.scan([log], secrets.forms(app_id))
    assert [number for _path, number, _masked in leaks] == [2, 3, 4, 5]
    assert all(app_id not in masked for _p, _n, masked in leaks)  # the report masks the value


def test_log_files_are_found_under_watched_directories(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "web.log").write_text("x\n")
    (nested / "notes.txt").write_text("x\n")
    found = [p for p in secrets.log_files([tmp_path]) if tmp_path in p.parents]
    assert found == [nested / "web.log"]


def test_short_credentials_are_reported_not_skipped() -> None:
    secrets.register("a-long-enough-value")
    assert secrets.forms("a-long-enough-value") <= secrets.secrets()
    # A short value is kept aside and makes problems() name it -- checked on a copy of the state
    # so that this test does not fail the session it runs in.
    saved = set(secrets._too_short)
    try:
        secrets.register("abc")
        assert any("shorter than" in p and "abc"[:3] in p for p in secrets.problems())
    finally:
        secrets._too_short.clear()
        secrets._too_short.update(saved)


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_a_secret_in_a_process_log_fails_the_whole_run(workers: list[str], tmp_path: Path) -> None:
    """The session-end scan (tests/conftest.py) as ``make test`` runs it: a worker's finding
    reaches the controller, which fails the run."""
    probe = ROOT / "tests" / "support" / "probe_leak.py"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *workers,
            str(probe),
            "--basetemp",
            str(tmp_path / "inner"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "2 passed" in output, output[-2000:]
    assert result.returncode == 1, output[-2000:]
    assert "SECRET SCAN FAILED" in output, output[-2000:]

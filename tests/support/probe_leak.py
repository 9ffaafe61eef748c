"""Not collected by the suite (no ``test_`` file name): run on its own by
``tests/test_secret_scan.py`` to show that a secret written to a process log fails the whole run,
also when the run is spread over xdist workers."""

from __future__ import annotations

import pytest

from tests.support import secrets

PROBE_SECRET = "probe-secret-value-0123456789"


def test_a_process_log_holds_a_registered_secret(tmp_path_factory: pytest.TempPathFactory) -> None:
    secrets.register(PROBE_SECRET)
    log = tmp_path_factory.getbasetemp() / "probe" / "process.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"a line that should never be: {PROBE_SECRET}\n")


def test_a_second_one_for_the_other_worker() -> None:
    assert True

"""gunicorn.conf.py's ``worker_exit``: a stopping web worker writes what it buffered -- the traces
and overview counts of its last second (the web writes them at most once a second), so a restart
or deploy does not lose the trace of an event it skipped or refused just before."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from connector import overview, tracereader
from connector.keys import Keys
from connector.trace import Recorder

CONF = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"


def test_worker_exit_writes_the_traces_the_worker_buffered(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    # The sync class: loading the file must not monkey-patch the test process for gevent.
    monkeypatch.setenv("GUNICORN_WORKER_CLASS", "sync")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    hooks = runpy.run_path(str(CONF))
    client = redis.Redis.from_url(redis_url)  # the scripts need a real Redis (our own)
    keys = Keys("connector:")
    recorder = Recorder(keys)
    recorder.received("ev-last", connection="c1", direction="segment_to_voucherify", door="batch", at=None)
    recorder.outcome(["ev-last"], connection="c1", outcome=overview.SKIPPED, reason="suppressed")
    assert tracereader.find(client, keys, "ev-last") == {}  # buffered, not yet written
    app = SimpleNamespace(extensions={"connector.trace": recorder, "connector.redis": client})
    hooks["worker_exit"](None, SimpleNamespace(wsgi=app))
    [records] = tracereader.find(client, keys, "ev-last").values()
    assert [r["kind"] for r in records] == ["received", "outcome"]
    assert records[-1]["outcome"] == "skipped" and records[-1]["reason"] == "suppressed"
    # A worker without the app's extensions (another app, a failed boot) exits quietly.
    hooks["worker_exit"](None, SimpleNamespace())

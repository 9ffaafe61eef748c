"""The worker's consumer loop waits at most 0.1 s per turn (connector.drainloop): a prefetch slot
freed during Celery's 2 s wait used to fetch its next task only when the wait ended."""

from __future__ import annotations

from typing import Any

from celery.worker import loops

from connector import drainloop
from connector.celery_app import default_app


def test_the_worker_runs_the_capped_loop() -> None:
    assert default_app().conf.worker_consumer == "connector.drainloop:Consumer"


def test_each_drain_waits_at_most_a_tenth_of_a_second(monkeypatch: Any) -> None:
    seen: list[float | None] = []

    class Connection:
        heartbeat = 0

        def drain_events(self, timeout: float | None = None) -> None:
            seen.append(timeout)

    def blocking_loop(obj: Any, connection: Any, *args: Any, **kwargs: Any) -> None:
        connection.drain_events(timeout=2.0)  # as celery.worker.loops.synloop does
        connection.drain_events()
        assert connection.heartbeat == 0  # everything else is the connection's own

    monkeypatch.setattr(loops, "synloop", blocking_loop)
    drainloop.synloop(object(), Connection())
    assert seen == [drainloop.DRAIN_SECONDS, drainloop.DRAIN_SECONDS]

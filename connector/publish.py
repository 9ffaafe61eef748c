"""Putting work (back) on a Celery queue, by task name: the scheduler, the sweep and DLQ replay.

A publisher is a plain callable so that tests record calls instead of talking to a broker.
Errors propagate: a caller that could not publish must not delete what it meant to publish.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery

Publish = Callable[[str, list[Any], str], None]


def celery_publish(task_name: str, args: list[Any], queue: str) -> None:
    """On the process's default app (``REDIS_URL``): commands that load no settings."""
    from connector.celery_app import default_app

    publisher(default_app())(task_name, args, queue)


def publisher(app: Celery) -> Publish:
    """A publisher on ``app`` (a process that loaded its settings builds its own app)."""

    def publish(task_name: str, args: list[Any], queue: str) -> None:
        app.send_task(task_name, args=args, queue=queue, routing_key=queue, retry=False)

    return publish

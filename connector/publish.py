"""Putting work (back) on a Celery queue, by task name: the scheduler, the sweep and DLQ replay.

A publisher is a plain callable so that tests record calls instead of talking to a broker.
Errors propagate: a caller that could not publish must not delete what it meant to publish.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Publish = Callable[[str, list[Any], str], None]


def celery_publish(task_name: str, args: list[Any], queue: str) -> None:
    from connector.celery_app import celery

    celery.send_task(task_name, args=args, queue=queue, routing_key=queue, retry=False)

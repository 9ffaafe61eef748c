"""Reading what the web process put in the broker (kombu's Redis transport), for assertions."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis

from connector.contract import expand


def queued_tasks(redis_url: str, queue: str) -> list[dict[str, Any]]:
    """Each message of ``queue`` as ``{"task", "args", "kwargs"}``, oldest first."""
    client = redis.Redis.from_url(redis_url)
    out = []
    for raw in reversed(client.lrange(queue, 0, -1)):  # kombu LPUSHes and BRPOPs
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, kwargs, _embed = json.loads(body)
        out.append({"task": message["headers"]["task"], "args": args, "kwargs": kwargs})
    return out


def queued_events(redis_url: str, queue: str) -> list[dict[str, Any]]:
    """The Segment events of every ``connector.segment_events`` message in ``queue``, as the
    worker sees them (the fields stored once per message merged into each event)."""
    events: list[dict[str, Any]] = []
    for task in queued_tasks(redis_url, queue):
        if task["task"] == "connector.segment_events":
            shared = task["args"][2] if len(task["args"]) > 2 else None
            events.extend(expand(event, shared) for event in task["args"][1])
    return events

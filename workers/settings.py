"""The settings as the processes load them: :func:`connector.config.load_settings` with the
mapping language's start-up checks, so that a bad subscription or classic table stops a process
before it takes any work (the base package cannot import the workers' mapping code)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector.config import MappingChecks, Settings
from connector.config import load_settings as load_base_settings
from workers.mapping.destination.classic import validate_table
from workers.mapping.destination.subscriptions import validate_subscription


def _table_problems(raw: Any, track: bool) -> list[str]:
    return validate_table(raw, track=track)


CHECKS = MappingChecks(subscription=validate_subscription, table=_table_problems)


def load_settings(env: Mapping[str, str] | None = None, *, require_connections: bool = True) -> Settings:
    """Every process's settings, read once at start: ``ConfigError`` lists every problem."""
    return load_base_settings(env, checks=CHECKS, require_connections=require_connections)

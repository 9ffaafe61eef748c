"""The status page's quota section (SPEC 10): per connection, the budgets' use, the shop's
reserve and the forecast (:mod:`connector.forecast`).  Kept apart from the rest of the page."""

from __future__ import annotations

from typing import Any

import redis

from connector import forecast, tracereader
from connector.config import Settings


def quota_data(client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    out = []
    for fc in forecast.forecasts(client, settings):
        data = fc.as_dict()
        data["sentences"] = fc.sentences()
        since = (fc.paused or {}).get("since")
        data["paused_since"] = tracereader.when(since) if since else None  # ISO 8601, UTC
        out.append(data)
    return out

"""The status page shows times as ISO 8601 in UTC (issue #23: raw epoch seconds before): the
sandbox's received requests and a paused connection's "since"."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import redis

from app import create_app, status
from connector.config import load_settings
from connector.keys import Keys

TOML = """
[[connection]]
id = "shop"
write_keys = ["wk_status_times_1"]
[connection.voucherify]
app_id = "app-id-status-times"
secret_key = "secret-key-status-times"
region = "eu"
"""
TOKEN = "status-token-for-times-0123"
WHEN = 1_764_495_061.433  # 2025-11-30T09:31:01.433Z
EPOCH = re.compile(r"\b1[0-9]{9}\b")  # epoch seconds of these years


def _page(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    path = tmp_path / "c.toml"
    path.write_text(TOML)
    settings = load_settings({"CONNECTIONS_FILE": str(path), "REDIS_URL": redis_url, "STATUS_TOKEN": TOKEN})
    # The sandbox's section, with a fake that answers these records.
    settings = dataclasses.replace(settings, sandbox=True, sandbox_fakes={"voucherify": "http://127.0.0.1:9"})
    records: list[dict[str, Any]] = [{"time": WHEN, "method": "POST", "path": "/v1/events", "status": 200}]
    monkeypatch.setattr(status, "_fetch_records", lambda url: records)
    web = create_app(settings).test_client()
    answer = web.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    return answer.get_data(as_text=True)


def test_the_status_page_shows_iso_utc_times_not_epoch_seconds(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis.Redis.from_url(redis_url).set(Keys().paused("shop"), b'{"reason": "auth", "since": 1764495000}')
    html = _page(tmp_path, redis_url, monkeypatch)
    assert "2025-11-30T09:31:01.433Z" in html  # the fake's request
    assert "paused: auth since 2025-11-30T09:30:00.000Z" in html
    assert not EPOCH.findall(html), EPOCH.findall(html)
    # The sandbox's curl carries a messageId: something to find with the trace box.
    assert '"messageId":"my-first-event"' in html.split('id="curl"')[1]

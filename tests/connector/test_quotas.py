"""Quota settings of a connection (SPEC 10): plan table, explicit keys, share, defaults, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import ConfigError, load_settings
from connector.quotas import PLANS

HEAD = """
[[connection]]
id = "acme"
write_keys = ["wk_quota_test"]
[connection.voucherify]
app_id = "app-quota"
secret_key = "secret-quota"
region = "eu"
"""


def quota_of(tmp_path: Path, extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "connections.toml"
    path.write_text(HEAD + extra)
    settings = load_settings({"CONNECTIONS_FILE": str(path), **(env or {})})
    return settings.connections[0].voucherify.quota


def problems_of(tmp_path: Path, extra: str) -> str:
    path = tmp_path / "connections.toml"
    path.write_text(HEAD + extra)
    with pytest.raises(ConfigError) as info:
        load_settings({"CONNECTIONS_FILE": str(path)})
    return str(info.value)


def test_nothing_configured_assumes_the_smallest_current_plan_with_bulk_off(tmp_path: Path) -> None:
    q = quota_of(tmp_path, "")
    assert q.assumed is True and q.plan is None
    assert (q.api_calls_per_minute, q.api_calls_per_hour, q.api_calls_per_cycle) == (100, None, 100_000)
    assert q.bulk_calls_per_hour == 0
    assert q.share == 0.5
    assert q.usable(q.api_calls_per_minute) == 50
    assert q.coalesce_window_seconds == 5.0 and q.unchanged_memory_days == 7


@pytest.mark.parametrize("plan", sorted(set(PLANS) - {"enterprise"}))
def test_a_plan_gives_its_published_limits(tmp_path: Path, plan: str) -> None:
    q = quota_of(tmp_path, f'plan = "{plan}"\n')
    assert q.assumed is False and q.plan == plan
    for key, value in PLANS[plan].items():
        assert q.limits()[key] == value, key
    # An hourly plan has no per-minute limit and a current plan no hourly one.
    assert (q.api_calls_per_minute is None) == ("api_calls_per_hour" in PLANS[plan])


def test_explicit_keys_override_the_plan_and_the_old_name_is_accepted(tmp_path: Path) -> None:
    q = quota_of(tmp_path, 'plan = "growth"\nbulk_calls_per_hour = 5\nshare = 0.25\ncycle_start_day = 15\n')
    assert (q.api_calls_per_hour, q.bulk_calls_per_hour, q.share, q.cycle_start_day) == (2_000, 5, 0.25, 15)
    assert q.usable(2_000) == 500
    old = quota_of(tmp_path, "rate_limit_per_minute = 300\n")
    assert old.api_calls_per_minute == 300 and old.assumed is False
    both = quota_of(tmp_path, "rate_limit_per_minute = 300\napi_calls_per_minute = 40\n")
    assert both.api_calls_per_minute == 40


def test_explicit_limits_without_a_per_period_api_limit_keep_the_smallest_per_minute(tmp_path: Path) -> None:
    q = quota_of(tmp_path, "bulk_calls_per_hour = 3\n")
    assert q.api_calls_per_minute == 100 and q.bulk_calls_per_hour == 3 and q.assumed is False


def test_a_tiny_share_still_allows_one_call(tmp_path: Path) -> None:
    q = quota_of(tmp_path, 'plan = "free"\nshare = 0.001\n')
    assert q.usable(q.bulk_calls_per_hour) == 1


def test_environment_shorthand_plan_and_share() -> None:
    env = {
        "INGEST_WRITE_KEYS": "wk_quota_env",
        "VOUCHERIFY_APP_ID": "app-env",
        "VOUCHERIFY_SECRET_KEY": "secret-env",
        "VOUCHERIFY_PLAN": "organization",
        "VOUCHERIFY_SHARE": "0.8",
    }
    q = load_settings(env).connections[0].voucherify.quota
    assert (q.plan, q.api_calls_per_minute, q.share) == ("organization", 2_000, 0.8)


def test_every_bad_quota_key_is_reported_once_by_name(tmp_path: Path) -> None:
    text = problems_of(
        tmp_path,
        'plan = "platinum"\nshare = 1.5\napi_calls_per_minute = 0\ncycle_start_day = 31\n'
        'coalesce_window_seconds = "soon"\nbulk_calls_per_hour = -1\n',
    )
    for key in (
        "plan",
        "share",
        "api_calls_per_minute",
        "cycle_start_day",
        "coalesce_window_seconds",
        "bulk_calls_per_hour",
    ):
        assert text.count(f"voucherify.{key}:") == 1, (key, text)
    assert "platinum" in text


@pytest.mark.parametrize("share", ["0", "0.0", "-0.5", "true", '"nan"'])
def test_share_outside_zero_to_one_is_refused(tmp_path: Path, share: str) -> None:
    assert "voucherify.share: must be a number in (0, 1]" in problems_of(tmp_path, f"share = {share}\n")


def test_enterprise_needs_its_custom_limits(tmp_path: Path) -> None:
    assert "enterprise limits are custom" in problems_of(tmp_path, 'plan = "enterprise"\n')
    q = quota_of(tmp_path, 'plan = "enterprise"\napi_calls_per_hour = 20000\n')
    assert q.api_calls_per_hour == 20_000 and q.api_calls_per_minute is None

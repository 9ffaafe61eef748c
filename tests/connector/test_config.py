"""Configuration: env shorthand, connections.toml, ${VAR}, all errors at once, no secret leaks."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import ConfigError, load_settings

GOOD = """
[[connection]]
id = "acme-eu"
write_keys = ["wk_live_acme", "${EXTRA_KEY}"]
segment_webhook_secret = "${ACME_SEGMENT_SECRET}"

[connection.voucherify]
app_id = "${ACME_VF_APP_ID}"
secret_key = "${ACME_VF_SECRET_KEY}"
region = "eu"
mode = "rest"
webhook_secret = "vf-hook-secret"
rate_limit_per_minute = 100

[connection.segment]
write_key = "seg-out-key"
region = "eu"

[connection.destination]
track_events_filter = ["Order Completed"]
ignore_anonymous = true

[[connection]]
id = "beta-us"
write_keys = ["wk_beta"]
[connection.voucherify]
app_id = "b"
secret_key = "bs"
region = "us1"
mode = "segmentio"

[[connection]]
id = "dedicated"
write_keys = ["wk_ded"]
[connection.voucherify]
app_id = "d"
secret_key = "ds"
api_url = "https://acme.example-dedicated.voucherify.io"
"""

ENV = {
    "ACME_SEGMENT_SECRET": "seg-hook-secret",
    "ACME_VF_APP_ID": "app-123",
    "ACME_VF_SECRET_KEY": "very-secret-key",
    "EXTRA_KEY": "wk_extra",
}


def settings_from(tmp_path: Path, text: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / "connections.toml"
    path.write_text(text)
    return load_settings({"CONNECTIONS_FILE": str(path), **(env if env is not None else ENV)})


def test_toml_file_with_expansion_and_regions(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, GOOD)
    acme = settings.connection("acme-eu")
    assert acme is not None
    assert acme.voucherify.app_id.reveal() == "app-123"
    assert acme.voucherify.base_url == "https://api.voucherify.io"
    assert acme.voucherify.queue == "voucherify.eu"
    assert acme.segment is not None and acme.segment.base_url == "https://events.eu1.segmentapis.com"
    assert acme.segment.queue == "segment.eu"
    assert acme.destination.track_events_filter == ("Order Completed",)
    assert acme.destination.ignore_anonymous is True
    assert settings.connection_for_write_key("wk_extra") is acme
    assert settings.connection_for_write_key("wk_live_acme") is acme
    assert settings.connection_for_write_key("nope") is None
    beta = settings.connection("beta-us")
    assert beta is not None and beta.voucherify.base_url == "https://us1.segmentio.voucherify.io"
    ded = settings.connection("dedicated")
    assert ded is not None and ded.voucherify.base_url == "https://acme.example-dedicated.voucherify.io"
    assert ded.voucherify.queue == "voucherify.dedicated-acme-example-dedicated-voucherify-io"
    assert settings.voucherify_queues == sorted(
        ["voucherify.eu", "voucherify.us1", "voucherify.dedicated-acme-example-dedicated-voucherify-io"]
    )


def test_all_errors_reported_at_once_naming_connection_and_key(tmp_path: Path) -> None:
    bad = """
[[connection]]
id = "one"
write_keys = ["k1"]
[connection.voucherify]
app_id = "${MISSING_VAR}"
secret_key = "s"
region = "mars"
mode = "carrier-pigeon"

[[connection]]
id = "Two_Bad"
write_keys = ["k1"]
surprise = 1
[connection.voucherify]
secret_key = "s"
region = "us1"
[connection.segment]
write_key = "w"
region = "asia"
"""
    with pytest.raises(ConfigError) as info:
        settings_from(tmp_path, bad, {})
    problems = info.value.problems
    text = "\n".join(problems)
    assert "connection 'one': voucherify.app_id: environment variable MISSING_VAR is not set" in text
    assert "connection 'one': voucherify.region: unknown Voucherify region 'mars'" in text
    assert "connection 'one': voucherify.mode: must be one of rest, segmentio" in text
    assert "connection 'Two_Bad': id: is required and must match" in text
    assert "connection 'Two_Bad': surprise: unknown key" in text
    assert "connection 'Two_Bad': voucherify.app_id: is required" in text
    assert "connection 'Two_Bad': segment.region: unknown Segment region 'asia'" in text
    assert len(problems) >= 7


def test_duplicate_write_key_across_connections(tmp_path: Path) -> None:
    text = GOOD.replace('write_keys = ["wk_beta"]', 'write_keys = ["wk_live_acme"]')
    with pytest.raises(ConfigError, match="also used by 'acme-eu'"):
        settings_from(tmp_path, text)


def test_env_shorthand_single_connection() -> None:
    settings = load_settings(
        {
            "INGEST_WRITE_KEYS": "k1, k2",
            "VOUCHERIFY_APP_ID": "id",
            "VOUCHERIFY_SECRET_KEY": "sk",
            "VOUCHERIFY_REGION": "as1",
            "VOUCHERIFY_RATE_LIMIT_PER_MINUTE": "120",
            "SEGMENT_WRITE_KEY": "swk",
            "SEGMENT_REGION": "eu",
            "REDIS_URL": "redis://127.0.0.1:6390/3",  # parsed only, never connected to
        }
    )
    (conn,) = settings.connections
    assert conn.id == "default"
    assert conn.voucherify.base_url == "https://as1.api.voucherify.io"
    assert conn.voucherify.rate_limit_per_minute == 120
    assert settings.connection_for_write_key("k2") is conn
    assert conn.segment is not None and conn.segment.region == "eu"


def test_env_shorthand_unknown_region_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown Voucherify region 'eu2'"):
        load_settings(
            {
                "INGEST_WRITE_KEYS": "k",
                "VOUCHERIFY_APP_ID": "i",
                "VOUCHERIFY_SECRET_KEY": "s",
                "VOUCHERIFY_REGION": "eu2",
            }
        )


def test_no_connection_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no connection configured"):
        load_settings({})


def test_secrets_never_in_repr_or_errors(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, GOOD)
    text = repr(settings) + str(settings.connections) + repr(settings.connection("acme-eu"))
    for secret in (
        "very-secret-key",
        "seg-hook-secret",
        "vf-hook-secret",
        "seg-out-key",
        "wk_live_acme",
        "app-123",
    ):
        assert secret not in text
    bad = GOOD.replace('region = "eu"\nmode', 'region = "nowhere"\nmode')
    with pytest.raises(ConfigError) as info:
        settings_from(tmp_path, bad)
    assert "very-secret-key" not in str(info.value)


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({"CONNECTIONS_FILE": str(tmp_path / "nope.toml")})
    with pytest.raises(ConfigError, match="not valid TOML"):
        settings_from(tmp_path, "[[connection]\nid=")

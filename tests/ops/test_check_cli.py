"""``connector check`` as a newcomer reads it: an unreachable target is named (without its
credentials), and ``--offline`` is explained in the command's help."""

from __future__ import annotations

from pathlib import Path

from ops.embedded import free_port
from tests.support import secrets
from tests.support.faultkit import connector_cli
from tests.support.processes import base_env


def test_check_names_the_address_that_did_not_answer_without_credentials(
    tmp_path: Path, redis_url: str
) -> None:
    closed = free_port()  # nothing listens there
    password = "userinfo-password-in-the-url"
    secrets.register(password, "app-id-check-cli", "secret-key-check-cli")
    conn = tmp_path / "c.toml"
    conn.write_text(
        f"""
[[connection]]
id = "unreachable"
write_keys = ["wk_check_cli_key"]
[connection.voucherify]
app_id = "app-id-check-cli"
secret_key = "secret-key-check-cli"
api_url = "http://someone:{password}@127.0.0.1:{closed}/base"
"""
    )
    result = connector_cli(base_env(redis_url, conn), "check", "--timeout", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if "no answer" in x)
    assert f"no answer from http://127.0.0.1:{closed} (ConnectionError)" in line, line
    for secret in (password, "someone", "app-id-check-cli", "secret-key-check-cli"):
        assert secret not in result.stdout + result.stderr


def test_check_help_explains_offline() -> None:
    result = connector_cli(base_env("redis://127.0.0.1:1/0"), "check", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--offline checks the configuration and Redis only, calling neither Voucherify nor Segment" in text

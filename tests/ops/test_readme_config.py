"""The configuration a newcomer copies: the README's Heroku block and ``.env.example``, fed to
the code that reads them (``connector.config.load_settings`` over an env mapping), so that what
they document is what the connector loads."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from connector.config import load_settings
from connector.quotas import PLANS
from connector.shorthand import SHORTHAND_LABELS
from tests.support.processes import ROOT

# Heroku Redis plans' memory (MB), as Heroku publishes them: the README names one of these.
HEROKU_REDIS_MB = {"mini": 25, "premium-0": 50, "premium-1": 100, "premium-2": 250, "premium-3": 500}


def heroku_block() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(
        r"<!-- tested: tests/ops/test_readme_config.py[^>]*-->\n```sh\n(.*?)```", text, re.DOTALL
    )
    assert len(blocks) == 1, "the README's Heroku block"
    return blocks[0]


def heroku_config(block: str) -> dict[str, str]:
    """Every ``heroku config:set NAME=value`` of the block; ``...`` (yours to fill) becomes a
    distinct placeholder long enough for the tokens' 16-character minimum."""
    env: dict[str, str] = {}
    for command in block.replace("\\\n", " ").splitlines():
        words = shlex.split(command, comments=True)
        if words[:2] != ["heroku", "config:set"]:
            continue
        for word in words[2:]:
            name, _, value = word.partition("=")
            env[name] = f"placeholder-for-{name.lower()}" if value == "..." else value
    return env


def test_readme_heroku_config_loads_with_its_documented_plan_share_and_secrets() -> None:
    block = heroku_block()
    env = heroku_config(block)
    env["REDIS_URL"] = "rediss://:password@example.com:6380"  # what the add-on sets
    settings = load_settings(env)
    [connection] = settings.connections
    quota = connection.voucherify.quota
    # The documented plan and share, and what they make: 50 of the Business plan's 100 a minute.
    assert (quota.plan, quota.share, quota.assumed) == ("business", 0.5, False)
    assert quota.api_calls_per_minute == PLANS["business"]["api_calls_per_minute"]
    assert quota.usable(quota.api_calls_per_minute) == 50
    # The Segment Webhooks destination it tells you to point here is signed, not a 401 door.
    assert connection.segment_webhook_secret is not None and not connection.segment_webhook_unsigned
    assert connection.segment is not None
    assert settings.metrics_token is not None and settings.status_token is not None
    assert settings.redis_tls_verify == "none"
    # The Redis plan holds a full backlog of the connection (with room for the rest).
    [plan] = re.findall(r"heroku-redis:([a-z0-9-]+)", block)
    assert plan != "mini"  # no persistence
    assert HEROKU_REDIS_MB[plan] * 1_000_000 > 1.5 * connection.backlog_bytes_limit, plan


def dotenv_example() -> dict[str, str]:
    """``.env.example`` as compose reads it: an empty value is no value."""
    env = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            if value.strip():
                env[name.strip()] = value.strip()
    return env


def test_env_example_loads_with_a_sane_plan_share_and_rate() -> None:
    settings = load_settings(dotenv_example())
    [connection] = settings.connections
    quota = connection.voucherify.quota
    assert quota.plan == "business" and quota.share == 0.5 and not quota.assumed
    # Never more than the plan allows the whole project (checkout included).
    assert quota.api_calls_per_minute is not None
    assert quota.api_calls_per_minute <= PLANS["business"]["api_calls_per_minute"]
    assert quota.usable(quota.api_calls_per_minute) == 50


def test_every_shorthand_variable_is_documented() -> None:
    """What connector/connections.py reads for the single connection, the README's Configuration
    section and ``.env.example`` both name."""
    readme = (ROOT / "README.md").read_text()
    configuration = readme[readme.index("## Configuration") : readme.index("`connections.toml`:")]
    example = (ROOT / ".env.example").read_text()
    for variable in SHORTHAND_LABELS.values():
        assert f"`{variable}`" in configuration, variable
        assert re.search(rf"^#? ?{variable}=", example, re.MULTILINE), variable


def first_toml(text: str) -> str:
    return re.findall(r"```toml\n(.*?)```", text, re.DOTALL)[0]


def test_readme_connections_toml_loads_with_its_variables(tmp_path: Path) -> None:
    """The README's essential ``connections.toml``, its ``${NAME}``s set in the environment."""
    readme = (ROOT / "README.md").read_text()
    block = first_toml(readme[readme.index("## Configuration") :])
    path = tmp_path / "connections.toml"
    path.write_text(block)
    names = re.findall(r"\$\{([A-Z_]+)\}", block)
    env = {name: f"placeholder-for-{name.lower()}" for name in names}
    settings = load_settings({**env, "CONNECTIONS_FILE": str(path), "REDIS_URL": "redis://127.0.0.1:1/0"})
    [connection] = settings.connections
    assert connection.id == "acme-eu" and connection.segment is not None
    assert connection.segment_webhook_secret is not None and connection.voucherify.webhook_secret is not None
    assert (connection.voucherify.quota.plan, connection.voucherify.quota.share) == ("business", 0.5)


def test_the_full_connections_toml_of_docs_configuration_loads(tmp_path: Path) -> None:
    """docs/configuration.md's annotated file (moved from the README), every key it shows."""
    block = first_toml((ROOT / "docs" / "configuration.md").read_text())
    path = tmp_path / "connections.toml"
    path.write_text(block)
    env = {name: f"placeholder-for-{name.lower()}" for name in re.findall(r"\$\{([A-Z_]+)\}", block)}
    settings = load_settings({**env, "CONNECTIONS_FILE": str(path), "REDIS_URL": "redis://127.0.0.1:1/0"})
    [connection] = settings.connections
    assert connection.id == "acme-eu" and connection.voucherify.quota.plan == "business"

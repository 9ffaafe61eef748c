"""``integration_names`` and ``consent_categories`` in ``[connection.destination]`` (SPEC 14):
read, defaulted, and every mistake named with its connection and key, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import ConfigError, load_settings

HEAD = """
[[connection]]
id = "{cid}"
write_keys = ["wk_{cid}"]
[connection.voucherify]
app_id = "a"
secret_key = "s"
region = "eu"
[connection.destination]
"""


def load(tmp_path: Path, *destinations: str):  # type: ignore[no-untyped-def]
    text = "".join(HEAD.format(cid=f"c{i}") + body + "\n" for i, body in enumerate(destinations))
    path = tmp_path / "connections.toml"
    path.write_text(text)
    return load_settings({"CONNECTIONS_FILE": str(path)})


def test_defaults_and_configured_values(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        "",
        'integration_names = ["Voucherify EU", "Voucherify (Actions)"]\n'
        'consent_categories = ["Analytics", "Functional"]',
    )
    default, custom = settings.connections
    assert default.destination.integration_names == ("Voucherify", "Voucherify (Actions)")
    assert default.destination.consent_categories == ()
    assert custom.destination.integration_names == ("Voucherify EU", "Voucherify (Actions)")
    assert custom.destination.consent_categories == ("Analytics", "Functional")


def test_an_empty_consent_list_is_no_consent_check(tmp_path: Path) -> None:
    (connection,) = load(tmp_path, "consent_categories = []").connections
    assert connection.destination.consent_categories == ()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("integration_names = []", "integration_names: must name at least one destination name"),
        ('integration_names = "Voucherify"', "integration_names: must be a list of strings"),
        ("integration_names = [1]", "integration_names: must be a list of strings"),
        ('integration_names = ["Voucherify", true]', "integration_names: must be a list of strings"),
        ('integration_names = [""]', "integration_names: a name is empty"),
        (
            'integration_names = [" Voucherify"]',
            "integration_names: ' Voucherify' begins or ends with spaces",
        ),
        ('integration_names = ["All"]', 'integration_names: "All" is the switch of every destination'),
        (
            'integration_names = ["Voucherify", "Voucherify"]',
            "integration_names: 'Voucherify' is listed more than once",
        ),
        ('consent_categories = "Analytics"', "consent_categories: must be a list of strings"),
        ("consent_categories = [{a = 1}]", "consent_categories: must be a list of strings"),
        ('consent_categories = ["  "]', "consent_categories: a name is empty"),
        (
            'consent_categories = ["Analytics "]',
            "consent_categories: 'Analytics ' begins or ends with spaces",
        ),
        ('consent_categories = ["Ads", "Ads"]', "consent_categories: 'Ads' is listed more than once"),
    ],
)
def test_each_mistake_names_the_connection_and_the_key(tmp_path: Path, line: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, line)
    text = "\n".join(info.value.problems)
    assert f"connection 'c0': destination.{problem}" in text, text


def test_every_mistake_at_once_across_connections(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "integration_names = []", 'consent_categories = [""]\nintegration_names = ["All"]')
    problems = info.value.problems
    assert any(p.startswith("connection 'c0': destination.integration_names:") for p in problems)
    assert any(p.startswith("connection 'c1': destination.consent_categories:") for p in problems)
    assert any(p.startswith("connection 'c1': destination.integration_names:") for p in problems)

"""Every Lua script of the product lives in a short, documented ``.lua`` file (issue #19): at most
60 lines a file (a long script is a library of local functions plus a short main file, joined by
``connector.lua.Lua.files``), a header that names each key and argument it uses, and no inline
Lua left in the Python."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("app", "workers", "connector", "ops", "sandbox", "bench")
MAX_LINES = 60
USED = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")
SECTION = re.compile(r"^--\s*(KEYS|ARGV)\b")
INDEX = re.compile(r"\[(\d+)(\s*\.\.\s*)?(\d*)\]")


def product_files(pattern: str) -> list[Path]:
    return sorted(p for top in PRODUCT for p in (ROOT / top).rglob(pattern) if ".venv" not in p.parts)


def lua_files() -> list[Path]:
    return product_files("*.lua")


def header(text: str) -> list[str]:
    """The comment block the file starts with."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return lines


def documented(lines: list[str]) -> dict[str, set[int]]:
    """The KEYS and ARGV indices a header names: ``-- KEYS[1]  name: meaning`` lines (or a
    ``-- KEYS  [1] ... [2] ...`` section and its indented continuation), ``[a..b]`` a range and
    ``[a..]`` every index from a on (the variadic tail; counted up to 64)."""
    found: dict[str, set[int]] = {"KEYS": set(), "ARGV": set()}
    section: str | None = None
    for line in lines:
        start = SECTION.match(line)
        if start:
            section = start.group(1)
        elif not line.startswith("--  "):  # an unindented line ends a section
            section = None
        if section is None:
            continue
        for first, dots, last in INDEX.findall(line):
            top = int(last or 64) if dots else int(first)
            found[section].update(range(int(first), top + 1))
    return found


def test_the_product_has_lua_files() -> None:
    names = {p.name for p in lua_files()}
    assert {"ledger_claim.lua", "hold_release.lua", "dlq_add.lua", "backlog_reserve.lua"} <= names


@pytest.mark.parametrize("path", lua_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_lua_file_is_short_and_names_its_keys_and_arguments(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"{path.name}: over {MAX_LINES} lines"
    head = header(text)
    assert head, f"{path.name}: no comment saying what it does"
    if "redis.call" in text:  # a Redis script (not bench's wrk script): what and why atomic
        assert len(head) >= 3, f"{path.name}: no comment block saying what it does and why"
    named = documented(head)
    body = "\n".join(text.splitlines()[len(head) :])
    for kind, index in {(k, int(i)) for k, i in USED.findall(body)}:
        assert index in named[kind], f"{path.name}: {kind}[{index}] used, not named in its header"


def test_no_python_file_of_the_product_holds_inline_lua() -> None:
    inline = [str(p.relative_to(ROOT)) for p in product_files("*.py") if "redis.call" in p.read_text()]
    assert inline == []


def test_the_header_check_sees_an_undocumented_argument() -> None:
    head = ["-- Does a thing.", "--", "-- KEYS[1]  counter: what it counts", "-- ARGV[2..]  items"]
    assert documented(head) == {"KEYS": {1}, "ARGV": set(range(2, 65))}
    assert 1 not in documented(head)["ARGV"]

"""The floors of the tree, read from its imports (docs/design.md "Architecture", pyproject
``[tool.importlinter]``):

- ``connector`` imports nothing of ours above it; ``app`` and ``workers`` never import each
  other; only ``ops`` (and ``bench``, and the tests) may import both;
- no import circle at any depth of the product packages, the sandbox and the bench (module level
  included, and imports made only for the type checker count);
- the delivery machinery knows no system by name; the mappings are pure.

The contracts are checked on the real tree, and shown to catch what they are for: a copy of the
tree with one upward import, and one with a circle, must each break them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("connector", "app", "workers", "ops", "sandbox", "bench")
LINT = "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` (import-linter) on the tree at ``root``, with its pyproject's contracts."""
    return subprocess.run(
        [sys.executable, "-c", LINT, "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy_with(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on a copy of the tree where ``module`` (a path) also holds ``line``."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}\n")
    return _lint(tmp_path)


def test_the_tree_keeps_every_import_contract() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 5 kept, 0 broken." in result.stdout


def test_an_upward_import_breaks_the_floors(tmp_path: Path) -> None:
    result = _copy_with(tmp_path, "connector/regions.py", "from app import views  # noqa: E402,F401")
    assert result.returncode != 0, result.stdout
    assert "connector is not allowed to import app" in result.stdout
    assert "connector.regions -> app.views" in result.stdout


CIRCLE = "No import circles, at any depth (product, sandbox and bench; TYPE_CHECKING imports count) BROKEN"


def test_a_circle_breaks_the_acyclic_contract(tmp_path: Path) -> None:
    # connector.config -> connector.connections -> connector.regions -> connector.config
    result = _copy_with(tmp_path, "connector/regions.py", "from connector import config  # noqa: E402,F401")
    assert result.returncode != 0, result.stdout
    assert CIRCLE in " ".join(result.stdout.split())


def test_a_type_checking_circle_in_the_fakes_breaks_it_too(tmp_path: Path) -> None:
    # sandbox.fake_voucherify -> sandbox.voucherify_admin, and back only for the type checker
    # (the shape the fake's control surface had before it named what it needs as a Protocol).
    line = "from typing import TYPE_CHECKING  # noqa: E402\nif TYPE_CHECKING:\n    from sandbox import fake_voucherify  # noqa: F401"
    result = _copy_with(tmp_path, "sandbox/voucherify_admin.py", line)
    assert result.returncode != 0, result.stdout
    assert CIRCLE in " ".join(result.stdout.split())
    assert "sandbox.voucherify_admin" in result.stdout or "voucherify_admin" in " ".join(result.stdout.split())

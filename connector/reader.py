"""Typed access to one table of the settings, recording problems instead of raising on the first.

Used by :mod:`connector.connections` for ``connections.toml`` and for the environment shorthand,
which reads as the same tables.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from connector.secrets import Secret

VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# Secrets must be usable as they are in a header or an HMAC.  Whitespace at either end (a
# trailing newline from `echo` or a copied file) or a control character would either fail every
# call or, worse, end up inside an exception text that quotes the header value.
_BAD_SECRET_RE = re.compile(r"^\s|\s$|[\x00-\x1f\x7f]")


def secret_problem(value: str) -> str | None:
    """Why ``value`` cannot be a secret, in words that never quote it; None when it can."""
    if _BAD_SECRET_RE.search(value):
        return "must not have leading or trailing whitespace or control characters (the value is not shown)"
    return None


# --------------------------------------------------------------------------------------------
# Reading


class Reader:
    """Typed access to one table, recording problems instead of raising on the first.

    ``expand``: replace ``${NAME}`` from the environment -- for connections.toml only.  The
    environment shorthand's values are taken literally (a value that happens to contain
    ``${...}`` is not a reference to yet another variable).
    """

    def __init__(
        self,
        table: Mapping[str, Any],
        where: str,
        env: Mapping[str, str],
        problems: list[str],
        prefix: str = "",
        *,
        expand: bool = True,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.table = table
        self.where = where
        self.env = env
        self.problems = problems
        self.prefix = f"{prefix}." if prefix else ""
        self.expand = expand
        self.labels = labels or {}
        # Keys whose ${VAR} could not be expanded: already reported, never reported again as
        # "is required" / "is empty" (one problem, said once).
        self._unexpanded: set[str] = set()

    def child(self, key: str) -> Reader:
        return Reader(
            self.table_at(key),
            self.where,
            self.env,
            self.problems,
            self.prefix + key,
            expand=self.expand,
            labels=self.labels,
        )

    def problem(self, key: str, message: str) -> None:
        path = f"{self.prefix}{key}"
        variable = self.labels.get(path.split("[", 1)[0])
        name = f"{variable} ({path})" if variable else path
        self.problems.append(f"{self.where}: {name}: {message}")

    def _expand(self, key: str, value: Any) -> Any:
        if not self.expand or not isinstance(value, str):
            return value

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in self.env:
                if key not in self._unexpanded:
                    self.problem(key, f"environment variable {name} is not set")
                self._unexpanded.add(key)
                return ""
            return self.env[name]

        return VAR_RE.sub(sub, value)

    def text(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        if key not in self.table or self.table[key] in (None, ""):
            if required:
                self.problem(key, "is required")
            return default
        value = self._expand(key, self.table[key])
        if not isinstance(value, str):
            self.problem(key, f"must be a string, not {type(value).__name__}")
            return default
        if value == "" and required and key not in self._unexpanded:
            self.problem(key, "is empty")
            return default
        return value or default

    def secret(self, key: str, *, required: bool = False) -> Secret | None:
        value = self.text(key, required=required)
        if value and (why := secret_problem(value)) is not None:
            self.problem(key, why)
            return None
        return Secret(value) if value else None

    def secret_list(self, key: str) -> tuple[Secret, ...]:
        values = self.str_list(key) or ()
        out: list[Secret] = []
        for index, value in enumerate(values):
            if not value:
                continue
            why = secret_problem(value)
            if why is not None:
                self.problem(f"{key}[{index}]", why)
                continue
            out.append(Secret(value))
        return tuple(out)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self._expand(key, self.table.get(key, default))
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no", ""):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            self.problem(key, "must be true or false")
            return default
        return value

    def integer(self, key: str, default: int | None = None, *, minimum: int = 0) -> int | None:
        value = self._expand(key, self.table.get(key, default))
        if value is None or value == "":
            return default
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.problem(key, f"must be an integer, not {value!r}")
            return default
        if isinstance(value, bool) or number < minimum:
            self.problem(key, f"must be an integer >= {minimum}")
            return default
        return number

    def number(self, key: str, default: float, *, low: float, high: float, low_open: bool = False) -> float:
        """A real number in ``[low, high]`` (``(low, high]`` with ``low_open``); a bad value is a
        problem naming the range, and ``default`` is used."""
        raw = self._expand(key, self.table.get(key))
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        ok = not isinstance(raw, bool) and low <= value <= high and not (low_open and value == low)
        if not ok:
            opening = "(" if low_open else "["
            self.problem(key, f"must be a number in {opening}{low:g}, {high:g}], not {raw!r}")
            return default
        return value

    def str_list(self, key: str) -> tuple[str, ...] | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if isinstance(value, str):
            value = [v.strip() for v in self._expand(key, value).split(",") if v.strip()]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = [self._expand(key, v) for v in value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(key, "must be a list of strings")
            return None
        return tuple(value)

    def table_at(self, key: str) -> Mapping[str, Any]:
        value = self.table.get(key, {})
        if not isinstance(value, Mapping):
            self.problem(key, "must be a table")
            return {}
        return value

    def unknown_keys(self, known: set[str]) -> None:
        for key in self.table:
            if key not in known:
                self.problem(key, "unknown key")

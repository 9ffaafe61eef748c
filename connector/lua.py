"""A tiny EVALSHA-with-fallback wrapper usable with any Redis client (and after a Redis restart,
which forgets loaded scripts)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import NoScriptError


class Lua:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1

    @classmethod
    def files(cls, directory: Path, *names: str) -> Lua:
        """One script of several ``.lua`` files, in this order (libraries of local functions
        first, the script that uses them last): atomic as one, each file short and documented."""
        return cls("\n".join(_code((directory / name).read_text()) for name in names))

    def __call__(self, client: redis.Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)


def _code(text: str) -> str:
    """A file's text as Redis gets it: whole-line comments (the file's documentation, several
    hundred bytes) left as empty lines -- scripts sent with EVAL inside a pipeline carry them on
    every call otherwise -- so an error's line number still points into the file."""
    return "\n".join("" if line.lstrip().startswith("--") else line for line in text.split("\n"))

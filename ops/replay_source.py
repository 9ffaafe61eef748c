"""What ``connector replay`` reads from and how one line becomes an event (SPEC 15): the file
or stdin and its identity for checkpoints, a byte counter for the progress bar, and the
ingest's checks with the archived time kept (see :mod:`ops.replay_run`)."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from app.ingest import InvalidTimestamp, check_item, encode_checked, normalize
from ops import replay_read as rr


class Source:
    """A file (or ``-``: stdin) and what a checkpoint knows it by."""

    def __init__(self, name: str, stdin: IO[bytes] | None = None) -> None:
        self.name = name
        self.stdin = stdin
        self.seekable = name != "-"
        path = Path(name)
        if self.seekable and not path.is_file():
            raise FileNotFoundError(name)
        self.size = path.stat().st_size if self.seekable else None
        mtime = path.stat().st_mtime if self.seekable else time.time()
        self.mtime = datetime.fromtimestamp(mtime, UTC)
        self.identity = self._identity(path) if self.seekable else "stdin"

    @staticmethod
    def _identity(path: Path) -> str:
        """Its size and the digest of its first and last 64 KB: the same export copied or
        renamed resumes; a file rewritten in place is another file."""
        digest = hashlib.sha256()
        size = path.stat().st_size
        digest.update(str(size).encode())
        with path.open("rb") as f:
            digest.update(f.read(65536))
            if size > 65536:
                f.seek(max(65536, size - 65536))
                digest.update(f.read(65536))
        return digest.hexdigest()[:32]

    def open(self) -> IO[bytes]:
        if not self.seekable:
            assert self.stdin is not None
            return self.stdin
        return open(self.name, "rb")

    @staticmethod
    def is_gzip(stream: IO[bytes]) -> bool:
        peek = getattr(stream, "peek", None)
        head = peek(2)[:2] if peek is not None else b""
        return head == rr.GZIP_MAGIC


class Counting:
    """Bytes read from the file (the progress bar's position)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.count += len(data)
        return data


def prepare(item: dict[str, Any], received_at: datetime) -> tuple[dict[str, Any], bytes] | tuple[str, str]:
    """The event as the ingest would accept it, with its archived time kept, or (code, message)."""
    checked = check_item(item, None)
    if isinstance(checked, tuple):
        return checked
    source = dict(item)
    source.pop("sentAt", None)  # Segment's timestamp is already corrected: no second correction
    if not source.get("timestamp") and isinstance(item.get("receivedAt"), str):
        source["timestamp"] = item["receivedAt"]
    if not source.get("messageId"):
        digest = hashlib.sha256(orjson.dumps(item, option=orjson.OPT_SORT_KEYS)).hexdigest()
        source["messageId"] = "replay-" + digest[:40]
    try:
        event = normalize(source, received_at)
    except InvalidTimestamp as exc:
        return "invalid_timestamp", exc.message
    original = item.get("originalTimestamp")
    if isinstance(original, str) and original:
        event["originalTimestamp"] = original
    event["type"] = checked
    encoded = encode_checked(event, item, {}, 0)
    if isinstance(encoded, tuple):
        return encoded
    return event, encoded

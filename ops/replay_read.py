"""Streaming readers for ``connector replay`` (SPEC 15): Segment archives and customer CSVs.

What a shop has at hand: Segment's S3 destination and data exports write newline-delimited JSON,
usually gzip (several files concatenated with ``cat`` are several gzip members); a CRM export is
a CSV with a header row.  Every reader here holds at most one line (bounded by
:data:`MAX_LINE_BYTES`) and one chunk of the file in memory, whatever the file's size.

Positions: each record carries the :class:`Position` to restart *after* it.  A plain file
restarts at the byte after the line; inside gzip there is no random access, so the restart
point is the start of the member being read (``seek``, with the line number there) and the
lines between it and ``line`` are read again and skipped.  A non-seekable input (stdin) restarts
from its beginning, skipping ``line`` lines: a resumed ``-`` must be fed the same stream.

Bad input is a record with a ``problem`` (code, message), never an exception, so the caller
counts it, reports its line number and goes on: a line that is not JSON, a line too long, an
unreadable gzip member (the reader finds the next member and continues).  The one refusal of a
whole file is a CSV without a ``userId`` column (:class:`FileRejected`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

CHUNK = 64 * 1024
# Segment's events are at most 32 KB; a line far longer is not an event (and must not be held).
MAX_LINE_BYTES = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
_MEMBER_MAGIC = b"\x1f\x8b\x08"
_TOO_LONG = ("line_too_long", f"the line is longer than {MAX_LINE_BYTES // 1024} KB: not an event")


@dataclass(frozen=True)
class Position:
    """Restart point: ``line`` lines are done; reading restarts at byte ``seek`` of the file,
    where ``seek_line`` lines lay before (``line - seek_line`` are read again and skipped)."""

    line: int = 0
    seek: int = 0
    seek_line: int = 0


@dataclass
class Record:
    line: int  # 1-based line number (a CSV row: its first line)
    event: dict[str, Any] | None
    problem: tuple[str, str] | None
    resume: Position


class FileRejected(Exception):
    """The whole file is unusable (a CSV without a ``userId`` column)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- bytes: plain or gzip members ------------------------------------------------------------


@dataclass
class _Data:
    data: bytes
    offset: int | None  # the file offset of data[0] when bytes map 1:1 (plain), else None


@dataclass
class _Member:
    offset: int  # a gzip member starts here


@dataclass
class _Bad:
    offset: int
    message: str


def _plain(stream: IO[bytes], offset: int) -> Iterator[_Data | _Member | _Bad]:
    while chunk := stream.read(CHUNK):
        yield _Data(chunk, offset)
        offset += len(chunk)


def _resync(stream: IO[bytes], buf: bytes, base: int) -> tuple[bytes, int]:
    """Skip to the next gzip member's magic at or after ``buf[0]`` (absolute ``base``)."""
    while True:
        at = buf.find(_MEMBER_MAGIC)
        if at >= 0:
            return buf[at:], base + at
        keep = buf[-2:]
        more = stream.read(CHUNK)
        if not more:
            return b"", base + len(buf)
        base += len(buf) - len(keep)
        buf = keep + more


def _gzip(stream: IO[bytes], offset: int) -> Iterator[_Data | _Member | _Bad]:
    """The decompressed bytes of every member; an unreadable member is reported once and the
    reading goes on at the next member's magic."""
    buf, base = b"", offset
    inflater: Any = None
    member = offset
    while True:
        if not buf:
            buf = stream.read(CHUNK)
            if not buf:
                if inflater is not None:
                    yield _Bad(member, f"the gzip member at byte {member} is truncated")
                return
        if inflater is None:
            if len(buf) < 3:
                buf += stream.read(CHUNK)
            if not buf.startswith(_MEMBER_MAGIC):
                if not buf.strip(b"\x00"):  # padding after the last member (tar, some writers)
                    buf, base = b"", base + len(buf)
                    continue
                yield _Bad(base, f"no gzip member starts at byte {base}")
                buf, base = _resync(stream, buf[1:], base + 1)
                continue
            member = base
            inflater = zlib.decompressobj(31)
            yield _Member(member)
        try:
            out = inflater.decompress(buf)
        except zlib.error as exc:
            yield _Bad(member, f"unreadable gzip member at byte {member}: {exc}")
            inflater = None
            skip = 1 if base == member else 0
            buf, base = _resync(stream, buf[skip:], base + skip)
            continue
        if out:
            yield _Data(out, None)
        if inflater.eof:
            used = len(buf) - len(inflater.unused_data)
            buf, base = inflater.unused_data, base + used
            inflater = None
        else:
            buf, base = b"", base + len(buf)


# --- lines ------------------------------------------------------------------------------------


@dataclass
class _Line:
    number: int
    data: bytes | None  # None: a problem instead
    problem: tuple[str, str] | None
    resume: Position


def lines(stream: IO[bytes], start: Position, *, gz: bool, seekable: bool) -> Iterator[_Line]:
    """The file's lines from ``start`` on (``stream`` already at ``start.seek`` when seekable,
    else at its beginning), with the restart point after each."""
    offset = start.seek if seekable else 0
    number = start.seek_line if seekable else 0
    anchor = Position(number, offset, number) if seekable else Position(0, 0, 0)
    pending: list[bytes] = []
    pending_size = 0
    too_long = False
    source = _gzip(stream, offset) if gz else _plain(stream, offset)
    for piece in source:
        if isinstance(piece, _Member):
            if not pending and not too_long and seekable:
                anchor = Position(number, piece.offset, number)
            continue
        if isinstance(piece, _Bad):
            pending, pending_size, too_long = [], 0, False  # the broken member's partial line
            if number >= start.line:
                yield _Line(number + 1, None, ("unreadable_gzip", piece.message), _resume(anchor, number))
            continue
        data, at = piece.data, 0
        while at < len(data):
            end = data.find(b"\n", at)
            if end < 0:
                if not too_long:
                    pending.append(data[at:])
                    pending_size += len(data) - at
                    if pending_size > MAX_LINE_BYTES:
                        pending, pending_size, too_long = [], 0, True
                break
            number += 1
            if too_long or pending_size + end - at > MAX_LINE_BYTES:
                line: bytes | None = None
            else:
                line = b"".join([*pending, data[at:end]]) if pending else data[at:end]
            was_long = too_long or line is None
            pending, pending_size, too_long = [], 0, False
            at = end + 1
            if piece.offset is not None and seekable:
                anchor = Position(number, piece.offset + at, number)
            if number <= start.line:
                continue
            if was_long:
                yield _Line(number, None, _TOO_LONG, _resume(anchor, number))
            else:
                yield _Line(number, line, None, _resume(anchor, number))
    if (pending or too_long) and number + 1 > start.line:
        number += 1  # the last line has no newline
        tail = None if too_long else b"".join(pending)
        problem = None if tail is not None else _TOO_LONG
        yield _Line(number, tail, problem, Position(number, anchor.seek, anchor.seek_line))


def _resume(anchor: Position, number: int) -> Position:
    return Position(number, anchor.seek, anchor.seek_line)


# --- Segment archives (JSONL) -----------------------------------------------------------------


def archive(stream: IO[bytes], start: Position, *, gz: bool, seekable: bool) -> Iterator[Record]:
    for ln in lines(stream, start, gz=gz, seekable=seekable):
        if ln.data is None:
            yield Record(ln.number, None, ln.problem, ln.resume)
            continue
        text = ln.data.strip()
        if not text:
            continue  # blank lines say nothing (a trailing newline, an editor's)
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            yield Record(ln.number, None, ("invalid_json", f"not JSON: {exc}"), ln.resume)
            continue
        if not isinstance(value, dict):
            yield Record(ln.number, None, ("not_an_object", "an event must be a JSON object"), ln.resume)
            continue
        yield Record(ln.number, value, None, ln.resume)


# --- customer CSVs ----------------------------------------------------------------------------

# Columns that are the event's own fields, not traits.
_EVENT_COLUMNS = ("userId", "anonymousId", "timestamp", "messageId")


def customers(stream: IO[bytes], start: Position, *, gz: bool, default_time: str) -> Iterator[Record]:
    """One identify per row: ``userId`` (required column), other columns traits (``a.b`` nests:
    ``address.city``, ``metadata.tier``), empty cells left out (a CSV cannot tell an empty
    string from nothing; clearing a trait needs an event).  ``timestamp`` column or else
    ``default_time`` (the file's modification time: the state is as of then, so a newer live
    identify wins over it by the stale rule).  ``messageId``: a column, or a digest of the row's
    content (the same row replayed again is a duplicate for the ledger).  Always read from the
    file's beginning (the header); rows up to ``start.line`` are skipped."""
    raw = io.BufferedReader(_LineFeed(stream, gz=gz))
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        raise FileRejected(
            "empty_file", "the CSV is empty (a header row with a userId column is needed)"
        ) from None
    names = [h.strip() for h in header]
    if "userId" not in names:
        shown = ", ".join(names[:10]) or "none"
        raise FileRejected(
            "missing_user_id_column", f"the CSV has no userId column (its columns: {shown}); nothing was read"
        )
    first = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = reader.line_num
            if line > start.line:
                yield Record(line, None, ("invalid_csv", f"unreadable CSV row: {exc}"), Position(line))
            first = reader.line_num + 1
            continue
        line, first = first, reader.line_num + 1
        done = Position(reader.line_num)
        if reader.line_num <= start.line or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            yield Record(
                line,
                None,
                ("invalid_csv", f"the row has {len(row)} cells, the header {len(names)}"),
                done,
            )
            continue
        yield Record(line, _identify(names, row, default_time), None, done)


def _identify(names: list[str], row: list[str], default_time: str) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "identify"}
    traits: dict[str, Any] = {}
    for name, cell in zip(names, row, strict=True):
        value = cell.strip()
        if not value or not name:
            continue
        if name in _EVENT_COLUMNS:
            event[name] = value
            continue
        target = traits
        *parents, leaf = name.split(".")
        for part in parents:
            nested = target.get(part)
            if not isinstance(nested, dict):
                nested = target[part] = {}
            target = nested
        target[leaf] = value
    event["traits"] = traits
    if "messageId" not in event:
        digest = hashlib.sha256(orjson.dumps([event.get("userId"), traits], option=orjson.OPT_SORT_KEYS))
        event["messageId"] = "csv-" + digest.hexdigest()[:40]
    event.setdefault("timestamp", default_time)
    return event


class _LineFeed(io.RawIOBase):
    """The file's (decompressed) bytes as a raw stream for ``TextIOWrapper``; an unreadable gzip
    member ends the CSV there (a CSV's rows cannot be resynchronized mid-record)."""

    def __init__(self, stream: IO[bytes], *, gz: bool) -> None:
        self._pieces = _gzip(stream, 0) if gz else _plain(stream, 0)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            piece = next(self._pieces, None)
            if piece is None or isinstance(piece, _Bad):
                return 0
            if isinstance(piece, _Data):
                self._buf = piece.data
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

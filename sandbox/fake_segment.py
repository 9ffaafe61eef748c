"""Fake Segment HTTP Tracking API.

``python -m sandbox.fake_segment --port N --write-key KEY [--write-key KEY2]``

``POST /v1/batch`` (and ``/v1/import``), ``/v1/track``, ``/v1/identify``, ``/v1/page``,
``/v1/screen``, ``/v1/group``, ``/v1/alias``. Auth: ``Authorization: Basic base64(write_key + ":")``
(or, as Segment also allows, ``writeKey`` in the body). Segment's limits answer 400: 500 KB per
request, 32 KB per event (its compact JSON), 2,500 events per batch. Otherwise ``200
{"success": true}``, even for malformed events (as Segment does); those are recorded with
``schema_valid: false`` and their problems in ``validation_errors``.

Extra control endpoints: ``GET /__fake/events`` -> every event of every accepted request, in
arrival order, as ``{"time", "request_seq", "write_key", "duplicate", "event"}`` (``duplicate``:
its ``messageId`` was accepted before). ``DELETE /__fake/requests`` forgets them too.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import os
import sys
from collections import deque
from typing import Any

from sandbox.core import FakeApp
from sandbox.server import add_common_arguments, run
from sandbox.wire import FakeRequest, FakeResponse, dumps

DEFAULT_PORT = 9100
MAX_REQUEST_BYTES = 500 * 1024
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_EVENTS = 2500
SINGLE_TYPES = {
    "/v1/track": "track",
    "/v1/identify": "identify",
    "/v1/page": "page",
    "/v1/screen": "screen",
    "/v1/group": "group",
    "/v1/alias": "alias",
}
BATCH_PATHS = {"/v1/batch", "/v1/import"}
EVENT_TYPES = set(SINGLE_TYPES.values())


def event_problems(event: Any, index: int | None) -> list[str]:
    """Light checks of one event (what Segment would drop), not a full schema."""
    where = "$" if index is None else f"$.batch[{index}]"
    if not isinstance(event, dict):
        return [f"{where}: an event must be an object"]
    problems = []
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        problems.append(f"{where}.type: {kind!r} is not one of {sorted(EVENT_TYPES)}")
    if event.get("userId") in (None, "") and event.get("anonymousId") in (None, ""):
        problems.append(f"{where}: userId or anonymousId is required")
    if kind == "track" and not (isinstance(event.get("event"), str) and event["event"]):
        problems.append(f"{where}.event: a track call needs an event name")
    if kind == "group" and event.get("groupId") in (None, ""):
        problems.append(f"{where}.groupId: a group call needs a groupId")
    if kind == "alias" and event.get("previousId") in (None, ""):
        problems.append(f"{where}.previousId: an alias call needs a previousId")
    return problems


class FakeSegment(FakeApp):
    kind = "fake-segment"

    def __init__(
        self,
        write_keys: list[str],
        *,
        name: str = "segment",
        max_records: int = 100_000,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_batch_events: int = MAX_BATCH_EVENTS,
    ) -> None:
        super().__init__(name, max_records=max_records)
        self.write_keys = [k.encode() for k in write_keys]
        self.max_request_bytes = max_request_bytes
        self.max_event_bytes = max_event_bytes
        self.max_batch_events = max_batch_events
        self.events: deque[dict[str, Any]] = deque(maxlen=max_records * 10)
        self.message_ids: set[str] = set()

    def error_body(self, status: int, message: str, details: str = "") -> Any:
        return {"success": False, "code": status, "message": message, "details": details or message}

    def clear_records(self) -> None:
        super().clear_records()
        self.clear_state()

    def clear_state(self) -> None:
        with self.lock:
            self.events.clear()
            self.message_ids.clear()

    def control(self, req: FakeRequest) -> FakeResponse | None:
        if (req.method, req.path.rstrip("/")) == ("GET", "/__fake/events"):
            with self.lock:
                return FakeResponse(200, list(self.events))
        return None

    def write_key_of(self, req: FakeRequest) -> str | None:
        """The configured write key the request authenticates with, else None."""
        candidate: bytes | None = None
        scheme, _, value = req.header("Authorization").partition(" ")
        if scheme.lower() == "basic" and value:
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                decoded = b""
            # The key is the user name; the password part is empty.
            candidate = decoded.split(b":", 1)[0] if b":" in decoded else None
        elif isinstance(req.body, dict) and isinstance(req.body.get("writeKey"), str):
            candidate = req.body["writeKey"].encode()
        if not candidate:
            return None
        # Compare with every key (no early exit) so timing does not reveal a near match.
        match = None
        for key in self.write_keys:
            if hmac.compare_digest(candidate, key):
                match = key
        return match.decode() if match is not None else None

    def bad_request(self, message: str, **kw: Any) -> FakeResponse:
        return FakeResponse(400, self.error_body(400, message), **kw)

    def handle(self, req: FakeRequest) -> FakeResponse:
        is_batch = req.path in BATCH_PATHS
        if not is_batch and req.path not in SINGLE_TYPES:
            return FakeResponse(404, self.error_body(404, f"Not found: {req.path}"))
        if req.method != "POST":
            return FakeResponse(405, self.error_body(405, "Method not allowed"))
        write_key = self.write_key_of(req)
        if write_key is None:
            return FakeResponse(401, self.error_body(401, "Invalid write key"))
        if len(req.raw) > self.max_request_bytes:
            return self.bad_request(f"Request exceeds {self.max_request_bytes} bytes", schema_valid=False)
        if req.json_error is not None or not isinstance(req.body, dict):
            return self.bad_request("Invalid JSON: the body must be a JSON object", schema_valid=False)
        if is_batch:
            batch = req.body.get("batch")
            if not isinstance(batch, list):
                return self.bad_request("A batch needs a 'batch' array", schema_valid=False)
            if len(batch) > self.max_batch_events:
                return self.bad_request(
                    f"A batch holds at most {self.max_batch_events} events, got {len(batch)}",
                    schema_valid=False,
                )
            events = batch
        else:
            events = [{**req.body, "type": SINGLE_TYPES[req.path]}]  # the endpoint decides the type
        problems: list[str] = []
        for index, event in enumerate(events):
            size = len(dumps(event))
            if size > self.max_event_bytes:
                return self.bad_request(
                    f"Event {index} is {size} bytes, over the {self.max_event_bytes} bytes limit",
                    schema_valid=False,
                )
            problems.extend(event_problems(event, index if is_batch else None))
        return FakeResponse(
            200,
            {"success": True},
            schema_valid=not problems,
            validation_errors=problems,
            extra={"write_key": write_key, "events": len(events)},
            after_record=lambda record: self._store_events(record, write_key, events),
        )

    def _store_events(self, record: dict[str, Any], write_key: str, events: list[Any]) -> None:
        with self.lock:
            for event in events:
                message_id = event.get("messageId") if isinstance(event, dict) else None
                duplicate = isinstance(message_id, str) and message_id in self.message_ids
                if isinstance(message_id, str):
                    self.message_ids.add(message_id)
                self.events.append(
                    {
                        "time": record["time"],
                        "request_seq": record["seq"],
                        "write_key": write_key,
                        "duplicate": duplicate,
                        "event": event,
                    }
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.fake_segment", description=__doc__.split("\n")[0]
    )
    add_common_arguments(parser, DEFAULT_PORT)
    parser.add_argument(
        "--write-key",
        action="append",
        default=[],
        help="accepted write key (repeatable); FAKE_SEGMENT_WRITE_KEYS (comma-separated) also works",
    )
    parser.add_argument("--name", default="segment", help="label used in log lines and /__fake/health")
    parser.add_argument("--max-request-bytes", type=int, default=MAX_REQUEST_BYTES)
    parser.add_argument("--max-event-bytes", type=int, default=MAX_EVENT_BYTES)
    parser.add_argument("--max-batch-events", type=int, default=MAX_BATCH_EVENTS)
    args = parser.parse_args(argv)
    keys = list(args.write_key)
    keys += [k.strip() for k in os.environ.get("FAKE_SEGMENT_WRITE_KEYS", "").split(",") if k.strip()]
    if not keys:
        parser.error("at least one --write-key is required")
    app = FakeSegment(
        keys,
        name=args.name,
        max_records=args.max_records,
        max_request_bytes=args.max_request_bytes,
        max_event_bytes=args.max_event_bytes,
        max_batch_events=args.max_batch_events,
    )
    return run(app, args)


if __name__ == "__main__":
    sys.exit(main())

"""Shared pieces of the fault tests (``tests/test_faults_*.py``): configuration, sending, and the
delivery invariants read from the fakes' records and Redis.

The invariants every fault test asserts (SPEC 9):

- every accepted event is delivered or dead-lettered (:func:`assert_all_accounted`);
- none is delivered twice (:func:`double_deliveries`): a second 2xx for one ``Idempotency-Key``
  is allowed only when the first one was *in flight when the fault struck* -- the call had gone
  out, and the process that sent it died (or lost Redis) before it could record it.  No ledger
  can close that gap; Voucherify's ``Idempotency-Key`` absorbs it.  The tests list these, bound
  their number and fail on any other one;
- no 500 from the ingest (:class:`Sender` keeps every answer).
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis
import requests

from connector.keys import Keys
from tests.support.fakes import FakeProcess, FakeVoucherify
from tests.support.processes import BIN, ROOT
from workers.delivery.deadletters import DeadLetters

CONNECTION_ID = "acme"
WRITE_KEY = "wk_acme_live"
VOUCHERIFY_QUEUE = "voucherify.eu"

# Small backoff and timeouts so that faults play out in seconds.  A message waits in a worker at
# most prefetch x (task budget + read timeout) = 1 x (3 + 3) s, well inside the visibility timeout.
FAST_ENV = {
    "CONNECTOR_PREFETCH": "1",
    "CONNECTOR_RETRY_BASE_SECONDS": "0.5",
    "CONNECTOR_RETRY_CAP_SECONDS": "2",
    "CONNECTOR_SCHEDULER_INTERVAL": "0.2",
    "CONNECTOR_CONNECT_TIMEOUT": "1",
    "CONNECTOR_READ_TIMEOUT": "3",
    "CONNECTOR_CLAIM_TTL_SECONDS": "6",
    "CONNECTOR_TASK_BUDGET_SECONDS": "3",
    "CONNECTOR_VISIBILITY_TIMEOUT": "10",
    "CONNECTOR_SLOWDOWN_SECONDS": "5",
}


# Tests not about quotas configure a limit nothing reaches (the default would be the assumed
# Business plan's share: 50 calls a minute), and no hold window (every request as it comes, as
# the fault tests were written for).
UNLIMITED_API = "api_calls_per_minute = 10000000\n"
UNLIMITED = UNLIMITED_API + "bulk_calls_per_hour = 10000000\n"
NO_HOLD = "coalesce_window_seconds = 0\n"


def connections_toml(
    voucherify_url: str,
    *,
    rate_limit: int | None = None,
    extra: str = "",
    quota: str | None = None,
    fewer_calls: str | None = None,
) -> str:
    """``rate_limit``: api_calls_per_minute with share = 1 (the connector may spend it all);
    ``quota``: the quota keys verbatim (nothing: no budget in the way); ``fewer_calls``: the
    hold/bulk keys (SPEC 10) verbatim, under an API limit nothing reaches."""
    if quota is not None:
        rate = quota
    elif rate_limit:
        rate = f"api_calls_per_minute = {rate_limit}\nshare = 1\n"
    elif fewer_calls is not None:
        rate = UNLIMITED_API
    else:
        rate = UNLIMITED
    rate += NO_HOLD if fewer_calls is None else fewer_calls
    return f"""
[[connection]]
id = "{CONNECTION_ID}"
write_keys = ["{WRITE_KEY}"]
[connection.voucherify]
app_id = "test-vf-app-id"
secret_key = "test-vf-secret-key"
region = "eu"
api_url = "{voucherify_url}"
{rate}{extra}"""


def write_connections(tmp: Path, voucherify: FakeVoucherify, **kw: Any) -> Path:
    path = tmp / "connections.toml"
    path.write_text(connections_toml(voucherify.url, **kw))
    return path


def auth(key: str = WRITE_KEY) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def track(message_id: str, user: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": message_id,
        "userId": user or f"user-{message_id}",
        "event": "Order Completed",
        "properties": {"n": message_id},
        **extra,
    }


def key_of(message_id: str, action: str = "add_custom_event") -> str:
    return f"{CONNECTION_ID}:v:{message_id}:{action}"


def message_id_of(idempotency_key: str) -> str:
    return idempotency_key.split(":")[2]


# ---------------------------------------------------------------------------------------------
# Sending


class Sender:
    """Posts ``/v1/batch`` requests and keeps every answer (accepted = answered 200)."""

    def __init__(self, web_url: str) -> None:
        self.web_url = web_url
        self.session = requests.Session()
        self.accepted: list[str] = []  # message ids
        self.statuses: list[int] = []
        self.refused: list[str] = []  # message ids answered anything but 200
        self.lock = threading.Lock()

    def batch(self, events: list[dict[str, Any]], timeout: float = 15.0) -> int:
        ids = [str(e["messageId"]) for e in events]
        try:
            answer = self.session.post(
                self.web_url + "/v1/batch", json={"batch": events}, headers=auth(), timeout=timeout
            )
            status = answer.status_code
            if status == 200:
                assert answer.json().get("success") is True, answer.text
                assert not answer.json().get("rejected"), answer.text
        except requests.RequestException:
            status = -1  # no answer: not accepted
        with self.lock:
            self.statuses.append(status)
            (self.accepted if status == 200 else self.refused).extend(ids)
        return status

    def one(self, event: dict[str, Any], kind: str = "track") -> requests.Response:
        answer = self.session.post(f"{self.web_url}/v1/{kind}", json=event, headers=auth(), timeout=15)
        with self.lock:
            self.statuses.append(answer.status_code)
            if answer.status_code == 200:
                self.accepted.append(str(event["messageId"]))
        return answer

    def assert_no_server_errors(self, allowed: Iterable[int] = (200,)) -> None:
        bad = sorted({s for s in self.statuses if s not in set(allowed)})
        assert bad == [], f"unexpected ingest answers: {bad}"


def batches(events: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [events[i : i + size] for i in range(0, len(events), size)]


# ---------------------------------------------------------------------------------------------
# Reading outcomes


def calls(fake: FakeVoucherify, path: str | None = None) -> list[dict[str, Any]]:
    """Every recorded API call (not control calls), oldest first."""
    return [r for r in fake.requests(path) if not r["path"].startswith("/__fake")]


def successes(fake: FakeVoucherify, path: str | None = None) -> list[dict[str, Any]]:
    return [r for r in calls(fake, path) if 200 <= r["status"] < 300]


def idem_key(record: dict[str, Any]) -> str:
    headers = {k.lower(): v for k, v in record["headers"].items()}
    return str(headers.get("idempotency-key", ""))


def by_key(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records per Idempotency-Key, in ARRIVAL order (the fake records a call when it answers)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r["time"]):
        out[idem_key(record)].append(record)
    return out


def delivered_ids(fake: FakeVoucherify, path: str | None = None) -> set[str]:
    return {message_id_of(k) for k in by_key(successes(fake, path)) if k}


def outcome_lines(log_text: str, outcome: str | None = None) -> list[dict[str, Any]]:
    """The per-event outcome lines (JSON) of a worker's log, optionally of one ``outcome``."""
    found = []
    for line in log_text.splitlines():
        if not line.startswith("{") or '"outcome"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if outcome is None or record.get("outcome") == outcome:
            found.append(record)
    return found


def dead_letters(redis_url: str) -> list[Any]:
    client = redis.Redis.from_url(redis_url)
    try:
        return list(DeadLetters(client, Keys.from_env()).iter())
    finally:
        client.close()


def dead_lettered_ids(redis_url: str) -> set[str]:
    return {str(d.message_id) for d in dead_letters(redis_url)}


def parked_items(redis_url: str) -> list[dict[str, Any]]:
    """Items waiting in the delayed store (retries, throttled work)."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = Keys.from_env()
        out: list[dict[str, Any]] = []
        for raw in client.hvals(keys.delayed_data):
            out.extend(json.loads(raw)["items"])
        return out
    finally:
        client.close()


def caught_up(fake: FakeProcess) -> float:
    """The fake's clock when it has taken up every request already sent to it: the end of a
    fault window, measured on the clock of the fake's records right after the fault.

    Two probes, one after the other: a call written to a socket before the first probe was sent
    is ready for the fake before that probe is, so it is taken up by the time the second probe
    is.  On a loaded machine the fake runs behind and this time is later than the test's clock;
    a fixed grace would make such a machine red, this one measures what was on the wire."""
    fake.health()
    return float(fake.health()["received_at"])


def double_deliveries(
    fake: FakeVoucherify,
    faults: list[tuple[float, float]],
    *,
    before: float = 1.0,
    after: float = 0.0,
) -> tuple[list[str], list[str]]:
    """(explained, unexplained) keys with more than one 2xx.

    Explained: exactly two 2xx, the first of which was on the wire during a fault window
    ``(start, end)``: it arrived at the fake no later than the window's end, measured on the
    fake's clock (:func:`caught_up` after the fault; ``after``: more), and its answer went out at
    most ``before`` seconds before the window began -- the time a live worker may take to record
    an answer it has received (one batched Redis round trip, under load).  Anything delivered
    earlier was recorded, or should have been: re-sending it is a bug (a whole task re-sent after
    a fault, say).
    """
    explained: list[str] = []
    unexplained: list[str] = []
    for key, records in by_key(successes(fake)).items():
        if len(records) < 2:
            continue
        first = records[0]
        start, end = first["time"], first["time"] + first["duration_ms"] / 1000.0
        in_flight = any(start <= f_end + after and end >= f_start - before for f_start, f_end in faults)
        (explained if in_flight and len(records) == 2 else unexplained).append(key)
    return explained, unexplained


def assert_all_accounted(
    fake: FakeVoucherify, redis_url: str, accepted: Iterable[str], *, path: str | None = None
) -> None:
    accepted = set(accepted)
    delivered = delivered_ids(fake, path)
    dead = dead_lettered_ids(redis_url)
    missing = accepted - delivered - dead
    assert not missing, (
        f"{len(missing)} accepted events neither delivered nor dead-lettered: {sorted(missing)[:10]}"
    )


# ---------------------------------------------------------------------------------------------
# The CLI, as an operator runs it


def connector_cli(
    env: dict[str, str], *args: str, timeout: float = 60.0, log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``connector ARGS`` as an operator runs it; ``log``: a file its command and output are
    appended to (beside a stack's process logs, which the session-end secret scan reads)."""
    result = subprocess.run(
        [str(BIN / "connector"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if log is not None:
        with open(log, "a") as out:
            out.write(f"$ connector {' '.join(args)}\n{result.stdout}{result.stderr}\n")
    return result


def wait_quiet(fake: FakeProcess, seconds: float, timeout: float = 120.0) -> None:
    """Wait until the fake has seen no new call for ``seconds`` (so late duplicates would show)."""
    deadline = time.monotonic() + timeout
    last = -1
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        count = len(fake.requests())
        if count != last:
            last, quiet_since = count, time.monotonic()
        elif time.monotonic() - quiet_since >= seconds:
            return
        time.sleep(0.2)
    raise AssertionError(f"the fake never went quiet for {seconds}s")


def taken_from_broker(redis_url: str, tasks: int) -> bool:
    """Whether workers took ``tasks`` messages: the queues empty, that many delivered and not yet
    acknowledged (kombu's unacked index; the connector acknowledges a task when it ends).  Read
    from Redis, not from Celery's "received" log lines, which are DEBUG lines at INFO."""
    state = broker_state(redis_url)
    return sum(state["queues"].values()) == 0 and state["unacked"] >= tasks


def _waiting(client: redis.Redis, keys: Keys, now: float) -> dict[str, Any]:
    """Why work waits: each delayed entry's due (seconds from now), reason and message ids, the
    held customers' dues, and the customers' ``out`` markers (value, ms left)."""
    entries = []
    for raw_id, due in client.zrange(keys.delayed, 0, 19, withscores=True):
        raw = client.hget(keys.delayed_data, raw_id)
        data = json.loads(raw) if raw else {}
        items = data.get("items") or []
        ids = [
            m
            for item in items
            for m in [(item.get("request") or {}).get("message_id")]
            + [p.get("message_id") for p in (item.get("request") or {}).get("parts") or ()]
        ][:6]
        entries.append((round(float(due) / 1000 - now, 1), data.get("reason"), len(items), ids))
    holds = {
        k.decode(): [
            (m.decode(), round(float(s) / 1000 - now, 1)) for m, s in client.zrange(k, 0, 9, withscores=True)
        ]
        for k in client.scan_iter(keys.prefix + "holds:*")
    }
    markers = {
        k.decode().rsplit(":", 1)[-1]: (client.get(k), client.pttl(k))
        for k in list(client.scan_iter(keys.prefix + "holdout:*"))[:20]
    }
    return {"delayed_entries": entries, "holds": holds, "out_markers": markers}


def broker_state(redis_url: str) -> dict[str, Any]:
    """What Redis holds, for failure messages: queues, kombu's unacked index, parked work."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = Keys.from_env()
        now = time.time()
        unacked: list[Any] = list(client.zrange("unacked_index", 0, -1, withscores=True))
        return {
            "queues": {
                k.decode(): client.llen(k)
                for k in client.scan_iter("voucherify.*")
                if client.type(k) == b"list"
            },
            "unacked": len(unacked),
            "unacked_ages": sorted(round(now - float(entry[1]), 1) for entry in unacked)[:20],
            "unacked_mutex": client.get("unacked_mutex"),
            "delayed": client.zcard(keys.delayed),
            "dead_letters": client.zcard(keys.dlq),
            **_waiting(client, keys, now),
        }
    finally:
        client.close()

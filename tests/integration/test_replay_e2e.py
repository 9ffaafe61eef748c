"""``connector replay`` with real processes (SPEC 15): gunicorn, gevent Celery workers, the
scheduler, Redis and the fake Voucherify enforcing its limits on a fast clock.

- an archive of 20,000 identifies for 5,000 customers (four versions each), 500 tracks, events
  outside the window and 50 bad lines, in gzip members: replayed, killed with -9 partway and
  resumed -- the newest state for every customer (also where a newer live identify arrived
  during the replay), every custom event once, the window respected, the 50 rejections in the
  report with their line numbers, live ingest answering 200 throughout, at most 0.02 customer
  calls per customer and no 429; a second replay of the same file sends nothing again;
- pacing: with a small backlog bound, a replay many times its size never makes the live door
  answer ``backlog_full``;
- a CSV of 1,000 customers backfilled; a CSV without ``userId`` is refused; a missing file or
  connection is exit code 2.
"""

from __future__ import annotations

import gzip
import json
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.conftest import make_stack
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import (
    FAST_ENV,
    Sender,
    calls,
    connector_cli,
    dead_letters,
    idem_key,
    successes,
    wait_quiet,
    write_connections,
)
from tests.support.identify_traffic import BULK_PATH, CUSTOMERS_PATH, EVENTS_PATH
from tests.support.processes import BIN, ROOT, Stack, wait_until

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.support.private_redis"]

SCALE = 0.05  # a quota "minute" lasts 3 s, an "hour" 180 s
# Organization's per-minute limit, with a bulk budget (current plans have none; the older ones
# do): what a backfill of many customers needs to stay near 0.01 calls per customer.
QUOTA = "api_calls_per_minute = 2000\nbulk_calls_per_hour = 400\n"
# The scheduler at its production pace (FAST_ENV's 0.2 s is for retries): what falls due in one
# tick is released together, so the held customers of a tick fill their bulks.
ENV = {
    **FAST_ENV,
    "CONNECTOR_QUOTA_PERIOD_SCALE": str(SCALE),
    "CONNECTOR_DELIVERY_CONCURRENCY": "8",
    "CONNECTOR_SCHEDULER_INTERVAL": "1",
}
BASE = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
FROM, TO = "2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z"


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@pytest.fixture
def voucherify(tmp_path: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(log_dir=tmp_path / "fakes") as fake:
        fake.set_quota(api_calls_per_minute=2000, bulk_calls_per_hour=400, period_scale=SCALE)
        yield fake


def start(
    stack_factory: list, tmp_path: Path, redis_url: str, fake: FakeVoucherify, extra: str = ""
) -> Stack:
    config = write_connections(
        tmp_path, fake, quota=QUOTA, fewer_calls="coalesce_window_seconds = 60\n" + extra
    )
    stack = make_stack(stack_factory, tmp_path, redis_url, config, **ENV)
    stack.web()
    stack.worker("w1", concurrency=8)
    stack.scheduler()
    return stack


def cli(stack: Stack, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return connector_cli(stack.env, *args, timeout=timeout, log=stack.tmp / "cli.log")


class Archive:
    """What the archive holds and what must come of it."""

    def __init__(self, customers: int = 5000, versions: int = 4, tracks: int = 500, bad: int = 50) -> None:
        rng = random.Random(22)
        self.customers = [f"cust-{n:05d}" for n in range(customers)]
        self.versions = versions
        lines: list[tuple[float, bytes]] = []
        for n, customer in enumerate(self.customers):
            for v in range(1, versions + 1):
                at = BASE + 3600 * v + rng.uniform(0, 3000) + n * 0.01
                lines.append((at, self._identify(f"{customer}-v{v}", customer, at, v)))
        self.tracks = [f"track-{n:04d}" for n in range(tracks)]
        for n, mid in enumerate(self.tracks):
            # Shoppers who are not among the identified customers: a custom event in a customer's
            # lane sends the upserts behind it singly, in lane order (SPEC 13: Voucherify sees
            # them in order) -- measured, 102 of 500 such customers got a single call
            # (0.038 calls per customer): the 0.02 target is about the identifies' bulk.
            at = BASE + 600 + n * 5.0
            lines.append((at, self._track(mid, f"shopper-{n:03d}", at)))
        self.outside = [f"out-{n}" for n in range(40)]
        for n, mid in enumerate(self.outside):  # before FROM, and at/after TO
            at = BASE - 86400 + n if n % 2 else BASE + 86400 + n
            lines.append((at, self._identify(mid, f"outsider-{n}", at, 1)))
        lines.sort()
        body = [line for _, line in lines]
        self.bad_lines: list[int] = []
        for k in range(bad):
            pos = rng.randrange(len(body))
            body.insert(pos, self._bad(k))
        self.bad_lines = [i + 1 for i, line in enumerate(body) if line.startswith(b"#")]
        self.body = body

    @staticmethod
    def _identify(mid: str, user: str, at: float, v: int) -> bytes:
        event = {
            "type": "identify",
            "messageId": mid,
            "userId": user,
            "timestamp": iso(at),
            "originalTimestamp": iso(at - 2),
            "sentAt": iso(at + 1),
            "receivedAt": iso(at + 0.5),
            "traits": {"name": f"{user} v{v}", "email": f"{user}-v{v}@example.com"},
        }
        return orjson.dumps(event)

    @staticmethod
    def _track(mid: str, user: str, at: float) -> bytes:
        return orjson.dumps(
            {
                "type": "track",
                "messageId": mid,
                "userId": user,
                "event": "Order Completed",
                "timestamp": iso(at),
            }
        )

    @staticmethod
    def _bad(k: int) -> bytes:
        # "#" first: every bad line is found again by its prefix (not JSON, then JSON without
        # identity, then an unknown type -- the marker rides in a field).
        if k % 3 == 0:
            return b"#not json " + str(k).encode()
        if k % 3 == 1:
            return b"#" + orjson.dumps({"type": "track", "event": "no identity"})
        return b"#" + orjson.dumps({"type": "nonsense", "userId": "x"})

    def write(self, path: Path, members: int = 4) -> Path:
        """Gzip, several members (as ``cat`` of daily files makes); the '#' markers removed."""
        clean = [line[1:] if line.startswith(b"#") else line for line in self.body]
        step = len(clean) // members + 1
        with path.open("wb") as out:
            for i in range(0, len(clean), step):
                out.write(gzip.compress(b"\n".join(clean[i : i + step]) + b"\n"))
        return path


def customer_calls(fake: FakeVoucherify) -> list[dict[str, Any]]:
    return calls(fake, CUSTOMERS_PATH) + calls(fake, BULK_PATH)


def subjects(record: dict[str, Any]) -> list[str]:
    """The customers a /v1/customers or bulk call is about."""
    body = record.get("body")
    items = body if isinstance(body, list) else [body]
    return [str(item.get("source_id")) for item in items if isinstance(item, dict)]


def checkpoint_line(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter("connector:replay:*"):
            raw = client.get(key)
            if raw:
                return int(json.loads(raw)["position"][0])
        return 0
    finally:
        client.close()


def test_an_archive_replayed_killed_and_resumed_lands_once_and_newest(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    stack = start(stack_factory, tmp_path, private_redis, voucherify)
    archive = Archive()
    path = archive.write(tmp_path / "segment-archive.json.gz")
    report = tmp_path / "rejected.jsonl"
    args = ["replay", "-c", "acme", str(path), "--from", FROM, "--to", TO, "--report", str(report), "--json"]

    # Live traffic all along: other customers' identifies, and newer identifies of 50 replayed
    # customers (their live state must survive the replay's older versions).
    sender = Sender(stack.web_url)
    live_newer = archive.customers[::100]
    stop = threading.Event()

    def live() -> None:
        n = 0
        while not stop.is_set():
            batch = [
                {
                    "type": "identify",
                    "messageId": f"live-{n}-{i}",
                    "userId": f"live-{n % 40}-{i}",
                    "traits": {"name": f"live {n}"},
                }
                for i in range(5)
            ]
            sender.batch(batch)
            n += 1
            time.sleep(0.2)

    feeder = threading.Thread(target=live, daemon=True)
    feeder.start()
    first = subprocess.Popen(
        [str(BIN / "connector"), *args],
        env=stack.env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: checkpoint_line(private_redis) >= 6000, timeout=120, what="a checkpoint partway")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    killed_at = checkpoint_line(private_redis)
    assert killed_at < len(archive.body), "killed too late to show a resume"
    newest = BASE + 3600 * 6
    for n, customer in enumerate(live_newer):
        sender.batch(
            [
                {
                    "type": "identify",
                    "messageId": f"newer-{n}",
                    "userId": customer,
                    "timestamp": iso(newest + n),
                    "traits": {"name": f"{customer} live"},
                }
            ]
        )
    began = time.monotonic()
    resumed = cli(stack, *args, "--resume")
    print(f"killed at line {killed_at}; the resumed run took {time.monotonic() - began:.1f} s")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)["files"][0]

    wait_until(
        lambda: (
            len({c["source_id"] for c in voucherify.customers()} & set(archive.customers))
            == len(archive.customers)
        ),
        timeout=240,
        what="every replayed customer in Voucherify",
    )
    stop.set()
    feeder.join(10)
    wait_quiet(voucherify, seconds=10)  # the bulks' read-backs, the live identifies' hold

    # The summary counts the whole file, the killed run's part included.
    assert summary["lines"] == len(archive.body)
    assert summary["rejected_total"] == 50, summary["rejected"]
    assert summary["skipped"].get("outside_window") == len(archive.outside)
    rejected = [json.loads(line) for line in report.read_text().splitlines()]
    assert sorted(r["line"] for r in rejected) == archive.bad_lines
    assert Counter(r["code"] for r in rejected) == {
        "invalid_json": 17,
        "missing_identity": 17,
        "invalid_type": 16,
    }

    store = {c["source_id"]: c for c in voucherify.customers()}
    for customer in archive.customers:
        expected = f"{customer} live" if customer in live_newer else f"{customer} v{archive.versions}"
        assert store[customer]["name"] == expected, (customer, store[customer])
    assert not any(c.startswith("outsider-") for c in store)  # the window

    events = Counter(idem_key(r).split(":")[2] for r in successes(voucherify, EVENTS_PATH))
    assert set(events) == set(archive.tracks) and set(events.values()) == {1}

    replayed_calls = [
        r for r in customer_calls(voucherify) if any(c.startswith("cust-") for c in subjects(r))
    ]
    per_customer = len(replayed_calls) / len(archive.customers)
    print(
        f"customer calls: {len(replayed_calls)} for {len(archive.customers)} customers = {per_customer:.4f}"
    )
    sizes = Counter(len(subjects(r)) for r in calls(voucherify, BULK_PATH))
    print("bulk sizes:", sorted(sizes.items()))
    assert per_customer <= 0.02
    assert not [r for r in calls(voucherify) if r["status"] == 429]
    sender.assert_no_server_errors()
    assert dead_letters(private_redis) == []

    # The same file again: the ledger knows every event, nothing is sent twice.
    before = len(calls(voucherify))
    again = cli(
        stack,
        "replay",
        "-c",
        "acme",
        str(path),
        "--from",
        FROM,
        "--to",
        TO,
        "--json",
        "--report",
        str(tmp_path / "again.jsonl"),
    )
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)["files"][0]
    assert second["skipped"].get("duplicate", 0) >= len(archive.tracks)
    wait_quiet(voucherify, seconds=10)
    events = Counter(idem_key(r).split(":")[2] for r in successes(voucherify, EVENTS_PATH))
    assert set(events.values()) == {1}
    print(f"second replay: {len(calls(voucherify)) - before} calls, {second['skipped']}")


def test_a_csv_backfill_paced_under_live_traffic_and_the_refusals(
    tmp_path: Path, private_redis: str, stack_factory: list, voucherify: FakeVoucherify
) -> None:
    """1,000 customers from a CSV through a backlog bound of 300: the replay keeps under half of
    it (waits), the live door answers 200 throughout; then the refusals and the dry run."""
    bound = 300
    config = write_connections(tmp_path, voucherify, quota=QUOTA, fewer_calls="coalesce_window_seconds = 2\n")
    text = config.read_text().replace(
        "[connection.voucherify]", f"backlog_limit = {bound}\n[connection.voucherify]"
    )
    config.write_text(text)
    stack = make_stack(stack_factory, tmp_path, private_redis, config, **ENV)
    stack.web()
    stack.worker("w1", concurrency=8)
    stack.scheduler()
    rows = ["userId,name,email,metadata.tier"] + [
        f"csv-{n:04d},Customer {n},c{n}@example.com,{'gold' if n % 2 else 'silver'}" for n in range(1000)
    ]
    path = tmp_path / "customers.csv"
    path.write_text("\n".join(rows) + "\n")

    dry = cli(stack, "replay", "-c", "acme", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would enqueue 1,000 (identify 1,000)" in dry.stdout and "Voucherify calls expected" in dry.stdout
    assert calls(voucherify) == []  # a dry run sends nothing

    sender = Sender(stack.web_url)
    stop = threading.Event()
    highest = [0]
    client = redis.Redis.from_url(private_redis)

    def live() -> None:
        n = 0
        while not stop.is_set():
            sender.batch(
                [
                    {"type": "track", "messageId": f"live-{n}-{i}", "userId": f"live-{i}", "event": "Seen"}
                    for i in range(3)
                ]
            )
            highest[0] = max(highest[0], int(client.get("connector:backlog:acme") or 0))
            n += 1
            time.sleep(0.1)

    feeder = threading.Thread(target=live, daemon=True)
    feeder.start()
    try:
        result = cli(
            stack, "replay", "-c", "acme", str(path), "--json", "--report", str(tmp_path / "r.jsonl")
        )
        assert result.returncode == 0, result.stderr
        wait_until(
            lambda: sum(1 for c in voucherify.customers() if c["source_id"].startswith("csv-")) == 1000,
            timeout=120,
            what="1,000 customers backfilled",
        )
    finally:
        stop.set()
        feeder.join(10)
        client.close()
    summary = json.loads(result.stdout)["files"][0]
    assert summary["accepted"] == 1000 and summary["rejected_total"] == 0
    store = {c["source_id"]: c for c in voucherify.customers()}
    assert store["csv-0007"]["name"] == "Customer 7" and store["csv-0007"]["email"] == "c7@example.com"
    assert sender.statuses and set(sender.statuses) == {200}, Counter(sender.statuses)  # never backlog_full
    print(f"highest backlog seen by the live sender: {highest[0]} (bound {bound})")

    # A CSV without userId: refused as a whole, said clearly, exit 1; nothing sent.
    bad = tmp_path / "no-user.csv"
    bad.write_text("id,email\n1,a@example.com\n")
    wait_quiet(voucherify, seconds=4)
    before = len(calls(voucherify))
    refused = cli(stack, "replay", "-c", "acme", str(bad), "--report", str(tmp_path / "refused.jsonl"))
    assert refused.returncode == 1 and "no userId column" in refused.stderr, refused.stderr
    # A file or a connection that does not exist: exit 2, nothing read.
    missing = cli(
        stack, "replay", "-c", "acme", str(tmp_path / "nope.json.gz"), "--report", str(tmp_path / "m.jsonl")
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr
    unknown = cli(stack, "replay", "-c", "nobody", str(path), "--report", str(tmp_path / "u.jsonl"))
    assert unknown.returncode == 2 and "no connection 'nobody'" in unknown.stderr
    assert len(calls(voucherify)) == before

    # stdin, gzip: `zcat`-free piping of an archive (`connector replay -c acme -`).
    piped_ids = [f"stdin-{i}" for i in range(20)]
    body = b"\n".join(
        orjson.dumps({"type": "track", "messageId": m, "userId": m, "event": "Piped"}) for m in piped_ids
    )
    piped = subprocess.run(
        [
            str(BIN / "connector"),
            "replay",
            "-c",
            "acme",
            "-",
            "--json",
            "--report",
            str(tmp_path / "p.jsonl"),
        ],
        input=gzip.compress(body),
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["files"][0]["accepted"] == 20

    def piped_delivered() -> bool:
        keys = {idem_key(r).split(":")[2] for r in successes(voucherify, EVENTS_PATH)}
        return set(piped_ids) <= keys

    wait_until(piped_delivered, timeout=60, what="the piped events delivered")

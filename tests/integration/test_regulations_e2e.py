"""Regulations end to end (SPEC 14): gunicorn, a Celery worker, the scheduler, redis-server and
the fake Voucherify.  A subject with a dead letter, traces and an upsert parked for a retry is
regulated SUPPRESS_WITH_DELETE: nothing of it reaches Voucherify afterwards, its permanent
deletion is called once, its dead letters and traces are gone, the regulation FINISHES; the
suppression survives a restart of the web and the worker; UNSUPPRESS lets later events through;
DELETE_ONLY deletes without suppressing; a refused deletion ends FAILED with the answer shown
while the suppression holds; the door's auth and bad input."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import make_stack
from tests.support import secrets
from tests.support.fakes import FakeSegment, FakeVoucherify
from tests.support.faultkit import connector_cli
from tests.support.processes import Stack, wait_until
from tests.support.webhooks import V2024, iso_now, load_example, signed_request, wrap

pytestmark = pytest.mark.integration

CONNECTION = "privacy"
WRITE_KEY = "wk_regulations_e2e_write_21"
APP_ID = "regulations-e2e-app-id"
SECRET = "regulations-e2e-vf-secret-9c2e"
ADMIN_TOKEN = "regulations-e2e-admin-token-77d1"
STATUS_TOKEN = "regulations-e2e-status-token-31a"
FAST = {
    "CONNECTOR_RETRY_BASE_SECONDS": "2",
    "CONNECTOR_RETRY_CAP_SECONDS": "3",
    "CONNECTOR_SCHEDULER_INTERVAL": "0.2",
    "ADMIN_TOKEN": ADMIN_TOKEN,
    "STATUS_TOKEN": STATUS_TOKEN,
}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def connections(url: str) -> str:
    return f"""
[[connection]]
id = "{CONNECTION}"
write_keys = ["{WRITE_KEY}"]
[connection.voucherify]
app_id = "{APP_ID}"
secret_key = "{SECRET}"
region = "eu"
api_url = "{url}"
coalesce_window_seconds = 0
"""


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return connector_cli(stack.env, *args, log=stack.tmp / "cli.log")


def traced(stack: Stack, event_id: str) -> dict[str, Any] | None:
    """The event's trace; None when there is none (exit status 1), never a failed command."""
    result = cli(stack, "trace", event_id, "--json")
    assert result.returncode in (0, 1), result.stderr[-2000:]
    return json.loads(result.stdout) if result.returncode == 0 else None


def send(stack: Stack, user: str, message_id: str, kind: str = "identify") -> None:
    event: dict[str, Any] = {"type": kind, "userId": user, "messageId": message_id}
    if kind == "identify":
        event["traits"] = {"email": f"{user}@example.com", "name": message_id}
    else:
        event["event"] = f"Event {message_id}"
    answer = requests.post(
        f"{stack.web_url}/v1/batch", json={"batch": [event]}, auth=(WRITE_KEY, ""), timeout=10
    )
    assert answer.status_code == 200, answer.text


def regulate(stack: Stack, kind: str, *users: str, **extra: Any) -> str:
    body = {"regulationType": kind, "subjectType": "USER_ID", "subjectIds": list(users), **extra}
    answer = requests.post(f"{stack.web_url}/v1/regulations", json=body, headers=ADMIN, timeout=10)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["data"]["regulateId"])


def regulation(stack: Stack, regulation_id: str) -> dict[str, Any]:
    answer = requests.get(f"{stack.web_url}/v1/regulations/{regulation_id}", headers=ADMIN, timeout=10)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()["data"]["regulation"]
    return found


def settled(stack: Stack, regulation_id: str) -> dict[str, Any]:
    box: dict[str, Any] = {}

    def done() -> bool:
        box.update(regulation(stack, regulation_id))
        return box["overallStatus"] != "RUNNING"

    wait_until(done, timeout=60, what=f"regulation {regulation_id} settled")
    return box


def outcome(stack: Stack, event_id: str) -> str | None:
    trace = traced(stack, event_id)
    return trace.get("outcome") if trace else None


def upserts_of(fake: FakeVoucherify, user: str, since: int = 0) -> list[dict[str, Any]]:
    return [
        r
        for r in fake.requests(path="/v1/customers", method="POST")
        if r["seq"] > since and (r.get("body") or {}).get("source_id") == user and r["status"] == 200
    ]


def deletions(fake: FakeVoucherify, user: str) -> list[dict[str, Any]]:
    return [r for r in fake.requests(path=f"/v1/customers/{user}/permanent-deletion")]


def last_seq(fake: FakeVoucherify) -> int:
    return max((r["seq"] for r in fake.requests()), default=0)


def test_regulations(tmp_path: Path, redis_url: str, stack_factory: list) -> None:
    secrets.register(SECRET, WRITE_KEY, APP_ID, ADMIN_TOKEN, STATUS_TOKEN)
    fake = FakeVoucherify(app_id=APP_ID, secret_key=SECRET, name="vf-regulations", log_dir=tmp_path).start()
    try:
        path = tmp_path / "connections.toml"
        path.write_text(connections(fake.url))
        stack = make_stack(stack_factory, tmp_path, redis_url, path, **FAST)
        web = stack.web(workers=1)
        worker = stack.worker(concurrency=4)
        stack.scheduler()
        url = f"{stack.web_url}/v1/regulations"

        # --- the door: an admin's token only; bad input named ----------------------------------
        good = {"regulationType": "SUPPRESS_ONLY", "subjectType": "USER_ID", "subjectIds": ["x"]}
        assert requests.post(url, json=good, timeout=5).status_code == 401
        assert requests.post(url, json=good, auth=(WRITE_KEY, ""), timeout=5).status_code == 401
        wrong = requests.post(
            url, json=good, headers={"Authorization": "Bearer not-the-token-at-all"}, timeout=5
        )
        assert wrong.status_code == 401 and ADMIN_TOKEN not in wrong.text
        for body, field in (
            ({**good, "regulationType": "FORGET_EVERYTHING"}, "regulationType"),
            ({**good, "subjectIds": []}, "subjectIds"),
            ({**good, "subjectIds": [f"u{i}" for i in range(5001)]}, "subjectIds"),
            ({**good, "connections": ["nope"]}, "connections"),
            ({**good, "subjectType": "EMAIL"}, "subjectType"),
            ({k: v for k, v in good.items() if k != "subjectIds"}, "subjectIds"),
        ):
            answer = requests.post(url, json=body, headers=ADMIN, timeout=10)
            assert answer.status_code == 400, (body, answer.text)
            assert set(answer.json()) >= {"code", "message"} and field in answer.json()["message"], (
                answer.text
            )
        assert requests.post(url, data=b"{not json", headers=ADMIN, timeout=5).status_code == 400
        unknown = requests.get(f"{url}/reg_doesnotexist", headers=ADMIN, timeout=5)
        assert unknown.status_code == 404

        # --- alice: a dead letter, then an upsert parked for a retry -----------------------------
        fake.set_faults(path="/v1/events", statuses=[400, 400, 400])
        send(stack, "alice", "alice-dead", kind="track")
        wait_until(
            lambda: outcome(stack, "alice-dead") == "dead_letter", timeout=30, what="alice's dead letter"
        )
        send(stack, "bob", "bob-1")
        wait_until(lambda: outcome(stack, "bob-1") == "delivered", timeout=30, what="bob delivered")
        fake.set_faults(path="/v1/customers", method="POST", statuses=[503], then=503)
        send(stack, "alice", "alice-parked")

        def parked() -> bool:
            trace = traced(stack, "alice-parked")
            return bool(trace) and any(r.get("kind") == "wait" for r in trace["records"])

        wait_until(parked, timeout=30, what="alice's upsert parked for a retry")
        assert "alice-dead" in cli(stack, "dlq", "list").stdout

        reg = regulate(stack, "SUPPRESS_WITH_DELETE", "alice")
        fake.reset_faults()  # Voucherify answers again: only the suppression keeps alice out
        since = last_seq(fake)
        send(stack, "alice", "alice-after")  # from the regulation on: dropped at the door
        found = settled(stack, reg)
        assert found["overallStatus"] == "FINISHED", found
        assert (
            found["regulationType"] == "SUPPRESS_WITH_DELETE" and found["createdAt"] and found["finishedAt"]
        )
        assert found["connections"][CONNECTION]["status"] == "FINISHED", found
        time.sleep(4)  # past the parked retry's due time: it would have been sent by now
        assert upserts_of(fake, "alice", since) == []
        assert len(deletions(fake, "alice")) == 1
        assert all(c.get("source_id") != "alice" for c in fake.customers())
        for event_id in ("alice-dead", "alice-parked"):
            assert traced(stack, event_id) is None, event_id
        assert "alice-dead" not in cli(stack, "dlq", "list").stdout

        # --- suppression survives a restart of the web and the worker ----------------------------
        web.stop()
        worker.stop()
        stack.web(workers=1)
        worker = stack.worker(concurrency=4)
        since = last_seq(fake)
        send(stack, "alice", "alice-restarted")
        send(stack, "bob", "bob-2")
        wait_until(lambda: outcome(stack, "bob-2") == "delivered", timeout=30, what="bob delivered")
        assert upserts_of(fake, "alice", since) == []
        # The web writes its traces at most once a second (and from a thread after the last
        # request): the skip is in Redis within about a second of its answer.
        deadline = time.monotonic() + 10
        while (trace := traced(stack, "alice-restarted")) is None or trace.get("outcome") != "skipped":
            assert time.monotonic() < deadline, f"alice-restarted not skipped at the door: {trace}"
            time.sleep(0.2)

        def counted() -> bool:
            answer = requests.get(
                f"{stack.web_url}/status.json", headers={"Authorization": f"Bearer {STATUS_TOKEN}"}, timeout=5
            )
            return answer.json()["overview"][CONNECTION]["last_hour"]["skipped"].get("suppressed", 0) >= 2

        wait_until(counted, timeout=15, what="suppressed skips counted")
        assert "suppressed" in cli(stack, "overview").stdout

        # --- UNSUPPRESS: later events flow again --------------------------------------------------
        lifted = regulate(stack, "UNSUPPRESS", "alice")
        assert settled(stack, lifted)["overallStatus"] == "FINISHED"
        send(stack, "alice", "alice-back")
        wait_until(
            lambda: outcome(stack, "alice-back") == "delivered", timeout=30, what="alice delivered again"
        )

        # --- DELETE_ONLY: deleted, not suppressed -------------------------------------------------
        only = regulate(stack, "DELETE_ONLY", "bob", connections=[CONNECTION])
        assert settled(stack, only)["overallStatus"] == "FINISHED"
        assert len(deletions(fake, "bob")) == 1
        send(stack, "bob", "bob-3")
        wait_until(lambda: outcome(stack, "bob-3") == "delivered", timeout=30, what="bob still delivered")

        # --- a refused deletion: FAILED with the answer, suppression holds -------------------------
        send(stack, "carol", "carol-1")
        wait_until(lambda: outcome(stack, "carol-1") == "delivered", timeout=30, what="carol delivered")
        fake.set_faults(path="/v1/customers/carol/permanent-deletion", statuses=[400], then=400)
        refused = regulate(stack, "SUPPRESS_WITH_DELETE", "carol")
        failed = settled(stack, refused)
        assert failed["overallStatus"] == "FAILED", failed
        assert "400" in failed["connections"][CONNECTION]["detail"], failed
        fake.reset_faults()
        since = last_seq(fake)
        send(stack, "carol", "carol-2")
        send(stack, "dave", "dave-1")
        wait_until(lambda: outcome(stack, "dave-1") == "delivered", timeout=30, what="dave delivered")
        assert upserts_of(fake, "carol", since) == []

        # --- SUPPRESS_ONLY: work already parked is dropped at its turn, never sent (the engine) ------
        fake.set_faults(path="/v1/customers", method="POST", statuses=[503], then=503)
        send(stack, "frank", "frank-parked")

        def frank_parked() -> bool:
            trace = traced(stack, "frank-parked")
            return bool(trace) and any(r.get("kind") == "wait" for r in trace["records"])

        wait_until(frank_parked, timeout=30, what="frank's upsert parked for a retry")
        quiet = regulate(stack, "SUPPRESS_ONLY", "frank")
        assert settled(stack, quiet)["overallStatus"] == "FINISHED"
        fake.reset_faults()
        since = last_seq(fake)
        wait_until(
            lambda: outcome(stack, "frank-parked") == "skipped",
            timeout=30,
            what="frank's parked upsert dropped",
        )
        assert traced(stack, "frank-parked")["reason"] == "suppressed"  # type: ignore[index]
        assert upserts_of(fake, "frank", since) == [] and deletions(fake, "frank") == []

        # --- the CLI: regulate --wait, regulations [ID] [--suppressed] [--json] --------------------
        done = cli(stack, "regulate", "SUPPRESS_WITH_DELETE", "erin", "--connection", CONNECTION, "--wait")
        assert done.returncode == 0 and "FINISHED" in done.stdout, done.stdout + done.stderr
        assert len(deletions(fake, "erin")) == 1
        listed = json.loads(cli(stack, "regulations", "--suppressed", "--json").stdout)
        assert listed == {CONNECTION: ["carol", "erin", "frank"]}, listed
        shown = json.loads(cli(stack, "regulations", refused, "--json").stdout)
        assert shown["overallStatus"] == "FAILED"
        assert refused in cli(stack, "regulations").stdout
        bad = cli(stack, "regulate", "FORGET", "erin")
        assert bad.returncode != 0 and "TYPE" in bad.stderr
    finally:
        fake.stop()


def test_regulations_are_off_without_admin_token(tmp_path: Path, redis_url: str, stack_factory: list) -> None:
    secrets.register(SECRET, WRITE_KEY, APP_ID)
    path = tmp_path / "connections.toml"
    path.write_text(connections("http://127.0.0.1:9"))
    stack = make_stack(stack_factory, tmp_path, redis_url, path)
    stack.web(workers=1)
    body = {"regulationType": "SUPPRESS_ONLY", "subjectType": "USER_ID", "subjectIds": ["x"]}
    answer = requests.post(f"{stack.web_url}/v1/regulations", json=body, headers=ADMIN, timeout=5)
    assert answer.status_code == 404
    assert (
        requests.post(
            f"{stack.web_url}/v1/regulations", json=body, auth=(WRITE_KEY, ""), timeout=5
        ).status_code
        == 404
    )


SEGMENT_KEY = "regulations-e2e-segment-write-key-5f0"
WEBHOOK_SECRET = "regulations-e2e-webhook-secret-a41"


def webhook_about(stack: Stack, user: str, event_id: str) -> None:
    example = load_example("customer.created")
    example["customer"]["source_id"] = user
    raw, headers = signed_request(
        wrap(example, "customer.created", V2024, event_id, iso_now()), WEBHOOK_SECRET
    )
    answer = requests.post(
        f"{stack.web_url}/webhooks/voucherify/{CONNECTION}", data=raw, headers=headers, timeout=10
    )
    assert answer.status_code == 202, answer.text


def test_a_suppressed_or_deleted_customer_s_waiting_webhooks_never_reach_segment(
    tmp_path: Path, redis_url: str, stack_factory: list
) -> None:
    """The other direction (SPEC 14: "in both directions"): a Voucherify webhook about a
    suppressed customer is not sent to Segment -- neither one already waiting in the Segment
    outbox when the regulation comes, nor one received afterwards -- while another customer's is;
    a deleted (DELETE_ONLY) customer's waiting webhook is forgotten, a later one is sent."""
    secrets.register(SEGMENT_KEY, WEBHOOK_SECRET)
    with (
        FakeVoucherify(app_id=APP_ID, secret_key=SECRET, log_dir=tmp_path) as voucherify,
        FakeSegment(write_keys=(SEGMENT_KEY,), log_dir=tmp_path) as segment,
    ):
        config = tmp_path / "connections.toml"
        config.write_text(
            connections(voucherify.url)
            + f'webhook_secret = "{WEBHOOK_SECRET}"\n'
            + f'[connection.segment]\nwrite_key = "{SEGMENT_KEY}"\nregion = "us"\napi_url = "{segment.url}"\n'
        )
        stack = make_stack(stack_factory, tmp_path, redis_url, config, **FAST)
        stack.web()
        stack.worker()
        stack.scheduler()

        # Segment is down: dave's and frank's first events wait in the outbox for their retry.
        segment.set_faults(path="/v1/batch", statuses=[503], then=503)
        webhook_about(stack, "dave", "evt_dave_waiting")
        webhook_about(stack, "frank", "evt_frank_waiting")
        wait_until(lambda: segment.requests(path="/v1/batch"), timeout=30, what="the outbox's first try")
        assert settled(stack, regulate(stack, "SUPPRESS_ONLY", "dave"))["overallStatus"] == "FINISHED"
        # DELETE_ONLY forgets what waits for Segment about frank, and suppresses nothing.
        assert settled(stack, regulate(stack, "DELETE_ONLY", "frank"))["overallStatus"] == "FINISHED"
        webhook_about(stack, "dave", "evt_dave_after")
        webhook_about(stack, "erin", "evt_erin")
        webhook_about(stack, "frank", "evt_frank_after")
        segment.reset_faults()

        def users() -> list[Any]:
            return [e["event"].get("userId") for e in segment.events()]

        wait_until(
            lambda: {"erin", "frank"} <= set(users()), timeout=60, what="erin's and frank's events at Segment"
        )
        time.sleep(3)  # a late dave or a forgotten frank would show up by now (flushes every 0.2 s)
        assert "dave" not in users(), users()
        franks = [e["event"] for e in segment.events() if e["event"].get("userId") == "frank"]
        assert len(franks) == 1, franks
        wait_until(
            lambda: outcome(stack, "evt_frank_after") == "delivered", timeout=30, what="frank's later event"
        )
        assert outcome(stack, "evt_frank_waiting") is None  # forgotten, its trace with it
        for event_id in ("evt_dave_waiting", "evt_dave_after"):
            wait_until(
                lambda e=event_id: outcome(stack, e) == "skipped", timeout=30, what=f"{event_id} skipped"
            )

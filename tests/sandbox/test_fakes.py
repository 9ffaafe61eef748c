"""The sandbox fakes, exercised as real processes over HTTP (plus the schema bundle in-process)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox.schemas import BUNDLE_PATH, NAMES, request_validator, validation_errors
from tests.support.fakes import FakeSegment, FakeVoucherify

# Distinctive values, so the log-file check cannot match anything else by accident.
APP_ID = "app-id-7f3a9c1e5b"
SECRET = "secret-key-d41d8cd98f00b204"
WRITE_KEY = "write-key-0cc175b9c0f1b6a8"
WRITE_KEY_2 = "write-key-92eb5ffee6ae2fec"
TIMEOUT = 10


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


@pytest.fixture(scope="module")
def fakes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fakes")


@pytest.fixture(scope="module")
def vf_process(fakes_dir: Path) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(app_id=APP_ID, secret_key=SECRET, log_dir=fakes_dir) as fake:
        yield fake


@pytest.fixture(scope="module")
def seg_process(fakes_dir: Path) -> Iterator[FakeSegment]:
    with FakeSegment(write_keys=[WRITE_KEY, WRITE_KEY_2], log_dir=fakes_dir) as fake:
        yield fake


@pytest.fixture
def vf(vf_process: FakeVoucherify) -> FakeVoucherify:
    vf_process.reset()  # one process for the module, a clean slate per test
    return vf_process


@pytest.fixture
def seg(seg_process: FakeSegment) -> FakeSegment:
    seg_process.reset()
    return seg_process


def post(fake: FakeVoucherify, path: str, body: Any, **kw: Any) -> requests.Response:
    kw.setdefault("headers", fake.rest_headers())
    kw.setdefault("timeout", TIMEOUT)
    return requests.post(fake.url + path, json=body, **kw)


def get(fake: FakeVoucherify, path: str, **kw: Any) -> requests.Response:
    kw.setdefault("headers", fake.rest_headers())
    kw.setdefault("timeout", TIMEOUT)
    return requests.get(fake.url + path, **kw)


# -- the schema bundle ---------------------------------------------------------------------------


def test_bundle_is_self_contained_json_schema() -> None:
    text = BUNDLE_PATH.read_text()
    bundle = json.loads(text)
    assert bundle["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "#/components/" not in text and '"nullable"' not in text
    assert bundle["$defs"]["CustomerBase"]["properties"]["address"]["type"] == ["object", "null"]
    for name in NAMES:
        assert request_validator(name) is request_validator(name)  # cached


def test_schema_null_clearing_option() -> None:
    body = {"source_id": "u1", "name": None, "email": None, "address": {"city": None}, "metadata": None}
    assert validation_errors("CustomersCreateRequestBody", body) == []
    strict = validation_errors("CustomersCreateRequestBody", body, allow_null_clearing=False)
    assert any("$.name" in e for e in strict) and any("$.address.city" in e for e in strict)
    # source_id is an identity, not a clearable attribute.
    assert validation_errors("CustomersCreateRequestBody", {"source_id": None})
    with pytest.raises(KeyError):
        request_validator("NoSuchBody")


def test_schema_rejects_bad_shapes() -> None:
    assert (
        validation_errors("CustomersCreateRequestBody", {"source_id": "u", "birthdate": "1990-05-01"}) == []
    )
    errors = validation_errors("CustomersCreateRequestBody", {"birthdate": "1990-05-01T10:00:00Z"})
    assert errors and "$.birthdate" in errors[0]
    assert validation_errors("EventsCreateRequestBody", {"event": "x"})  # customer is required
    assert validation_errors("EventsCreateRequestBody", {"event": "", "customer": {"source_id": "u"}})
    assert validation_errors("CustomersBulkAsyncRequestBody", [{"name": "no source_id"}])
    assert validation_errors("CustomersBulkAsyncRequestBody", {"source_id": "not an array"})


# -- fake Voucherify: auth -----------------------------------------------------------------------


def test_rest_auth(vf: FakeVoucherify) -> None:
    ok = get(vf, "/v1/customers", params={"limit": 1})
    assert ok.status_code == 200 and ok.json()["object"] == "list"
    for headers in ({"X-App-Id": APP_ID, "X-App-Token": "wrong"}, {"X-App-Id": APP_ID}, {}):
        denied = get(vf, "/v1/customers", params={"limit": 1}, headers=headers)
        assert denied.status_code == 401
        body = denied.json()
        assert (body["code"], body["key"], body["message"]) == (401, "unauthorized", "Unauthorized")
        assert body["details"]
    records = vf.requests(path="/v1/customers")
    assert [r["status"] for r in records] == [200, 401, 401, 401]
    assert records[0]["query"] == {"limit": "1"}
    assert records[0]["headers"]["X-App-Token"] == SECRET  # inspection may show headers


def test_segmentio_auth(vf: FakeVoucherify) -> None:
    url = vf.url + "/segmentio/test-authentication"
    assert requests.get(url, headers=vf.segmentio_headers(), timeout=TIMEOUT).status_code == 200
    wrong = [
        {"authorization": "Basic " + b64(APP_ID + ":"), "secret-key": b64(SECRET)},  # colon: not this API
        {"authorization": "Basic " + b64(APP_ID), "secret-key": SECRET},  # secret not base64-encoded
        {"authorization": "Basic " + b64(APP_ID)},
    ]
    for headers in wrong:
        resp = requests.get(url, headers=headers, timeout=TIMEOUT)
        assert resp.status_code == 401 and resp.json()["key"] == "unauthorized"
    # The REST headers do not open the segmentio endpoints, nor the other way round.
    customer = {"source_id": "u1", "email": "a@b.io", "type": "identify"}
    assert post(vf, "/segmentio/customer-processing", customer).status_code == 401
    assert get(vf, "/v1/customers", headers=vf.segmentio_headers()).status_code == 401


def test_segmentio_endpoints(vf: FakeVoucherify) -> None:
    headers = vf.segmentio_headers()
    identify = {"source_id": "u1", "first_name": "John", "last_name": "Doe", "address": {"street": "Main 1"}}
    resp = post(vf, "/segmentio/customer-processing", {**identify, "type": "identify"}, headers=headers)
    assert resp.status_code == 200 and resp.json()["name"] == "John Doe"
    assert resp.json()["address"] == {"line_1": "Main 1"}
    track = {"customer": {"source_id": "u1"}, "event": "Signed Up", "referral": {}, "loyalty": {}}
    assert post(vf, "/segmentio/event-processing", track, headers=headers).status_code == 200
    group = {"customer": {"source_id": "u1"}, "group_id": "g1", "traits": {}, "type": "group"}
    assert post(vf, "/segmentio/group-processing", group, headers=headers).status_code == 200
    missing = post(vf, "/segmentio/group-processing", {"customer": {"source_id": "u1"}}, headers=headers)
    assert missing.status_code == 400 and "group_id" in missing.json()["details"]


# -- fake Voucherify: REST bodies ----------------------------------------------------------------


def test_customer_upsert_valid(vf: FakeVoucherify) -> None:
    body = {
        "source_id": "cust-1",
        "name": "Bob Smith",
        "email": "bob@example.com",
        "birthdate": "1990-05-01",
        "address": {"city": "New York", "line_1": "123 Main St."},
        "metadata": {"plan": "pro"},
    }
    first = post(vf, "/v1/customers", body)
    assert first.status_code == 200
    created = first.json()
    assert created["id"].startswith("cust_") and created["object"] == "customer"
    assert {k: created[k] for k in body} == body
    second = post(vf, "/v1/customers", {"source_id": "cust-1", "metadata": {"tier": "gold"}})
    assert second.json()["id"] == created["id"]  # upsert by source_id
    assert second.json()["metadata"] == {"plan": "pro", "tier": "gold"}
    assert second.json()["name"] == "Bob Smith"
    by_source = get(vf, "/v1/customers/cust-1")
    assert by_source.status_code == 200 and by_source.json()["id"] == created["id"]
    assert [c["source_id"] for c in vf.customers()] == ["cust-1"]
    record = vf.requests(path="/v1/customers")[0]
    assert record["schema_valid"] is True and record["validation_errors"] == []
    assert record["body"] == body and record["method"] == "POST"


def test_customer_invalid_body_rejected(vf: FakeVoucherify) -> None:
    resp = post(vf, "/v1/customers", {"source_id": "cust-1", "address": "not an object"})
    assert resp.status_code == 400
    error = resp.json()
    assert (error["code"], error["key"]) == (400, "invalid_payload")
    assert error["message"] and "$.address" in error["details"]
    record = vf.requests(path="/v1/customers")[0]
    assert record["status"] == 400 and record["schema_valid"] is False
    assert any("$.address" in e for e in record["validation_errors"])
    raw = requests.post(
        vf.url + "/v1/customers", data="{not json", headers=vf.rest_headers(), timeout=TIMEOUT
    )
    assert raw.status_code == 400
    assert vf.requests(path="/v1/customers")[-1]["raw"] == "{not json"
    assert vf.customers() == []


def test_null_clearing_accepted(vf: FakeVoucherify) -> None:
    post(vf, "/v1/customers", {"source_id": "c2", "name": "A", "email": "a@b.io", "address": {"city": "X"}})
    cleared = post(
        vf, "/v1/customers", {"source_id": "c2", "name": None, "email": None, "address": {"city": None}}
    )
    assert cleared.status_code == 200
    assert cleared.json()["name"] is None and cleared.json()["email"] is None
    assert cleared.json()["address"] == {"city": None}
    assert post(vf, "/v1/customers", {"source_id": "c2", "address": None}).json()["address"] is None


def test_events(vf: FakeVoucherify) -> None:
    body = {"event": "Order Completed", "customer": {"source_id": "u9"}, "metadata": {"total": 10}}
    resp = post(vf, "/v1/events", body)
    assert resp.status_code == 200
    assert resp.json()["object"] == "event" and resp.json()["type"] == "Order Completed"
    assert resp.json()["customer"]["id"].startswith("cust_")
    missing_customer = post(vf, "/v1/events", {"event": "Order Completed"})
    assert missing_customer.status_code == 400 and missing_customer.json()["key"] == "invalid_payload"


def test_bulk_async(vf: FakeVoucherify) -> None:
    items = [{"source_id": "b1", "name": "One"}, {"source_id": "b2", "email": None}]
    resp = post(vf, "/v1/customers/bulk/async", items)
    assert resp.status_code == 202 and resp.json()["async_action_id"].startswith("aa_")
    assert sorted(c["source_id"] for c in vf.customers()) == ["b1", "b2"]
    assert post(vf, "/v1/customers/bulk/async", [{"name": "no source_id"}]).status_code == 400


def test_idempotency_key_reuse_is_flagged(vf: FakeVoucherify) -> None:
    headers = {**vf.rest_headers(), "Idempotency-Key": "conn:dst:msg-1:upsert"}
    for _ in range(2):
        post(vf, "/v1/customers", {"source_id": "i1"}, headers=headers)
    assert [r["idempotency_key_seen"] for r in vf.requests()] == [False, True]


def test_unknown_route_and_method(vf: FakeVoucherify) -> None:
    assert get(vf, "/v1/vouchers").status_code == 404
    assert (
        requests.delete(vf.url + "/v1/events", headers=vf.rest_headers(), timeout=TIMEOUT).status_code == 405
    )


# -- faults --------------------------------------------------------------------------------------


def test_status_script_consumed_in_order(vf: FakeVoucherify) -> None:
    vf.set_faults(
        path="/v1/customers",
        statuses=[503, 503, 429],
        headers=[None, {"X-Why": "maintenance"}, {"Retry-After": "2"}],
    )
    answers = [post(vf, "/v1/customers", {"source_id": "s1"}) for _ in range(4)]
    assert [a.status_code for a in answers] == [503, 503, 429, 200]
    assert answers[0].json()["code"] == 503 and answers[0].json()["key"] == "service_unavailable"
    assert answers[1].headers["X-Why"] == "maintenance"
    assert answers[2].headers["Retry-After"] == "2"
    # Other paths were never affected, and faulted attempts are recorded too.
    assert post(vf, "/v1/events", {"event": "e", "customer": {"source_id": "s1"}}).status_code == 200
    records = vf.requests(path="/v1/customers")
    assert [(r["status"], r["fault"]) for r in records] == [
        (503, "script"),
        (503, "script"),
        (429, "script"),
        (200, None),
    ]
    assert vf.faults()["scripts"] == []  # exhausted scripts go away


def test_scripts_queue_sticky_then_and_drop(vf: FakeVoucherify) -> None:
    vf.set_faults(statuses=[0])  # drop the connection once, any path
    vf.set_faults(path="/v1/*", statuses=[500], then=502)  # then 502 until reset
    with pytest.raises(requests.ConnectionError):
        get(vf, "/v1/customers")
    statuses = [get(vf, "/v1/customers").status_code for _ in range(3)]
    assert statuses == [500, 502, 502]
    vf.reset_faults()
    assert get(vf, "/v1/customers").status_code == 200
    assert [r["status"] for r in vf.requests()] == [0, 500, 502, 502, 200]


def test_scripted_success_keeps_normal_handling(vf: FakeVoucherify) -> None:
    vf.set_faults(
        path="/v1/customers", method="POST", statuses=[200, 503], headers={"X-Rate-Limit-Remaining": "1"}
    )
    first = post(vf, "/v1/customers", {"source_id": "n1"})
    assert first.status_code == 200 and first.json()["source_id"] == "n1"
    assert first.headers["X-Rate-Limit-Remaining"] == "1"
    assert get(vf, "/v1/customers").status_code == 200  # method filter: GET untouched
    assert post(vf, "/v1/customers", {"source_id": "n1"}).status_code == 503


def test_bad_fault_specs_rejected(vf: FakeVoucherify) -> None:
    for spec in (
        {"statuses": "503"},
        {"statuses": [99]},
        {"statuses": [503], "headers": [{}, {}]},
        {"nope": 1},
    ):
        resp = requests.post(vf.url + "/__fake/faults", json=spec, timeout=TIMEOUT)
        assert resp.status_code == 400, spec


def test_global_latency_honoured(vf: FakeVoucherify) -> None:
    vf.set_faults(latency_ms=250)
    started = time.monotonic()
    assert get(vf, "/v1/customers").status_code == 200
    assert time.monotonic() - started >= 0.25
    vf.reset_faults()
    assert vf.faults()["settings"]["latency_ms"] == 0


def test_script_latency_and_slow_body(vf: FakeVoucherify) -> None:
    vf.set_faults(path="/v1/customers", statuses=[503], latency_ms=200)
    started = time.monotonic()
    assert get(vf, "/v1/customers").status_code == 503
    assert time.monotonic() - started >= 0.2
    vf.set_faults(path="/v1/customers", statuses=[200, 200], body_delay_ms=400)
    started = time.monotonic()
    slow = get(vf, "/v1/customers")
    assert slow.status_code == 200 and slow.json()["object"] == "list"
    assert time.monotonic() - started >= 0.4
    # A client with a short read timeout gives up while the body stalls.
    with pytest.raises(requests.RequestException):
        get(vf, "/v1/customers", timeout=(2, 0.1))


def test_rate_limit(vf: FakeVoucherify) -> None:
    vf.set_faults(rate_limit_per_minute=3)
    answers = [get(vf, "/v1/customers") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["X-Rate-Limit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
    limited = answers[3]
    assert limited.headers["X-Rate-Limit-Limit"] == "3"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert int(limited.headers["X-Rate-Limit-Retry"]) >= int(time.time())
    assert limited.json()["code"] == 429
    assert vf.requests()[-1]["fault"] == "rate_limit"
    # Scripted faults still tell the client its budget.
    vf.set_faults(statuses=[503])
    assert get(vf, "/v1/customers").headers["X-Rate-Limit-Remaining"] == "0"


def test_rate_limit_window_slides(vf: FakeVoucherify) -> None:
    vf.set_faults(rate_limit_per_minute=1, rate_limit_window_s=0.3)
    assert get(vf, "/v1/customers").status_code == 200
    assert get(vf, "/v1/customers").status_code == 429
    time.sleep(0.35)
    assert get(vf, "/v1/customers").status_code == 200


def test_concurrent_slow_requests(vf: FakeVoucherify) -> None:
    vf.set_faults(latency_ms=200)
    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(
            pool.map(lambda i: post(vf, "/v1/customers", {"source_id": f"c{i}"}).status_code, range(50))
        )
    assert statuses == [200] * 50
    assert len(vf.requests(path="/v1/customers")) == 50
    assert len(vf.customers()) == 50


# -- recording and control -----------------------------------------------------------------------


def test_recording_and_clearing(vf: FakeVoucherify) -> None:
    vf.set_faults(path="/v1/events", statuses=[503, 503])
    post(vf, "/v1/customers", {"source_id": "r1"}, params={"a": "1"})
    post(vf, "/v1/events", {"event": "e", "customer": {"source_id": "r1"}})
    record = vf.requests(path="/v1/customers")[0]
    for key in ("seq", "time", "method", "path", "query", "headers", "body", "status", "schema_valid"):
        assert key in record
    assert record["query"] == {"a": "1"} and isinstance(record["time"], float)
    assert len(vf.requests(method="POST")) == 2
    vf.clear()
    assert vf.requests() == []
    assert post(vf, "/v1/events", {"event": "e", "customer": {"source_id": "r1"}}).status_code == 503
    assert [r["status"] for r in vf.requests()] == [503]  # clearing records kept the faults
    health = vf.health()
    assert health["ok"] is True and health["kind"] == "fake-voucherify"


def test_stop_and_restart_same_port(tmp_path: Path) -> None:
    with FakeVoucherify(log_dir=tmp_path) as fake:
        port = fake.port
        assert post(fake, "/v1/customers", {"source_id": "x"}).status_code == 200
        fake.stop()
        with pytest.raises(requests.ConnectionError):
            post(fake, "/v1/customers", {"source_id": "x"}, timeout=2)
        fake.start()
        assert fake.port == port
        assert post(fake, "/v1/customers", {"source_id": "x"}).status_code == 200
        assert [(r["run"], r["status"]) for r in fake.requests()] == [(0, 200), (1, 200)]
        assert fake.log_path.exists() and fake.log_text().count("listening on") == 2
        pid = fake.pid
    assert pid is not None and not fake.running


# -- fake Segment --------------------------------------------------------------------------------


def track(event: str = "Customer Rewarded", message_id: str = "m-1", **kw: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "userId": "u1", "messageId": message_id, **kw}


def seg_post(seg: FakeSegment, body: Any, path: str = "/v1/batch", **kw: Any) -> requests.Response:
    headers = kw.pop("headers", seg.auth_headers())
    return requests.post(seg.url + path, json=body, headers=headers, timeout=TIMEOUT, **kw)


def test_segment_auth(seg: FakeSegment) -> None:
    ok = seg_post(seg, {"batch": [track()]})
    assert ok.status_code == 200 and ok.json() == {"success": True}
    assert seg_post(seg, {"batch": [track()]}, headers=seg.auth_headers(WRITE_KEY_2)).status_code == 200
    denied = [
        seg.auth_headers("not-a-key"),
        {"Authorization": "Basic " + b64(WRITE_KEY)},  # no colon: not a user:password pair
        {"Authorization": "Bearer " + WRITE_KEY},
        {},
    ]
    for headers in denied:
        assert seg_post(seg, {"batch": [track()]}, headers=headers).status_code == 401
    body_key = seg_post(seg, {"batch": [track()], "writeKey": WRITE_KEY}, headers={})
    assert body_key.status_code == 200  # Segment also takes the key in the body
    assert [r["write_key"] for r in seg.requests() if r["status"] == 200] == [
        WRITE_KEY,
        WRITE_KEY_2,
        WRITE_KEY,
    ]


def test_segment_limits(seg: FakeSegment) -> None:
    too_many = seg_post(seg, {"batch": [track(message_id=f"m{i}") for i in range(2501)]})
    assert too_many.status_code == 400 and too_many.json()["success"] is False
    big_event = seg_post(seg, {"batch": [track(properties={"blob": "x" * (33 * 1024)})]})
    assert big_event.status_code == 400
    # Every event under 32 KB, the request over 500 KB.
    events = [track(message_id=f"m{i}", properties={"blob": "x" * (30 * 1024)}) for i in range(18)]
    assert seg_post(seg, {"batch": events}).status_code == 400
    assert seg_post(seg, {"batch": events[:15]}).status_code == 200
    assert seg_post(seg, track(properties={"blob": "x" * (33 * 1024)}), path="/v1/track").status_code == 400
    assert seg.events()[0]["event"]["messageId"] == "m0" and len(seg.events()) == 15


def test_segment_events_flattened(seg: FakeSegment) -> None:
    seg_post(seg, {"batch": [track(message_id="a"), track(message_id="b")]})
    single = {"userId": "u2", "traits": {"email": "x@y.io"}, "messageId": "c"}
    assert seg_post(seg, single, path="/v1/identify").status_code == 200
    seg_post(seg, {"batch": [track(message_id="a")]})  # redelivery
    events = seg.events()
    assert [e["event"]["messageId"] for e in events] == ["a", "b", "c", "a"]
    assert [e["duplicate"] for e in events] == [False, False, False, True]
    assert events[2]["event"]["type"] == "identify"
    assert events[0]["time"] == events[1]["time"] == seg.requests()[0]["time"]
    assert events[0]["request_seq"] == seg.requests()[0]["seq"]
    seg.clear()
    assert seg.events() == [] and seg.requests() == []


def test_segment_malformed_events_accepted_but_flagged(seg: FakeSegment) -> None:
    resp = seg_post(seg, {"batch": [{"type": "track", "userId": "u1"}, {"type": "nope"}]})
    assert resp.status_code == 200  # as Segment: 200, the bad events are dropped downstream
    record = seg.requests()[0]
    assert record["schema_valid"] is False and len(record["validation_errors"]) >= 2
    assert seg_post(seg, {"batch": "x"}).status_code == 400
    assert seg_post(seg, {"batch": [track()]}, path="/v1/nothing").status_code == 404


def test_segment_faults(seg: FakeSegment) -> None:
    seg.set_faults(path="/v1/batch", statuses=[500, 429], headers={"Retry-After": "1"})
    statuses = [seg_post(seg, {"batch": [track()]}).status_code for _ in range(3)]
    assert statuses == [500, 429, 200]
    assert len(seg.events()) == 1  # faulted attempts deliver nothing


# -- logs ----------------------------------------------------------------------------------------


def test_no_secret_in_logs(vf: FakeVoucherify, seg: FakeSegment) -> None:
    # Traffic carrying every credential (right and wrong), also inside bodies and queries.
    get(vf, "/v1/customers", params={"token": SECRET})
    get(vf, "/v1/customers", headers={"X-App-Id": APP_ID, "X-App-Token": SECRET + "x"})
    post(vf, "/v1/customers", {"source_id": "s", "metadata": {"leak": SECRET}})
    post(vf, "/segmentio/customer-processing", {"source_id": APP_ID}, headers=vf.segmentio_headers())
    requests.get(vf.url + "/segmentio/test-authentication", headers=vf.segmentio_headers(), timeout=TIMEOUT)
    seg_post(seg, {"batch": [track(properties={"k": WRITE_KEY_2})]})
    seg_post(seg, {"batch": [track()], "writeKey": WRITE_KEY}, headers={})
    seg_post(seg, {"batch": [track()]}, headers=seg.auth_headers(WRITE_KEY_2))
    vf.wait_for_requests(5)
    seg.wait_for_requests(3)
    secrets = [APP_ID, SECRET, WRITE_KEY, WRITE_KEY_2]
    secrets += [b64(APP_ID), b64(SECRET), b64(WRITE_KEY + ":"), b64(WRITE_KEY_2 + ":")]
    for fake in (vf, seg):
        text = fake.log_text()
        assert " 200 " in text  # the log does have request lines
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into {fake.log_path}"
            assert secret not in repr(fake)

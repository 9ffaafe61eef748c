"""Isolation (SPEC 16), in process: the webhook doors do not tell a stranger which connection
ids exist.  An unknown id, a known id with a wrong or missing signature, and a known id whose
door has no secret configured must answer alike: same status, same code, same message."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.signatures import segment_signature, voucherify_signature
from tests.app.test_hardening_unit import make_client

EVENT = b'{"type": "identify", "userId": "u1", "traits": {"email": "x@y"}}'


def _answer(client, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    answer = client.post(path, data=body, headers={"Content-Type": "application/json", **headers})
    data = answer.get_json()
    return answer.status_code, data["code"], data["message"]


@pytest.mark.parametrize(
    ("door", "header", "sign"),
    [
        ("segment", "X-Signature", segment_signature),
        ("voucherify", "x-voucherify-signature", voucherify_signature),
    ],
)
def test_unknown_and_known_connections_answer_alike_on_the_webhook_doors(
    tmp_path: Path, door: str, header: str, sign
) -> None:  # type: ignore[no-untyped-def]
    client, recorder = make_client(tmp_path)
    # "acme" has secrets on both doors; "nosecret" on none; "nope" does not exist.
    for shape in (
        {},  # no signature: refused before the body is read
        {header: "ab" * 32},  # a made-up signature
        {header: sign(EVENT, "a-guess")},  # well-formed, signed with a wrong secret
    ):
        answers = {
            cid: _answer(client, f"/webhooks/{door}/{cid}", EVENT, shape)
            for cid in ("acme", "nosecret", "nope")
        }
        assert len(set(answers.values())) == 1, answers
        status, code, message = answers["nope"]
        assert (status, code) == (401, "invalid_signature")
        assert "nope" not in message and "acme" not in message
    # Not JSON, with a signature: the same answer too (whatever is checked first).
    answers = {
        cid: _answer(client, f"/webhooks/{door}/{cid}", b"{x", {header: "ab" * 32})
        for cid in ("acme", "nosecret", "nope")
    }
    assert len(set(answers.values())) == 1, answers
    assert recorder.events == [] and recorder.webhooks == []


def test_a_known_connection_with_the_right_signature_still_gets_in(tmp_path: Path) -> None:
    client, _recorder = make_client(tmp_path)
    answer = client.post(
        "/webhooks/segment/acme",
        data=EVENT,
        headers={"Content-Type": "application/json", "X-Signature": segment_signature(EVENT, "seg-hook")},
    )
    assert answer.status_code == 200, answer.get_json()
    # An explicitly unsigned connection stays open (documented as knowingly unsafe).
    assert (
        client.post(
            "/webhooks/segment/open", data=EVENT, headers={"Content-Type": "application/json"}
        ).status_code
        == 200
    )


# --- /metrics without METRICS_TOKEN names no connection -------------------------------------

METRICS_TOML = """
[[connection]]
id = "hidden-shop-one"
write_keys = ["wk-hidden-one"]
backlog_limit = 1000
[connection.voucherify]
app_id = "a"
secret_key = "s"
region = "eu"

[[connection]]
id = "hidden-shop-two"
write_keys = ["wk-hidden-two"]
backlog_limit = 500
[connection.voucherify]
app_id = "a"
secret_key = "s"
region = "eu"
"""


def _metrics_app(tmp_path: Path, redis_url: str, **env: str):  # type: ignore[no-untyped-def]
    from app import create_app
    from connector.config import load_settings

    path = tmp_path / "metrics.toml"
    path.write_text(METRICS_TOML)
    return create_app(
        load_settings({"CONNECTIONS_FILE": str(path), "REDIS_URL": redis_url, **env})
    ).test_client()


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def test_open_metrics_show_totals_without_connection_ids(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    from connector import metrics
    from connector.keys import Keys

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    keys = Keys()
    client = redis.Redis.from_url(redis_url)
    client.set(keys.backlog("hidden-shop-one"), 7)
    client.set(keys.backlog("hidden-shop-two"), 5)
    client.hset(keys.dlq_counts, mapping={"hidden-shop-one": 2, "hidden-shop-two": 1, "removed-shop": 4})
    client.set(keys.paused("hidden-shop-two"), b'{"reason": "auth", "since": 1}')
    web = _metrics_app(tmp_path, redis_url)
    wanted = {"direction": "segment_to_voucherify", "region": "eu", "source": "tracking_api"}

    def received(text: str) -> list[float]:
        return [v for labels, v in _samples(text, "connector_events_received_total") if labels == wanted]

    before = received(web.get("/metrics").text)
    metrics.EVENTS_RECEIVED.labels("hidden-shop-one", *wanted.values()).inc(3)
    metrics.EVENTS_RECEIVED.labels("hidden-shop-two", *wanted.values()).inc(4)

    open_text = web.get("/metrics").text
    for cid in ("hidden-shop-one", "hidden-shop-two", "removed-shop"):
        assert cid not in open_text
    assert 'connection="' not in open_text
    assert _samples(open_text, "connector_backlog_events") == [({}, 12.0)]
    assert _samples(open_text, "connector_backlog_limit") == [({}, 1500.0)]
    assert _samples(open_text, "connector_dead_letter_entries") == [({}, 7.0)]
    # Pauses are per target system (SPEC 13): hidden-shop-two's Voucherify delivery only.
    assert _samples(open_text, "connector_connection_paused") == [
        ({"reason": "auth", "system": "voucherify"}, 1.0),
        ({"reason": "auth", "system": "segment"}, 0.0),
    ]
    # One series per remaining label set (other tests of this process count other connections).
    after = received(open_text)
    assert len(after) == 1 and after[0] - sum(before) == 7.0

    token = "metrics-token-for-isolation-0123"
    closed = _metrics_app(tmp_path, redis_url, METRICS_TOKEN=token)
    assert closed.get("/metrics").status_code == 401
    text = closed.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
    per_connection = {
        labels["connection"]: value for labels, value in _samples(text, "connector_backlog_events")
    }
    assert per_connection == {"hidden-shop-one": 7.0, "hidden-shop-two": 5.0}
    assert 'connection="removed-shop"' in text


# --- the tokenless status page is the real sandbox's only -------------------------------------


def _sandbox_client(tmp_path: Path, voucherify_url: str, **env: str):  # type: ignore[no-untyped-def]
    from app import create_app
    from connector.config import load_settings
    from ops.run import sandbox_connections

    fakes = "voucherify=http://127.0.0.1:8100,segment=http://127.0.0.1:8200"
    path = tmp_path / "sandbox-connections.toml"
    path.write_text(sandbox_connections(voucherify_url, "http://127.0.0.1:8200"))
    settings = load_settings(
        {
            "CONNECTIONS_FILE": str(path),
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "CONNECTOR_SANDBOX_FAKES": fakes,
            **env,
        }
    )
    return settings, create_app(settings).test_client()


@pytest.mark.parametrize("path", ["/", "/status.json"])
def test_only_the_real_sandbox_opens_the_status_page_without_a_token(tmp_path: Path, path: str) -> None:
    # make run's sandbox: its one connection wired to the loopback fakes.  (Redis is away here:
    # the page says so, still 200.)
    settings, sandbox = _sandbox_client(tmp_path, "http://127.0.0.1:8100")
    assert settings.sandbox
    assert sandbox.get(path).status_code == 200
    # ... to this machine only.
    assert sandbox.get(path, environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code == 404
    # The same variable on a deployment whose connection reaches a real Voucherify: closed.
    settings, real = _sandbox_client(tmp_path, "https://api.voucherify.io")
    assert not settings.sandbox
    assert real.get(path).status_code == 404
    # Tokens still win in the sandbox.
    _, tokened = _sandbox_client(
        tmp_path, "http://127.0.0.1:8100", STATUS_TOKEN="status-token-for-isolation-1"
    )
    assert tokened.get(path).status_code == 401


def test_make_run_binds_the_sandbox_web_to_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from ops import run as make_run
    from ops.embedded import free_port

    monkeypatch.setattr(make_run, "RUN_DIR", tmp_path)
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "PORT": str(port),
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "EMBEDDED_REDIS_PORT": str(free_port()),
        "FAKE_VOUCHERIFY_PORT": str(free_port()),
        "FAKE_SEGMENT_PORT": str(free_port()),
    }
    [web] = [line for line in make_run.plan_run(dict(env)).procfile if line.startswith("web:")]
    assert web.endswith(f"--bind 127.0.0.1:{port}")
    # With a configured connection it is a deployment: the Procfile's own bind (gunicorn.conf.py).
    (tmp_path / "c.toml").write_text("")
    [web] = [
        line
        for line in make_run.plan_run({**env, "CONNECTIONS_FILE": str(tmp_path / "c.toml")}).procfile
        if line.startswith("web:")
    ]
    assert "--bind" not in web


# --- the pushback answers name their cause, never the connection ---------------------------------


def test_pushback_answers_name_the_cause_but_not_the_connection(tmp_path: Path, redis_url: str) -> None:
    # A browser's write key is public (analytics.js): a stranger holding it must not learn the
    # connection id (what the webhook doors keep to themselves) from a 429.  The log names it.
    import redis

    from app.enqueue import Enqueuer
    from app.errors import ApiError
    from connector import kept
    from connector.config import load_settings
    from connector.keys import Keys
    from tests.app.test_hardening_unit import TOML

    path = tmp_path / "c.toml"
    path.write_text(TOML)
    settings = load_settings({"CONNECTIONS_FILE": str(path), "REDIS_URL": redis_url})
    connection = settings.connection("acme")
    assert connection is not None
    client = redis.Redis.from_url(redis_url)
    keys = Keys("isolation:")
    enqueuer = Enqueuer(None, client, keys, None, kept.KeptGuard(client, keys, limit=10_000, every=0))  # type: ignore[arg-type]

    def refusal() -> ApiError:
        with pytest.raises(ApiError) as caught:
            enqueuer._reserve(connection, 1, 100)
        return caught.value

    client.set(keys.backlog(connection.id), connection.backlog_limit)
    full = refusal()
    assert (full.status, full.code) == (429, "backlog_full") and "acme" not in str(full)
    client.delete(keys.backlog(connection.id))

    pipe = client.pipeline()
    kept.charge_ledger(pipe, keys, connection.id, 1000, 3600)
    pipe.execute()
    records = refusal()
    assert (records.status, records.code) == (429, "customer_records_full") and "acme" not in str(records)
    assert "CUSTOMER_RECORDS_MB" in str(records)
    client.delete(keys.kept(connection.id))

    client.hset(keys.dlq_bytes, connection.id, connection.dead_letter_bytes_limit)
    dead = refusal()
    assert (dead.status, dead.code) == (429, "dead_letters_full") and "acme" not in str(dead)

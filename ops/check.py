"""The work behind ``connector check`` and ``connector send-test`` (the CLI only prints).

``check`` findings are ``ok``, ``warning`` or ``error``; messages name the connection and what
was tried, never a credential or a response body beyond the target's short error message.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import click
import redis
import requests

from connector import redisconn
from connector.config import (
    DEFAULT_REDIS_URL,
    ConfigError,
    Connection,
    Settings,
    load_settings,
    redact_url,
    redis_tls_verify,
)

USER_AGENT = "segment-voucherify-connector-check/1"


@dataclass
class Finding:
    level: str  # ok | warning | error
    subject: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def ok(subject: str, message: str) -> Finding:
    return Finding("ok", subject, message)


def warning(subject: str, message: str) -> Finding:
    return Finding("warning", subject, message)


def error(subject: str, message: str) -> Finding:
    return Finding("error", subject, message)


# --- configuration ---------------------------------------------------------------------------


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def pick_connection(settings: Settings, connection_id: str | None) -> Connection:
    if connection_id:
        connection = settings.connection(connection_id)
        if connection is None:
            known = ", ".join(c.id for c in settings.connections)
            raise click.ClickException(f"no connection {connection_id!r} (configured: {known})")
        return connection
    if len(settings.connections) != 1:
        raise click.ClickException("several connections are configured: choose one with --connection")
    return settings.connections[0]


def check_configuration() -> tuple[Settings | None, list[Finding]]:
    try:
        settings = load_settings()
    except ConfigError as exc:
        return None, [error("configuration", problem) for problem in exc.problems]
    findings = [ok("configuration", f"{len(settings.connections)} connection(s) load without problems")]
    for c in settings.connections:
        subject = f"connection {c.id!r}"
        if c.voucherify.rate_limit_per_minute is None:
            findings.append(
                warning(
                    subject,
                    "no voucherify.rate_limit_per_minute: only Voucherify's own 429s slow the connector "
                    "down; set it below your plan's limit (going over blocks the project's API access)",
                )
            )
        if c.segment is not None and c.voucherify.webhook_secret is None:
            findings.append(
                warning(
                    subject,
                    "[connection.segment] is set but voucherify.webhook_secret is not: "
                    "Voucherify webhooks will be refused",
                )
            )
    return settings, findings


# --- Redis -----------------------------------------------------------------------------------


def _config_get(client: redis.Redis, name: str) -> str | None:
    try:
        value = client.config_get(name).get(name)
    except redis.RedisError:  # managed Redis often refuses CONFIG
        return None
    return value if isinstance(value, str) else None


def check_redis(url: str, tls_verify: str = "required") -> list[Finding]:
    subject = f"redis {redact_url(url)}"
    if redisconn.is_tls(url):
        subject += f" (TLS, certificate verification {tls_verify})"
    client = redisconn.client(
        url, tls_verify, socket_connect_timeout=3, socket_timeout=5, decode_responses=True
    )
    try:
        client.ping()
        persistence = client.info("persistence")
        memory = client.info("memory")
        server = client.info("server")
    except redis.RedisError as exc:
        return [error(subject, f"not reachable: {type(exc).__name__}: {exc}")]
    findings = [ok(subject, f"answers (Redis {server.get('redis_version', '?')})")]
    aof = str(persistence.get("aof_enabled", "0")) == "1"
    save = _config_get(client, "save")
    fsync = _config_get(client, "appendfsync")
    lost = (
        "accepted events waiting in the queues, parked retries, dead letters and the idempotency "
        "ledger (so duplicates)"
    )
    if aof:
        if fsync == "no":
            findings.append(
                warning(
                    subject,
                    "AOF is on but appendfsync is 'no': a crash loses what the OS had not "
                    "flushed yet (tens of seconds); use appendfsync everysec",
                )
            )
        else:
            findings.append(ok(subject, f"AOF persistence on (appendfsync {fsync or 'unknown'})"))
    elif save:
        findings.append(
            warning(
                subject,
                f"AOF persistence is off (RDB snapshots only: save {save!r}): a crash loses "
                f"everything written since the last snapshot: {lost}. Use appendonly yes, "
                "appendfsync everysec",
            )
        )
    elif save == "":
        findings.append(
            warning(
                subject,
                f"no persistence (appendonly no, no RDB snapshots): a Redis restart loses "
                f"{lost}. Use appendonly yes, appendfsync everysec",
            )
        )
    else:
        findings.append(
            warning(
                subject,
                f"AOF persistence is off (RDB settings unreadable: CONFIG refused): a crash "
                f"may lose {lost}. Use appendonly yes, appendfsync everysec",
            )
        )
    policy = str(memory.get("maxmemory_policy") or _config_get(client, "maxmemory-policy") or "unknown")
    if policy == "noeviction":
        findings.append(ok(subject, "maxmemory-policy noeviction"))
    else:
        findings.append(
            warning(
                subject,
                f"maxmemory-policy is {policy!r}, not 'noeviction': when memory runs out Redis "
                f"silently deletes keys: {lost}. With noeviction the ingest answers 503 instead and "
                "clients retry",
            )
        )
    return findings


# --- credentials -----------------------------------------------------------------------------


def _short_error(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        text = body.get("message") or body.get("key") or body.get("error") or ""
        return f": {str(text)[:160]}" if text else ""
    return ""


def _call(
    subject: str,
    what: str,
    send: Callable[[], requests.Response],
    *,
    on_ok: str,
) -> Finding:
    try:
        response = send()
    except requests.RequestException as exc:
        return error(subject, f"{what}: no answer ({type(exc).__name__})")
    status = response.status_code
    if 200 <= status < 300:
        return ok(subject, f"{what}: HTTP {status}, {on_ok}")
    if status in (401, 403):
        return error(subject, f"{what}: HTTP {status}, the credentials are refused{_short_error(response)}")
    if status == 429:
        return warning(subject, f"{what}: HTTP 429, rate limited; credentials not verified")
    return error(subject, f"{what}: HTTP {status}{_short_error(response)}")


def check_voucherify(connection: Connection, timeout: float, session: requests.Session) -> Finding:
    from workers.mapping.destination.requests import auth_headers

    vf = connection.voucherify
    subject = f"connection {connection.id!r} voucherify ({vf.region or vf.base_url}, {vf.mode})"
    headers = {**auth_headers(vf), "User-Agent": USER_AGENT, "Accept": "application/json"}
    if vf.mode == "segmentio":
        url = f"{vf.base_url}/segmentio/test-authentication"
        what = "GET /segmentio/test-authentication"
    else:
        url = f"{vf.base_url}/v1/customers?limit=1"
        what = "GET /v1/customers?limit=1"
    return _call(
        subject,
        what,
        lambda: session.get(url, headers=headers, timeout=timeout),
        on_ok="credentials accepted",
    )


def check_segment(connection: Connection, timeout: float, session: requests.Session) -> Finding:
    assert connection.segment is not None
    seg = connection.segment
    subject = f"connection {connection.id!r} segment ({seg.region or seg.base_url})"
    token = base64.b64encode(f"{seg.write_key.reveal()}:".encode()).decode("ascii")
    headers = {"Authorization": f"Basic {token}", "User-Agent": USER_AGENT}
    url = f"{seg.base_url}/v1/batch"
    real = seg.api_url is None
    return _call(
        subject,
        'POST /v1/batch {"batch": []}',
        lambda: session.post(url, json={"batch": []}, headers=headers, timeout=timeout),
        on_ok=(
            "reachable (Segment's API answers 200 to unknown write keys too: this does not prove the key)"
            if real
            else "write key accepted"
        ),
    )


def run_checks(*, offline: bool = False, timeout: float = 10.0) -> list[Finding]:
    settings, findings = check_configuration()
    url = settings.redis_url if settings else (os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)
    try:
        verify = settings.redis_tls_verify if settings else redis_tls_verify()
    except ConfigError:
        verify = "required"  # already listed among the configuration's problems
    findings += check_redis(url, verify)
    if settings is None or offline:
        return findings
    with requests.Session() as session:
        for connection in settings.connections:
            findings.append(check_voucherify(connection, timeout, session))
            if connection.segment is not None:
                findings.append(check_segment(connection, timeout, session))
    return findings


# --- send-test -------------------------------------------------------------------------------


@dataclass
class Sent:
    message_id: str
    keys: list[str]
    actions: list[str]
    started: float = field(default_factory=time.monotonic)


@dataclass
class Outcome:
    delivered: bool
    seconds: float
    dead_letter: Any = None


def sample_event(user_id: str, event_name: str) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user_id,
        "event": event_name,
        "messageId": f"send-test-{uuid.uuid4()}",
        "properties": {"sent_by": "connector send-test"},
        "context": {"library": {"name": "connector-send-test", "version": "1"}},
    }


def enqueue_sample(settings: Settings, connection: Connection, *, user_id: str, event_name: str) -> Sent:
    """Validate, map (to know the idempotency keys) and enqueue exactly as the ingest does."""
    from app.enqueue import Enqueuer
    from app.errors import ApiError
    from app.ingest import ingest_body
    from connector.celery_app import create_celery
    from connector.errors import MappingError, SkipEvent
    from workers.mapping.destination import map_event

    result = ingest_body(sample_event(user_id, event_name), "track")
    if result.rejected:
        raise click.ClickException(f"the sample event is invalid: {result.rejected[0].message}")
    event = result.expanded()[0]  # as the worker will see it
    try:
        outbound = map_event(event, connection)
    except SkipEvent as exc:
        click.echo(f"note: connection {connection.id!r} skips this event ({exc}); enqueuing anyway", err=True)
        outbound = []
    except MappingError as exc:
        raise click.ClickException(f"the sample event does not map: {exc}") from None
    client = redisconn.client(
        settings.redis_url, settings.redis_tls_verify, socket_connect_timeout=3, socket_timeout=10
    )
    try:
        Enqueuer(create_celery(settings.redis_url, settings.redis_tls_verify), client).segment_events(
            connection, result.encoded, result.shared, result.stored_bytes
        )
    except ApiError as exc:
        raise click.ClickException(f"could not enqueue: {exc.code}: {exc.message}") from None
    return Sent(
        message_id=str(event["messageId"]),
        keys=[r.idempotency_key for r in outbound],
        actions=[r.action for r in outbound],
    )


def wait_for_delivery(
    settings: Settings, connection: Connection, sent: Sent, *, timeout: float, interval: float = 0.2
) -> Outcome:
    """Until the ledger records every call as done (the target acknowledged), or a dead letter."""
    from connector.keys import Keys
    from workers.delivery.deadletters import DeadLetters
    from workers.delivery.ledger import Ledger

    client = redisconn.client(
        settings.redis_url, settings.redis_tls_verify, socket_connect_timeout=3, socket_timeout=10
    )
    keys = Keys.from_env()
    ledger = Ledger(client, keys, connection.id)
    dead = DeadLetters(client, keys)
    deadline = time.monotonic() + timeout
    while True:
        if all(ledger.done_many(sent.keys)):
            return Outcome(True, time.monotonic() - sent.started)
        for record in dead.iter(connection=connection.id, newer_than=timeout + 60, limit=50):
            if record.message_id == sent.message_id or record.idempotency_key in sent.keys:
                return Outcome(False, time.monotonic() - sent.started, record)
        if time.monotonic() > deadline:
            return Outcome(False, time.monotonic() - sent.started)
        time.sleep(interval)

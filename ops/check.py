"""``connector check``: the configuration, Redis (persistence, eviction) and every connection's
credentials against its Voucherify and Segment.

``check`` findings are ``ok``, ``warning`` or ``error``; messages name the connection and what
was tried, never a credential or a response body beyond the target's short error message.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import click
import redis
import requests

from connector import redisconn, redisenv
from connector.config import ConfigError, Connection, Settings
from ops.common import print_json
from workers.settings import load_settings
from workers.targets import segment, voucherify

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


def check_configuration() -> tuple[Settings | None, list[Finding]]:
    try:
        settings = load_settings()
    except ConfigError as exc:
        return None, [error("configuration", problem) for problem in exc.problems]
    findings = [ok("configuration", f"{len(settings.connections)} connection(s) load without problems")]
    for c in settings.connections:
        subject = f"connection {c.id!r}"
        quota = c.voucherify.quota
        if quota.assumed:
            findings.append(
                warning(
                    subject,
                    "no Voucherify quota configured: assuming the Business plan (100 API calls a minute, "
                    f"100,000 a cycle, no bulk) and using {quota.share:g} of it; set voucherify.plan (or "
                    "the api_calls_per_* limits) and share to your project's plan (README: Quotas)",
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


def check_sentinel(target: redisconn.SentinelTarget) -> Finding:
    """The topology the sentinels report (master, replicas): addresses only, never the password."""
    subject = f"redis {target.describe()}"
    try:
        seen = redisconn.sentinel_topology(target)
    except redis.RedisError as exc:  # MasterNotFoundError included: no sentinel knows the master
        return error(subject, f"no sentinel answered for the master: {type(exc).__name__}: {exc}")
    replicas = ", ".join(seen["replicas"]) or "none"
    message = f"sentinels report master {seen['master']}, replicas: {replicas}"
    if not seen["replicas"]:
        return warning(subject, message + " (a failover has nowhere to go)")
    return ok(subject, message)


def check_redis(target: redisconn.RedisTarget, tls_verify: str = "required") -> list[Finding]:
    subject = f"redis {redisconn.describe(target)}"
    sentinel_findings: list[Finding] = []
    if isinstance(target, redisconn.SentinelTarget):
        sentinel_findings.append(check_sentinel(target))
        if sentinel_findings[0].level == "error":
            return sentinel_findings
    elif redisconn.is_tls(target):
        subject += f" (TLS, certificate verification {tls_verify})"
    client = redisconn.client(
        target, tls_verify, socket_connect_timeout=3, socket_timeout=5, decode_responses=True
    )
    try:
        client.ping()
        persistence = client.info("persistence")
        memory = client.info("memory")
        server = client.info("server")
    except redis.RedisError as exc:
        return [error(subject, f"not reachable: {type(exc).__name__}: {exc}")]
    findings = [*sentinel_findings, ok(subject, f"answers (Redis {server.get('redis_version', '?')})")]
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


def _shown(url: str) -> str:
    """``url`` without ``user:password@``, its query or its path: scheme, host and port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


def _call(
    subject: str,
    what: str,
    send: Callable[[], requests.Response],
    *,
    on_ok: str,
    url: str,
) -> Finding:
    try:
        response = send()
    except requests.RequestException as exc:
        # Which address did not answer (a typo in api_url, a proxy, DNS) is the first thing to
        # know; the URL carries no credential (they travel in headers), user:password@ is cut
        # anyway in case one was put there.
        return error(subject, f"{what}: no answer from {_shown(url)} ({type(exc).__name__})")
    status = response.status_code
    if 200 <= status < 300:
        return ok(subject, f"{what}: HTTP {status}, {on_ok}")
    if status in (401, 403):
        return error(subject, f"{what}: HTTP {status}, the credentials are refused{_short_error(response)}")
    if status == 429:
        return warning(subject, f"{what}: HTTP 429, rate limited; credentials not verified")
    return error(subject, f"{what}: HTTP {status}{_short_error(response)}")


def check_voucherify(connection: Connection, timeout: float, session: requests.Session) -> Finding:
    vf = connection.voucherify
    subject = f"connection {connection.id!r} voucherify ({vf.region or _shown(vf.base_url)}, {vf.mode})"
    headers = {**voucherify.auth_headers(vf), "User-Agent": USER_AGENT, "Accept": "application/json"}
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
        url=url,
    )


def check_segment(connection: Connection, timeout: float, session: requests.Session) -> Finding:
    assert connection.segment is not None
    seg = connection.segment
    subject = f"connection {connection.id!r} segment ({seg.region or _shown(seg.base_url)})"
    headers = {**segment.auth_headers(seg), "User-Agent": USER_AGENT}
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
        url=url,
    )


def run_checks(*, offline: bool = False, timeout: float = 10.0) -> list[Finding]:
    settings, findings = check_configuration()
    target: redisconn.RedisTarget
    try:
        target = settings.redis if settings else redisenv.redis_target()
    except ConfigError:
        target = redisenv.redis_url()  # the Sentinel problem is already listed
    try:
        verify = settings.redis_tls_verify if settings else redisenv.redis_tls_verify()
    except ConfigError:
        verify = "required"  # already listed among the configuration's problems
    findings += check_redis(target, verify)
    if settings is None or offline:
        return findings
    with requests.Session() as session:
        for connection in settings.connections:
            findings.append(check_voucherify(connection, timeout, session))
            if connection.segment is not None:
                findings.append(check_segment(connection, timeout, session))
    return findings


@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option(
    "--offline", is_flag=True, help="do not call Voucherify or Segment (configuration and Redis only)"
)
@click.option("--strict", is_flag=True, help="exit non-zero on warnings too")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds per HTTP call")
def check(as_json: bool, offline: bool, strict: bool, timeout: float) -> None:
    """Check the configuration, Redis (persistence, eviction) and every connection's credentials.

    \b
    Voucherify: GET /v1/customers?limit=1 (rest) or GET /segmentio/test-authentication
    (segmentio) with the connection's keys.  Segment: POST /v1/batch {"batch": []} with the
    write key; Segment's public API answers 200 even for an unknown write key, so against the
    real Segment this proves reachability, not the key (the fake Segment does check it).
    A call that gets no answer names the address it tried (scheme, host, port).

    --offline checks the configuration and Redis only, calling neither Voucherify nor Segment:
    for a machine without outbound access, or before the credentials exist.

    Exits 1 when anything is an error (2 with --strict and only warnings).
    """
    findings = run_checks(offline=offline, timeout=timeout)
    if as_json:
        print_json([f.as_dict() for f in findings])
    else:
        marks = {"ok": "ok  ", "warning": "WARN", "error": "FAIL"}
        for finding in findings:
            colour = {"ok": "green", "warning": "yellow", "error": "red"}[finding.level]
            mark = (
                click.style(marks[finding.level], fg=colour) if sys.stdout.isatty() else marks[finding.level]
            )
            click.echo(f"{mark}  {finding.subject}: {finding.message}")
        errors = sum(f.level == "error" for f in findings)
        warnings = sum(f.level == "warning" for f in findings)
        click.echo(f"\n{errors} error(s), {warnings} warning(s)")
    if any(f.level == "error" for f in findings):
        sys.exit(1)
    if strict and any(f.level == "warning" for f in findings):
        sys.exit(2)

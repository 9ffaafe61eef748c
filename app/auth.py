"""Who is calling: the write key (Basic user or ``writeKey`` in the body) selects a connection;
operators present ``STATUS_TOKEN`` / ``METRICS_TOKEN`` (Bearer, or the Basic password)."""

from __future__ import annotations

import base64
import binascii

from flask import Request

from app.errors import ApiError, unauthorized
from connector.config import Connection, Settings
from connector.secrets import Secret, constant_time_equals


def basic_user(request: Request) -> str | None:
    """The Basic-auth user: ``base64("KEY:")`` and, as Segment accepts, ``base64("KEY")``."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, _password = decoded.partition(":")
    return user or None


def connection_for_key(settings: Settings, key: object) -> Connection:
    if not isinstance(key, str) or not key:
        raise unauthorized("missing_write_key", "no write key: send it as the Basic auth user or as writeKey")
    connection = settings.connection_for_write_key(key)
    if connection is None:
        raise unauthorized("invalid_write_key", "the write key is not known to this connector")
    return connection


def presented_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or the PASSWORD of Basic auth (any user:
    a browser's login prompt has a user field that means nothing here)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if not value:
        return None
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _user, sep, password = decoded.partition(":")
        return password if sep else None
    return None


def require_token(request: Request, token: Secret, realm: str) -> None:
    """401 unless the request presents ``token`` (compared in constant time)."""
    given = presented_token(request)
    if given is None or not constant_time_equals(given, token.reveal()):
        raise ApiError(
            401,
            "invalid_token" if given is not None else "missing_token",
            f"{realm} needs its token: Authorization: Bearer <token>, or as the Basic password",
            headers={"WWW-Authenticate": f'Basic realm="{realm}", charset="UTF-8"'},
        )

"""Who is calling: the write key (Basic user or ``writeKey`` in the body) selects a connection."""

from __future__ import annotations

import base64
import binascii

from flask import Request

from app.errors import unauthorized
from connector.config import Connection, Settings


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

"""Realistic Segment events for the loads: what analytics.js / the server libraries send."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

CONTEXT = {
    "library": {"name": "analytics-python", "version": "2.3.2"},
    "ip": "203.0.113.7",
    "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0",
    "locale": "en-US",
    "page": {"path": "/checkout", "url": "https://shop.example.com/checkout", "title": "Checkout"},
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def track(user: str, n: int, message_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user,
        "event": "Order Completed",
        "messageId": message_id or f"bench-{user}-{n}-{random.getrandbits(40):x}",
        "timestamp": _now(),
        "properties": {
            "order_id": f"o-{n}",
            "total": 42.5,
            "revenue": 39.9,
            "currency": "EUR",
            "coupon": "SUMMER",
            "products": [{"product_id": "p-1", "sku": "SKU-1", "price": 19.95, "quantity": 2}],
        },
        "context": CONTEXT,
    }


def identify(user: str, n: int, message_id: str | None = None, **traits: Any) -> dict[str, Any]:
    base = {
        "email": f"{user}@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "phone": "+48123456789",
        "plan": "pro",
        "visits": n,
    }
    base.update(traits)
    return {
        "type": "identify",
        "userId": user,
        "messageId": message_id or f"bench-{user}-{n}-{random.getrandbits(40):x}",
        "timestamp": _now(),
        "traits": base,
        "context": CONTEXT,
    }


def page(user: str, n: int) -> dict[str, Any]:
    return {
        "type": "page",
        "userId": user,
        "name": "Pricing",
        "messageId": f"bench-{user}-{n}-{random.getrandbits(40):x}",
        "timestamp": _now(),
        "properties": {"path": "/pricing", "title": "Pricing", "referrer": "https://www.google.com/"},
        "context": CONTEXT,
    }


def group(user: str, n: int) -> dict[str, Any]:
    return {
        "type": "group",
        "userId": user,
        "groupId": f"g-{hash(user) % 50}",
        "messageId": f"bench-{user}-{n}-{random.getrandbits(40):x}",
        "timestamp": _now(),
        "traits": {"name": "Acme", "plan": "enterprise", "employees": 120},
        "context": CONTEXT,
    }


def batch_body(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"batch": events, "sentAt": _now(), "context": {"library": CONTEXT["library"]}}


def mixed_stream(customers: int, events: int, seed: int = 7) -> list[dict[str, Any]]:
    """A realistic mix: sessions of one customer (an identify, then identifies repeated with
    changing traits, tracks, pages, sometimes a group), interleaved across customers as they
    arrive at Segment's libraries, which batch by time, not by user."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    n = 0
    while len(out) < events:
        active = [f"mix-{rng.randrange(customers)}" for _ in range(8)]
        for user in active:
            n += 1
            roll = rng.random()
            if roll < 0.45:
                out.append(identify(user, n, visits=n, last_seen=f"step-{n}"))
            elif roll < 0.75:
                out.append(track(user, n))
            elif roll < 0.93:
                out.append(page(user, n))
            else:
                out.append(group(user, n))
    return out[:events]


def identify_heavy_stream(customers: int, events: int, seed: int = 11) -> list[dict[str, Any]]:
    """SPEC 8's quota mix, as analytics.js sends it: an identify on every page view carrying all
    the cached traits (most often unchanged: a trait changes on ~6 % of page views), ~5 % track
    calls and ~2 % group calls, customers interleaved as they browse.  Timestamps are set when
    sent (the newest identify of a customer is its last)."""
    rng = random.Random(seed)
    state = {
        f"q-{n}": {"first_name": "Ada", "last_name": f"L{n}", "email": f"q-{n}@example.com", "v": 0}
        for n in range(customers)
    }
    out: list[dict[str, Any]] = []
    for n in range(events):
        user = f"q-{rng.randrange(customers)}"
        roll = rng.random()
        if roll < 0.05:
            out.append(track(user, n))
            continue
        if roll < 0.07:
            out.append(group(user, n))
            continue
        traits = state[user]
        if rng.random() < 0.06:
            traits["v"] += 1
            traits["email"] = f"{user}-{traits['v']}@example.com"
        out.append(
            {
                "type": "identify",
                "userId": user,
                "messageId": f"bench-q-{n}-{rng.getrandbits(40):x}",
                "traits": {
                    "first_name": traits["first_name"],
                    "last_name": traits["last_name"],
                    "email": traits["email"],
                    "metadata": {"plan": "pro", "version": traits["v"]},
                },
                "context": CONTEXT,
            }
        )
    return out


def now_iso() -> str:
    return _now()

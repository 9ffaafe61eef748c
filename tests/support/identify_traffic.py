"""Identify-heavy traffic for the fault tests, and exact-once accounting per customer.

The upserts of one customer are where idempotency is hardest: the connector merges several
identifies (and group calls) of a customer into one ``POST /v1/customers``, and upserts of
independent customers into one ``POST /v1/customers/bulk/async``; the ``Idempotency-Key`` that
Voucherify sees is then the merged request's, not an event's.  So the accounting here does not
look at keys or at how calls were grouped (the quota work will change that); it reads what each
customer *received*, from every 2xx call the fake Voucherify answered, single or bulk:

- **marker identifies** carry only ``traits.metadata = {"m_<event>": true}``, dated like the
  customer's newest identify (never older than anything applied, so never stale-skipped): each
  must be applied exactly once -- nothing lost, nothing twice;
- **versioned identifies** ``v1..vN`` carry ``name``, ``email`` and ``metadata.seq``, dated
  ``T1 < ... < TN``: an older one may be skipped as stale when a newer one was applied first
  (SPEC 5), so each is applied at most once, the newest exactly once, and the customer's final
  state is the newest's;
- one **group** per customer (``metadata.segment_group_id``): applied exactly once;
- a few **track** calls (custom events, their own ``Idempotency-Key``): delivered exactly once.

Applied twice is allowed only for what was on the wire when a fault struck (the same rule as
:func:`tests.support.faultkit.double_deliveries`): the earlier application's call overlaps a
fault window, and it is the only other one.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import (
    FAST_ENV,
    Sender,
    broker_state,
    by_key,
    dead_letters,
    successes,
    wait_quiet,
)
from tests.support.processes import wait_until

CUSTOMERS_PATH = "/v1/customers"
BULK_PATH = "/v1/customers/bulk/async"
EVENTS_PATH = "/v1/events"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Traffic:
    """The events of a run, grouped in requests, and what each customer must end up with."""

    batches: list[list[dict[str, Any]]]
    customers: list[str]
    versions: int
    markers: dict[str, list[str]] = field(default_factory=dict)  # customer -> metadata keys
    tracks: list[str] = field(default_factory=list)  # message ids of the custom events

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for batch in self.batches for e in batch]

    def name(self, customer: str, version: int) -> str:
        return f"{customer} v{version}"

    def email(self, customer: str, version: int) -> str:
        return f"{customer}-v{version}@example.com"


def identify_heavy(
    prefix: str,
    customers: int = 60,
    versions: int = 3,
    markers: int = 3,
    batch_size: int = 20,
    track_every: int = 2,
    run: int = 3,
) -> Traffic:
    """Per customer: ``versions`` versioned identifies, ``markers`` marker identifies, a group,
    and (every ``track_every``-th customer) a track; interleaved across customers ``run`` at a
    time, in order per customer, cut into requests of ``batch_size``."""
    base = time.time() - 3600  # in the past: no clamping of future times in play
    names = [f"{prefix}-c{n:03d}" for n in range(customers)]
    traffic = Traffic(batches=[], customers=names, versions=versions)
    per_customer: dict[str, list[dict[str, Any]]] = {}
    newest = _iso(base + versions)
    for n, customer in enumerate(names):
        own: list[dict[str, Any]] = []
        traffic.markers[customer] = []
        for v in range(1, versions + 1):
            own.append(
                {
                    "type": "identify",
                    "messageId": f"{customer}-v{v}",
                    "userId": customer,
                    "timestamp": _iso(base + v),
                    "traits": {
                        "name": traffic.name(customer, v),
                        "email": traffic.email(customer, v),
                        "metadata": {"seq": v},
                    },
                }
            )
            if v <= markers:
                mid = f"{customer}-m{v}"
                key = "m_" + mid.replace("-", "_")
                traffic.markers[customer].append(key)
                own.append(
                    {
                        "type": "identify",
                        "messageId": mid,
                        "userId": customer,
                        "timestamp": newest,
                        "traits": {"metadata": {key: True}},
                    }
                )
            if v == 1:
                own.append(
                    {
                        "type": "group",
                        "messageId": f"{customer}-g",
                        "userId": customer,
                        "groupId": f"g-{customer}",
                        "timestamp": newest,
                        "traits": {"plan": "pro"},
                    }
                )
        if track_every and n % track_every == 0:
            mid = f"{customer}-t"
            traffic.tracks.append(mid)
            own.insert(
                len(own) // 2, {"type": "track", "messageId": mid, "userId": customer, "event": "Viewed"}
            )
        per_customer[customer] = own
    # Round robin over customers, ``run`` events of a customer at a time: a customer's events
    # spread over several requests, in order, with some of them side by side (merged upserts).
    stream: list[dict[str, Any]] = []
    while any(per_customer.values()):
        for customer in names:
            stream += per_customer[customer][:run]
            del per_customer[customer][:run]
    traffic.batches = [stream[i : i + batch_size] for i in range(0, len(stream), batch_size)]
    return traffic


def send_identify_traffic(
    web_url: str, fake: FakeVoucherify, prefix: str, customers: int = 80
) -> tuple[Traffic, Sender]:
    """Identify-heavy traffic, every request accepted, and back once upserts are being applied
    (the moment a fault test strikes)."""
    traffic = identify_heavy(prefix, customers=customers)
    sender = Sender(web_url)
    for batch in traffic.batches:
        assert sender.batch(batch) == 200
    wait_until(lambda: len(successes(fake)) >= 15, timeout=60, what="the upserts under way")
    return traffic, sender


# ---------------------------------------------------------------------------------------------
# Accounting


@dataclass
class Application:
    """One customer body Voucherify accepted (2xx), from a single upsert or a bulk."""

    customer: str
    body: dict[str, Any]
    record: dict[str, Any]


def applications(fake: FakeVoucherify) -> list[Application]:
    out: list[Application] = []
    for record in successes(fake):
        body = record["body"]
        if record["path"] == CUSTOMERS_PATH and isinstance(body, dict):
            out.append(Application(str(body.get("source_id")), body, record))
        elif record["path"] == BULK_PATH and isinstance(body, list):
            out += [Application(str(b.get("source_id")), b, record) for b in body if isinstance(b, dict)]
    return sorted(out, key=lambda a: (a.record["time"], a.record["seq"]))


def _in_fault(
    record: dict[str, Any], faults: Iterable[tuple[float, float]], before: float, after: float
) -> bool:
    start, end = record["time"], record["time"] + record["duration_ms"] / 1000.0
    return any(start <= f_end + after and end >= f_start - before for f_start, f_end in faults)


@dataclass
class Account:
    problems: list[str]
    doubles: list[str]  # what was applied twice, explained by a fault
    calls: Counter[str]  # 2xx calls by path

    def summary(self) -> str:
        return f"calls {dict(self.calls)}; applied twice (explained): {len(self.doubles)}"


def account(
    fake: FakeVoucherify,
    traffic: Traffic,
    faults: Iterable[tuple[float, float]] = (),
    *,
    before: float = 1.0,
    after: float = 0.0,
) -> Account:
    """Every rule of the module doc, checked against what the fake received and stores."""
    problems: list[str] = []
    doubles: list[str] = []
    applied = applications(fake)

    def once(what: str, hits: list[Application | dict[str, Any]], required: bool = True) -> None:
        records = [h.record if isinstance(h, Application) else h for h in hits]
        if not records:
            if required:
                problems.append(f"{what}: never applied")
            return
        if len(records) == 1:
            return
        if len(records) == 2 and _in_fault(records[0], faults, before, after):
            doubles.append(what)
            return
        times = [round(r["time"], 3) for r in records]
        problems.append(f"{what}: applied {len(records)} times (at {times})")

    by_customer: dict[str, list[Application]] = defaultdict(list)
    for a in applied:
        by_customer[a.customer].append(a)
    for customer in traffic.customers:
        mine = by_customer.pop(customer, [])
        for key in traffic.markers[customer]:
            once(
                f"{customer} marker {key}",
                [a for a in mine if (a.body.get("metadata") or {}).get(key) is True],
            )
        once(
            f"{customer} group",
            [a for a in mine if (a.body.get("metadata") or {}).get("segment_group_id") == f"g-{customer}"],
        )
        for v in range(1, traffic.versions + 1):
            hits = [a for a in mine if (a.body.get("metadata") or {}).get("seq") == v]
            # An older version may have been skipped as stale; the newest never.
            once(f"{customer} v{v}", hits, required=v == traffic.versions)
    if by_customer:
        problems.append(f"upserts of customers nobody sent: {sorted(by_customer)[:5]}")

    # Custom events: their own keys, exactly once each.
    events = by_key(successes(fake, EVENTS_PATH))
    for mid in traffic.tracks:
        once(f"track {mid}", events.pop(f"acme:v:{mid}:add_custom_event", []))
    if events:
        problems.append(f"custom events nobody sent: {sorted(events)[:5]}")

    # No key answered 2xx twice unless explained (a merged call re-sent after a fault).
    for key, records in by_key(successes(fake)).items():
        if not key:
            continue  # reads (async action polls) carry no key
        if len(records) > 1 and not (len(records) == 2 and _in_fault(records[0], faults, before, after)):
            problems.append(f"Idempotency-Key {key} answered 2xx {len(records)} times")
        elif len(records) == 2:
            doubles.append(f"key {key}")

    # The final state of every customer, as Voucherify (the fake) holds it.
    store = {c.get("source_id"): c for c in fake.customers()}
    for customer in traffic.customers:
        held = store.get(customer)
        if held is None:
            problems.append(f"{customer}: no such customer at Voucherify")
            continue
        newest = traffic.versions
        want = {
            "name": traffic.name(customer, newest),
            "email": traffic.email(customer, newest),
            "seq": newest,
            "segment_group_id": f"g-{customer}",
            **{key: True for key in traffic.markers[customer]},
        }
        got = {"name": held.get("name"), "email": held.get("email"), **(held.get("metadata") or {})}
        wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        if wrong:
            problems.append(f"{customer}: final state differs (got, want): {wrong}")

    calls = Counter(r["path"] for r in successes(fake))
    return Account(problems, doubles, calls)


def check_identify_traffic(
    voucherify: FakeVoucherify,
    redis_url: str,
    sender: Sender,
    traffic: Traffic,
    faults: list[tuple[float, float]],
    in_flight_bound: int,
) -> None:
    """Everything applied, each once (bar calls on the wire at a fault), final states right."""

    def settled() -> bool:
        return not any("never applied" in p for p in account(voucherify, traffic, faults).problems)

    try:
        wait_until(settled, timeout=120, interval=0.5, what="every upsert applied")
    except AssertionError:
        missing = [p for p in account(voucherify, traffic, faults).problems if "never applied" in p]
        raise AssertionError(
            f"{len(missing)} never applied, e.g. {missing[:5]}; {broker_state(redis_url)}"
        ) from None
    # Long enough for a stray redelivery (visibility timeout, claim TTL) to show up if there were one.
    wait_quiet(voucherify, seconds=float(FAST_ENV["CONNECTOR_VISIBILITY_TIMEOUT"]) + 2)
    sender.assert_no_server_errors()
    assert set(sender.accepted) == {e["messageId"] for e in traffic.events}
    result = account(voucherify, traffic, faults)
    assert result.problems == [], result.problems[:20]
    assert dead_letters(redis_url) == []
    # The traffic exercised what it is about: merged calls and bulk calls.
    assert result.calls[BULK_PATH] > 0, result.summary()
    merged = [a for a in applications(voucherify) if len(a.body.get("metadata") or {}) > 2]
    assert merged, result.summary()
    assert result.calls[BULK_PATH] + result.calls[CUSTOMERS_PATH] < len(traffic.events) - len(traffic.tracks)
    # Re-sent calls after the fault: no more than the calls that can be on the wire at once.
    assert len([d for d in result.doubles if d.startswith("key ")]) <= in_flight_bound, result.doubles
    print(result.summary(), result.doubles)

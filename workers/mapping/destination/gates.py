"""Segment's own gates before a destination sees an event (SPEC 14): the ``integrations`` object
and consent.  Pure functions of the event and the connection's settings.

Why here, in the worker's mapping step, and not at the ingest: every other "nothing to do, by
design" verdict is decided here and then counted, traced and explained (``connector map``) in
one place; the web stays a thin, fast door that answers 200 either way (Segment answers 200 to
an event no destination receives); and a replay or a dead letter replayed with ``--remap`` passes
the same gates because it goes through the same mapping.  The cost is one broker hop for an
event that will be skipped.

**integrations** (Segment's rules; names are case-sensitive, ``voucherify`` is not
``Voucherify``):

* a connection answers to its ``integration_names`` (default ``Voucherify`` and
  ``Voucherify (Actions)``: the classic destination's name and the Actions one's);
* a name set to ``false`` skips the event, whatever ``All`` says;
* ``"All": false`` skips the event unless one of the names is enabled explicitly (``true``, or an
  object: Segment's per-destination options, which enable it too);
* anything else (no ``integrations``, ``"All": true``, other destinations named) sends.

Where the spec is silent: when one name says ``false`` and another ``true`` (both of ours), the
``false`` wins -- someone asked for this destination not to receive the event, and not sending
is the side that cannot leak data.  Values other than ``true``, ``false`` or an object (``null``,
``"false"``, ``0``) say nothing about the destination, as in Segment, where only those two
booleans and an options object have a meaning.

**consent** (Segment's Consent Management): with ``consent_categories`` configured, an event
whose ``context.consent.categoryPreferences`` is present must consent (``true``, exactly) to every
one of them; a category missing from the preferences is not consented.  An event without
preferences (no ``context.consent``, or ``categoryPreferences`` absent or ``null``) flows:
Segment's default, for sources that do not collect consent.  Preferences that are not an object
cannot consent to anything: skipped (privacy first; the spec is silent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from connector.connections import DEFAULT_INTEGRATION_NAMES

INTEGRATIONS: Final = "integrations"  # the skip reasons
CONSENT: Final = "consent"


def integrations_verdict(event: Mapping[str, Any], names: Sequence[str]) -> str | None:
    """Why the event's ``integrations`` object keeps it from a destination known by ``names``
    (a sentence for ``connector map`` and the logs), or None when it may be sent."""
    integrations = event.get("integrations")
    if not isinstance(integrations, Mapping) or not integrations:
        return None
    disabled = [name for name in names if integrations.get(name) is False]
    if disabled:
        return f"integrations[{disabled[0]!r}] is false"
    if integrations.get("All") is False:
        if any(_enables(integrations.get(name)) for name in names):
            return None
        return "integrations.All is false and none of " + ", ".join(map(repr, names)) + " is true"
    return None


def _enables(value: Any) -> bool:
    return value is True or isinstance(value, Mapping)


def consent_verdict(event: Mapping[str, Any], categories: Sequence[str]) -> str | None:
    """Why the event's consent preferences keep it from a connection that needs ``categories``,
    or None when it may be sent."""
    if not categories:
        return None
    context = event.get("context")
    consent = context.get("consent") if isinstance(context, Mapping) else None
    preferences = consent.get("categoryPreferences") if isinstance(consent, Mapping) else None
    if preferences is None:
        return None
    if not isinstance(preferences, Mapping):
        return "context.consent.categoryPreferences is not an object: it consents to nothing"
    refused = [c for c in categories if preferences.get(c) is not True]
    if not refused:
        return None
    return "context.consent.categoryPreferences does not consent to " + ", ".join(map(repr, refused))


__all__ = [
    "CONSENT",
    "DEFAULT_INTEGRATION_NAMES",
    "INTEGRATIONS",
    "consent_verdict",
    "integrations_verdict",
]

"""The Voucherify -> Segment direction (SPEC 4), pure parts.

:mod:`~connector.envelope` recognises a webhook body (v2024-01-01, v2018-08-01, customer
activity objects) and normalises it into a :class:`~connector.envelope.VoucherifyEvent`;
:mod:`~workers.mapping.source.mapping` turns that into one Segment track call; :mod:`~workers.mapping.source.flatten`
holds the flattening and size rules.  Nothing here does I/O or reads the clock.
"""

from connector.envelope import VoucherifyEvent, event_age_seconds, normalize_type, parse_webhook
from workers.mapping.source.mapping import (
    CATALOG,
    event_allowed,
    is_catalog_type,
    map_webhook,
    message_id_for,
    segment_event_name,
    to_outbound,
)

__all__ = [
    "CATALOG",
    "VoucherifyEvent",
    "event_age_seconds",
    "event_allowed",
    "is_catalog_type",
    "map_webhook",
    "message_id_for",
    "normalize_type",
    "parse_webhook",
    "segment_event_name",
    "to_outbound",
]

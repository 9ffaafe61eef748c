"""One table per target maps a region to its base URLs and queue names.

An unknown region is a configuration error, never a silent default (SPEC 1).  A dedicated
cluster (``api_url`` without a region) gets a queue of its own named after its host, so its
outages stay away from the shared regions' traffic (SPEC 5).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from connector.errors import UnknownRegion


@dataclass(frozen=True)
class VoucherifyRegion:
    rest_url: str
    segmentio_url: str


VOUCHERIFY_REGIONS: dict[str, VoucherifyRegion] = {
    "eu": VoucherifyRegion("https://api.voucherify.io", "https://segmentio.voucherify.io"),
    "us1": VoucherifyRegion("https://us1.api.voucherify.io", "https://us1.segmentio.voucherify.io"),
    "as1": VoucherifyRegion("https://as1.api.voucherify.io", "https://as1.segmentio.voucherify.io"),
}

SEGMENT_REGIONS: dict[str, str] = {
    "us": "https://api.segment.io",
    "eu": "https://events.eu1.segmentapis.com",
}

VOUCHERIFY_QUEUE_PREFIX = "voucherify."
SEGMENT_QUEUE_PREFIX = "segment."


def _slug(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "custom"
    if parts.port:
        host = f"{host}-{parts.port}"
    return re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-") or "custom"


def _queue(
    system: str, prefix: str, known: Mapping[str, object], region: str | None, api_url: str | None
) -> str:
    """The queue of a system's work: by region, else one per dedicated cluster (its host)."""
    if region:
        if region not in known:
            raise UnknownRegion(f"unknown {system} region {region!r}")
        return prefix + region
    if api_url:
        return prefix + "dedicated-" + _slug(api_url)
    raise UnknownRegion(f"a {system} region or api_url is required")


def _known(system: str, known: Mapping[str, object], region: str | None) -> None:
    if region not in known:
        raise UnknownRegion(f"unknown {system} region {region!r} (known: {', '.join(known)})")


def voucherify_base_url(region: str | None, mode: str, api_url: str | None) -> str:
    if api_url:
        return api_url.rstrip("/")
    _known("Voucherify", VOUCHERIFY_REGIONS, region)
    entry = VOUCHERIFY_REGIONS[str(region)]
    return entry.segmentio_url if mode == "segmentio" else entry.rest_url


def voucherify_queue(region: str | None, api_url: str | None) -> str:
    """Queue for a connection's Voucherify work: by region, else one per dedicated cluster."""
    return _queue("Voucherify", VOUCHERIFY_QUEUE_PREFIX, VOUCHERIFY_REGIONS, region, api_url)


def segment_base_url(region: str | None, api_url: str | None) -> str:
    if api_url:
        return api_url.rstrip("/")
    _known("Segment", SEGMENT_REGIONS, region)
    return SEGMENT_REGIONS[str(region)]


def segment_queue(region: str | None, api_url: str | None) -> str:
    return _queue("Segment", SEGMENT_QUEUE_PREFIX, SEGMENT_REGIONS, region, api_url)

"""One table per target maps a region to its base URLs and queue names.

An unknown region is a configuration error, never a silent default (SPEC 1).  A dedicated
cluster (``api_url`` without a region) gets a queue of its own named after its host, so its
outages stay away from the shared regions' traffic (SPEC 5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit


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


class UnknownRegion(ValueError):
    pass


def _slug(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "custom"
    if parts.port:
        host = f"{host}-{parts.port}"
    return re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-") or "custom"


def voucherify_base_url(region: str | None, mode: str, api_url: str | None) -> str:
    if api_url:
        return api_url.rstrip("/")
    if region not in VOUCHERIFY_REGIONS:
        raise UnknownRegion(f"unknown Voucherify region {region!r} (known: {', '.join(VOUCHERIFY_REGIONS)})")
    entry = VOUCHERIFY_REGIONS[region]
    return entry.segmentio_url if mode == "segmentio" else entry.rest_url


def voucherify_queue(region: str | None, api_url: str | None) -> str:
    """Queue for a connection's Voucherify work: by region, else one per dedicated cluster."""
    if region:
        if region not in VOUCHERIFY_REGIONS:
            raise UnknownRegion(f"unknown Voucherify region {region!r}")
        return VOUCHERIFY_QUEUE_PREFIX + region
    if api_url:
        return VOUCHERIFY_QUEUE_PREFIX + "dedicated-" + _slug(api_url)
    raise UnknownRegion("a Voucherify region or api_url is required")


def segment_base_url(region: str | None, api_url: str | None) -> str:
    if api_url:
        return api_url.rstrip("/")
    if region not in SEGMENT_REGIONS:
        raise UnknownRegion(f"unknown Segment region {region!r} (known: {', '.join(SEGMENT_REGIONS)})")
    return SEGMENT_REGIONS[region]


def segment_queue(region: str | None, api_url: str | None) -> str:
    if region:
        if region not in SEGMENT_REGIONS:
            raise UnknownRegion(f"unknown Segment region {region!r}")
        return SEGMENT_QUEUE_PREFIX + region
    if api_url:
        return SEGMENT_QUEUE_PREFIX + "dedicated-" + _slug(api_url)
    raise UnknownRegion("a Segment region or api_url is required")

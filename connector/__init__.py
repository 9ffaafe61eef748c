"""Shared by the web and worker processes: configuration, regions, secrets, logging, metrics."""

__version__ = "0.1.0"
USER_AGENT = f"segment-voucherify-connector/{__version__}"
CHANNEL = "segment-voucherify-connector"

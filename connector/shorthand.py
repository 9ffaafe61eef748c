"""The single-connection shorthand: one connection from environment variables (Heroku's config
vars), as the same table a ``connections.toml`` file would give.  The README's configuration
reference lists the variables; :data:`SHORTHAND_LABELS` names them in problems.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Where each key of the shorthand's connection comes from, so that a problem names the variable.
SHORTHAND_LABELS = {
    "write_keys": "INGEST_WRITE_KEYS",
    "segment_webhook_secret": "SEGMENT_WEBHOOK_SECRET",
    "segment_webhook_unsigned": "SEGMENT_WEBHOOK_UNSIGNED",
    "voucherify.app_id": "VOUCHERIFY_APP_ID",
    "voucherify.secret_key": "VOUCHERIFY_SECRET_KEY",
    "voucherify.region": "VOUCHERIFY_REGION",
    "voucherify.api_url": "VOUCHERIFY_API_URL",
    "voucherify.mode": "VOUCHERIFY_MODE",
    "voucherify.webhook_secret": "VOUCHERIFY_WEBHOOK_SECRET",
    "voucherify.rate_limit_per_minute": "VOUCHERIFY_RATE_LIMIT_PER_MINUTE",
    "voucherify.plan": "VOUCHERIFY_PLAN",
    "voucherify.share": "VOUCHERIFY_SHARE",
    "segment.write_key": "SEGMENT_WRITE_KEY",
    "segment.region": "SEGMENT_REGION",
    "segment.api_url": "SEGMENT_API_URL",
}


def from_env_shorthand(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The single-connection shorthand of SPEC 1, as the same table a TOML file would give."""
    if not env.get("INGEST_WRITE_KEYS") and not env.get("VOUCHERIFY_APP_ID"):
        return None
    vf: dict[str, Any] = {
        "app_id": env.get("VOUCHERIFY_APP_ID", ""),
        "secret_key": env.get("VOUCHERIFY_SECRET_KEY", ""),
        "mode": env.get("VOUCHERIFY_MODE", "rest"),
    }
    for key, var in (
        ("region", "VOUCHERIFY_REGION"),
        ("api_url", "VOUCHERIFY_API_URL"),
        ("webhook_secret", "VOUCHERIFY_WEBHOOK_SECRET"),
        ("rate_limit_per_minute", "VOUCHERIFY_RATE_LIMIT_PER_MINUTE"),
        ("plan", "VOUCHERIFY_PLAN"),
        ("share", "VOUCHERIFY_SHARE"),
    ):
        if env.get(var):
            vf[key] = env[var]
    if "region" not in vf and "api_url" not in vf:
        vf["region"] = "eu"  # Voucherify's default API host (api.voucherify.io) is the EU cluster.
    conn: dict[str, Any] = {
        "id": "default",
        "write_keys": [k.strip() for k in env.get("INGEST_WRITE_KEYS", "").split(",") if k.strip()],
        "voucherify": vf,
    }
    if env.get("SEGMENT_WEBHOOK_SECRET"):
        conn["segment_webhook_secret"] = env["SEGMENT_WEBHOOK_SECRET"]
    if env.get("SEGMENT_WEBHOOK_UNSIGNED"):
        conn["segment_webhook_unsigned"] = env["SEGMENT_WEBHOOK_UNSIGNED"]
    if env.get("SEGMENT_WRITE_KEY"):
        seg: dict[str, Any] = {"write_key": env["SEGMENT_WRITE_KEY"]}
        if env.get("SEGMENT_REGION"):
            seg["region"] = env["SEGMENT_REGION"]
        if env.get("SEGMENT_API_URL"):
            seg["api_url"] = env["SEGMENT_API_URL"]
        conn["segment"] = seg
    return {"connection": [conn]}

"""Customers backfilled per second by ``connector replay`` against the fake Voucherify on a fast
clock (SPEC 15's bench figure; bench/ is another owner's -- this is the function it can call).

::

    .venv/bin/python -m tests.support.backfill_rate --customers 5000 --plan organization

Starts its own redis-server, the fake (its quota periods ``scale`` times their length, the
connector on the same clock), a gevent worker and the scheduler; writes a CSV of ``customers``
rows; times ``connector replay`` from its start until the fake holds every customer.  Reports
the rate under the fast clock and what it means in real time (``x scale``: every budget's period
is ``scale`` of its real length), and Voucherify calls per customer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from connector.quotas import QuotaSettings
from ops.replay_forecast import calls_for, plan_quota, seconds_for
from tests.support.fakes import FakeVoucherify
from tests.support.faultkit import FAST_ENV, calls, connections_toml, connector_cli
from tests.support.processes import Stack, base_env, wait_until
from tests.support.redisdb import own_redis_server

CUSTOMERS_PATHS = ("/v1/customers", "/v1/customers/bulk/async")


def measure(
    tmp: Path,
    *,
    customers: int = 5000,
    plan: str = "organization",
    bulk_calls_per_hour: int | None = None,
    scale: float = 0.05,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """One backfill of ``customers`` at ``plan``'s limits (``bulk_calls_per_hour``: an explicit
    bulk budget, as the older plans have; current plans have none)."""
    tmp.mkdir(parents=True, exist_ok=True)
    bulk = f"bulk_calls_per_hour = {bulk_calls_per_hour}\n" if bulk_calls_per_hour else ""
    with own_redis_server(tmp / "redis") as server, FakeVoucherify(log_dir=tmp / "fakes") as fake:
        spec: dict[str, Any] = {"plan": plan, "period_scale": scale}
        if bulk_calls_per_hour:
            spec["bulk_calls_per_hour"] = bulk_calls_per_hour
        fake.set_quota(**spec)
        config = tmp / "connections.toml"
        config.write_text(
            connections_toml(
                fake.url, quota=f'plan = "{plan}"\n{bulk}', fewer_calls="coalesce_window_seconds = 1\n"
            )
        )
        env = base_env(
            server.base + "/0",
            config,
            **{**FAST_ENV, "CONNECTOR_QUOTA_PERIOD_SCALE": str(scale), "CONNECTOR_SCHEDULER_INTERVAL": "1"},
        )
        stack = Stack(tmp, env)
        try:
            stack.worker("w1", concurrency=8)
            stack.scheduler()
            path = tmp / "customers.csv"
            rows = (f"bf-{n:07d},Customer {n},c{n}@example.com" for n in range(customers))
            path.write_text("userId,name,email\n" + "\n".join(rows) + "\n")
            began = time.monotonic()
            result = connector_cli(
                env,
                "replay",
                "-c",
                "acme",
                str(path),
                "--json",
                "--report",
                str(tmp / "rejected.jsonl"),
                timeout=timeout,
            )
            if result.returncode != 0:
                raise RuntimeError(result.stderr)
            wait_until(
                lambda: len(fake.customers()) >= customers,
                timeout=timeout,
                interval=0.5,
                what="every customer",
            )
            seconds = time.monotonic() - began
            made = sum(len(calls(fake, p)) for p in CUSTOMERS_PATHS)
            refused = sum(1 for r in calls(fake) if r["status"] == 429)
        finally:
            stack.close()
    rate = customers / seconds
    allowed = budgets_allow(customers, plan, bulk_calls_per_hour)
    real_seconds = seconds / scale
    return {
        "plan": plan,
        "bulk_calls_per_hour": bulk_calls_per_hour,
        "customers": customers,
        "seconds": round(seconds, 1),
        "customers_per_second_fast_clock": round(rate, 1),
        "customers_per_second_real": round(rate * scale, 2),
        "customer_calls_per_customer": round(made / customers, 4),
        "answers_429": refused,
        "scale": scale,
        # SPEC 15's pace: the real time taken against what the connector's share of the plan's
        # budgets allows for these customers (ops.replay_forecast, the --dry-run's figure).
        "budget_seconds_real": None if allowed is None else round(allowed, 1),
        "time_over_budget_time": None if not allowed else round(real_seconds / allowed, 2),
    }


def budgets_allow(customers: int, plan: str, bulk_calls_per_hour: int | None) -> float | None:
    """Real seconds the share of ``plan``'s budgets needs for ``customers`` (one version each)."""
    quota: QuotaSettings = plan_quota(plan)
    if bulk_calls_per_hour:
        quota = dataclasses.replace(quota, bulk_calls_per_hour=bulk_calls_per_hour)
    return seconds_for(calls_for(customers, 0, quota, upserts=customers), quota)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--plan", default="organization")
    parser.add_argument("--bulk-calls-per-hour", type=int, default=None)
    parser.add_argument("--scale", type=float, default=0.05)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="backfill-rate-") as tmp:
        result = measure(
            Path(tmp),
            customers=args.customers,
            plan=args.plan,
            bulk_calls_per_hour=args.bulk_calls_per_hour,
            scale=args.scale,
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""The backfill row: customers a ``connector replay`` of a CSV backfills per second, and
Voucherify customer calls per customer, against the fake Voucherify enforcing a plan's limits on
a fast clock -- beside Voucherify's own initial-sync script (100 customers every 4 s: 25/s).

Each run is ``tests.support.backfill_rate`` in a process of its own (its redis-server, fake,
worker and scheduler; the connector on the fake's clock).  The fast clock shortens every quota
period by ``scale``: a rate on it is ``scale`` times too fast, so the row reports it in real
time (``x scale``), which is what a shop would see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from connector.quotas import PLANS

ROOT = Path(__file__).resolve().parents[1]
# Voucherify's initial sync (a script reading Segment's Profile API): 100 customers every 4 s.
VOUCHERIFY_TOOL_PER_SECOND = 25.0
# (plan, customers, scale): about two minutes or less each on the fast clock.  Its windows stay
# long beside what it does not shorten (the CLI's start, the hold window, a worker's 2 s fetch
# wait, one worker's calls per second): at 3 s "minutes" Business measured 1.46x its budget time
# and Organization at 6 s 2.0x, which says more about the clock than about the pace.  Business
# and Organization have no bulk budget (single calls); Professional (an older plan) bulks.
RUNS = (("business", 500, 0.2), ("organization", 2000, 0.5), ("professional", 10000, 0.05))
# SPEC 15's targets: calls per customer where the plan bulks, and the pace against the budgets.
BULK_CALLS_PER_CUSTOMER_TARGET = 0.02
PACE_TARGET = 1.2


def backfill(bench: Any) -> None:
    for plan, customers, scale in RUNS:
        if os.environ.get("BENCH_QUICK"):
            customers //= 4
        command = [sys.executable, "-m", "tests.support.backfill_rate", "--plan", plan]
        command += ["--customers", str(customers), "--scale", str(scale)]
        out = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
        if out.returncode != 0:
            bench.results["notes"].append(f"backfill {plan}: failed: {out.stderr[-300:]}")
            continue
        result = json.loads(out.stdout)
        bench.results.setdefault("backfill", []).append(result)
        bench.row(
            f"backfill, customers/s (real time), {plan} limits",
            result["customers_per_second_real"],
            "customers/s",
            VOUCHERIFY_TOOL_PER_SECOND,
            "Voucherify's own sync: 25/s",
            None,
        )
        bulk = bool(PLANS[plan].get("bulk_calls_per_hour"))
        most = BULK_CALLS_PER_CUSTOMER_TARGET if bulk else 1.0
        bench.row(
            f"backfill, customer calls per customer, {plan} limits",
            result["customer_calls_per_customer"],
            "calls/customer",
            1.0,
            f"<= {most:g}, no 429",
            result["customer_calls_per_customer"] <= most and result["answers_429"] == 0,
        )
        pace = result.get("time_over_budget_time")
        if pace is not None:
            bench.row(
                f"backfill, time / the time its budgets allow, {plan} limits",
                pace,
                "x",
                1.0,
                f"<= {PACE_TARGET:g}",
                pace <= PACE_TARGET,
            )

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

ROOT = Path(__file__).resolve().parents[1]
# Voucherify's initial sync (a script reading Segment's Profile API): 100 customers every 4 s.
VOUCHERIFY_TOOL_PER_SECOND = 25.0
# (plan, customers, scale): sizes that take about a minute each on the fast clock.
RUNS = (("business", 300, 0.05), ("organization", 1000, 0.5))


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
        bench.row(
            f"backfill, customer calls per customer, {plan} limits",
            result["customer_calls_per_customer"],
            "calls/customer",
            1.0,
            "<= 1, no 429",
            result["customer_calls_per_customer"] <= 1.0 and result["answers_429"] == 0,
        )

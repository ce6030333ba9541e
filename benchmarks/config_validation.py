"""Time to validate a tenant document (config_cache.validate_tenant).

Tenant documents are validated on a node's event loop when the master pushes a
change (config_cache/follower.py), so this is loop time per pushed tenant.

    python -m benchmarks.config_validation [--users 1000] [--flows 100] [--repeat 20]

Prints the median and minimum milliseconds for the bundled demo tenant and for a
generated large tenant (``large_tenant``, also used by
tests/config_cache/test_validation.py). On a shared machine compare minimums.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from importlib import resources
from typing import Any

from config_cache import validate_tenant

__all__ = ["large_tenant", "main"]


def large_tenant(users: int = 1000, flows: int = 100) -> dict[str, Any]:
    """A valid tenant with ``users`` users (and as many numbers) and ``flows`` IVR flows."""
    exts = [str(1000 + i) for i in range(users)]
    doc: dict[str, Any] = {
        "id": "big",
        "rev": 1,
        "timezone": "Europe/Paris",
        "users": {e: {"password": f"pw{e}", "name": f"User {e}"} for e in exts},
        "ring_groups": {
            f"g{i}": {"members": exts[i * 10 : i * 10 + 10], "strategy": "sequential"}
            for i in range(users // 10)
        },
        "prompts": {"promo": {"file": "big/promo.wav", "text": "Sale"}},
        "outbound_routes": [{"prefix": "0", "trunk_group": "pstn", "strip": 1}],
        "dial_policy": {"allow_international": True, "deny": ["1900"]},
        "limits": {"max_calls": 100, "max_cps": 5},
        "flows": {},
        "numbers": {},
    }
    for f in range(flows):
        doc["flows"][f"f{f}"] = {
            "start": "hours",
            "nodes": {
                "hours": {
                    "type": "time_condition",
                    "schedule": {"mon": [["09:00", "17:00"]], "tue": [["09:00", "17:00"]]},
                    "holidays": ["2026-12-25"],
                    "open": "menu",
                    "closed": "bye",
                },
                "menu": {
                    "type": "menu",
                    "prompt": ["welcome", "promo"],
                    "options": {"1": "sales", "2": "ask", "0": "bye"},
                    "on_failure": "bye",
                },
                "sales": {
                    "type": "transfer",
                    "targets": [f"user:{exts[f % users]}"],
                    "next": "bye",
                },
                "ask": {
                    "type": "gather",
                    "variable": "account",
                    "max_digits": 8,
                    "pattern": "[0-9]+",
                    "next": "bye",
                },
                "bye": {"type": "hangup"},
            },
        }
    for i, e in enumerate(exts):
        route = f"ivr:f{i % flows}" if flows and i % 2 else f"user:{e}"
        doc["numbers"][f"+3310000{i:04d}"] = {"route": route}
    return doc


def _times_ms(doc: dict[str, Any], repeat: int) -> str:
    """Median and minimum: on a shared machine the minimum is the steadier figure."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        validate_tenant(doc)
        times.append((time.perf_counter() - start) * 1000)
    return f"median {statistics.median(times):.2f} ms, min {min(times):.2f} ms"


def main(argv: list[str] | None = None) -> None:
    """Print the median validation time of the demo tenant and of a large tenant."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--flows", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    demo = json.loads(resources.files("config_cache").joinpath("demo/demo.json").read_text())
    big = large_tenant(args.users, args.flows)
    print(f"demo tenant: {_times_ms(demo, args.repeat)}")
    print(f"large tenant ({args.users} users, {args.flows} flows): {_times_ms(big, args.repeat)}")


if __name__ == "__main__":
    main()

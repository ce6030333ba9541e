"""Micro-benchmark: one number -> route lookup on the in-memory snapshot.

Run: ``.venv/bin/python -m benchmarks.config_lookup`` (or as a script). Builds
1,000 tenants x 10 numbers in a temporary LevelDB, then times
``ConfigCache.lookup`` for a configured number, a number written without its
``+`` and an unknown number (default route). Target: < 20 µs per lookup.
"""

from __future__ import annotations

import tempfile
import timeit
from functools import partial

from config_cache import open_store, validate_tenant


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(tmp, default_tenant="t0")
        for t in range(1000):
            store.config.apply(
                validate_tenant(
                    {
                        "id": f"t{t}",
                        "rev": 1,
                        "users": {"100": {"password": "x"}},
                        "default_route": "user:100",
                        "numbers": {f"+1555{t:04d}{n:03d}": "user:100" for n in range(10)},
                    }
                )
            )
        cache = store.config
        for label, number in (
            ("configured", "+15550500005"),
            ("without +", "15550500005"),
            ("default route", "999"),
        ):
            assert cache.lookup(number) is not None
            runs = 200_000
            best = min(timeit.repeat(partial(cache.lookup, number), number=runs, repeat=5))
            print(f"lookup ({label:13s}): {best / runs * 1e6:.3f} µs")
        store.close()


if __name__ == "__main__":
    main()

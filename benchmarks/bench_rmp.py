"""RMP throughput: single-page instructions through the public API and vectorised range operations.

Run: ``python benchmarks/bench_rmp.py``. Prints a table; the numbers are for comparison between versions on one
machine (no timed asserts live in the test suite).
"""

from __future__ import annotations

import time

import numpy as np

from snpsim.hw import PageSize, Rmp

GIB = 262144


def rate(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def main() -> None:
    rmp = Rmp(64 * GIB)  # 256 GiB host
    n = 200_000
    pfns = np.random.default_rng(1).permutation(n) * 7
    rows = []
    rows.append(
        (
            "rmpupdate 4K (single, public API)",
            rate(lambda: [rmp.rmpupdate(int(p) << 12, assigned=True, gpa=int(p) << 12, asid=1) for p in pfns], n),
            "ops/s",
        )
    )
    rows.append(("rmpread (single)", rate(lambda: [rmp.rmpread(int(p) << 12) for p in pfns[:50_000]], 50_000), "ops/s"))
    npages = 4 * GIB
    rows.append(
        (
            "rmpupdate_range 4K, 4 GiB",
            rate(lambda: rmp.rmpupdate_range(8 * GIB << 12, npages, assigned=True, gpa=0, asid=2), npages),
            "pages/s",
        )
    )
    rows.append(
        (
            "pvalidate_range 4K, 4 GiB",
            rate(
                lambda: rmp.pvalidate_range(
                    8 * GIB << 12, npages, asid=2, gpa=0, page_size=PageSize.SIZE_4K, validate=True
                ),
                npages,
            ),
            "pages/s",
        )
    )
    rows.append(
        (
            "rmpupdate_range 2M, 4 GiB",
            rate(
                lambda: rmp.rmpupdate_range(
                    16 * GIB << 12, npages, assigned=True, page_size=PageSize.SIZE_2M, gpa=0, asid=3
                ),
                npages,
            ),
            "pages/s",
        )
    )
    state = np.zeros(npages * 11, dtype=np.uint8)  # flags + gfn + asid bytes per page
    rows.append(("numpy memset of the same state bytes", rate(lambda: state.fill(1), npages), "pages/s"))
    scattered = np.random.default_rng(2).choice(32 * GIB, size=1 << 20, replace=False) + 24 * GIB
    rows.append(
        (
            "rmpupdate_pfns 4K, 1M scattered",
            rate(lambda: rmp.rmpupdate_pfns(scattered, scattered, assigned=True, asid=4), 1 << 20),
            "pages/s",
        )
    )
    width = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>14,.0f} {unit}")
    print(f"RMP storage allocated: {rmp.allocated_bytes / 2**20:.0f} MiB for {64} GiB of touched-or-not host memory")


if __name__ == "__main__":
    main()

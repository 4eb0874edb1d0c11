"""Throughput of snpsim.host.buddy.BuddyAllocator on a 2 TiB host (2**29 frames of 4 KiB), and the time to age a
64 GiB host (snpsim.host.aging, the default [host.aging] with page_cache = 0.2).

Run: ``PYTHONPATH=src python benchmarks/bench_buddy.py``
"""

from __future__ import annotations

import time

import numpy as np

from snpsim.host import HostKernel
from snpsim.host.aging import AgingSpec, age_host
from snpsim.host.buddy import BuddyAllocator, Migratetype
from snpsim.policy import presets

NFRAMES = 1 << 29  # 2 TiB of 4K frames
N_SINGLE = 200_000
N_BULK = 1 << 20  # 1M pages = 4 GiB


def rate(label: str, ops: int, seconds: float) -> None:
    print(f"{label:<44} {ops:>9} ops in {seconds:7.3f} s = {ops / seconds:>12,.0f} ops/s")


def main() -> None:
    t = time.perf_counter()
    b = BuddyAllocator(NFRAMES)
    print(f"construct 2 TiB allocator: {time.perf_counter() - t:.4f} s, buddyinfo[10] = {b.buddyinfo()[10]}")

    for order, mt in ((0, Migratetype.MOVABLE), (9, Migratetype.MOVABLE), (0, Migratetype.UNMOVABLE)):
        t = time.perf_counter()
        pfns = [b.alloc(order, mt) for _ in range(N_SINGLE)]
        rate(f"alloc(order={order}, {mt.name})", N_SINGLE, time.perf_counter() - t)
        t = time.perf_counter()
        for pfn in pfns:
            assert pfn is not None
            b.free(pfn, order)
        rate(f"free(order={order}), ascending", N_SINGLE, time.perf_counter() - t)

    # fragmented case: free every other page, then re-allocate them one by one
    pages = b.alloc_bulk(0, N_SINGLE)
    assert pages is not None
    b.free_bulk(pages[::2], 0)
    t = time.perf_counter()
    for _ in range(N_SINGLE // 2):
        b.alloc(0)
    rate("alloc(order=0) from fragmented order-0 list", N_SINGLE // 2, time.perf_counter() - t)
    b.free_bulk(pages, 0)

    t = time.perf_counter()
    pages = b.alloc_bulk(0, N_BULK)
    dt = time.perf_counter() - t
    assert pages is not None
    rate("alloc_bulk(0, 1M) [pages]", N_BULK, dt)

    shuffled = np.random.default_rng(0).permutation(pages)
    t = time.perf_counter()
    b.free_bulk(shuffled[: N_BULK // 2], 0)
    rate("free_bulk(0) 512K random pages [pages]", N_BULK // 2, time.perf_counter() - t)
    t = time.perf_counter()
    again = b.alloc_bulk(0, N_BULK // 2)
    rate("alloc_bulk(0, 512K) from fragmented [pages]", N_BULK // 2, time.perf_counter() - t)
    assert again is not None
    t = time.perf_counter()
    b.free_bulk(np.concatenate([shuffled[N_BULK // 2 :], again]), 0)
    rate("free_bulk(0, 1M) mixed [pages]", N_BULK, time.perf_counter() - t)
    print(f"final buddyinfo[10] = {b.buddyinfo()[10]}, free_frames = {b.free_frames}")

    h = HostKernel(64 << 18, presets["upstream"])
    t = time.perf_counter()
    report = age_host(h, 0.2, AgingSpec(), 1)
    dt = time.perf_counter() - t
    rate("age a 64 GiB host [pages allocated + freed]", report.allocated_pages + report.freed_pages, dt)


if __name__ == "__main__":
    main()

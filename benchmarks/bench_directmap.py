"""Throughput of the direct map model (snpsim.host.directmap.DirectMap).

Plain script: ``PYTHONPATH=src python benchmarks/bench_directmap.py``. Prints operations per second for
``set_4k`` (the upstream split path run before every 4K RMPUPDATE) and for ``remove_range`` /
``restore_range`` over 1M pages (4 GiB), both as one vectorised call and as per-page calls, and the time to build
the boot-time map of a 2 TiB host, flat and on the server e820 layout.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from snpsim.host.directmap import DirectMap
from snpsim.host.e820 import server_memory_map
from snpsim.hw.types import PAGES_PER_1G

NPAGES = 1 << 20  # 1M pages = 4 GiB
HOST_FRAMES = 1 << 29  # 2 TiB host


def timed(label: str, nops: int, fn: Callable[[], object]) -> None:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    print(f"{label:<52} {nops:>9} ops  {dt * 1e3:9.1f} ms  {nops / dt:14,.0f} ops/s")


def main() -> None:
    t0 = time.perf_counter()
    dm = DirectMap(HOST_FRAMES)
    print(f"DirectMap({HOST_FRAMES}) (2 TiB) built in {(time.perf_counter() - t0) * 1e3:.1f} ms")
    server = server_memory_map(HOST_FRAMES << 12)
    t0 = time.perf_counter()
    booted = DirectMap(server.max_pfn, memory=server.memory)
    ms = (time.perf_counter() - t0) * 1e3
    print(f"DirectMap of the 2 TiB server e820 map built in {ms:.1f} ms: {booted.meminfo()}")
    rng = np.random.default_rng(0)
    base = 16 * PAGES_PER_1G

    # set_4k on 1M distinct random pages of a 64 GiB window: mostly splits at first, then no-ops.
    pfns = (base + rng.permutation(64 * PAGES_PER_1G)[:NPAGES]).tolist()
    timed("set_4k, random pages of a 64 GiB window", len(pfns), lambda: [dm.set_4k(p) for p in pfns])
    timed("set_4k again (already 4K: no-op path)", len(pfns), lambda: [dm.set_4k(p) for p in pfns])
    print(f"  splits {dm.split_count}, meminfo {dm.meminfo()}")

    dm = DirectMap(HOST_FRAMES)
    start = 100 * PAGES_PER_1G + 123
    timed("remove_range(1M pages), one call, from 1G mappings", NPAGES, lambda: dm.remove_range(start, NPAGES))
    timed("restore_range(1M pages), one call", NPAGES, lambda: dm.restore_range(start, NPAGES))
    timed("remove_range(1M pages), one call, already 4K", NPAGES, lambda: dm.remove_range(start, NPAGES))
    timed("restore_range(1M pages), one call, already 4K", NPAGES, lambda: dm.restore_range(start, NPAGES))
    timed("try_merge over the 1M pages", NPAGES, lambda: dm.try_merge(start, NPAGES))

    def chunks(op: Callable[[int, int], int], size: int) -> None:
        for p in range(start, start + NPAGES, size):
            op(p, size)

    for size in (1, 512):
        timed(f"remove_range in {size}-page calls over 1M pages", NPAGES, lambda s=size: chunks(dm.remove_range, s))
        timed(f"restore_range in {size}-page calls over 1M pages", NPAGES, lambda s=size: chunks(dm.restore_range, s))
    timed("remove_4k per page over 1M pages", NPAGES, lambda: [dm.remove_4k(p) for p in range(start, start + NPAGES)])
    timed("restore_4k per page over 1M pages", NPAGES, lambda: [dm.restore_4k(p) for p in range(start, start + NPAGES)])
    timed("count_levels over the whole 2 TiB", HOST_FRAMES, lambda: dm.count_levels(0, HOST_FRAMES))
    print(f"  splits {dm.split_count}, merges {dm.merge_count}, meminfo {dm.meminfo()}")


if __name__ == "__main__":
    main()

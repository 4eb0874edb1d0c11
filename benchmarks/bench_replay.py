"""Replay throughput and memory: an N-line QEMU trace replayed through every layer under one preset.

Run: ``python benchmarks/bench_replay.py [LINES] [PRESET]`` (default 1,000,000 lines, ``upstream``). Writes a
QEMU log-backend trace of random conversions of a 4 GiB guest (``mode="full"``: 2 lines per conversion) into a
temporary directory, replays it with :func:`snpsim.replay`, and prints lines/s and the process's resident memory
at each tenth of the replay: a streaming replay keeps it flat however long the trace is. Numbers are for
comparison between versions on one machine.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import snpsim
from snpsim.traces import write_qemu

LINES = 1_000_000
GUEST_PAGES = 1 << 20  # 4 GiB


def rss_mib() -> float:
    """Current resident set size (Linux ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def conversions(n: int, seed: int = 1) -> Iterator[tuple[int, int, int, bool]]:
    """``n`` conversions (time_ns, gfn, npages, to_private) of random 1..16-page ranges of the 4 GiB q35 guest's
    RAM (2 GiB below the PCI hole, 2 GiB from 4 GiB), 20 us apart on average."""
    rng = random.Random(seed)
    t = 1_718_000_000_000_000_000
    half = GUEST_PAGES // 2
    for _ in range(n):
        t += rng.randrange(1, 40) * 1000
        npages = rng.randrange(1, 17)
        gfn = rng.randrange(0, half - npages) + (GUEST_PAGES if rng.random() < 0.5 else 0)
        yield t, gfn, npages, rng.random() < 0.5


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else LINES
    preset = sys.argv[2] if len(sys.argv) > 2 else "upstream"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qemu.log"
        written = write_qemu(conversions(lines // 2), path)
        size_mb = path.stat().st_size / 1e6
        marks: list[tuple[float, float, float]] = []
        start = time.perf_counter()

        def progress(frac: float) -> None:
            if not marks or frac >= marks[-1][0] + 0.1:
                marks.append((frac, time.perf_counter() - start, rss_mib()))

        result = snpsim.replay(path, preset, vm_memory="4G", host_memory="8G", samples=10, progress=progress)
        wall = time.perf_counter() - start
        marks.append((1.0, wall, rss_mib()))
    print(
        f"{written:,} lines ({size_mb:,.0f} MB) under {preset}: {wall:.1f} s, "
        f"{written / wall:,.0f} lines/s, {result.summary['vmm_exit_count']:,} VMM exits"
    )
    print(f"{'progress':>9} {'seconds':>8} {'RSS MiB':>8}")
    for frac, t, rss in marks:
        print(f"{frac:>9.0%} {t:>8.1f} {rss:>8.0f}")


if __name__ == "__main__":
    main()

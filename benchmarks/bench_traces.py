"""Trace parser throughput: lines/s of the QEMU and ftrace parsers on a generated 1M-line trace each.

Run: ``python benchmarks/bench_traces.py [LINES]``. Writes the traces with :mod:`snpsim.traces.export` (``mode="full"``,
i.e. real-looking traces where the duplicate policy is exercised: QEMU 2 lines per conversion, ftrace 4) into a
temporary directory, then times one full pass of :func:`snpsim.traces.parse` over each (the look-ahead of the
duplicate policy and format detection included), and one :func:`snpsim.traces.scan` (the replay's single pass:
the same parsers, the conversions spooled as numpy records to a temporary file), with the peak resident memory
after each. Numbers are for comparison between versions on one machine.
"""

from __future__ import annotations

import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from snpsim.traces import parse, scan, write_ftrace, write_qemu

LINES = 1_000_000


def events(n: int, seed: int = 1) -> Iterator[tuple[int, int, int, bool]]:
    rng = random.Random(seed)
    t = 1_718_000_000_000_000_000
    for _ in range(n):
        t += rng.randrange(1, 50) * 1000
        npages = rng.choice((1, 1, 2, 16, 512))
        yield t, rng.randrange(0, 1 << 20) * 4, npages, rng.random() < 0.5


def bench(path: Path, fmt: str) -> tuple[int, int, float]:
    t = time.perf_counter()
    reader = parse(path, fmt)  # type: ignore[arg-type]
    n = sum(1 for _ in reader)
    dt = time.perf_counter() - t
    return reader.stats.lines, n, dt


def bench_scan(path: Path, fmt: str, spool: str) -> tuple[int, int, float]:
    t = time.perf_counter()
    with scan(path, fmt, spool_dir=spool) as arrays:
        dt = time.perf_counter() - t
        return arrays.stats.lines, len(arrays), dt


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else LINES
    with tempfile.TemporaryDirectory() as tmp:
        qpath, fpath = Path(tmp) / "qemu.log", Path(tmp) / "ftrace.txt"
        # QEMU "full": 2 lines per conversion; ftrace "full": 4 per conversion (+ 12 header lines).
        write_qemu(events(lines // 2), qpath)
        write_ftrace(events(lines // 4), fpath)
        head = f"{'parser':<8} {'pass':<6} {'lines':>10} {'conversions':>12} {'seconds':>8} {'lines/s':>12} {'MB':>6}"
        print(f"{head} {'peak RSS MiB':>13}")
        for fmt, path in (("qemu", qpath), ("ftrace", fpath)):
            mb = path.stat().st_size / 1e6
            for kind in ("parse", "scan"):
                if kind == "parse":
                    n_lines, n_conv, dt = bench(path, fmt)
                else:
                    n_lines, n_conv, dt = bench_scan(path, fmt, tmp)
                print(
                    f"{fmt:<8} {kind:<6} {n_lines:>10,} {n_conv:>12,} {dt:>8.2f} {n_lines / dt:>12,.0f} {mb:>6.0f} "
                    f"{peak_rss_mib():>13.0f}"
                )


if __name__ == "__main__":
    main()

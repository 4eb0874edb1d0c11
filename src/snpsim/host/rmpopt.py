"""The kernel's side of RMPOPT: the boot-time scan, the per-CPU bits, and the delayed rescan after SNP teardown.

Models the RMPOPT series for ``arch/x86/virt/svm/sev.c`` ("[PATCH 0/6] Add RMPOPT support", A. Kalra, v1
cover.1771321114.git.ashish.kalra@amd.com ... v10 cover.1782841284, 2026; ``shared/reference/linux-snp-host.md``
§1). The instruction itself is :meth:`snpsim.hw.rmp.Rmp.rmpopt`.

- At RMP initialisation ("Enable RMPOPT optimizations globally for all system RAM at RMP initialization time",
  v1 3/6) the kernel scans ``[ALIGN_DOWN(PFN_PHYS(min_low_pfn), PUD_SIZE), ALIGN(PFN_PHYS(max_pfn), PUD_SIZE))``,
  limited to "the first 2 TB of RAM" (``RMPOPT_TABLE_MAX_LIMIT_IN_TB``), one 1 GiB region at a time, each with
  ``on_each_cpu_mask(cpu_online_mask, rmpopt, pa | RMPOPT_FUNC_VERIFY_AND_REPORT_STATUS, true)`` (v2 3/7, as
  quoted in S. Christopherson's review of 2026-03-04: "*every* time a guest_memfd file is destroyed, the kernel
  will process *every* ... chunk of memory, interrupting *every* CPU").
- "As SNP guests are launched, RMPUPDATE will disable the corresponding RMPOPT optimizations" (v1 3/6): hardware
  clears the bits (``rmpopt-clear`` in :mod:`snpsim.hw.rmp`).
- ``snp_rmpopt_all_physmem()`` (v8 5/7), called when an SNP VM is destroyed, does
  ``mod_delayed_work(rmpopt_wq, &rmpopt_delayed_work, msecs_to_jiffies(RMPOPT_WORK_TIMEOUT))``: "re-optimization
  runs 10 seconds after the *last* VM termination rather than after the first"; a request during a scan queues
  another.

The scan's cost is ``rmpopt_1g_ns`` per region (:mod:`snpsim.hw.costs`, calibrated to the series' measurement of
2 TB on all CPUs), charged to the scanning thread: the wall time of the IPI round it waits for. The number of
online CPUs is ``ncpus`` (the rows of the RMPOPT table; the cost does not depend on it, as it was measured on all
CPUs of the test machine). ``rmpopt_bytes`` is the memory of the regions whose bit is set on every CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING

import numpy as np

from snpsim.hw.rmp import RMPOPT_FUNC_VERIFY_AND_REPORT_STATUS, SEGMENT_SHIFT
from snpsim.hw.types import PAGE_SHIFT

if TYPE_CHECKING:
    from snpsim.host.kernel import HostKernel

#: ``RMPOPT_WORK_TIMEOUT``: the rescan runs this long after the last SNP VM termination (v8 5/7: "10 seconds")
RMPOPT_WORK_TIMEOUT_NS = 10_000_000_000
#: ``RMPOPT_TABLE_MAX_LIMIT_IN_TB``: only the first 2 TB of RAM are scanned
RMPOPT_MAX_BYTES = 2 << 40
#: online CPUs the model gives a host (rows of the RMPOPT table)
DEFAULT_CPUS = 8
#: how often the idle worker looks for a queued rescan (it then sleeps exactly until the deadline)
_IDLE_POLL_NS = 1_000_000_000
_REGION_SHIFT = SEGMENT_SHIFT + PAGE_SHIFT


class RmpOptimizer:
    """The kernel's RMPOPT state for one host: configured range, per-CPU table (in the RMP), delayed rescan."""

    def __init__(self, host: HostKernel, *, ncpus: int = DEFAULT_CPUS, min_pfn: int = 0) -> None:
        self.host = host
        self.ncpus = int(ncpus)
        host.rmp.enable_rmpopt(self.ncpus)
        pa_start = (min_pfn << PAGE_SHIFT) >> _REGION_SHIFT << _REGION_SHIFT
        pa_end = -(-(host.nframes << PAGE_SHIFT) >> _REGION_SHIFT) << _REGION_SHIFT
        pa_end = min(pa_end, pa_start + RMPOPT_MAX_BYTES)
        #: the scanned 1 GiB regions ``[first, last)``
        self.regions = (pa_start >> _REGION_SHIFT, pa_end >> _REGION_SHIFT)
        #: RAM bytes in each 1 GiB region of the RMP (the e820 RAM ranges; holes hold none)
        self.ram_bytes = np.zeros(len(host.rmp.rmpopt_regions_all_cpus()), dtype=np.int64)
        for lo, hi in host.memory_map.ram_ranges:
            for r in range(lo >> SEGMENT_SHIFT, ((hi - 1) >> SEGMENT_SHIFT) + 1):
                a, b = max(lo, r << SEGMENT_SHIFT), min(hi, (r + 1) << SEGMENT_SHIFT)
                self.ram_bytes[r] += (b - a) << PAGE_SHIFT
        #: simulated time at which the queued rescan runs (None: nothing queued)
        self.deadline_ns: int | None = None
        self.scan_count = 0
        #: completion times of the rescans (after teardowns), for tests and reports
        self.rescan_times_ns: list[int] = []

    def scan(self) -> int:
        """One pass over the configured regions on every CPU; returns the regions optimised on all CPUs."""
        lo, hi = self.regions
        rmp = self.host.rmp
        for region in range(lo, hi):
            for cpu in range(self.ncpus):  # on_each_cpu_mask(cpu_online_mask, rmpopt, ..., true)
                rmp.rmpopt(region << _REGION_SHIFT, RMPOPT_FUNC_VERIFY_AND_REPORT_STATUS, cpu)
        n = hi - lo
        self.host.charge("rmpopt", n * self.host.costs.rmpopt_1g_ns, n)
        self.scan_count += 1
        return int(rmp.rmpopt_regions_all_cpus()[lo:hi].sum())

    def snp_rmpopt_all_physmem(self) -> None:
        """An SNP VM was destroyed: ``mod_delayed_work`` (re)arms the rescan 10 s from now (the calling thread's
        now: the simulated time plus what its current step has charged so far, i.e. after the teardown's work)."""
        self.deadline_ns = int(self.host.clock()) + self.host.cpu.pending_ns + RMPOPT_WORK_TIMEOUT_NS

    def optimized_bytes(self) -> int:
        """``rmpopt_bytes``: host RAM in the regions whose RMPOPT bit is set on every CPU."""
        return int(self.ram_bytes[self.host.rmp.rmpopt_regions_all_cpus()].sum())

    def worker(self, clock: Callable[[], int]) -> Generator[int, None, None]:
        """The ``rmpopt_wq`` delayed work as a host thread: sleep until the deadline (re-armed deadlines move it),
        then rescan."""
        while True:
            d = self.deadline_ns
            now = clock()
            if d is None:
                yield _IDLE_POLL_NS
                continue
            if now < d:
                yield d - now
                continue
            self.deadline_ns = None
            self.scan()
            self.rescan_times_ns.append(int(now))
            yield 0

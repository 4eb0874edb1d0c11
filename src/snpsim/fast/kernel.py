"""The fast engine's host kernel: :class:`snpsim.host.HostKernel` with its range of kernel writes checked at once.

Page clearing (``kernel_init_pages`` / ``clear_highpage`` on every page of an allocation), copies and the host
writers' batches are :meth:`HostKernel.kernel_write_range`: in the reference, :meth:`HostKernel.kernel_write` on each
frame in order (arch/x86/mm/fault.c: a not-present direct-map entry oopses; a write through a mapping whose range
holds an assigned RMP entry takes the RMP #PF, ``amd-snp-arch.md`` §7). Here the hardware check of every frame is
evaluated on the initial state at once, and only the writes that fault on it go through ``kernel_write``, in order.
That is exact: handling one fault (an oops records a crash and changes nothing; the ``fixup`` handler only makes
pages shared and splits mappings) never makes another write fault, and a write that does not fault changes nothing,
so the skipped writes are the ones the loop would have passed. tests/host/test_kernel.py and tests/fast/ compare
the two engines.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from snpsim.fast.buddy import FastBuddyAllocator
from snpsim.host.buddy import MAX_PAGE_ORDER
from snpsim.host.directmap import NOT_PRESENT
from snpsim.host.kernel import HostKernel, IntArray
from snpsim.hw.types import PageSize
from snpsim.segments import ascending

__all__ = ["SCALAR_MAX", "FastHostKernel", "write_may_fault"]

#: The fast engine's one size policy for small events: an operation on at most this many pages (or blocks) takes
#: the reference's loop; above it, the array version. Measured on the project machine (``benchmarks/README.md``): a
#: numpy call costs 1-5 us of set-up, a scalar RMP or buddy step 0.5-5 us, so the crossover lies at 10-30 pages.
SCALAR_MAX = 16


def write_may_fault(host: HostKernel, pfns: IntArray) -> npt.NDArray[np.bool_]:
    """Per frame: can :meth:`HostKernel.kernel_write` of it fault on the current state (its direct-map entry not
    present; mapped at 4K and assigned in the RMP; or mapped large over a 2M range holding an assigned page)."""
    level = host.directmap.levels_of(pfns)
    risky = level == NOT_PRESENT
    large = np.flatnonzero(level > PageSize.SIZE_4K)
    risky[large] = host.rmp.assigned_in_2m_of(pfns[large]) > 0
    small = np.flatnonzero(level == PageSize.SIZE_4K)
    risky[small] = host.rmp.assigned_mask(pfns[small])
    return risky


class FastHostKernel(HostKernel):
    """:class:`HostKernel` whose :meth:`kernel_write_range` checks the frames at once and whose :meth:`free_bulk`
    is one compiled call (:meth:`FastBuddyAllocator.free_tagged`); same results, state and errors."""

    def free_bulk(self, pfns: IntArray, order: int) -> None:
        arr = ascending(np.asarray(pfns, dtype=np.int64).ravel())
        buddy = self.buddy
        if 0 <= order <= MAX_PAGE_ORDER and isinstance(buddy, FastBuddyAllocator) and buddy.free_tagged(arr, order):
            return
        super().free_bulk(pfns, order)  # a check failed (its error), or a block above MAX_PAGE_ORDER

    def kernel_write_range(self, pfns: IntArray, path: str) -> int:
        pfns = np.asarray(pfns, dtype=np.int64)
        if pfns.size <= SCALAR_MAX:
            return super().kernel_write_range(pfns, path)
        self.charge("page_clear", int(pfns.size) * self.costs.page_clear_ns, int(pfns.size))
        before = self.host_crash_count
        for pfn in pfns[write_may_fault(self, pfns)].tolist():
            self.kernel_write(pfn, path)
        return self.host_crash_count - before

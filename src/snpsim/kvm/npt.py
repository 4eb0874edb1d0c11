"""The nested page table (KVM's TDP MMU for SVM): which guest-physical pages are mapped, at which level, to what.

Models ``arch/x86/kvm/mmu/tdp_mmu.c`` (map a faulting gfn at the goal level, install one SPTE covering the whole
aligned range; ``kvm_tdp_mmu_unmap_gfn_range`` / ``kvm_zap_gfn_range`` zap every SPTE intersecting a range, a
huge SPTE entirely) as far as the host memory question needs: the level of each mapping and the host frame it
points at. ``npt_4k`` / ``npt_2m`` / ``npt_1g`` are the bytes of guest memory mapped at each level
(``shared/DESIGN.md`` metrics). Source: ``shared/reference/linux-snp-host.md`` §4.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from snpsim.arch import PAGE_SIZE, PageSize
from snpsim.pfnmap import PfnMap, lazy_zeros
from snpsim.segments import unique_ints

UNMAPPED = -1


class NestedPageTable:
    """Per-gfn mapping state of one VM's NPT over ``[0, npages)``."""

    def __init__(self, npages: int, max_pfn: int = 1 << 31) -> None:
        self.npages = int(npages)
        #: mapping level per gfn (``PageSize`` value) or ``UNMAPPED``
        self.level = np.full(self.npages, UNMAPPED, dtype=np.int8)
        #: host frame mapped at each gfn, -1 where unmapped (frames below ``max_pfn``)
        self.pfn = PfnMap(self.npages, max_pfn)
        #: whether the mapping is of the private (guest_memfd) or the shared backing
        self.private = lazy_zeros(self.npages, bool)
        self._bytes = [0, 0, 0]
        self.map_count = 0
        self.zap_count = 0

    def bytes_at(self, level: PageSize) -> int:
        return self._bytes[int(level)]

    def map(self, gfn: int, level: PageSize, pfns: npt.NDArray[np.int64], private: bool) -> None:
        """Install one SPTE of ``level`` covering the aligned range holding ``gfn``; ``pfns`` per 4K page."""
        n = level.npages
        lo = gfn // n * n
        self.zap(lo, n)
        self.level[lo : lo + n] = int(level)
        self.pfn[lo : lo + n] = pfns
        self.private[lo : lo + n] = private
        self._bytes[int(level)] += n * PAGE_SIZE
        self.map_count += 1

    def map_4k(self, lo: int, hi: int, pfns: npt.NDArray[np.int64], private: bool) -> None:
        """Install 4K SPTEs for every gfn of ``[lo, hi)`` (one fault each, done in bulk)."""
        self.zap(lo, hi - lo)
        self.level[lo:hi] = int(PageSize.SIZE_4K)
        self.pfn[lo:hi] = pfns
        self.private[lo:hi] = private
        self._bytes[0] += (hi - lo) * PAGE_SIZE
        self.map_count += hi - lo

    def map_4k_where(self, gfn: int, mask: npt.NDArray[np.bool_], pfns: npt.NDArray[np.int64], private: bool) -> int:
        """:meth:`map_4k` on every maximal run of ``mask`` (the gfns ``gfn + k`` to map to ``pfns[k]``), each
        split at 2M boundaries, in one pass; returns the number of gfns mapped (one fault each)."""
        idx = np.flatnonzero(mask)
        if not idx.size:
            return 0
        lo, hi = gfn + int(idx[0]), gfn + int(idx[-1]) + 1
        # zap what the runs' zaps would: their mapped gfns, and every huge mapping one of them lies in
        lv = self.level[lo:hi]
        sel = mask[lo - gfn : hi - gfn]
        huge = unique_ints((np.flatnonzero(sel & (lv > 0)) + lo) >> 9)
        for idx2m in huge.tolist():
            self.zap(idx2m << 9, 1)
        g = idx + gfn
        old = self.level[g]
        mapped = old != UNMAPPED
        if mapped.any():
            self._bytes[0] -= int(np.count_nonzero(mapped)) * PAGE_SIZE  # huge ones were zapped above
            self.zap_count += 1
        self.level[g] = int(PageSize.SIZE_4K)
        self.pfn[g] = pfns[idx]
        self.private[g] = private
        self._bytes[0] += int(idx.size) * PAGE_SIZE
        self.map_count += int(idx.size)
        return int(idx.size)

    def zap(self, gfn: int, npages: int, *, only_private: bool | None = None) -> int:
        """Zap every mapping intersecting ``[gfn, gfn+npages)`` (a huge one entirely); with ``only_private`` set,
        only mappings of that kind (KVM zaps the old-attribute SPTEs on an attribute change). Returns pages
        unmapped."""
        if npages <= 0:
            return 0
        lo, hi = max(gfn, 0), min(gfn + npages, self.npages)
        # widen to whole huge mappings at both ends
        for edge in (lo, hi - 1):
            lv = int(self.level[edge])
            if lv > 0:
                n = PageSize(lv).npages
                base = edge // n * n
                lo, hi = min(lo, base), max(hi, base + n)
        seg = self.level[lo:hi]
        mask = seg != UNMAPPED
        if only_private is not None:
            mask &= self.private[lo:hi] == only_private
        count = int(np.count_nonzero(mask))
        if count:
            for lv in (0, 1, 2):
                self._bytes[lv] -= int(np.count_nonzero(seg[mask] == lv)) * PAGE_SIZE
            seg[mask] = UNMAPPED
            self.pfn.clear(lo, hi, mask)
            self.zap_count += 1
        return count

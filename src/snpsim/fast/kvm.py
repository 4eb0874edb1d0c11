"""The fast engine's KVM: :class:`snpsim.kvm.vm.KvmVm` with its range paths done on arrays, same results.

Three paths of the reference go page by page, or 2M block by 2M block, in Python; here each handles a whole range
with numpy and falls back to the reference where an exact bulk answer would need the loop's order:

- ``sev_gmem_invalidate`` (arch/x86/kvm/svm/sev.c; the reference :func:`snpsim.kvm.sev.gmem_invalidate` is its
  loop): the assigned frames being freed are found at once; a 2M entry whose 512 frames are all freed is made
  shared with one 2M RMPUPDATE, any other 2M entry holding a freed frame is PSMASHed, and the remaining frames are
  made shared with one bulk 4K RMPUPDATE (:meth:`HostKernel.rmp_make_shared_pfns`). The loop's result: it
  visits the same entries, each RMPUPDATE and PSMASH touches only its own entry, and the direct map splits of the
  4K updates happen in the same ascending order.
- ``kvm_tdp_mmu_map`` over a private range on 2M/1G guest_memfd folios (the reference's
  :meth:`KvmVm._map_needed` decides each 2M block in turn): the mapping level of every 2M block is decided at once
  (a block with a gfn to map is one 2M mapping if the frame of its first such gfn has an assigned 2M RMP entry,
  the whole block is private RAM and its folio is unsplit; else each such gfn is a 4K mapping), then the 2M
  SPTEs are installed in one pass. Where a 1G mapping covers one of the blocks (its zap reaches beyond the block),
  the reference loop runs.
- the hardware check of a guest access over a range (``KvmVm._access_pages``): every page's check is evaluated on
  the current state at once (:meth:`GuestMode.access_ok`); the first page that fails is handled as the reference
  does (#VC, or an RMP #NPF: PSMASH, zap and a new fault), which may change later pages, so the rest is checked
  again, at most eight times, then page by page.

tests/kvm/test_access_paths.py, tests/kvm/test_sev_invalidate.py and tests/fast/ compare both engines.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from snpsim.arch import PAGE_SIZE, PAGES_PER_2M, PageSize
from snpsim.fast.kernel import SCALAR_MAX
from snpsim.host import HostKernel
from snpsim.kvm.npt import UNMAPPED, NestedPageTable
from snpsim.kvm.vm import KvmVm
from snpsim.segments import run_starts, unique_ints

__all__ = ["FastKvmVm", "gmem_invalidate"]

IntArray = npt.NDArray[np.int64]

#: vectorised re-checks of a guest access's remaining pages before the rest goes page by page
_MAX_RECHECKS = 8


def gmem_invalidate(host: HostKernel, frames: IntArray) -> None:
    """``sev_gmem_invalidate`` over frames being freed (sorted or not), on arrays (see the module docstring)."""
    frames = unique_ints(np.asarray(frames, dtype=np.int64))
    assigned = frames[host.rmp_assigned(frames)]
    if assigned.size == 0:
        return
    all_heads = assigned // PAGES_PER_2M * PAGES_PER_2M  # ascending, as ``assigned`` is
    starts = run_starts(all_heads)
    heads, counts = all_heads[starts], np.diff(np.append(starts, assigned.size))
    keep = np.ones(assigned.size, dtype=bool)  # pages left for 4K RMPUPDATEs
    for head, start, count in zip(heads.tolist(), starts.tolist(), counts.tolist(), strict=True):
        is_assigned, level = host.snp_lookup_rmpentry(head)
        if level != PageSize.SIZE_2M or not is_assigned:
            continue
        if count == PAGES_PER_2M:  # the whole 2M entry is freed: one 2M RMPUPDATE
            host.rmp_make_shared(head, PageSize.SIZE_2M)
            keep[start : start + count] = False
            continue
        host.psmash(head)
    host.rmp_make_shared_pfns(assigned[keep])


def map_2m_many(npt_: NestedPageTable, heads: IntArray, pfns: IntArray, private: bool) -> None:
    """:meth:`NestedPageTable.map` at 2M of each 2M-aligned gfn in ``heads`` (distinct) to the 512 frames from
    ``pfns[k]``, in one pass; none of the blocks may lie under a 1G mapping (whose zap would reach beyond it)."""
    if not heads.size:
        return
    n = PageSize.SIZE_2M.npages
    idx = (heads[:, None] + np.arange(n, dtype=np.int64)).ravel()
    old = npt_.level[idx]
    for lv in (0, 1):
        npt_._bytes[lv] -= int(np.count_nonzero(old == lv)) * PAGE_SIZE
    npt_.zap_count += int(np.count_nonzero((old != UNMAPPED).reshape(-1, n).any(axis=1)))
    npt_.level[idx] = int(PageSize.SIZE_2M)
    npt_.pfn[idx] = (pfns[:, None] + np.arange(n, dtype=np.int64)).ravel()
    npt_.private[idx] = private
    npt_._bytes[1] += int(heads.size) * n * PAGE_SIZE
    npt_.map_count += int(heads.size)


class FastKvmVm(KvmVm):
    """:class:`KvmVm` whose invalidation, huge-folio faults and range access checks work on arrays."""

    def _invalidate(self, frames: IntArray) -> None:
        if frames.size <= SCALAR_MAX:
            super()._invalidate(frames)
        else:
            gmem_invalidate(self.host, frames)

    def _map_needed(
        self, gfn: int, npages: int, need: npt.NDArray[np.bool_], pfns: IntArray, private: bool
    ) -> int | None:
        if private and npages > SCALAR_MAX and not self._only_4k(True) and self._cap_2m(gfn, npages):
            got = self._map_huge_folios(gfn, npages, need, pfns)
            if got >= 0:
                return got
        return super()._map_needed(gfn, npages, need, pfns, private)

    def _map_huge_folios(self, gfn: int, npages: int, need: npt.NDArray[np.bool_], pfns: IntArray) -> int:
        """The faults of a private range on 2M/1G folios, decided per 2M block at once (the RMP caps private
        mappings at 2M); -1 when a 1G mapping spans the blocks (the reference loop then)."""
        n2 = PAGES_PER_2M
        b0, b1 = gfn // n2, (gfn + npages - 1) // n2 + 1
        if (self.npt.level[b0 * n2 : b1 * n2] == int(PageSize.SIZE_1G)).any():
            return -1
        g = np.flatnonzero(need) + gfn
        starts = run_starts(g // n2)
        first = g[starts]  # the first needing gfn of each block that has one
        blocks = first // n2
        whole = (min(b1 * n2, self.npages) - b0 * n2) // n2  # blocks from b0 lying wholly inside the VM
        ok = np.zeros(b1 - b0, dtype=bool)
        span = slice(b0 * n2, (b0 + whole) * n2)
        ok[:whole] = (self.attrs.private[span].reshape(whole, n2) & self.ram[span].reshape(whole, n2)).all(axis=1)
        huge = ok[blocks - b0] & self.host.rmp_assigned_2m(pfns[first - gfn])
        assert self.gmem is not None
        huge &= self.gmem.huge_blocks(blocks)
        heads = blocks[huge] * n2
        map_2m_many(self.npt, heads, pfns[first[huge] - gfn] - (first[huge] - heads), True)
        small = need.copy()
        huge_block = np.zeros(b1 - b0, dtype=bool)
        huge_block[blocks[huge] - b0] = True
        small &= ~np.repeat(huge_block, n2)[gfn - b0 * n2 : gfn - b0 * n2 + npages]
        return int(heads.size) + self.npt.map_4k_where(gfn, small, pfns, True)

    def _access_pages(self, start: int, end: int, private: bool, write: bool) -> int | None:
        for _ in range(_MAX_RECHECKS if end - start > SCALAR_MAX else 0):
            lv = self.npt.level[start:end]
            gfns = np.arange(start, end, dtype=np.int64)
            ok = self.host.svm.access_ok(
                self.npt.pfn[start:end], gfns, asid=self.asid, npt_huge=lv > 0, write=write, private=private
            )
            bad = np.flatnonzero(~ok | (lv == UNMAPPED))
            if not bad.size:
                return None
            g = start + int(bad[0])
            if self._checked_access(g, private, write):
                return g
            start = g + 1
        return super()._access_pages(start, end, private, write)

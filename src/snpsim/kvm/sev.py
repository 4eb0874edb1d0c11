"""KVM's SEV-SNP hooks: guest_memfd prepare/invalidate, the RMP #NPF handler, and Page State Change requests.

Models ``arch/x86/kvm/svm/sev.c`` (``shared/reference/linux-snp-host.md`` §4, ``amd-snp-arch.md`` §9):

- ``sev_gmem_prepare()``: a 2M RMPUPDATE when the folio is at least 2M and all 512 frames of the 2M range are
  unassigned (``is_large_rmp_possible``), else 4K RMPUPDATEs; already-assigned frames are left alone.
- ``sev_gmem_invalidate()``: for every assigned frame being freed: a 2M entry wholly inside the freed range is made
  shared at 2M; otherwise it is PSMASHed first and its frames made shared at 4K.
- ``sev_handle_rmp_fault()``: a #NPF with the RMP bit on a 2M RMP entry (a smaller NPT mapping or a 4K PVALIDATE)
  PSMASHes the entry and zaps the 512 gfns.
- ``snp_begin_psc()`` / ``snp_begin_psc_msr()``: adjacent PSC entries with the same operation and page size and
  contiguous GFNs are merged into one ``KVM_HC_MAP_GPA_RANGE`` exit to userspace; an MSR-protocol request is one
  4K page, one exit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from snpsim.arch import PAGE_SHIFT, PAGES_PER_2M, PageSize, PscRequest
from snpsim.host import HostKernel

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class MapGpaRange:
    """One ``KVM_EXIT_HYPERCALL`` with ``nr = KVM_HC_MAP_GPA_RANGE``: args gpa, npages (4K), attributes."""

    gfn: int
    npages: int
    to_private: bool
    huge: bool


def coalesce_psc(request: PscRequest) -> list[MapGpaRange]:
    """The userspace exits ``snp_begin_psc`` makes for one PSC request (merging adjacent entries)."""
    exits: list[MapGpaRange] = []
    for e in request.entries:
        n = PAGES_PER_2M if e.size else 1
        if exits:
            last = exits[-1]
            if last.to_private == e.to_private and last.huge == bool(e.size) and last.gfn + last.npages == e.gfn:
                exits[-1] = MapGpaRange(last.gfn, last.npages + n, last.to_private, last.huge)
                continue
        exits.append(MapGpaRange(e.gfn, n, e.to_private, bool(e.size)))
    return exits


def gmem_prepare(
    host: HostKernel,
    gfns: IntArray,
    pfns: IntArray,
    folio_pages: int,
    asid: int,
    *,
    large: npt.NDArray[np.bool_] | None = None,
) -> None:
    """``sev_gmem_prepare`` for the (gfn, pfn) pairs of freshly faulted guest_memfd pages. ``large``: per pair,
    whether its folio allows a 2M entry there (not a THP fallback page, a folio split to 4K, or, in place, a
    block holding a shared page); None: wherever ``folio_pages`` does."""
    todo = ~host.rmp_assigned(pfns)
    gfns, pfns = gfns[todo], pfns[todo]
    if large is not None:
        large = large[todo]
    if folio_pages >= PAGES_PER_2M and pfns.size:
        heads = (pfns % PAGES_PER_2M == 0) & (gfns % PAGES_PER_2M == 0)
        if large is not None:
            heads &= large
        for i in np.flatnonzero(heads).tolist():
            p = int(pfns[i])
            if host.is_pfn_range_shared(p, PAGES_PER_2M):  # is_large_rmp_possible
                host.rmp_make_private(p, int(gfns[i]) << PAGE_SHIFT, PageSize.SIZE_2M, asid)
        todo = ~host.rmp_assigned(pfns)
        gfns, pfns = gfns[todo], pfns[todo]
    host.rmp_make_private_pfns(pfns, gfns, asid)


def gmem_invalidate(host: HostKernel, frames: IntArray) -> None:
    """``sev_gmem_invalidate(start, end)`` over frames being freed (sorted or not, repeats ignored), in ascending
    order as its loop ``for (pfn = start; pfn < end;)``: an unassigned frame is skipped; ``use_2m_update =
    IS_ALIGNED(pfn, PTRS_PER_PMD) && end >= (pfn + PTRS_PER_PMD) && rmp_level > PG_LEVEL_4K`` (here: the 512
    frames from an aligned ``pfn`` are all being freed); "if (!use_2m_update && rmp_level > PG_LEVEL_4K)" the entry
    is PSMASHed first; then ``rmp_make_shared(pfn, use_2m_update ? PG_LEVEL_2M : PG_LEVEL_4K)``, and ``pfn +=
    use_2m_update ? PTRS_PER_PMD : 1`` (``shared/reference/linux-snp-host.md`` §4). After a PSMASH the other
    frames of the 2M range are 4K entries, so each 2M entry is smashed once."""
    pfns = sorted(set(np.asarray(frames, dtype=np.int64).tolist()))
    i = 0
    while i < len(pfns):
        pfn = pfns[i]
        assigned, level = host.snp_lookup_rmpentry(pfn)
        if not assigned:
            i += 1
            continue
        last = i + PAGES_PER_2M - 1
        use_2m = (
            level == PageSize.SIZE_2M
            and pfn % PAGES_PER_2M == 0
            and last < len(pfns)
            and pfns[last] == pfn + PAGES_PER_2M - 1
        )
        if level == PageSize.SIZE_2M and not use_2m:
            host.psmash(pfn)
        host.rmp_make_shared(pfn, PageSize.SIZE_2M if use_2m else PageSize.SIZE_4K)
        i += PAGES_PER_2M if use_2m else 1

"""The fast engine's compaction: :class:`snpsim.host.compaction.Compactor` migrating a batch of pages per call.

The reference models ``mm/compaction.c`` ``compact_zone()`` and ``alloc_contig_range()``, whose ``migrate_pages()``
moves each isolated page (``folio_mc_copy``: a read of the source and a write of the destination through the
direct map, each checked like any kernel access; the LRU entry replaced; the source freed): one Python call per
page (:meth:`Compactor._migrate`). :class:`FastCompactor` overrides only the hook both callers go through,
:meth:`Compactor._migrate_pages` (the sources of one pageblock and the free pages isolated for them, or an
``alloc_contig_range``'s sources and their targets), and does the same per-page steps on whole arrays. Nothing
in the results changes: every state, counter, crash record, CPU charge and the LRU order are the reference's,
because

* the owner tags, the LRU, the free lists and ``compaction_migrated`` are never read by the direct-map accesses
  (nor by the ``fixup`` #PF handler and its listeners), and the sources and destinations are distinct (sources in
  use, destinations tagged free: checked, else the reference loop runs), so each kind of step can be done for the
  whole batch at once;
* the accesses that can fault on the state before the batch (a source not present; a destination not present, or
  assigned in the RMP, or mapped large over an assigned page: the rule of ``HostKernel.kernel_write_range``) go
  through the real :meth:`~snpsim.host.kernel.HostKernel.kernel_read` / ``kernel_write``, pair by pair in order,
  so crashes, RMP faults and fixups happen as in the loop. Handling one never makes another access fault (an
  oops changes nothing; a fixup only makes pages shared and maps them back, splitting or restoring mappings), so
  an access safe before the batch is safe when the loop reaches it, and skipping it is exact;
* the ``page_copy`` charges are summed between those accesses (``CpuAccount.charge`` adds integers: ``n`` calls
  of ``ns`` equal one of ``n * ns`` with count ``n``), so the per-operation totals, counts and even the order in
  which operations first appear on an account are the loop's;
* LRU entries are replaced in order (``del lru[src]; lru[dst] = None``: each destination goes to the end, as in
  the loop);
* the sources are freed with ``free_bulk``, whose state is that of a loop of ``free`` in ascending PFN order, the
  order the sources come in (checked, else one ``free`` per page).

Small batches (up to :data:`~snpsim.fast.kernel.SCALAR_MAX` pages) take the reference loop: cheaper than the numpy
set-up, and the same by construction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from snpsim.fast.kernel import SCALAR_MAX, write_may_fault
from snpsim.host.compaction import Compactor
from snpsim.host.directmap import NOT_PRESENT
from snpsim.host.frames import Owner

if TYPE_CHECKING:
    from snpsim.host.kernel import HostKernel

__all__ = ["FastCompactor"]

IntArray = npt.NDArray[np.int64]


def access_may_fault(host: HostKernel, srcs: IntArray, dsts: IntArray) -> npt.NDArray[np.bool_]:
    """Per pair: can the read of ``srcs[i]`` or the write of ``dsts[i]`` through the direct map fault on the
    current state (``kernel_read``: not present; ``kernel_write``: not present, or an RMP check that can fail)."""
    return (host.directmap.levels_of(srcs) == NOT_PRESENT) | write_may_fault(host, dsts)


class FastCompactor(Compactor):
    """:class:`Compactor` whose ``migrate_pages`` handles a batch of pages per call (same results)."""

    def _migrate_pages(self, srcs: list[int], dsts: list[int], path: str, *, free_source: bool = True) -> None:
        n = len(srcs)
        if n != len(dsts):
            raise ValueError(f"{n} sources for {len(dsts)} destinations")
        if n <= SCALAR_MAX:
            super()._migrate_pages(srcs, dsts, path, free_source=free_source)
            return
        host = self.host
        src = np.array(srcs, dtype=np.int64)
        dst = np.array(dsts, dtype=np.int64)
        owners = host.frames.tags_of(src)
        if not (
            bool(np.all(src[1:] > src[:-1]))  # distinct and ascending: free_bulk frees in the loop's order
            and bool(np.all(owners != Owner.FREE))
            and bool(np.all(host.frames.tags_of(dst) == Owner.FREE))  # so no destination is a source
            and np.unique(dst).size == n
        ):
            super()._migrate_pages(srcs, dsts, path, free_source=free_source)
            return
        # the new pages' owners (each destination gets its source's tag)
        for tag in np.unique(owners).tolist():
            host.frames.set_many(dst[owners == tag], Owner(tag))
        # folio_mc_copy: the accesses that may fault, in order, with the page copies charged between them
        ns = host.costs.page_clear_ns
        charged = 0
        for i in np.flatnonzero(access_may_fault(host, src, dst)).tolist():
            if i > charged:
                host.charge("page_copy", (i - charged) * ns, i - charged)
                charged = i
            host.kernel_read(srcs[i], path)
            host.kernel_write(dsts[i], path)
        host.charge("page_copy", (n - charged) * ns, n - charged)
        lru = host.lru
        for s, d in zip(srcs, dsts, strict=True):
            if s in lru:
                del lru[s]
                lru[d] = None
        host.frames.set_many(src, Owner.FREE)
        if free_source:
            host.buddy.free_bulk(src, 0, check_free=False)  # they were tagged in use
        host.compaction_migrated += n

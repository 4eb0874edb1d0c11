"""The fast engine's direct map: :class:`snpsim.host.directmap.DirectMap`'s 4K present-bit changes compiled with
numba, on the reference's own arrays.

``set_direct_map_invalid_noflush()`` / ``set_direct_map_default_noflush()`` on 4K pages (arch/x86/mm/pat/
set_memory.c ``__change_page_attr()``: ``__should_split_large_page()`` splits a large entry in the other state,
1G then 2M, via ``__split_large_page()`` and ``split_page_count()``; an entry already in the requested state is
kept, a hole is ignored) are the reference's :meth:`DirectMap.remove_4k` ... :meth:`DirectMap.restore_pages`,
cited there; the ``unmap`` design and guest_memfd's direct-map removal make one call per run of frames, and a
guest conversion of scattered frames makes many. Here one compiled call handles every run, one 2M piece at a
time exactly as the reference's ``_set_in_2m`` does: same splits, counters, PTE pool rows (popped from the top of
the free stack, then fresh ones) and present bits. :meth:`DirectMap.split_2m_many` (``adjust_direct_map`` before a
bulk 4K RMPUPDATE) is the reference's loop of ``split_2m`` in one compiled call. So :class:`FastDirectMap` and the
reference methods it inherits (2M/1G removal, merging, the queries) share one state, and tests compare it with a
reference twin array by array.
"""

from __future__ import annotations

import numba
import numpy as np

from snpsim.host.directmap import (
    _PMD_2M,
    _PMD_NONE,
    _PMD_NP,
    _PMD_SPLIT,
    _PMDS_PER_PUD,
    _PUD_1G,
    _PUD_NP,
    _PUD_TABLE,
    _SHIFT_1G,
    _SHIFT_2M,
    COUNTERS,
    DirectMap,
    IntArray,
)
from snpsim.segments import unique_ints

__all__ = ["FastDirectMap"]

_jit = numba.njit(cache=True, nogil=True)
_N4K, _N2M, _N1G, _ABSENT, _L2, _L3, _OPS, _NSLOTS, _NFREE = (
    COUNTERS.index(c)
    for c in ("n4k", "n2m", "n1g", "absent", "level2_splits", "level3_splits", "split_ops", "nslots", "nfree")
)
_P2M = 1 << _SHIFT_2M


@_jit
def _split_1g_one(pud, pmd, ct, gb, running):  # type: ignore[no-untyped-def]
    """The reference's ``_split_1g_one``."""
    value = _PMD_2M if pud[gb] == _PUD_1G else _PMD_NP
    for i in range(gb * _PMDS_PER_PUD, min((gb + 1) * _PMDS_PER_PUD, pmd.size)):
        pmd[i] = value
    pud[gb] = _PUD_TABLE
    ct[_N1G] -= 1
    ct[_N2M] += _PMDS_PER_PUD
    ct[_OPS] += 1
    if running:
        ct[_L3] += 1


@_jit
def _split_2m_one(pmd, slot, bits, free_a, ct, idx, running):  # type: ignore[no-untyped-def]
    """The reference's ``_split_2m_one`` (a recycled PTE pool row from the top of the stack, else a fresh one)."""
    present = pmd[idx] == _PMD_2M
    if ct[_NFREE]:
        ct[_NFREE] -= 1
        row = free_a[ct[_NFREE]]
    else:
        row = ct[_NSLOTS]
        ct[_NSLOTS] += 1
    bits[row, :] = present
    slot[idx] = row
    pmd[idx] = _PMD_SPLIT
    ct[_N2M] -= 1
    ct[_N4K] += _P2M
    ct[_OPS] += 1
    if running:
        ct[_L2] += 1


@_jit
def _set_in_2m(pud, pmd, slot, bits, free_a, ct, exists_idx, exists_rows, pfn, end, present, running):  # type: ignore[no-untyped-def]
    """The reference's ``_set_in_2m``: ``[pfn, end)`` inside one 2M range made present or not; its splits."""
    same_pud = _PUD_1G if present else _PUD_NP
    same_pmd = _PMD_2M if present else _PMD_NP
    gb = pfn >> _SHIFT_1G
    g = pud[gb]
    if g == same_pud:
        return 0
    splits = 0
    if g != _PUD_TABLE:
        _split_1g_one(pud, pmd, ct, gb, running)
        splits += 1
    idx = pfn >> _SHIFT_2M
    m = pmd[idx]
    if m == same_pmd or m == _PMD_NONE:  # noqa: SIM109 (numba)
        return splits
    if m != _PMD_SPLIT:
        _split_2m_one(pmd, slot, bits, free_a, ct, idx, running)
        splits += 1
    base = idx << _SHIFT_2M
    row = slot[idx]
    was = 0
    for i in range(pfn - base, end - base):
        was += bits[row, i]
        bits[row, i] = present
    now = end - pfn
    if present:
        k = np.searchsorted(exists_idx, idx)
        if k < exists_idx.size and exists_idx[k] == idx:
            now = 0
            for i in range(pfn - base, end - base):
                e = exists_rows[k, i]
                bits[row, i] = e
                now += e
    ct[_ABSENT] -= (now - was) if present else -was
    return splits


@_jit
def _set_run(pud, pmd, slot, bits, free_a, ct, exists_idx, exists_rows, lo, hi, present, running):  # type: ignore[no-untyped-def]
    """``[lo, hi)`` a 2M piece at a time (the reference's ``_per_2m``)."""
    splits = 0
    pfn = lo
    while pfn < hi:
        nxt = min(((pfn >> _SHIFT_2M) + 1) << _SHIFT_2M, hi)
        splits += _set_in_2m(pud, pmd, slot, bits, free_a, ct, exists_idx, exists_rows, pfn, nxt, present, running)
        pfn = nxt
    return splits


@_jit
def _set_pages(pud, pmd, slot, bits, free_a, ct, exists_idx, exists_rows, pfns, present, running):  # type: ignore[no-untyped-def]
    """Every run of consecutive frames of ``pfns`` (sorted, distinct), in order; the splits."""
    splits = 0
    i = 0
    n = pfns.size
    while i < n:
        j = i + 1
        while j < n and pfns[j] == pfns[j - 1] + 1:
            j += 1
        splits += _set_run(
            pud, pmd, slot, bits, free_a, ct, exists_idx, exists_rows, pfns[i], pfns[j - 1] + 1, present, running
        )
        i = j
    return splits


@_jit
def _split_2m_list(pud, pmd, slot, bits, free_a, ct, idxs, running):  # type: ignore[no-untyped-def]
    """The reference's ``split_2m`` on each 2M index of ``idxs`` (ascending, distinct); how many were split."""
    n = 0
    for idx in idxs:
        m = pmd[idx]
        if m == _PMD_SPLIT or m == _PMD_NONE:  # noqa: SIM109 (numba)
            continue
        gb = idx >> _SHIFT_2M
        if pud[gb] != _PUD_TABLE:
            _split_1g_one(pud, pmd, ct, gb, running)
        _split_2m_one(pmd, slot, bits, free_a, ct, idx, running)
        n += 1
    return n


class FastDirectMap(DirectMap):
    """:class:`DirectMap` with its 4K removal and restoration compiled; same results and state."""

    def _run(self, lo: int, hi: int, present: bool) -> int:
        self._reserve(((hi - 1) >> _SHIFT_2M) - (lo >> _SHIFT_2M) + 1)  # a PTE pool row for every 2M piece
        return int(
            _set_run(
                self._pud, self._pmd, self._slot, self._bits, self._free_a, self._ct, self._exists_idx,
                self._exists_rows, lo, hi, present, self.running,
            )
        )  # fmt: skip

    def _pages(self, pfns: IntArray, present: bool) -> int:
        if pfns.size == 0:
            return 0
        if int(pfns[0]) < 0 or int(pfns[-1]) >= self._nframes:  # the reference's error
            return super().remove_pages(pfns) if not present else super().restore_pages(pfns)
        self._reserve(int(np.count_nonzero(np.diff(pfns >> _SHIFT_2M))) + 1)  # a row for every 2M range
        return int(
            _set_pages(
                self._pud, self._pmd, self._slot, self._bits, self._free_a, self._ct, self._exists_idx,
                self._exists_rows, np.ascontiguousarray(pfns, dtype=np.int64), present, self.running,
            )
        )  # fmt: skip

    def split_2m_many(self, idx2m: IntArray) -> int:
        idx = unique_ints(np.asarray(idx2m, dtype=np.int64))
        if not idx.size:
            return 0
        if int(idx[0]) < 0 or int(idx[-1]) >= self._n2m_total:  # the reference's error
            return super().split_2m_many(idx)
        self._reserve(int(idx.size))  # a PTE pool row for every 2M range
        return int(
            _split_2m_list(
                self._pud, self._pmd, self._slot, self._bits, self._free_a, self._ct, idx, self.running
            )
        )  # fmt: skip

    def remove_4k(self, pfn: int) -> int:
        self._check_pfn(pfn)
        return self._run(pfn, pfn + 1, False)

    def restore_4k(self, pfn: int) -> int:
        self._check_pfn(pfn)
        return self._run(pfn, pfn + 1, True)

    def remove_range(self, pfn: int, npages: int) -> int:
        self._check_range(pfn, npages)
        return self._run(pfn, pfn + npages, False) if npages else 0

    def restore_range(self, pfn: int, npages: int) -> int:
        self._check_range(pfn, npages)
        return self._run(pfn, pfn + npages, True) if npages else 0

    def remove_pages(self, pfns: IntArray) -> int:
        return self._pages(pfns, False)

    def restore_pages(self, pfns: IntArray) -> int:
        return self._pages(pfns, True)

"""The fast engine's page allocator: :class:`snpsim.host.buddy.BuddyAllocator`'s ``__rmqueue`` and
``__free_one_page`` compiled with numba, over the very arrays the reference keeps.

The reference allocator (``mm/page_alloc.c``, cited there function by function) is the specification; this module
re-states five of its operations as compiled loops and nothing else: ``alloc`` and ``alloc_bulk`` (a loop of
``get_page_from_freelist`` → ``__rmqueue_smallest`` / ``__rmqueue_claim`` (``try_to_claim_block``,
``__move_freepages_block``) / ``__rmqueue_steal``, with ``expand()``), ``free`` and ``free_bulk`` (a loop of
``__free_one_page`` in ascending PFN order, the reference's definition of a bulk free), and ``take_free_range``
(compaction's free scanner, ``isolate_freepages_block``, and ``alloc_contig_range``'s isolation: the free blocks of
a range off their lists, one straddling an end carved). Every free list is a bitmap
of the allocator's :class:`snpsim.host.bitmap.BitmapStore` (one ``uint64`` buffer, counts and top words in two
arrays), the pageblock types one byte each, the frames' owner tags one byte each: the compiled code reads and
writes those arrays in place, so a fast allocator and the reference methods it inherits
(``take_page_off_buddy``, the reports) interleave on one state, and a test can compare it with
a reference allocator's array by array after every step (``tests/fast/test_fast_buddy.py``).

Where the reference vectorises (``_bulk_smallest``, ``_bulk_claim_blocks``, ``_coalesce_sorted``: numpy passes that
give "exactly the result of a loop"), the kernels run the same algorithms as loops: a bulk allocation hands out a
zone's blocks run by run once one ``get_page_from_freelist`` has chosen the zone, a bulk free merges the batch's
own buddies level by level; a single ``alloc``/``free`` is the plain ``__rmqueue``/``__free_one_page``. The
validation of arguments (ranges, alignment, double frees, RAM) stays the reference's Python, run before the
kernels: errors are the same. One exception, for the host kernel's hottest path: ``free_tagged`` (its
``HostKernel.free_bulk``) runs those checks and the frame table's double-free check inside its kernel and, when
one fails, changes nothing and leaves the batch to the reference, which raises its error.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt
from numba.cpython.unsafe.numbers import trailing_zeros

from snpsim.host.buddy import (
    MAX_PAGE_ORDER,
    NTYPES,
    PAGEBLOCK_NR_PAGES,
    PAGEBLOCK_ORDER,
    ZONE_COLUMNS,
    ZT_FLAGS,
    ZT_ZONELIST,
    BuddyAllocator,
    IntArray,
    Migratetype,
)
from snpsim.pfnmap import lazy_zeros

__all__ = ["FastBuddyAllocator"]

_NORD = MAX_PAGE_ORDER + 1
_U1 = np.uint64(1)
_U0 = np.uint64(0)
#: ``fallbacks[]`` (mm/page_alloc.c), the reference's ``FALLBACKS`` as a table: row = requested type
_FALLBACK = np.array([[2, 1], [2, 0], [0, 1]], dtype=np.int64)
assert int(Migratetype.UNMOVABLE) == 0 and int(Migratetype.MOVABLE) == 1 and int(Migratetype.RECLAIMABLE) == 2

# the reference's zone table (snpsim.host.buddy.ZONE_COLUMNS, ZT_FLAGS, ZT_ZONELIST)
_LO, _HI, _FREE, _RESERVE = (ZONE_COLUMNS.index(c) for c in ("lo", "hi", "free_pages", "lowmem_reserve"))
_FLAGS, _ZL = ZT_FLAGS, ZT_ZONELIST  # flags: [mobility_disabled, nofragment, has_page_tags, 0]

_jit = numba.njit(cache=True, nogil=True)


# ---------------------------------------------------------------------------------------------- bitmaps
@_jit
def _popcount(x: np.uint64) -> np.int64:
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@_jit
def _bm_add(words, top, off, nlev, cnt, b, i):  # type: ignore[no-untyped-def]
    """``Bitmap.add``."""
    cnt[b] += 1
    for lev in range(nlev[b]):
        w = i >> 6
        p = off[b, lev] + w
        old = words[p]
        words[p] = old | (_U1 << np.uint64(i & 63))
        if old != _U0:
            return
        i = w
    top[b] |= _U1 << np.uint64(i)


@_jit
def _bm_remove(words, top, off, nlev, cnt, b, i):  # type: ignore[no-untyped-def]
    """``Bitmap.remove``."""
    cnt[b] -= 1
    for lev in range(nlev[b]):
        w = i >> 6
        p = off[b, lev] + w
        new = words[p] & ~(_U1 << np.uint64(i & 63))
        words[p] = new
        if new != _U0:
            return
        i = w
    top[b] &= ~(_U1 << np.uint64(i))


@_jit
def _bm_first(words, top, off, nlev, b):  # type: ignore[no-untyped-def]
    """``Bitmap.first`` (the set is not empty)."""
    pos = np.int64(trailing_zeros(top[b]))
    for lev in range(nlev[b] - 1, -1, -1):
        pos = (pos << 6) + np.int64(trailing_zeros(words[off[b, lev] + pos]))
    return pos


@_jit
def _bm_has(words, off, b, i):  # type: ignore[no-untyped-def]
    return (words[off[b, 0] + (i >> 6)] >> np.uint64(i & 63)) & _U1 != _U0


@_jit
def _fl(z, order, mt):  # type: ignore[no-untyped-def]
    """``free_list_index``."""
    return (z * _NORD + order) * NTYPES + mt


# ---------------------------------------------------------------------------------------------- __rmqueue
@_jit
def _take(zt, z, order):  # type: ignore[no-untyped-def]
    zt[z, _FREE] -= 1 << order


@_jit
def _expand(words, top, off, nlev, cnt, zt, z, pfn, low, high, mt):  # type: ignore[no-untyped-def]
    """``expand()``."""
    rel = pfn - zt[z, _LO]
    while high > low:
        high -= 1
        _bm_add(words, top, off, nlev, cnt, _fl(z, high, mt), (rel >> high) + 1)


@_jit
def _rmqueue_smallest(words, top, off, nlev, cnt, zt, z, order, mt):  # type: ignore[no-untyped-def]
    """``__rmqueue_smallest()``."""
    for current in range(order, _NORD):
        b = _fl(z, current, mt)
        if cnt[b]:
            i = _bm_first(words, top, off, nlev, b)
            _bm_remove(words, top, off, nlev, cnt, b, i)
            pfn = zt[z, _LO] + (i << current)
            _expand(words, top, off, nlev, cnt, zt, z, pfn, order, current, mt)
            _take(zt, z, order)
            return pfn
    return -1


@_jit
def _should_try_claim_block(order, start_mt):  # type: ignore[no-untyped-def]
    if order >= PAGEBLOCK_ORDER or order >= PAGEBLOCK_ORDER // 2:
        return True
    return start_mt == 2 or start_mt == 0  # RECLAIMABLE, UNMOVABLE


@_jit
def _free_in_pageblock(words, off, zt, z, start, mt):  # type: ignore[no-untyped-def]
    rel = start - zt[z, _LO]
    total = 0
    for order in range(PAGEBLOCK_ORDER):
        base = off[_fl(z, order, mt), 0]
        lo, n = rel >> order, PAGEBLOCK_NR_PAGES >> order
        count = 0
        if n >= 64:
            for w in range(lo >> 6, (lo + n) >> 6):
                count += _popcount(words[base + w])
        else:
            word = words[base + (lo >> 6)] >> np.uint64(lo & 63)
            count = _popcount(word & ((_U1 << np.uint64(n)) - _U1))
        total += count << order
    return total


@_jit
def _move_freepages_block(words, top, off, nlev, cnt, zt, z, start, old_mt, new_mt):  # type: ignore[no-untyped-def]
    """``__move_freepages_block()`` (orders below the pageblock's)."""
    rel = start - zt[z, _LO]
    for order in range(PAGEBLOCK_ORDER):
        src, dst = _fl(z, order, old_mt), _fl(z, order, new_mt)
        for i in range(rel >> order, (rel + PAGEBLOCK_NR_PAGES) >> order):
            if _bm_has(words, off, src, i):
                _bm_remove(words, top, off, nlev, cnt, src, i)
                _bm_add(words, top, off, nlev, cnt, dst, i)


@_jit
def _try_to_claim_block(  # type: ignore[no-untyped-def]
    words, top, off, nlev, cnt, pb, tags, lru, zt, failed, failed_list, z, pfn, current, order, start_mt, block_mt
):
    """``try_to_claim_block()``."""
    if current >= PAGEBLOCK_ORDER:
        _bm_remove(words, top, off, nlev, cnt, _fl(z, current, block_mt), (pfn - zt[z, _LO]) >> current)
        first = pfn >> PAGEBLOCK_ORDER
        for j in range(1 << (current - PAGEBLOCK_ORDER)):
            pb[first + j] = start_mt
        _expand(words, top, off, nlev, cnt, zt, z, pfn, order, current, start_mt)
        _take(zt, z, order)
        return pfn
    start = pfn >> PAGEBLOCK_ORDER << PAGEBLOCK_ORDER
    if start < zt[z, _LO] or start + PAGEBLOCK_NR_PAGES > zt[z, _HI]:
        return -1
    block = start >> PAGEBLOCK_ORDER
    if failed[block] >> start_mt & 1:
        return -1
    free_pages = _free_in_pageblock(words, off, zt, z, start, block_mt)
    movable = 0
    if zt[_FLAGS, 2]:
        for p in range(start, start + PAGEBLOCK_NR_PAGES):
            if lru[tags[p]]:
                movable += 1
    if start_mt == 1:  # MOVABLE
        alike = movable
    elif block_mt == 1:
        alike = PAGEBLOCK_NR_PAGES - (free_pages + movable)
    else:
        alike = 0
    if free_pages + alike >= (1 << (PAGEBLOCK_ORDER - 1)) or zt[_FLAGS, 0]:
        _move_freepages_block(words, top, off, nlev, cnt, zt, z, start, block_mt, start_mt)
        pb[start >> PAGEBLOCK_ORDER] = start_mt
        return _rmqueue_smallest(words, top, off, nlev, cnt, zt, z, order, start_mt)
    if not failed[block]:  # remembered for the end of the call (the reference's _claim_failed.clear())
        failed_list[0] += 1
        failed_list[failed_list[0]] = block
    failed[block] |= 1 << start_mt
    return -1


@_jit
def _rmqueue_claim(words, top, off, nlev, cnt, pb, tags, lru, zt, failed, failed_list, z, order, start_mt, nofrag):  # type: ignore[no-untyped-def]
    """``__rmqueue_claim()``."""
    min_order = PAGEBLOCK_ORDER if nofrag and order < PAGEBLOCK_ORDER else order
    for current in range(MAX_PAGE_ORDER, min_order - 1, -1):
        if not zt[_FLAGS, 0] and not _should_try_claim_block(current, start_mt):
            return -1
        for k in range(2):
            fb = _FALLBACK[start_mt, k]
            b = _fl(z, current, fb)
            if cnt[b]:
                head = zt[z, _LO] + (_bm_first(words, top, off, nlev, b) << current)
                pfn = _try_to_claim_block(
                    words,
                    top,
                    off,
                    nlev,
                    cnt,
                    pb,
                    tags,
                    lru,
                    zt,
                    failed,
                    failed_list,
                    z,
                    head,
                    current,
                    order,
                    start_mt,
                    fb,
                )
                if pfn >= 0:
                    return pfn
                break
    return -1


@_jit
def _rmqueue_steal(words, top, off, nlev, cnt, zt, z, order, start_mt):  # type: ignore[no-untyped-def]
    """``__rmqueue_steal()``."""
    for current in range(order, _NORD):
        for k in range(2):
            fb = _FALLBACK[start_mt, k]
            b = _fl(z, current, fb)
            if cnt[b]:
                i = _bm_first(words, top, off, nlev, b)
                _bm_remove(words, top, off, nlev, cnt, b, i)
                pfn = zt[z, _LO] + (i << current)
                _expand(words, top, off, nlev, cnt, zt, z, pfn, order, current, fb)
                _take(zt, z, order)
                return pfn
    return -1


@_jit
def _alloc_one(words, top, off, nlev, cnt, pb, tags, lru, zt, failed, failed_list, order, mt):  # type: ignore[no-untyped-def]
    """``get_page_from_freelist`` over the zonelist (the reference's ``_alloc_one``)."""
    npass = 2 if zt[_FLAGS, 1] else 1
    for p in range(npass):
        nofrag = npass == 2 and p == 0
        for j in range(zt.shape[1]):
            z = zt[_ZL, j]
            if z < 0:
                break
            if zt[z, _FREE] - ((1 << order) - 1) <= zt[z, _RESERVE]:
                continue
            pfn = _rmqueue_smallest(words, top, off, nlev, cnt, zt, z, order, mt)
            if pfn >= 0:
                return pfn
            pfn = _rmqueue_claim(
                words, top, off, nlev, cnt, pb, tags, lru, zt, failed, failed_list, z, order, mt, nofrag
            )
            if pfn < 0 and not nofrag:
                pfn = _rmqueue_steal(words, top, off, nlev, cnt, zt, z, order, mt)
            if pfn >= 0:
                return pfn
    return -1


@_jit
def _zone_index(zone_of, pfn):  # type: ignore[no-untyped-def]
    """``BuddyAllocator._zone``: ``zone_of`` is ``[DMA, dma_end, DMA32, dma32_end, NORMAL]``."""
    return zone_of[0] if pfn < zone_of[1] else (zone_of[2] if pfn < zone_of[3] else zone_of[4])


@_jit
def _blocks_at_least(cnt, z, order, mt):  # type: ignore[no-untyped-def]
    """``_Zone.blocks_at_least(order, mt)``."""
    total = 0
    for o in range(order, _NORD):
        total += cnt[_fl(z, o, mt)] << (o - order)
    return total


@_jit
def _cap(zt, z, order):  # type: ignore[no-untyped-def]
    """``_Zone.cap(order)``."""
    return max(0, (zt[z, _FREE] - zt[z, _RESERVE]) >> order)


@_jit
def _add_decomposed(words, top, off, nlev, cnt, zt, z, start, end, mt):  # type: ignore[no-untyped-def]
    """Give ``[start, end)`` back to the ``mt`` lists as maximal aligned blocks (the reference's ``_decompose``)."""
    pfn = start
    while pfn < end:
        order = MAX_PAGE_ORDER
        if pfn:
            order = min(order, np.int64(trailing_zeros(np.uint64(pfn))))
        while pfn + (1 << order) > end:
            order -= 1
        _bm_add(words, top, off, nlev, cnt, _fl(z, order, mt), (pfn - zt[z, _LO]) >> order)
        pfn += 1 << order


@_jit
def _bulk_smallest(words, top, off, nlev, cnt, zt, z, order, mt, count, out, k):  # type: ignore[no-untyped-def]
    """The reference's ``_bulk_smallest``: ``count`` successive ``__rmqueue_smallest(z, order, mt)`` calls, written
    to ``out[k:]`` (exact-order blocks lowest first; then, the lower lists being empty, whole blocks in (order, pfn)
    order, each handed out in ascending PFN order, the last one in part and its rest given back maximally split)."""
    step = 1 << order
    lo = zt[z, _LO]
    need = count
    b = _fl(z, order, mt)
    while need and cnt[b]:
        i = _bm_first(words, top, off, nlev, b)
        _bm_remove(words, top, off, nlev, cnt, b, i)
        out[k] = lo + (i << order)
        k += 1
        need -= 1
    current = order
    while need:
        current += 1
        b = _fl(z, current, mt)
        while need and cnt[b]:
            i = _bm_first(words, top, off, nlev, b)
            _bm_remove(words, top, off, nlev, cnt, b, i)
            head = lo + (i << current)
            n = min(need, 1 << (current - order))
            for j in range(n):
                out[k] = head + j * step
                k += 1
            need -= n
            if n < 1 << (current - order):
                _add_decomposed(words, top, off, nlev, cnt, zt, z, head + n * step, head + (1 << current), mt)
    zt[z, _FREE] -= count * step
    return k


@_jit
def _bulk_claim_blocks(words, top, off, nlev, cnt, pb, zt, z, order, mt, nblocks, out, k):  # type: ignore[no-untyped-def]
    """The reference's ``_bulk_claim_blocks``: ``nblocks`` claims of a whole order-10 fallback block, each consumed
    in ascending order."""
    lo = zt[z, _LO]
    left = nblocks
    for t in range(2):
        b = _fl(z, MAX_PAGE_ORDER, _FALLBACK[mt, t])
        while left and cnt[b]:
            i = _bm_first(words, top, off, nlev, b)
            _bm_remove(words, top, off, nlev, cnt, b, i)
            head = lo + (i << MAX_PAGE_ORDER)
            pb[head >> PAGEBLOCK_ORDER] = mt  # change_pageblock_range(): both pageblocks
            pb[(head >> PAGEBLOCK_ORDER) + 1] = mt
            for j in range(1 << (MAX_PAGE_ORDER - order)):
                out[k] = head + (j << order)
                k += 1
            left -= 1
    zt[z, _FREE] -= nblocks << MAX_PAGE_ORDER
    return k


@_jit
def _alloc_kernel(  # type: ignore[no-untyped-def]
    words, top, off, nlev, cnt, pb, tags, lru, zt, zone_of, order, mt, out, failed, failed_list
):
    """``len(out)`` allocations, as the reference's ``alloc_bulk`` makes them (one ``get_page_from_freelist``, then
    the runs it implies from the same zone); stops at the first failure. Returns how many succeeded. ``failed``: per
    pageblock, a bit per migratetype whose claim of it failed during this call (all zero between calls; the
    pageblocks set are listed in ``failed_list[1:failed_list[0] + 1]`` and cleared at the end)."""
    k = _alloc_loop(words, top, off, nlev, cnt, pb, tags, lru, zt, zone_of, order, mt, out, failed, failed_list)
    for i in range(1, failed_list[0] + 1):
        failed[failed_list[i]] = 0
    failed_list[0] = 0
    return k


@_jit
def _alloc_loop(  # type: ignore[no-untyped-def]
    words, top, off, nlev, cnt, pb, tags, lru, zt, zone_of, order, mt, out, failed, failed_list
):
    """:func:`_alloc_kernel`'s allocations."""
    per_block = 1 << (MAX_PAGE_ORDER - order)
    k = 0
    while k < out.size:
        pfn = _alloc_one(words, top, off, nlev, cnt, pb, tags, lru, zt, failed, failed_list, order, mt)
        if pfn < 0:
            return k
        out[k] = pfn
        k += 1
        # "The zones before z failed and stay failing (nothing is freed)": the reference's alloc_bulk
        z = _zone_index(zone_of, pfn)
        while k < out.size:
            n = min(out.size - k, _cap(zt, z, order), _blocks_at_least(cnt, z, order, mt))
            if n:
                k = _bulk_smallest(words, top, off, nlev, cnt, zt, z, order, mt, n, out, k)
            if k == out.size or _blocks_at_least(cnt, z, order, mt):
                break
            nb = min(out.size - k, _cap(zt, z, order)) // per_block
            nb = min(nb, cnt[_fl(z, MAX_PAGE_ORDER, _FALLBACK[mt, 0])] + cnt[_fl(z, MAX_PAGE_ORDER, _FALLBACK[mt, 1])])
            if not nb:
                break
            k = _bulk_claim_blocks(words, top, off, nlev, cnt, pb, zt, z, order, mt, nb, out, k)
    return k


# ---------------------------------------------------------------------------------------------- __free_one_page
@_jit
def _free_kernel(words, top, off, nlev, cnt, pb, zt, zone_of, pfns, order0):  # type: ignore[no-untyped-def]
    """``__free_one_page`` for each of ``pfns`` in turn (validated blocks of ``order0``)."""
    for k in range(pfns.size):
        pfn = pfns[k]
        z = _zone_index(zone_of, pfn)
        order = order0
        lo = zt[z, _LO]
        mt = np.int64(pb[pfn >> PAGEBLOCK_ORDER])
        zt[z, _FREE] += 1 << order
        rel = pfn - lo
        while order < MAX_PAGE_ORDER:
            brel = rel ^ (1 << order)
            buddy_mt = mt if order < PAGEBLOCK_ORDER else np.int64(pb[(lo + brel) >> PAGEBLOCK_ORDER])
            bidx = brel >> order
            if lo + brel + (1 << order) > zt[z, _HI] or not _bm_has(words, off, _fl(z, order, buddy_mt), bidx):
                break
            _bm_remove(words, top, off, nlev, cnt, _fl(z, order, buddy_mt), bidx)
            if buddy_mt != mt:  # "Match buddy type"
                b0 = (lo + brel) >> PAGEBLOCK_ORDER
                for j in range(1 << (order - PAGEBLOCK_ORDER)):
                    pb[b0 + j] = mt
            rel &= brel
            order += 1
        _bm_add(words, top, off, nlev, cnt, _fl(z, order, mt), rel >> order)


@_jit
def _coalesce_kernel(words, top, off, nlev, cnt, pb, zt, zone_of, pfns, order0):  # type: ignore[no-untyped-def]
    """The reference's ``_coalesce_sorted`` for each zone's part of ``pfns`` (validated, ascending, of ``order0``):
    the state a loop of ``__free_one_page`` in ascending order leaves, level by level. Two blocks of the batch that
    are buddies merge without a look at the lists (the higher, freed later, gives the merged block its type: "Match
    buddy type" retypes the lower's pageblocks); a block whose buddy is not in the batch merges if the buddy is
    free, else goes on its list."""
    n_all = pfns.size
    cur = np.empty(n_all, dtype=np.int64)
    mts = np.empty(n_all, dtype=np.int64)
    a = 0
    while a < n_all:
        z = _zone_index(zone_of, pfns[a])
        lo, hi = zt[z, _LO], zt[z, _HI]
        n = 0
        while a < n_all and pfns[a] < hi:
            cur[n] = (pfns[a] - lo) >> order0
            mts[n] = pb[pfns[a] >> PAGEBLOCK_ORDER]
            n += 1
            a += 1
        zt[z, _FREE] += n << order0
        for k in range(order0, _NORD):
            if n == 0:
                break
            if k == MAX_PAGE_ORDER:
                for i in range(n):
                    _bm_add(words, top, off, nlev, cnt, _fl(z, k, mts[i]), cur[i])
                break
            m = 0
            i = 0
            while i < n:
                c, t = cur[i], mts[i]
                if i + 1 < n and cur[i + 1] >> 1 == c >> 1:  # buddies, both freed now
                    t = mts[i + 1]
                    if k >= PAGEBLOCK_ORDER:
                        first = (lo + (c << k)) >> PAGEBLOCK_ORDER
                        for j in range(1 << (k - PAGEBLOCK_ORDER)):
                            pb[first + j] = t
                    cur[m], mts[m] = c >> 1, t
                    m += 1
                    i += 2
                    continue
                bidx = c ^ 1
                bpfn = lo + (bidx << k)
                merged = False
                if bpfn + (1 << k) <= hi:
                    bmt = t if k < PAGEBLOCK_ORDER else np.int64(pb[bpfn >> PAGEBLOCK_ORDER])
                    b = _fl(z, k, bmt)
                    if _bm_has(words, off, b, bidx):
                        _bm_remove(words, top, off, nlev, cnt, b, bidx)
                        if bmt != t:  # k >= pageblock_order: the buddy takes the freed block's type
                            first = bpfn >> PAGEBLOCK_ORDER
                            for j in range(1 << (k - PAGEBLOCK_ORDER)):
                                pb[first + j] = t
                        cur[m], mts[m] = c >> 1, t
                        m += 1
                        merged = True
                if not merged:
                    _bm_add(words, top, off, nlev, cnt, _fl(z, k, t), c)
                i += 1
            n = m


@_jit
def _free_tagged_kernel(words, top, off, nlev, cnt, pb, zt, zone_of, tags, los, his, nframes, pfns, order0):  # type: ignore[no-untyped-def]
    """``HostKernel.free_bulk`` on a fast allocator, when every check passes: the blocks ``pfns`` (ascending) are
    in range, aligned, distinct and in RAM (the reference allocator's ``free_bulk`` checks), none of their frames
    is tagged free (the host's double-free check); then ``_coalesce_kernel`` frees them and their frames are
    tagged ``Owner.FREE`` (0). Returns False, with nothing changed, if a check fails (the caller then runs the
    reference, which raises its error)."""
    n = pfns.size
    size = np.int64(1) << order0
    for k in range(n):
        p = pfns[k]
        if p < 0 or p + size > nframes or p & (size - 1) or (k and p <= pfns[k - 1]):
            return False
        r = np.searchsorted(los, p, side="right") - 1
        if r < 0 or p + size > his[r]:
            return False
        for f in range(p, p + size):
            if tags[f] == 0:
                return False
    _coalesce_kernel(words, top, off, nlev, cnt, pb, zt, zone_of, pfns, order0)
    for k in range(n):
        for f in range(pfns[k], pfns[k] + size):
            tags[f] = 0
    return True


# ---------------------------------------------------------------------------------------------- isolation
@_jit
def _take_range_kernel(words, top, off, nlev, nwords, cnt, pb, zt, zone_of, lo, hi, out):  # type: ignore[no-untyped-def]
    """The reference's ``take_free_range`` of ``[lo, hi)``: every free block of the range off its
    list (one straddling an end carved, its outer parts given back to its type's lists as ``_carve`` does), the
    frames taken written to ``out`` (unsorted); returns how many. The zone is ``lo``'s (``_zone(lo)``)."""
    z = _zone_index(zone_of, lo)
    zlo = zt[z, _LO]
    k = 0
    for order in range(_NORD):
        size = 1 << order
        a = (lo - zlo) >> order
        b = (hi - zlo + size - 1) >> order
        for mt in range(NTYPES):
            bm = _fl(z, order, mt)
            if cnt[bm] == 0 or b <= a:
                continue
            base = off[bm, 0]
            for w in range(max(a, 0) >> 6, min((b + 63) >> 6, nwords[bm, 0])):
                word = words[base + w]  # a copy: removing members below does not change what is visited
                while word != _U0:
                    idx = (w << 6) + np.int64(trailing_zeros(word))
                    word &= word - _U1
                    if idx < a or idx >= b:
                        continue
                    head = zlo + (idx << order)
                    end = head + size
                    if head >= lo and end <= hi:
                        _bm_remove(words, top, off, nlev, cnt, bm, idx)
                        zt[z, _FREE] -= size
                        first, last = head, end
                    else:  # _carve: the block off the list of its pageblock's type, the parts outside given back
                        cmt = np.int64(pb[head >> PAGEBLOCK_ORDER])
                        _bm_remove(words, top, off, nlev, cnt, _fl(z, order, cmt), (head - zlo) >> order)
                        first, last = max(head, lo), min(end, hi)
                        zt[z, _FREE] -= last - first
                        _add_decomposed(words, top, off, nlev, cnt, zt, z, head, max(head, lo), cmt)
                        _add_decomposed(words, top, off, nlev, cnt, zt, z, min(end, hi), end, cmt)
                    for pfn in range(first, last):
                        out[k] = pfn
                        k += 1
    return k


_NO_TAGS = np.zeros(1, dtype=np.uint8)
_NO_LRU = np.zeros(256, dtype=np.bool_)


#: what :meth:`FastBuddyAllocator._free_lists` returns (eight arrays)
_FreeLists = tuple[Any, Any, Any, Any, Any, Any, Any, Any]


class FastBuddyAllocator(BuddyAllocator):
    """:class:`BuddyAllocator` with ``alloc``/``alloc_bulk``/``free``/``free_bulk``/``take_free_range`` compiled; same
    results, same state, same errors (the argument checks are the reference's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the zone boundaries as ``_zone()`` tests them: ``[DMA, end, DMA32, end, NORMAL]``
        self._zone_of = np.array([0, self._dma_end, 1, self._dma32_end, 2], dtype=np.int64)
        #: the reference's ``_claim_failed`` set of one call, as a bit per migratetype per pageblock and the list of
        #: pageblocks set (its count first); zero between calls, written only where claims fail
        self._claim_failed_pb = lazy_zeros(self._pb.size, np.uint8)
        self._claim_failed_list = lazy_zeros(self._pb.size + 1, np.int64)

    def _tags(self) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
        if self._page_tags is None:
            return _NO_TAGS, _NO_LRU
        return self._page_tags

    def _run_alloc(self, order: int, mt: int, count: int) -> tuple[IntArray, int]:
        st = self._store
        tags, lru = self._tags()
        out = np.empty(count, dtype=np.int64)
        done = _alloc_kernel(
            st.words,
            st.top,
            st.off,
            st.nlev,
            st.count,
            self._pb,
            tags,
            lru,
            self._zt,
            self._zone_of,
            order,
            mt,
            out,
            self._claim_failed_pb,
            self._claim_failed_list,
        )
        return out, int(done)

    def alloc(self, order: int, migratetype: int = Migratetype.MOVABLE) -> int | None:
        if not 0 <= order <= MAX_PAGE_ORDER:
            self._check_order(order)
        out, done = self._run_alloc(order, 0 if self.mobility_disabled else int(migratetype), 1)
        return int(out[0]) if done else None

    def _alloc_bulk_checked(self, order: int, count: int, mt: int) -> IntArray:
        out, done = self._run_alloc(order, mt, count)
        assert done == count  # obtainable() counted them
        return out

    def _free_lists(self) -> _FreeLists:
        """The arrays the free kernels (``_free_kernel``, ``_coalesce_kernel``, ``_free_tagged_kernel``) take first:
        the free-list bitmaps, the pageblock types, the zone table and the zone bounds."""
        st = self._store
        return st.words, st.top, st.off, st.nlev, st.count, self._pb, self._zt, self._zone_of

    def _free_sorted(self, cur: IntArray, order: int) -> None:
        _coalesce_kernel(*self._free_lists(), cur, order)

    def free_tagged(self, pfns: IntArray, order: int) -> bool:
        """Free the blocks ``pfns`` (ascending, of ``order`` <= ``MAX_PAGE_ORDER``) and tag their frames free, as
        ``HostKernel.free_bulk`` does, in one compiled call; False, with nothing changed, if the reference would
        raise (a block out of range, misaligned, repeated, outside RAM, or with a frame already free)."""
        assert self._page_tags is not None  # a host kernel's allocator
        tags = self._page_tags[0]
        lists = self._free_lists()
        return bool(_free_tagged_kernel(*lists, tags, self._range_los, self._range_his, self._nframes, pfns, order))

    def _free_checked(self, pfn: int, order: int) -> None:
        _free_kernel(*self._free_lists(), np.array([pfn], dtype=np.int64), order)

    def take_free_range(self, lo: int, hi: int) -> IntArray:
        lo, hi = int(lo), int(hi)
        st = self._store
        out = np.empty(max(hi - lo, 0), dtype=np.int64)
        k = _take_range_kernel(
            st.words, st.top, st.off, st.nlev, st.nwords, st.count, self._pb, self._zt, self._zone_of, lo, hi, out
        )
        taken = out[:k]
        taken.sort()
        return taken

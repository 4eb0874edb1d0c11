"""Host physical memory allocator: a model of the Linux buddy page allocator.

Models ``mm/page_alloc.c``: ``__rmqueue_smallest()`` (take the first free block of the smallest order that
fits), ``expand()`` (split it, returning the upper halves to the free lists of the lower orders),
``__free_one_page()`` (merge a freed block with its free buddy, repeatedly, up to the maximum order) and
``/proc/buddyinfo`` (free block count per order). Orders run 0..18 by default: order 0 is one 4K frame, order 9
a 2M block (THP, 2M hugetlb), order 18 is 1 GiB of 4K frames, which here also serves 1G hugetlb pages (the
real kernel's MAX_PAGE_ORDER is 10 and gets 1G pages from CMA/memblock; this model simply makes the buddy
allocator big enough).

Frames are PFNs in ``[0, nframes)``; ``nframes`` need not be a multiple of ``2**max_order`` (the tail is
decomposed into aligned smaller blocks, as memblock hands a zone's ragged end to the buddy allocator). With
``ranges`` only those frame ranges (the host's RAM, :mod:`snpsim.host.e820`) start free; the rest is never handed
out.

Simplifications, deliberately:

* a single zone and node; no migratetypes, no per-CPU (pcp) lists, no watermarks, no compaction/reclaim:
  ``alloc`` returns ``None`` and the caller decides the fallback (e.g. THP falls back to order 0);
* allocation takes the smallest free block that fits and, like ``expand()``, puts the upper halves back on
  the free lists;
* deterministic: among the free blocks of one order the lowest PFN is taken (the kernel takes the list head,
  which depends on history), so no RNG is needed and the state after any sequence of calls depends only on
  that sequence. Because the free lists are always fully coalesced, the state is in fact a function of the
  set of free frames alone.

Data structures scale to ``nframes = 2**29`` (2 TiB): no per-frame objects or arrays, only per-free-block
entries. Each order has a set (membership, O(1) insert/remove) plus a min-heap with lazy deletion
(lowest-PFN-first pop), both keyed by block index ``pfn >> order`` (one shift per level when walking up the
tree, and well-spread hash keys). Bulk operations (``alloc_bulk``/``free_bulk``) work on numpy arrays and give exactly
the same result as the equivalent loop of single operations.

Hugetlb pools (``reserve_pool`` and friends) model ``nr_hugepages``: blocks taken out of the buddy allocator
once and then handed out and returned without touching the free lists. Pool blocks count as used frames.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

from snpsim.segments import SCALAR_MAX

__all__ = ["DEFAULT_MAX_ORDER", "BuddyAllocator"]

DEFAULT_MAX_ORDER = 18

IntArray = npt.NDArray[np.int64]


class _FreeList:
    """Free blocks of one order, by block index (``pfn >> order``): a set plus a min-heap with lazy deletion.

    Invariant: every member of the set has at least one entry in the heap; heap entries not in the set are
    stale and skipped. The heap is rebuilt when stale entries dominate, so memory stays O(len).
    """

    __slots__ = ("_heap", "_set")

    def __init__(self) -> None:
        self._set: set[int] = set()
        self._heap: list[int] = []

    def __len__(self) -> int:
        return len(self._set)

    def __contains__(self, idx: int) -> bool:
        return idx in self._set

    def add(self, idx: int) -> None:
        """Insert an index known not to be present."""
        self._set.add(idx)
        heapq.heappush(self._heap, idx)

    def remove(self, idx: int) -> None:
        """Remove an index known to be present."""
        self._set.remove(idx)
        if len(self._heap) > 2 * len(self._set) + 64:
            self._compact()

    def pop_lowest(self) -> int:
        """Remove and return the lowest index (the list must not be empty)."""
        heap, members = self._heap, self._set
        while True:
            idx = heapq.heappop(heap)
            if idx in members:
                members.remove(idx)
                return idx

    def add_many(self, idxs: list[int]) -> None:
        """Insert indices known not to be present."""
        if not idxs:
            return
        self._set.update(idxs)
        if len(idxs) * 8 > len(self._heap):
            self._heap.extend(idxs)
            heapq.heapify(self._heap)
        else:
            for idx in idxs:
                heapq.heappush(self._heap, idx)

    def remove_many(self, idxs: list[int]) -> None:
        """Remove indices known to be present."""
        self._set.difference_update(idxs)
        if len(self._heap) > 2 * len(self._set) + 64:
            self._compact()

    def take_lowest(self, count: int) -> IntArray:
        """Remove the ``count`` lowest indices (``count <= len``); return them ascending."""
        if count <= 0:
            return np.empty(0, dtype=np.int64)
        if count * 16 < len(self._set):
            return np.array([self.pop_lowest() for _ in range(count)], dtype=np.int64)
        arr = self.sorted_array()
        taken = arr[:count]
        if count == len(arr):
            self.clear()
        else:
            self.remove_many(taken.tolist())
        return taken

    def sorted_array(self) -> IntArray:
        arr = np.fromiter(self._set, dtype=np.int64, count=len(self._set))
        arr.sort()
        return arr

    def members(self) -> set[int]:
        """The live set (the allocator reads it directly on hot paths; never replaced, only mutated)."""
        return self._set

    def clear(self) -> None:
        self._set.clear()
        self._heap.clear()

    def _compact(self) -> None:
        self._heap = list(self._set)
        heapq.heapify(self._heap)


class BuddyAllocator:
    """Buddy allocator over frames ``[0, nframes)`` with block orders ``0..max_order``.

    ``alloc``/``free`` model one ``__rmqueue_smallest``/``__free_one_page`` call; ``alloc_bulk``/``free_bulk``
    are vectorised equivalents of a loop of them (same PFNs, same order, same final free lists).
    """

    #: ``alloc_bulk``/``free_bulk`` with at most this many blocks loop over ``alloc()``/``free()`` (numpy set-up
    #: costs more); the project-wide :data:`snpsim.segments.SCALAR_MAX`, overridable per instance by tests.
    _BULK_LOOP_THRESHOLD = SCALAR_MAX

    def __init__(
        self, nframes: int, max_order: int = DEFAULT_MAX_ORDER, *, ranges: Sequence[tuple[int, int]] | None = None
    ) -> None:
        if not 0 <= max_order <= 62:
            raise ValueError(f"max_order must be in 0..62, got {max_order}")
        if nframes < 0:
            raise ValueError(f"nframes must be >= 0, got {nframes}")
        spans = [(0, int(nframes))] if ranges is None else sorted((int(lo), int(hi)) for lo, hi in ranges)
        for k, (lo, hi) in enumerate(spans):
            if not 0 <= lo <= hi <= nframes or (k and lo < spans[k - 1][1]):
                raise ValueError(f"ranges must be disjoint frame ranges inside [0, {nframes}), got {ranges}")
        self._nframes = int(nframes)
        self._max_order = int(max_order)
        self._free: list[_FreeList] = [_FreeList() for _ in range(max_order + 1)]
        self._sets: list[set[int]] = [fl.members() for fl in self._free]  # fast membership, by order
        # hugetlb pools, by block index: order -> all pool blocks / pool blocks not handed out
        self._pool_blocks: dict[int, set[int]] = {}
        self._pool_free: dict[int, _FreeList] = {}
        # Initial free memory: the canonical decomposition of each RAM range into maximal aligned blocks (as
        # memblock_free_all() hands each free memblock range to the buddy allocator); frames outside the ranges
        # (holes, firmware and RMP reservations) are never free.
        for lo, hi in spans:
            for pfn, order in self._decompose(lo, hi):
                self._free[order].add(pfn >> order)
        self._managed = sum(hi - lo for lo, hi in spans)  # managed_pages: the RAM handed to the allocator
        self._free_frames = self._managed

    # ------------------------------------------------------------------ properties / introspection
    @property
    def nframes(self) -> int:
        """Number of frames managed (PFNs ``0..nframes-1``)."""
        return self._nframes

    @property
    def max_order(self) -> int:
        return self._max_order

    @property
    def free_frames(self) -> int:
        """Frames on the buddy free lists (excludes hugetlb pool blocks, even unused ones)."""
        return self._free_frames

    @property
    def used_frames(self) -> int:
        """Managed frames not on the buddy free lists (allocated, or reserved in a hugetlb pool)."""
        return self._managed - self._free_frames

    def buddyinfo(self) -> list[int]:
        """Free block count for each order ``0..max_order``, like a row of ``/proc/buddyinfo``."""
        return [len(s) for s in self._sets]

    def largest_free_order(self) -> int:
        """Highest order with a free block, or -1 when no memory is free."""
        for order in range(self._max_order, -1, -1):
            if self._sets[order]:
                return order
        return -1

    def fragmentation_index(self, order: int) -> float:
        """Unusable free space index for ``order`` (mm/vmstat.c ``unusable_free_index``, as a fraction).

        ``(free_pages - (free_blocks_suitable << order)) / free_pages`` where ``free_blocks_suitable`` counts
        how many ``order`` blocks fit in the free blocks of order >= ``order``. 0 = all free memory usable for
        such an allocation, 1 = none of it. With no free memory the kernel returns 1 ("all free memory is
        unusable"), and so does this.
        """
        self._check_order(order)
        free_pages = 0
        suitable = 0
        for o, members in enumerate(self._sets):
            blocks = len(members)
            free_pages += blocks << o
            if o >= order:
                suitable += blocks << (o - order)
        if free_pages == 0:
            return 1.0
        return (free_pages - (suitable << order)) / free_pages

    def is_free(self, pfn: int) -> bool:
        """Whether frame ``pfn`` lies inside a free buddy block (O(max_order))."""
        pfn = int(pfn)
        if not 0 <= pfn < self._nframes:
            raise ValueError(f"pfn {pfn:#x} out of range [0, {self._nframes:#x})")
        return self._covered(pfn, 0)

    def _covered(self, idx: int, order: int) -> bool:
        """Whether block ``idx`` of ``order`` or one of its ancestors is free."""
        for members in self._sets[order:]:
            if idx in members:
                return True
            idx >>= 1
        return False

    def free_blocks(self, order: int | None = None) -> list[tuple[int, int]]:
        """Sorted ``(pfn, order)`` of all free blocks (or those of one order). For tests and reports."""
        orders = range(self._max_order + 1) if order is None else [order]
        blocks = [(idx << o, o) for o in orders for idx in self._sets[o]]
        blocks.sort()
        return blocks

    # ------------------------------------------------------------------ single-block operations
    def alloc(self, order: int) -> int | None:
        """Allocate an aligned block of ``2**order`` frames; its PFN, or None if no free block fits."""
        if not 0 <= order <= self._max_order:
            self._check_order(order)
        sets = self._sets
        for current in range(order, self._max_order + 1):
            if sets[current]:
                break
        else:
            return None
        free = self._free
        idx = free[current].pop_lowest()
        # expand(): hand the upper halves back, largest first
        while current > order:
            current -= 1
            idx <<= 1
            free[current].add(idx + 1)
        self._free_frames -= 1 << order
        return idx << order

    def take_page_off_buddy(self, pfn: int) -> bool:
        """``take_page_off_buddy()`` (mm/page_alloc.c): remove the free frame ``pfn`` from the free lists, splitting
        the free block that holds it and returning the other halves; False if the frame is not free."""
        pfn = int(pfn)
        for order in range(self._max_order + 1):
            idx = pfn >> order
            if idx in self._sets[order]:
                self._free[order].remove(idx)
                while order > 0:
                    order -= 1
                    self._free[order].add((pfn >> order) ^ 1)
                self._free_frames -= 1
                return True
        return False

    def free(self, pfn: int, order: int) -> None:
        """Free the block of ``2**order`` frames at ``pfn``, merging with free buddies (``__free_one_page``).

        Raises ValueError for a bad order, a misaligned or out-of-range block, or a block whose first or last
        frame is already free (double free, freeing inside a free block, overlapping free memory at an end).
        """
        pfn, order = int(pfn), int(order)
        self._check_block(pfn, order)
        if self._covered(pfn, 0) or (order and self._covered(pfn + (1 << order) - 1, 0)):
            raise ValueError(f"double free: block {pfn:#x} order {order} overlaps free memory")
        self._free_checked(pfn, order)

    def _free_checked(self, pfn: int, order: int) -> None:
        self._free_frames += 1 << order
        free = self._free
        sets = self._sets
        max_order = self._max_order
        idx = pfn >> order
        while order < max_order:
            buddy = idx ^ 1
            if buddy not in sets[order]:
                break
            free[order].remove(buddy)
            idx >>= 1
            order += 1
        free[order].add(idx)

    # ------------------------------------------------------------------ bulk operations
    def alloc_bulk(self, order: int, count: int) -> IntArray | None:
        """Allocate ``count`` blocks of ``order``; same PFNs, in the same order, as ``count`` ``alloc`` calls.

        All-or-nothing: returns None (state unchanged) if fewer than ``count`` such blocks are obtainable.
        Whole free blocks are carved with ``numpy.arange``, so millions of order-0 pages are cheap.
        """
        self._check_order(order)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if count == 0:
            return np.empty(0, dtype=np.int64)
        if len(self._sets[order]) < count and self._obtainable(order) < count:
            return None
        if count <= self._BULK_LOOP_THRESHOLD:  # a few blocks: the alloc() calls themselves are cheaper
            return np.array([self.alloc(order) for _ in range(count)], dtype=np.int64)
        step = 1 << order
        parts: list[IntArray] = []
        need = count
        # 1. Blocks of exactly this order, lowest PFN first (each alloc() takes one).
        exact = self._free[order]
        if len(exact):
            n = min(need, len(exact))
            parts.append(exact.take_lowest(n) << order)
            need -= n
        # 2. Then, with all lower lists empty, alloc() repeatedly splits the lowest block of the smallest
        #    non-empty order and, by the expand() rule, hands out that whole block in ascending PFN order
        #    before touching any other block. So whole blocks are consumed in (order, pfn) order; only the
        #    last one may be consumed partially.
        current = order
        while need:
            current += 1
            fl = self._free[current]
            if not len(fl):
                continue
            per_block = 1 << (current - order)
            nfull = min(len(fl), need // per_block)
            partial = 1 if nfull < len(fl) and need - nfull * per_block else 0
            blocks = fl.take_lowest(nfull + partial) << current
            offsets = np.arange(per_block, dtype=np.int64) * step
            if nfull:
                parts.append((blocks[:nfull, None] + offsets[None, :]).ravel())
                need -= nfull * per_block
            if partial:
                base = int(blocks[nfull])
                parts.append(base + offsets[:need])
                # what the interleaved expand() calls leave behind: the rest of the block, maximally split
                for pfn, o in self._decompose(base + need * step, base + (1 << current)):
                    self._free[o].add(pfn >> o)
                need = 0
        self._free_frames -= count * step
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _obtainable(self, order: int) -> int:
        """How many blocks of ``order`` the free lists can supply."""
        return sum(len(self._sets[o]) << (o - order) for o in range(order, self._max_order + 1))

    def free_bulk(self, pfns: npt.ArrayLike, order: int, *, check_free: bool = True) -> None:
        """Free every block in ``pfns`` (all of ``order``); same final state as a loop of ``free``.

        Validates the whole batch first and raises ValueError without changing anything if a block is
        misaligned, out of range, repeated, or (as in ``free``) overlaps free memory. Large batches are
        coalesced level by level in numpy and get an exact overlap check against all free blocks. A caller
        that already knows no block overlaps free memory (the host kernel checks its frame table, one array
        lookup per frame) passes ``check_free=False`` to skip that last check.
        """
        self._check_order(order)
        arr = np.asarray(pfns, dtype=np.int64).ravel()
        n = arr.size
        if n == 0:
            return
        size = 1 << order
        if arr.min() < 0 or int(arr.max()) + size > self._nframes:
            raise ValueError(f"free_bulk: block out of range [0, {self._nframes:#x})")
        if np.any(arr & (size - 1)):
            raise ValueError(f"free_bulk: pfn not aligned to order {order}")
        cur = np.sort(arr)
        if n > 1 and np.any(cur[1:] == cur[:-1]):
            raise ValueError("free_bulk: the same block is freed twice")
        if n <= self._BULK_LOOP_THRESHOLD:  # a few blocks: a loop of free() (numpy set-up costs more)
            plist = cur.tolist()
            for pfn in plist if check_free else ():
                if self._covered(pfn, 0) or (order and self._covered(pfn + size - 1, 0)):
                    raise ValueError(f"double free: block {pfn:#x} order {order} overlaps free memory")
            for pfn in plist:
                self._free_checked(pfn, order)
            return
        if not check_free:
            pass
        elif order == 0 and n * (self._max_order + 1) < sum(len(m) for m in self._sets):
            # cheaper than listing every free block: a frame overlaps free memory iff it or an ancestor is free
            for pfn in cur.tolist():
                if self._covered(pfn, 0):
                    raise ValueError(f"double free: block {pfn:#x} (size 1) overlaps free memory")
        else:
            self._check_no_overlap(cur, size)
        self._coalesce_sorted(cur >> order, order)
        self._free_frames += n * size

    def _check_no_overlap(self, starts: IntArray, size: int) -> None:
        """Raise ValueError if any block [s, s+size) (sorted starts) intersects a free buddy block."""
        fstarts_parts = []
        fends_parts = []
        for o, members in enumerate(self._sets):
            if members:
                a = np.fromiter(members, dtype=np.int64, count=len(members)) << o
                fstarts_parts.append(a)
                fends_parts.append(a + (1 << o))
        if not fstarts_parts:
            return
        fstarts = np.concatenate(fstarts_parts)
        fends = np.concatenate(fends_parts)
        perm = np.argsort(fstarts)
        fstarts = fstarts[perm]
        fends = fends[perm]
        # free blocks are disjoint: the only candidate is the last free block starting before our end
        idx = np.searchsorted(fstarts, starts + size, side="left") - 1
        hit = (idx >= 0) & (fends[np.maximum(idx, 0)] > starts)
        if np.any(hit):
            bad = int(starts[np.argmax(hit)])
            raise ValueError(f"double free: block {bad:#x} (size {size}) overlaps free memory")

    def _coalesce_sorted(self, cur: IntArray, order: int) -> None:
        """Insert sorted, disjoint, validated blocks (indices at ``order``), merging buddies level by level."""
        max_order = self._max_order
        for k in range(order, max_order + 1):
            if cur.size == 0:
                return
            fl = self._free[k]
            if k == max_order:
                fl.add_many(cur.tolist())
                return
            parent = cur >> 1
            paired = np.zeros(cur.size, dtype=bool)
            if cur.size > 1:
                same = parent[1:] == parent[:-1]
                paired[:-1] |= same
                paired[1:] |= same
            singles = cur[~paired]
            merged_parents = parent[paired][::2]  # each pair appears twice, adjacent
            if singles.size and len(fl):
                in_free = self._membership(singles ^ 1, fl)
                with_free = singles[in_free]
                if with_free.size:
                    fl.remove_many((with_free ^ 1).tolist())
                stay = singles[~in_free]
                up = np.concatenate([merged_parents, with_free >> 1])
                up.sort()
            else:
                stay = singles
                up = merged_parents
            fl.add_many(stay.tolist())
            cur = up

    @staticmethod
    def _membership(values: IntArray, fl: _FreeList) -> npt.NDArray[np.bool_]:
        if values.size * 4 < len(fl):
            members = fl.members()
            return np.fromiter((v in members for v in values.tolist()), dtype=bool, count=values.size)
        return np.isin(values, fl.sorted_array(), assume_unique=True)

    # ------------------------------------------------------------------ hugetlb pools
    def reserve_pool(self, order: int, count: int) -> int:
        """Move up to ``count`` blocks of ``order`` from the buddy allocator into the hugetlb pool.

        Like writing ``nr_hugepages``, this is best effort: returns how many blocks were added (taken in the
        same order as ``alloc_bulk``).
        """
        self._check_order(order)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        n = min(count, self._obtainable(order))
        blocks = self.alloc_bulk(order, n)
        if blocks is None:  # cannot happen: n <= obtainable
            raise RuntimeError("reserve_pool: alloc_bulk failed")
        idxs = (blocks >> order).tolist()
        self._pool_blocks.setdefault(order, set()).update(idxs)
        self._pool_free.setdefault(order, _FreeList()).add_many(idxs)
        return n

    def release_pool(self, order: int, count: int | None = None) -> int:
        """Return up to ``count`` (default: all) unused pool blocks of ``order`` to the buddy allocator.

        Highest PFNs go first. Returns the number of blocks released.
        """
        self._check_order(order)
        pool_free = self._pool_free.get(order)
        if pool_free is None or not len(pool_free):
            return 0
        arr = pool_free.sorted_array()
        n = len(arr) if count is None else max(0, min(count, len(arr)))
        if n == 0:
            return 0
        victims = arr[len(arr) - n :]
        vlist = victims.tolist()
        pool_free.remove_many(vlist)
        self._pool_blocks[order].difference_update(vlist)
        self.free_bulk(victims << order, order)
        return n

    def pool_alloc(self, order: int) -> int | None:
        """Take the lowest-PFN unused block from the ``order`` pool, or None if the pool is exhausted."""
        self._check_order(order)
        pool_free = self._pool_free.get(order)
        if pool_free is None or not len(pool_free):
            return None
        return pool_free.pop_lowest() << order

    def pool_free(self, pfn: int, order: int) -> None:
        """Return a block handed out by ``pool_alloc`` to its pool."""
        pfn = int(pfn)
        self._check_block(pfn, order)
        idx = pfn >> order
        if idx not in self._pool_blocks.get(order, ()):
            raise ValueError(f"block {pfn:#x} is not in the order-{order} pool")
        pool_free = self._pool_free[order]
        if idx in pool_free:
            raise ValueError(f"double free: pool block {pfn:#x} order {order} is already free")
        pool_free.add(idx)

    def pool_size(self, order: int) -> int:
        """Number of blocks in the ``order`` pool (used or not), like ``nr_hugepages``."""
        return len(self._pool_blocks.get(order, ()))

    def pool_free_count(self, order: int) -> int:
        """Number of unused blocks in the ``order`` pool, like ``free_hugepages``."""
        pool_free = self._pool_free.get(order)
        return 0 if pool_free is None else len(pool_free)

    # ------------------------------------------------------------------ helpers
    def _check_order(self, order: int) -> None:
        if not 0 <= order <= self._max_order:
            raise ValueError(f"order must be in 0..{self._max_order}, got {order}")

    def _check_block(self, pfn: int, order: int) -> None:
        self._check_order(order)
        size = 1 << order
        if pfn & (size - 1):
            raise ValueError(f"pfn {pfn:#x} is not aligned to order {order}")
        if pfn < 0 or pfn + size > self._nframes:
            raise ValueError(f"block {pfn:#x} order {order} out of range [0, {self._nframes:#x})")

    def _decompose(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """Maximal aligned blocks (order <= max_order) covering [start, end), ascending."""
        pfn = start
        while pfn < end:
            order = self._max_order
            if pfn:
                order = min(order, (pfn & -pfn).bit_length() - 1)
            while pfn + (1 << order) > end:
                order -= 1
            yield pfn, order
            pfn += 1 << order

    def __repr__(self) -> str:
        return (
            f"BuddyAllocator(nframes={self._nframes}, max_order={self._max_order}, "
            f"free_frames={self._free_frames}, buddyinfo={self.buddyinfo()})"
        )

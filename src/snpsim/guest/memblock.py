"""Early-boot memory of a Linux SNP guest: memblock, the EFI unaccepted-memory bitmap, and the big boot allocations.

Models, from the sources read for it:

* **memblock** (``mm/memblock.c``): :class:`GuestPhysAllocator` is a deterministic stand-in for memblock (and, at
  run time, for the buddy allocator over a region). Its top-down search is ``__memblock_find_range_top_down()``:
  the highest free range that fits, the candidate rounded down to the alignment. Every memblock allocation goes
  through ``memblock_alloc_range_nid()``, which ends with ``accept_memory(found, size)``: with lazy acceptance the
  memory memblock hands out is accepted right away, wherever it lies (high RAM, since memblock allocates from the
  top of the node).
* **The unaccepted-memory bitmap** (:class:`UnacceptedMemory`): ``struct efi_unaccepted_memory`` - one bit per
  ``unit_size`` (``EFI_UNACCEPTED_UNIT_SIZE`` = 2 MiB) - as the EFI stub fills it
  (``drivers/firmware/efi/libstub/unaccepted_memory.c`` ``process_unaccepted_memory()``: a range shorter than two
  units, and an unaligned head and tail, are accepted up front; the rest is recorded) and as the kernel consumes it
  (``drivers/firmware/efi/unaccepted_memory.c`` ``accept_memory()``: every still-set bit run in
  ``[start / unit, DIV_ROUND_UP(end, unit))`` is accepted by one ``arch_accept_memory()`` call and cleared, with
  ``end += unit_size`` first when ``end`` is unit-aligned - the guard unit against ``load_unaligned_zeropad()``;
  ``range_contains_unaccepted_memory()`` extends its check the same way).
* **Freeing memblock memory to the buddy allocator** (:func:`free_to_buddy`): ``mm/mm_init.c``
  ``deferred_free_pages()`` (and ``__free_pages_core()`` in ``mm/page_alloc.c`` for the non-deferred part): a whole,
  naturally aligned MAX_PAGE_ORDER block that contains unaccepted memory goes to ``zone->unaccepted_pages``
  (``__free_unaccepted()``; with ``accept_memory=eager`` it is accepted instead); "Accept chunks smaller than
  MAX_PAGE_ORDER upfront".
* **Sizes of the big early allocations**: the memmap (``mm/sparse.c`` ``sparse_init_nid()`` ->
  ``sparse_buffer_init(map_count * section_map_size())``, one ``memmap_alloc()`` per node aligned to
  ``section_map_size()`` = ``ALIGN(sizeof(struct page) * PAGES_PER_SECTION, PMD_SIZE)`` = 2 MiB per 128 MiB
  section: 64 B per 4K page), the per-CPU first chunk (``mm/percpu.c`` ``pcpu_build_alloc_info()`` /
  ``pcpu_embed_first_chunk()``, x86-64 atom ``PMD_SIZE``), the dentry and inode hash tables
  (``alloc_large_system_hash()`` in ``mm/mm_init.c`` with ``HASH_EARLY``: memblock, "linear", on a one-node guest
  since ``fixup_hashdist()`` clears ``hashdist``), and the SWIOTLB slot array (``kernel/dma/swiotlb.c``
  ``swiotlb_init_remap()``: ``memblock_alloc(PAGE_ALIGN(nslabs * sizeof(struct io_tlb_slot)))``).

Everything is in 4K pages (GFNs) and run-length form (:class:`IntervalMap`), so a 16 TiB guest costs a handful of
intervals.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "HASH_BUCKET_BYTES",
    "PAGES_PER_SECTION",
    "SECTION_MAP_PAGES",
    "AllocationError",
    "GuestPhysAllocator",
    "IntervalMap",
    "PcpuAllocInfo",
    "Placement",
    "UnacceptedMemory",
    "alloc_large_system_hash_pages",
    "free_to_buddy",
    "pcpu_build_alloc_info",
    "present_sections",
    "vmemmap_pgtable_pages",
]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
KIB = 1 << 10
MIB = 1 << 20
#: x86-64 ``SECTION_SIZE_BITS`` = 27: 128 MiB memory sections.
PAGES_PER_SECTION = 1 << (27 - PAGE_SHIFT)
#: ``sizeof(struct page)`` on x86-64.
STRUCT_PAGE_BYTES = 64
PMD_PAGES = 512
#: ``section_map_size()`` with SPARSEMEM_VMEMMAP: ``ALIGN(sizeof(struct page) * PAGES_PER_SECTION, PMD_SIZE)``.
SECTION_MAP_PAGES = -(-(STRUCT_PAGE_BYTES * PAGES_PER_SECTION) // (PMD_PAGES * PAGE_SIZE)) * PMD_PAGES
#: ``sizeof(struct hlist_bl_head)`` (dentry hash) = ``sizeof(struct hlist_head)`` (inode hash): one pointer.
HASH_BUCKET_BYTES = 8
#: ``alloc_large_system_hash()``: ``ADAPT_SCALE_BASE`` (64 GiB) in pages and ``ADAPT_SCALE_SHIFT``.
ADAPT_SCALE_NPAGES = (64 << 30) >> PAGE_SHIFT
ADAPT_SCALE_SHIFT = 2
#: ``include/linux/percpu.h``: PCPU_MIN_UNIT_SIZE, PERCPU_DYNAMIC_EARLY_SIZE.
PCPU_MIN_UNIT_BYTES = 32 * KIB
PERCPU_DYNAMIC_EARLY_BYTES = 20 * KIB


# ---------------------------------------------------------------------------------------------- interval map


class IntervalMap:
    """A piecewise-constant ``int -> int`` map over ``[0, inf)``: sorted segment starts and their values.

    Adjacent segments always hold different values. ``assign`` and ``runs`` cost O(log n + k) plus list shifting.
    """

    __slots__ = ("_starts", "_vals")

    def __init__(self, default: int) -> None:
        self._starts: list[int] = [0]
        self._vals: list[int] = [default]

    def __len__(self) -> int:
        return len(self._starts)

    def copy(self) -> IntervalMap:
        other = IntervalMap(0)
        other._starts, other._vals = list(self._starts), list(self._vals)
        return other

    def assign(self, lo: int, hi: int, value: int) -> None:
        """Set ``[lo, hi)`` to ``value``."""
        if lo >= hi:
            return
        if lo < 0:
            raise ValueError("negative key")
        s, v = self._starts, self._vals
        j = bisect_right(s, hi) - 1
        v_hi = v[j]
        i = bisect_left(s, lo)
        s[i : j + 1] = [lo, hi]
        v[i : j + 1] = [value, v_hi]
        if v[i + 1] == value:
            del s[i + 1], v[i + 1]
        if i > 0 and v[i - 1] == value:
            del s[i], v[i]

    def get(self, key: int) -> int:
        return self._vals[bisect_right(self._starts, key) - 1]

    def runs(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """Segments ``(start, end, value)`` clipped to ``[lo, hi)``, ascending."""
        s, v = self._starts, self._vals
        out: list[tuple[int, int, int]] = []
        i = bisect_right(s, lo) - 1
        while i < len(s) and s[i] < hi:
            end = s[i + 1] if i + 1 < len(s) else hi
            out.append((max(s[i], lo), min(end, hi), v[i]))
            i += 1
        return out


# ------------------------------------------------------------------------------------------------ allocator


class AllocationError(MemoryError):
    """No free range satisfies an allocation."""


@dataclass(frozen=True, slots=True)
class Placement:
    """A guest object at GFNs ``[gfn, gfn + npages)``."""

    what: str
    gfn: int
    npages: int

    @property
    def end(self) -> int:
        return self.gfn + self.npages


def _round_up(x: int, a: int) -> int:
    return -(-x // a) * a


class GuestPhysAllocator:
    """Deterministic guest-physical allocator over RAM ranges (a stand-in for memblock and the buddy allocator).

    ``alloc`` takes the highest (``top_down``, memblock's default) or lowest fitting, ``align``-aligned range
    inside ``[lo, hi)``; ``find`` only looks (``memblock_find_in_range_node()``); ``reserve`` takes a fixed range;
    ``free`` gives a range back; ``release`` gives back part of a boot allocation and trims ``placements``
    (``memblock_free()``). Free space is a sorted list of disjoint ``[start, end)`` ranges, so allocations can never
    overlap and never leave RAM.
    """

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        free: list[tuple[int, int]] = []
        for gfn, n in sorted(ranges):
            if n <= 0:
                continue
            if free and gfn <= free[-1][1]:
                free[-1] = (free[-1][0], max(free[-1][1], gfn + n))
            else:
                free.append((gfn, gfn + n))
        self._free = free
        self.placements: list[Placement] = []

    def free_ranges(self) -> list[tuple[int, int]]:
        """Free space as ``(gfn, npages)``, ascending."""
        return [(s, e - s) for s, e in self._free]

    def free_pages(self) -> int:
        return sum(e - s for s, e in self._free)

    def _carve(self, index: int, start: int, end: int) -> None:
        s, e = self._free[index]
        pieces = [(a, b) for a, b in ((s, start), (end, e)) if b > a]
        self._free[index : index + 1] = pieces

    def reserve(self, what: str, gfn: int, npages: int) -> Placement:
        """Take exactly ``[gfn, gfn + npages)``; it must be free."""
        if npages <= 0:
            raise ValueError(f"{what}: npages must be > 0")
        i = bisect_right(self._free, (gfn, float("inf"))) - 1
        if i < 0 or self._free[i][1] < gfn + npages:
            raise AllocationError(f"{what}: [{gfn:#x}, {gfn + npages:#x}) is not free RAM")
        self._carve(i, gfn, gfn + npages)
        p = Placement(what, gfn, npages)
        self.placements.append(p)
        return p

    def _search(self, npages: int, align: int, lo: int, hi: int | None, top_down: bool) -> tuple[int, int] | None:
        limit = hi if hi is not None else 1 << 62
        order = range(len(self._free) - 1, -1, -1) if top_down else range(len(self._free))
        for i in order:
            s, e = self._free[i]
            s, e = max(s, lo), min(e, limit)
            if e - s < npages:
                continue
            start = (e - npages) // align * align if top_down else _round_up(s, align)
            if start >= s and start + npages <= e:
                return i, start
        return None

    def find(self, npages: int, *, align: int = 1, lo: int = 0, hi: int | None = None, top_down: bool = True) -> int:
        """Where ``alloc`` would put ``npages`` (nothing is taken); raise :class:`AllocationError`."""
        found = self._search(npages, align, lo, hi, top_down)
        if found is None:
            raise AllocationError(f"no free {npages}-page range aligned to {align} in [{lo:#x}, {hi or 1 << 62:#x})")
        return found[1]

    def alloc(
        self, what: str, npages: int, *, align: int = 1, lo: int = 0, hi: int | None = None, top_down: bool = True
    ) -> Placement:
        """Take ``npages`` aligned to ``align`` pages inside ``[lo, hi)``; raise :class:`AllocationError`."""
        if npages <= 0 or align <= 0:
            raise ValueError(f"{what}: npages and align must be > 0")
        found = self._search(npages, align, lo, hi, top_down)
        if found is None:
            limit = hi if hi is not None else 1 << 62
            raise AllocationError(f"{what}: no free {npages}-page range aligned to {align} in [{lo:#x}, {limit:#x})")
        i, start = found
        self._carve(i, start, start + npages)
        p = Placement(what, start, npages)
        self.placements.append(p)
        return p

    def free(self, gfn: int, npages: int) -> None:
        """Give ``[gfn, gfn + npages)`` back (it must be allocated); merges with free neighbours."""
        start, end = gfn, gfn + npages
        i = bisect_left(self._free, (start, start))
        if (i > 0 and self._free[i - 1][1] > start) or (i < len(self._free) and self._free[i][0] < end):
            raise ValueError(f"free of [{start:#x}, {end:#x}) overlaps free space")
        if i > 0 and self._free[i - 1][1] == start:
            i -= 1
            start = self._free[i][0]
            del self._free[i]
        if i < len(self._free) and self._free[i][0] == end:
            end = self._free[i][1]
            del self._free[i]
        self._free.insert(i, (start, end))

    def release(self, gfn: int, npages: int) -> None:
        """``memblock_free()`` of part of a boot allocation: :meth:`free` it and cut it out of ``placements``."""
        if npages <= 0:
            return
        self.free(gfn, npages)
        end = gfn + npages
        kept: list[Placement] = []
        for p in self.placements:
            if p.end <= gfn or p.gfn >= end:
                kept.append(p)
                continue
            if p.gfn < gfn:
                kept.append(Placement(p.what, p.gfn, gfn - p.gfn))
            if p.end > end:
                kept.append(Placement(p.what, end, p.end - end))
        self.placements = kept


# ---------------------------------------------------------------------------------------- unaccepted memory


class UnacceptedMemory:
    """The EFI unaccepted-memory bitmap and the kernel's ``accept_memory()`` (see the module docstring).

    Bits are kept as runs over GFNs in whole units of ``unit_pages`` (1 = still unaccepted). Memory outside
    every recorded range reads as accepted, as memory below ``phys_base`` or beyond the bitmap does in the kernel
    (the EFI stub sizes the bitmap to cover every unaccepted range, so nothing recorded is ever out of it).
    ``guard``: the guard-unit extension of ``accept_memory()`` and ``range_contains_unaccepted_memory()``.
    """

    def __init__(self, unit_pages: int, guard: bool = True) -> None:
        if unit_pages <= 0:
            raise ValueError("unit_pages must be > 0")
        self.unit = unit_pages
        self.guard = guard
        self._bits = IntervalMap(0)

    def copy(self) -> UnacceptedMemory:
        other = UnacceptedMemory(self.unit, self.guard)
        other._bits = self._bits.copy()
        return other

    def mark(self, gfn: int, npages: int) -> None:
        """Set the bits of ``[gfn, gfn + npages)``, which must be unit-aligned (``bitmap_set()``)."""
        if gfn % self.unit or npages % self.unit:
            raise ValueError(f"[{gfn:#x}, +{npages:#x}) is not aligned to the {self.unit}-page unit")
        self._bits.assign(gfn, gfn + npages, 1)

    def process_unaccepted_memory(self, gfn: int, npages: int) -> list[tuple[int, int]]:
        """The EFI stub recording RAM ``[gfn, gfn + npages)`` as unaccepted; returns what it accepts up front.

        ``process_unaccepted_memory()``: "immediately accepting all memory if the range is less than two units",
        else an unaligned head up to the next unit boundary and an unaligned tail from the last one are accepted
        with ``arch_accept_memory()``; the unit-aligned rest is ``bitmap_set()``. Returns ``(gfn, npages)`` ranges.
        """
        u = self.unit
        start, end = gfn, gfn + npages
        if npages <= 0:
            return []
        if end - start < 2 * u:
            return [(start, npages)]
        now: list[tuple[int, int]] = []
        if start % u:
            head_end = _round_up(start, u)
            now.append((start, head_end - start))
            start = head_end
        if end % u:
            tail = end // u * u
            now.append((tail, end - tail))
            end = tail
        self.mark(start, end - start)
        return sorted(now)

    def _unit_span(self, gfn: int, npages: int) -> tuple[int, int]:
        """``[range.start, range.end)`` of ``accept_memory()`` in GFNs, the guard unit included."""
        u = self.unit
        end = gfn + npages
        if self.guard and end % u == 0:
            end += u
        return gfn // u * u, _round_up(end, u)

    def accept_memory(self, gfn: int, npages: int) -> list[tuple[int, int]]:
        """``accept_memory(start, size)``: accept and clear every set-bit run of the range (guard unit included).

        Returns the ``arch_accept_memory()`` calls as ``(gfn, npages)``, ascending: one per run, whole units.
        """
        if npages <= 0:
            return []
        lo, hi = self._unit_span(gfn, npages)
        runs = [(s, e - s) for s, e, v in self._bits.runs(lo, hi) if v]
        if runs:
            self._bits.assign(lo, hi, 0)
        return runs

    def range_contains_unaccepted_memory(self, gfn: int, npages: int) -> bool:
        """Whether ``[gfn, gfn + npages)`` (plus the guard unit when it ends unit-aligned) has a set bit."""
        if npages <= 0:
            return False
        lo, hi = self._unit_span(gfn, npages)
        return any(v for _, _, v in self._bits.runs(lo, hi))

    def runs_in(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Set-bit runs ``(start, end)`` clipped to ``[lo, hi)``, ascending."""
        return [(s, e) for s, e, v in self._bits.runs(lo, hi) if v]

    def ranges(self) -> list[tuple[int, int]]:
        """Still-unaccepted ``(gfn, npages)`` ranges, ascending."""
        return [(s, e - s) for s, e, v in self._bits.runs(0, 1 << 62) if v]

    def pages(self) -> int:
        return sum(n for _, n in self.ranges())


def free_to_buddy(
    unaccepted: UnacceptedMemory, free: Iterable[tuple[int, int]], max_order_pages: int, lazy: bool
) -> tuple[list[tuple[int, int]], list[int]]:
    """``memblock_free_all()`` of the free ``(gfn, npages)`` ranges (ascending) into the buddy allocator.

    Per MAX_PAGE_ORDER block (``deferred_free_pages()``): a whole, aligned, free block that contains unaccepted
    memory goes on ``zone->unaccepted_pages`` when ``lazy`` (``__free_unaccepted()``), else is accepted
    (``__free_pages_core()`` -> ``accept_memory(page, PAGE_SIZE << order)``); a smaller free chunk is accepted up
    front. Returns ``(accepted runs in order, GFNs of the listed blocks in list order)``; ``unaccepted`` is updated.
    Blocks are visited run by run of the bitmap, not one by one (a 16 TiB guest has 4M blocks).
    """
    accepted: list[tuple[int, int]] = []
    listed: list[int] = []
    m = max_order_pages
    reach = unaccepted.unit if unaccepted.guard else 0  # the guard unit range_contains_unaccepted_memory() adds
    for gfn, npages in free:
        end = gfn + npages
        first, last = -(-gfn // m) * m, end // m * m
        if first >= last:  # no whole block: one or two chunks
            cut = min(end, first)
            accepted += unaccepted.accept_memory(gfn, cut - gfn)
            accepted += unaccepted.accept_memory(cut, end - cut)
            continue
        accepted += unaccepted.accept_memory(gfn, first - gfn)
        # whole blocks b in [first, last) whose [b, b + m + reach) holds a set bit, ascending
        blocks: list[range] = []
        for s, e in unaccepted.runs_in(first, last + reach):
            lo = max(first, -(-(s - m - reach + 1) // m) * m)
            hi = min(last, ((e - 1) // m + 1) * m)
            if blocks and lo <= blocks[-1].stop:
                lo = blocks[-1].start
                blocks.pop()
            if lo < hi:
                blocks.append(range(lo, hi, m))
        for r in blocks:
            if lazy:
                listed.extend(r)
            else:
                for b in r:
                    accepted += unaccepted.accept_memory(b, m)
        accepted += unaccepted.accept_memory(last, end - last)
    return accepted, listed


# -------------------------------------------------------------------------------------------------- sizes


def present_sections(ram: Iterable[tuple[int, int]]) -> list[int]:
    """Section numbers with RAM (``memblocks_present()``: every 128 MiB section a memory region touches)."""
    out: set[int] = set()
    for gfn, n in ram:
        if n > 0:
            out.update(range(gfn // PAGES_PER_SECTION, (gfn + n - 1) // PAGES_PER_SECTION + 1))
    return sorted(out)


def vmemmap_pgtable_pages(sections: Iterable[int]) -> int:
    """Page-table pages ``vmemmap_populate_hugepages()`` allocates for the memmap of ``sections``.

    The memmap is mapped with 2M PMDs at ``vmemmap_base + pfn * sizeof(struct page)``: one PMD table per 1 GiB
    of that range (64 GiB of RAM) and one PUD table per 512 GiB of it (32 TiB of RAM) that a section's memmap
    falls in; each is a 4K ``vmemmap_alloc_block_zero(PAGE_SIZE)`` (memblock this early). ``vmemmap_base`` is
    taken as 512 GiB-aligned.
    """
    pmd: set[int] = set()
    pud: set[int] = set()
    for s in sections:
        va = s * PAGES_PER_SECTION * STRUCT_PAGE_BYTES
        pmd.add(va >> 30)
        pud.add(va >> 39)
    return len(pmd) + len(pud)


@dataclass(frozen=True, slots=True)
class PcpuAllocInfo:
    """``struct pcpu_alloc_info`` of the embedded first chunk (one group: a one-node guest)."""

    #: ``static_size + reserved_size + dyn_size``, page-aligned: the part of each unit that stays allocated.
    size_sum_bytes: int
    #: ``ai->unit_size`` = ``alloc_size / upa``.
    unit_bytes: int
    #: ``gi->nr_units`` = possible CPUs rounded up to units per allocation; the allocation is
    #: ``nr_units * unit_size``, aligned to the atom.
    nr_units: int


def pcpu_build_alloc_info(
    cpus: int, static_bytes: int, reserved_bytes: int, dyn_bytes: int, atom_bytes: int
) -> PcpuAllocInfo:
    """``pcpu_build_alloc_info()`` for one group of ``cpus`` CPUs (``mm/percpu.c``).

    ``size_sum = PFN_ALIGN(static + reserved + max(dyn, PERCPU_DYNAMIC_EARLY_SIZE))``; ``min_unit_size =
    max(size_sum, PCPU_MIN_UNIT_SIZE)``; ``alloc_size = roundup(min_unit_size, atom_size)``; ``max_upa`` the most
    units of a page-multiple size dividing ``alloc_size``; then from ``max_upa`` down, skip a ``upa`` that does not
    divide ``alloc_size`` in pages or wastes more than ``num_possible_cpus() / 3`` units, stop when allocations
    would grow, keep the last accepted one.
    """
    size_sum = _round_up(static_bytes + reserved_bytes + max(dyn_bytes, PERCPU_DYNAMIC_EARLY_BYTES), PAGE_SIZE)
    min_unit = max(size_sum, PCPU_MIN_UNIT_BYTES)
    alloc_size = _round_up(min_unit, atom_bytes)

    def ok(upa: int) -> bool:
        return alloc_size % upa == 0 and (alloc_size // upa) % PAGE_SIZE == 0

    max_upa = alloc_size // min_unit
    while not ok(max_upa):
        max_upa -= 1
    last_allocs, best = 1 << 62, 0
    for upa in range(max_upa, 0, -1):
        if not ok(upa):
            continue
        allocs = -(-cpus // upa)
        wasted = allocs * upa - cpus
        if wasted > cpus // 3:
            continue
        if allocs > last_allocs:
            break
        last_allocs, best = allocs, upa
    return PcpuAllocInfo(size_sum, alloc_size // best, _round_up(cpus, best))


def alloc_large_system_hash_pages(nr_kernel_pages: int, nr_all_pages: int, bucket_bytes: int, scale: int) -> int:
    """Pages of an ``alloc_large_system_hash()`` table sized from memory (``numentries = 0``, no limits).

    ``numentries = round_up(nr_kernel_pages, SZ_1M / PAGE_SIZE)``; ``scale`` grows by one per x4 above 64 GiB
    (``ADAPT_SCALE_*``); one bucket per ``2^scale`` bytes; at least a page; ``roundup_pow_of_two``; at most
    1/16 of memory (``max = (nr_all_pages << PAGE_SHIFT) >> 4 / bucketsize``); ``size = bucketsize <<
    ilog2(numentries)``.
    """
    n = _round_up(nr_kernel_pages, MIB // PAGE_SIZE)
    adapt = ADAPT_SCALE_NPAGES
    while adapt < n:
        scale += 1
        adapt <<= ADAPT_SCALE_SHIFT
    n = n >> (scale - PAGE_SHIFT) if scale > PAGE_SHIFT else n << (PAGE_SHIFT - scale)
    if n * bucket_bytes < PAGE_SIZE:
        n = PAGE_SIZE // bucket_bytes
    n = 1 << (n - 1).bit_length() if n > 1 else 1
    cap = min(((nr_all_pages << PAGE_SHIFT) >> 4) // bucket_bytes, 0x8000_0000)
    n = max(1, min(n, cap))
    size = bucket_bytes << (n.bit_length() - 1)
    return -(-size // PAGE_SIZE)

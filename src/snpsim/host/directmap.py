"""The x86-64 kernel direct map: the host's linear mapping of its RAM at 1G/2M/4K granularity.

What is modelled (``shared/reference/linux-snp-host.md`` §3 "Direct map policy", §9):

* The direct map page tables of the host kernel, one entry per level: a PUD entry per 1 GiB, a PMD entry per
  2 MiB, a PTE per 4 KiB page. Only the *shape* is kept (which level maps each page, whether the entry is present,
  and where there is no entry at all), never the page contents or protections.
* The boot-time layout as ``arch/x86/mm/init.c`` ``init_mem_mapping()`` builds it from memblock's memory ranges
  (the e820 RAM, :mod:`snpsim.host.e820`): ``init_memory_mapping(0, ISA_END_ADDRESS)`` ("the ISA range is always
  mapped regardless of memory holes"), then ``memory_map_top_down()`` maps each RAM range
  (``init_range_memory_mapping()``: "create direct mappings for only E820_RAM ... regions"); ``split_mem_range()``
  cuts each range into a 4K head, 2M, 1G, 2M and 4K tail pieces and ``adjust_range_page_size_mask()`` widens a
  piece to 2M (1G) when the whole aligned 2M (1G) region around it ``memblock_is_region_memory()``;
  ``arch/x86/mm/init_64.c`` ``phys_pud_init()`` / ``phys_pmd_init()`` / ``phys_pte_init()`` reuse an existing
  1G entry and leave the entries beyond a range empty. The net rule, applied here per aligned region: a 2M range
  that is wholly RAM is one 2M mapping, a GiB that is wholly RAM is one 1G mapping (``direct_gbpages``,
  ``max_level`` = 1G), every other mapped page (the ISA range, the first 2 MiB around it, the RAM of a 2M range
  cut by a hole) a 4K PTE, and holes (the PCI hole, the BIOS-reserved RMP table) have no entry. With the flat map
  (``memory`` = ``[0, nframes)``) this is 1G for every whole GiB, 2M for the whole 2M ranges left, 4K for a tail.
* ``arch/x86/mm/pat/set_memory.c``: ``__change_page_attr()`` / ``__split_large_page()``. A split goes one level at
  a time: a 1G entry becomes 512 2M entries, a 2M entry 512 PTEs, each a split (``set_memory_4k()`` on a page
  inside a 1G mapping performs two splits and leaves 511 2M mappings for the rest of the GiB; §9). Splitting a
  not-present large entry gives not-present children. :meth:`DirectMap.set_4k` is ``set_memory_4k()``
  (``force_split``). :meth:`DirectMap.remove_4k` / :meth:`DirectMap.restore_4k` are
  ``set_direct_map_invalid_noflush()`` / ``set_direct_map_default_noflush()`` (``__set_pages_np()`` /
  ``__set_pages_p()``, one page): on a large entry ``__should_split_large_page()`` finds the request covers less
  than the large page and splits it (1G, then 2M), then the 4K PTE's present bit changes; an entry whose
  protections already equal the request is kept (``cpa_inc_lp_sameprot()``), so removing a not-present page never
  splits. :meth:`DirectMap.remove_2m` / :meth:`DirectMap.remove_1g` are ``set_memory_np()`` over a whole aligned
  large page, which ``__should_split_large_page()`` updates in place ("All checks passed. Update the large page
  mapping."). A change to a page without an entry (a hole) does nothing (``__cpa_process_fault()``: "Ignore the
  NULL PTE for kernel identity mapping, as it is expected to have holes").
* The ``/proc/meminfo`` ``DirectMap4k`` / ``DirectMap2M`` / ``DirectMap1G`` lines print ``direct_pages_count[]``
  (``arch_report_meminfo()``), which only ``update_page_count()`` (boot) and ``split_page_count()`` move: an entry
  made not present stays counted at its level, so the three always sum to the direct-mapped memory (RAM plus the
  ISA range). ``split_page_count()`` also counts the ``/proc/vmstat`` events ``direct_map_level2_splits`` (2M ->
  4K) and ``direct_map_level3_splits`` (1G -> 2M), but only ``if (system_state == SYSTEM_RUNNING)``: a split made
  while :attr:`DirectMap.running` is False (boot) moves the levels but not the events.

Merging. Upstream never re-merges the direct map of an SNP host ("there isn't currently a mechanism in place to
restore 2MB+ mappings", sev.c ``adjust_direct_map()``). CPA learnt to collapse in 2025 (commit 41d88484c71c
"x86/mm/pat: restore large ROX pages after fragmentation": ``cpa_collapse_large_pages()`` / ``collapse_pmd_page()``
/ ``collapse_page_count()``), but only for a CPA call with ``CPA_COLLAPSE``, which only ``set_memory_rox()`` sets
(execmem and BPF text), never ``set_memory_4k()`` or ``set_direct_map_*_noflush()``, and ``set_memory_4k()``
marks its PTEs ``_PAGE_KERNEL_4K`` ("Kernel must not remap such pages as large"). So it does not apply to the
direct map under SNP. :meth:`DirectMap.merge_2m` / :meth:`DirectMap.merge_1g` / :meth:`DirectMap.try_merge` exist
for the ``directmap_restore`` policy knob (``on-release`` / ``on-unregister``) and follow ``collapse_pmd_page()``:
a 2M range collapses only if all 512 PTEs are present (so never one cut by a hole); a GiB only if all 512 of its
entries are present 2M mappings; counters move as ``collapse_page_count()`` moves them.

Not modelled: the boot-time CPA changes of the kernel image's direct-map alias (``mark_rodata_ro()``,
``free_init_pages()``), EFI runtime regions and other early ``set_memory_*`` users, which on a real host leave a
few more MiB at 4K (DirectMap4k here is the lower bound init_mem_mapping() gives: 2 MiB plus the RAM of 2M ranges
cut by the RMP table).

Representation (scales to ``nframes`` = 2**29, i.e. 2 TiB, in a few MB; no per-frame Python objects):

* ``_pud``: one byte per GiB: ``_PUD_NP`` (1G entry, not present), ``_PUD_1G`` (1G mapping), ``_PUD_TABLE``
  (points to a PMD table).
* ``_pmd``: one byte per 2 MiB: ``_PMD_NP`` (2M entry, not present), ``_PMD_2M`` (2M mapping), ``_PMD_SPLIT``
  (points to a PTE table), ``_PMD_UNDER_PUD`` (the enclosing GiB is a 1G entry; the byte is unused),
  ``_PMD_NONE`` (no entry: a hole).
* ``_slot``: one int32 per 2 MiB, the row of the PTE pool for a split 2M range (-1 otherwise).
* ``_bits``: the PTE pool, one row of 512 present bits per split 2M range (rows of merged ranges are recycled:
  ``_free_a[:_nfree]`` is the stack of free rows).
* ``_exists``: for the few split 2M ranges with PTEs that do not exist (cut by a hole or the end of memory), the
  mask of the PTEs that do; their other bits stay False (the same masks as rows of ``_exists_rows``, in the
  order of the sorted keys ``_exists_idx``).
* ``_ct``: the counters (:data:`COUNTERS`), maintained incrementally.

Every part is a numpy array (``_pud`` / ``_pmd`` / ``_slot`` / ``_ct`` with ``memoryview`` twins ``_pud_b`` ...
for single reads and writes), so compiled code (:mod:`snpsim.fast.directmap`) works on the same state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from snpsim.hw.types import PAGE_SIZE, PAGES_PER_1G, PAGES_PER_2M, PageSize
from snpsim.segments import consecutive_runs, unique_ints

__all__ = ["COUNTERS", "ISA_END_PFN", "NOT_PRESENT", "DirectMap"]

# PUD (1 GiB) entry states.
_PUD_NP = 0
_PUD_1G = 1
_PUD_TABLE = 2
# PMD (2 MiB) entry states.
_PMD_NP = 0
_PMD_2M = 1
_PMD_SPLIT = 2
_PMD_UNDER_PUD = 3
_PMD_NONE = 4

_SHIFT_2M = 9  # log2(PAGES_PER_2M)
_SHIFT_1G = 18  # log2(PAGES_PER_1G)
_MASK_2M = PAGES_PER_2M - 1
_PMDS_PER_PUD = PAGES_PER_1G // PAGES_PER_2M  # 512

#: Value returned by :meth:`DirectMap.levels` for a not-present page (or one without an entry).
NOT_PRESENT = -1

#: ``ISA_END_ADDRESS`` (0x100000) in frames: ``init_mem_mapping()`` maps [0, 1 MiB) whatever the e820 map says.
ISA_END_PFN = 0x100000 >> 12

IntArray = npt.NDArray[np.int64]
Ranges = Sequence[tuple[int, int]]


def _union(ranges: Ranges, nframes: int) -> list[tuple[int, int]]:
    """Sorted disjoint union of frame ranges ``[lo, hi)``, clipped to ``[0, nframes)``."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted((max(0, int(lo)), min(nframes, int(hi))) for lo, hi in ranges):
        if lo >= hi:
            continue
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _pages_per_2m(ranges: list[tuple[int, int]], n2m: int) -> npt.NDArray[np.int32]:
    """Frames of the disjoint ``ranges`` in each 2M range."""
    count = np.zeros(n2m, dtype=np.int32)
    for lo, hi in ranges:
        b0, b1 = lo >> _SHIFT_2M, (hi - 1) >> _SHIFT_2M
        if b0 == b1:
            count[b0] += hi - lo
            continue
        count[b0] += ((b0 + 1) << _SHIFT_2M) - lo
        count[b0 + 1 : b1] += PAGES_PER_2M
        count[b1] += hi - (b1 << _SHIFT_2M)
    return count


#: The direct map's counters, in the order of its ``_ct`` array: entries at each level, present or not
#: (``direct_pages_count[]``), pages whose entry is not present, the vmstat split events, every split (counted by
#: vmstat or not: what the mutators return), merges, PTE pool rows ever handed out, free pool rows.
COUNTERS = ("n4k", "n2m", "n1g", "absent", "level2_splits", "level3_splits", "split_ops", "merges", "nslots", "nfree")


class _Counter:
    """A :class:`DirectMap` counter, an element of its ``_ct`` array (``self._n4k += k`` updates it in place)."""

    def __init__(self, name: str) -> None:
        self.i = COUNTERS.index(name)

    def __get__(self, obj: DirectMap, owner: type | None = None) -> int:
        return obj._ctv[self.i]  # type: ignore[no-any-return]

    def __set__(self, obj: DirectMap, value: int) -> None:
        obj._ctv[self.i] = value


class DirectMap:
    """The kernel direct map over frames ``[0, nframes)``; see the module docstring.

    ``memory`` is memblock's memory (the e820 RAM ranges, frame ``[lo, hi)`` pairs; None = all of
    ``[0, nframes)``): it decides the boot-time layout. Mutators return the number of splits they performed;
    ``split_1g`` / ``split_2m`` / ``merge_*`` return whether they did anything. Index arguments: ``pfn`` is a 4K
    frame number, ``idx2m`` = ``pfn // 512``, ``gb`` = ``pfn // 262144``. Out-of-range arguments raise
    :class:`ValueError`; a page without an entry (a hole) is left alone, as CPA leaves it.
    """

    _n4k = _Counter("n4k")
    _n2m = _Counter("n2m")
    _n1g = _Counter("n1g")
    _absent = _Counter("absent")
    _level2_splits = _Counter("level2_splits")
    _level3_splits = _Counter("level3_splits")
    _split_ops = _Counter("split_ops")
    _merges = _Counter("merges")
    _nslots = _Counter("nslots")  # rows of _bits ever handed out (the high-water mark)
    _nfree = _Counter("nfree")

    def __init__(
        self,
        nframes: int,
        *,
        max_level: PageSize = PageSize.SIZE_1G,
        memory: Ranges | None = None,
        running: bool = True,
    ) -> None:
        if nframes <= 0:
            raise ValueError(f"nframes must be positive, got {nframes}")
        max_level = PageSize(max_level)
        self._nframes = int(nframes)
        self._max_level = max_level
        #: ``system_state == SYSTEM_RUNNING``: splits count in the vmstat counters only while True
        self.running = running
        n2m = -(-nframes // PAGES_PER_2M)
        n1g = -(-nframes // PAGES_PER_1G)
        self._n2m_total = n2m
        self._n1g_total = n1g
        self._full1g_total = nframes // PAGES_PER_1G  # GiBs that lie wholly inside [0, nframes)

        self._pud = np.zeros(n1g, dtype=np.uint8)
        self._pmd = np.zeros(n2m, dtype=np.uint8)
        self._slot = np.full(n2m, -1, dtype=np.int32)
        self._ct = np.zeros(len(COUNTERS), dtype=np.int64)
        self._views()
        self._free_a = np.zeros(0, dtype=np.int64)  # free PTE pool rows: a stack, _free_a[:_nfree]
        self._bits = np.zeros((0, PAGES_PER_2M), dtype=np.bool_)
        #: split 2M ranges with PTEs that do not exist -> mask of the PTEs that do
        self._exists: dict[int, npt.NDArray[np.bool_]] = {}
        self._exists_idx = np.zeros(0, dtype=np.int64)  # its keys, sorted
        self._exists_rows = np.zeros((0, PAGES_PER_2M), dtype=np.bool_)  # their masks, in that order
        self._init_mem_mapping(_union([(0, nframes)] if memory is None else memory, self._nframes))

    def _init_mem_mapping(self, memory: list[tuple[int, int]]) -> None:
        """The boot-time layout of ``init_mem_mapping()`` (module docstring), built per aligned region."""
        n2m, full1g = self._n2m_total, self._full1g_total
        mapped = _union([(0, ISA_END_PFN), *memory], self._nframes)
        in_2m = _pages_per_2m(mapped, n2m)
        self._mapped = int(in_2m.sum())
        big = np.zeros(n2m, dtype=np.bool_)  # 2M ranges mapped by a 2M or 1G entry
        if self._max_level >= PageSize.SIZE_2M:
            big = _pages_per_2m(memory, n2m) == PAGES_PER_2M
        gb = np.zeros(self._n1g_total, dtype=np.bool_)  # GiBs mapped by a 1G entry
        if self._max_level >= PageSize.SIZE_1G and full1g:
            gb[:full1g] = big[: full1g * _PMDS_PER_PUD].reshape(full1g, _PMDS_PER_PUD).all(axis=1)
        under = np.repeat(gb, _PMDS_PER_PUD)[:n2m]
        self._pud[:] = np.where(gb, _PUD_1G, _PUD_TABLE).astype(np.uint8)
        self._pmd[:] = _PMD_NONE
        self._pmd[big] = _PMD_2M
        self._pmd[under] = _PMD_UNDER_PUD
        split = np.flatnonzero(~big & (in_2m > 0))
        self._n1g = int(np.count_nonzero(gb))
        self._n2m = int(np.count_nonzero(big & ~under))
        self._n4k = int(in_2m[split].sum())
        if not split.size:
            return
        slots = self._alloc(int(split.size))
        self._bits[slots] = True
        self._slot[split] = slots
        self._pmd[split] = _PMD_SPLIT
        for idx in split[in_2m[split] < PAGES_PER_2M].tolist():
            base = idx << _SHIFT_2M
            mask = np.zeros(PAGES_PER_2M, dtype=np.bool_)
            for lo, hi in mapped:
                if lo < base + PAGES_PER_2M and hi > base:
                    mask[max(lo - base, 0) : min(hi - base, PAGES_PER_2M)] = True
            self._exists[idx] = mask
            self._bits[self._slot_a[idx]] = mask
        self._exists_idx = np.array(sorted(self._exists), dtype=np.int64)
        self._exists_rows = np.zeros((self._exists_idx.size, PAGES_PER_2M), dtype=np.bool_)
        for row, i in enumerate(self._exists_idx.tolist()):
            self._exists_rows[row] = self._exists[i]

    def _views(self) -> None:
        """The ``memoryview`` twins of the arrays, for single reads and writes (neither copied nor pickled)."""
        self._pud_b = self._pud.data
        self._pmd_b = self._pmd.data
        self._slot_a = self._slot.data
        self._ctv = self._ct.data

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        for name in ("_pud_b", "_pmd_b", "_slot_a", "_ctv"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._views()

    # ------------------------------------------------------------------ properties / counters

    @property
    def nframes(self) -> int:
        return self._nframes

    @property
    def max_level(self) -> PageSize:
        return self._max_level

    @property
    def directmap_4k(self) -> int:
        """Bytes mapped by 4K entries, present or not (``DirectMap4k``)."""
        return self._n4k * PAGE_SIZE

    @property
    def directmap_2m(self) -> int:
        """Bytes mapped by 2M entries, present or not (``DirectMap2M``)."""
        return self._n2m * PAGES_PER_2M * PAGE_SIZE

    @property
    def directmap_1g(self) -> int:
        """Bytes mapped by 1G entries, present or not (``DirectMap1G``)."""
        return self._n1g * PAGES_PER_1G * PAGE_SIZE

    @property
    def mapped_bytes(self) -> int:
        """Bytes with a direct-map entry (the sum of the three level counters; fixed at boot)."""
        return self._mapped * PAGE_SIZE

    @property
    def present_bytes(self) -> int:
        """Bytes whose direct-map entry is present (mapped minus what was removed)."""
        return (self._mapped - self._absent) * PAGE_SIZE

    @property
    def level2_splits(self) -> int:
        """``/proc/vmstat`` ``direct_map_level2_splits``: 2M -> 4K splits while running."""
        return self._level2_splits

    @property
    def level3_splits(self) -> int:
        """``/proc/vmstat`` ``direct_map_level3_splits``: 1G -> 2M splits while running."""
        return self._level3_splits

    @property
    def split_count(self) -> int:
        """Splits counted by vmstat (1G -> 512x2M and 2M -> 512x4K each count 1): their sum."""
        return self._level2_splits + self._level3_splits

    @property
    def merge_count(self) -> int:
        """Merges performed (512x4K -> 2M and 512x2M -> 1G each count 1)."""
        return self._merges

    def meminfo(self) -> dict[str, int]:
        """The direct-map lines of ``/proc/meminfo`` in kB (``arch_report_meminfo``).

        The kernel omits ``DirectMap1G`` when gbpages are disabled; the model always reports it (0 then).
        """
        return {
            "DirectMap4k": self._n4k << 2,
            "DirectMap2M": self._n2m << 11,
            "DirectMap1G": self._n1g << 20,
        }

    def format_meminfo(self) -> str:
        """The three lines exactly as ``/proc/meminfo`` prints them (``"DirectMap4k:    %8lu kB"``)."""
        return "".join(f"{k}:    {v:8d} kB\n" for k, v in self.meminfo().items())

    def vmstat(self) -> dict[str, int]:
        """The direct-map lines of ``/proc/vmstat`` (``mm/vmstat.c`` ``vmstat_text[]``)."""
        return {"direct_map_level2_splits": self._level2_splits, "direct_map_level3_splits": self._level3_splits}

    def __repr__(self) -> str:
        mi = self.meminfo()
        return (
            f"DirectMap(nframes={self._nframes}, max_level={self._max_level.name}, "
            f"4k={mi['DirectMap4k']}kB, 2M={mi['DirectMap2M']}kB, 1G={mi['DirectMap1G']}kB, "
            f"splits={self.split_count}, merges={self._merges})"
        )

    # ------------------------------------------------------------------ argument checks

    def _check_pfn(self, pfn: int) -> None:
        if not 0 <= pfn < self._nframes:
            raise ValueError(f"pfn {pfn:#x} outside the direct map [0, {self._nframes:#x})")

    def _check_range(self, pfn: int, npages: int) -> None:
        if npages < 0 or pfn < 0 or pfn + npages > self._nframes:
            raise ValueError(f"range pfn {pfn:#x} + {npages} pages outside [0, {self._nframes:#x})")

    def _check_2m(self, idx2m: int) -> None:
        if not 0 <= idx2m < self._n2m_total:
            raise ValueError(f"2M index {idx2m} outside [0, {self._n2m_total})")

    def _check_1g(self, gb: int) -> None:
        if not 0 <= gb < self._n1g_total:
            raise ValueError(f"1G index {gb} outside [0, {self._n1g_total})")

    # ------------------------------------------------------------------ PTE pool

    def _reserve(self, k: int) -> None:
        """Room in the PTE pool for ``k`` more rows than ever handed out (the pool and its free stack grow)."""
        need = self._nslots + k
        if need > self._bits.shape[0]:
            cap = max(need, 2 * self._bits.shape[0], 16)
            grown = np.zeros((cap, PAGES_PER_2M), dtype=np.bool_)
            grown[: self._nslots] = self._bits[: self._nslots]
            self._bits = grown
            stack = np.zeros(cap, dtype=np.int64)
            stack[: self._nfree] = self._free_a[: self._nfree]
            self._free_a = stack

    def _free_rows(self) -> IntArray:
        """The free rows of the PTE pool."""
        return self._free_a[: self._nfree]

    def _push_free(self, slots: IntArray) -> None:
        n = self._nfree
        self._free_a[n : n + slots.size] = slots
        self._nfree = n + int(slots.size)

    def _alloc(self, k: int) -> IntArray:
        """Hand out ``k`` rows of the PTE pool (recycled rows first, from the top of the stack); contents are
        undefined."""
        nfree = self._nfree
        take = min(k, nfree)
        got = self._free_a[nfree - take : nfree].copy()
        self._nfree = nfree - take
        rest = k - take
        if not rest:
            return got
        self._reserve(rest)
        fresh = np.arange(self._nslots, self._nslots + rest, dtype=np.int64)
        self._nslots += rest
        return np.concatenate([got, fresh]) if take else fresh

    def _alloc_one(self) -> int:
        nfree = self._nfree
        if nfree:
            self._nfree = nfree - 1
            return int(self._free_a[nfree - 1])
        return int(self._alloc(1)[0])

    # ------------------------------------------------------------------ splitting (internal)
    # __split_large_page() + split_page_count(level): direct_pages_count[level]--,
    # direct_pages_count[level - 1] += PTRS_PER_PTE, and the vmstat event if SYSTEM_RUNNING.

    def _split_1g_one(self, gb: int) -> None:
        """Split a whole-GiB PUD entry (present or not) into 512 PMD entries of the same presence."""
        present = self._pud_b[gb] == _PUD_1G
        base = gb * _PMDS_PER_PUD
        self._pmd[base : base + _PMDS_PER_PUD] = _PMD_2M if present else _PMD_NP
        self._pud_b[gb] = _PUD_TABLE
        self._n1g -= 1
        self._n2m += _PMDS_PER_PUD
        self._split_ops += 1
        if self.running:
            self._level3_splits += 1

    def _split_2m_one(self, idx: int) -> None:
        """Split a PMD entry (present or not) into 512 PTEs of the same presence."""
        present = self._pmd_b[idx] == _PMD_2M
        slot = self._alloc_one()
        self._bits[slot] = present
        self._slot_a[idx] = slot
        self._pmd_b[idx] = _PMD_SPLIT
        self._n2m -= 1
        self._n4k += PAGES_PER_2M
        self._split_ops += 1
        if self.running:
            self._level2_splits += 1

    # ------------------------------------------------------------------ PTE bits over a range

    def _pte_rows(self, pfn: int, end: int) -> tuple[IntArray, list[tuple[int, int, int]]]:
        """Split 2M ranges intersecting ``[pfn, end)``: (pool rows wholly covered, [(row, lo, hi)] partial)."""
        i0 = pfn >> _SHIFT_2M
        i1 = ((end - 1) >> _SHIFT_2M) + 1
        sp = np.flatnonzero(self._pmd[i0:i1] == _PMD_SPLIT) + i0
        if not sp.size:
            return np.empty(0, dtype=np.int64), []
        partial: list[tuple[int, int, int]] = []
        first, last = 0, int(sp.size)
        i = int(sp[0])
        if pfn > (i << _SHIFT_2M) or end < ((i + 1) << _SHIFT_2M):
            partial.append((self._slot_a[i], max(pfn - (i << _SHIFT_2M), 0), min(end - (i << _SHIFT_2M), PAGES_PER_2M)))
            first = 1
        i = int(sp[-1])
        if last > first and end < ((i + 1) << _SHIFT_2M):  # only the last range can end early
            partial.append((self._slot_a[i], 0, end - (i << _SHIFT_2M)))
            last -= 1
        return self._slot[sp[first:last]].astype(np.int64), partial

    def _set_bits(self, pfn: int, end: int, value: bool) -> int:
        """Set the present bit of every existing 4K entry in ``[pfn, end)``; return how many bits changed."""
        full, partial = self._pte_rows(pfn, end)
        changed = 0
        for slot, lo, hi in partial:
            seg = self._bits[slot, lo:hi]
            n = int(np.count_nonzero(seg))
            changed += (hi - lo - n) if value else n
            seg[...] = value
        if full.size:
            n = int(np.count_nonzero(self._bits[full]))
            changed += (int(full.size) * PAGES_PER_2M - n) if value else n
            self._bits[full] = value
        if value and self._exists:
            changed -= self._clear_missing(pfn, end)
        return changed

    def _clear_missing(self, pfn: int, end: int) -> int:
        """Clear the bits of PTEs that do not exist in ``[pfn, end)`` (set by a range write); return how many."""
        keys = self._exists_idx
        i0 = pfn >> _SHIFT_2M
        i1 = ((end - 1) >> _SHIFT_2M) + 1
        cleared = 0
        for idx in keys[np.searchsorted(keys, i0) : np.searchsorted(keys, i1)].tolist():
            base = idx << _SHIFT_2M
            lo, hi = max(pfn - base, 0), min(end - base, PAGES_PER_2M)
            missing = ~self._exists[idx][lo:hi]
            seg = self._bits[self._slot_a[idx], lo:hi]
            cleared += int(np.count_nonzero(seg & missing))
            seg[missing] = False
        return cleared

    def _count_bits(self, pfn: int, end: int) -> int:
        """Present 4K entries in ``[pfn, end)``."""
        full, partial = self._pte_rows(pfn, end)
        n = sum(int(np.count_nonzero(self._bits[slot, lo:hi])) for slot, lo, hi in partial)
        if full.size:
            n += int(np.count_nonzero(self._bits[full]))
        return n

    # ------------------------------------------------------------------ queries

    def level(self, pfn: int) -> PageSize | None:
        """Size of the mapping covering ``pfn``, or ``None`` if its entry is not present (or does not exist)."""
        self._check_pfn(pfn)
        g = self._pud_b[pfn >> _SHIFT_1G]
        if g == _PUD_1G:
            return PageSize.SIZE_1G
        if g == _PUD_NP:
            return None
        m = self._pmd_b[pfn >> _SHIFT_2M]
        if m == _PMD_2M:
            return PageSize.SIZE_2M
        if m != _PMD_SPLIT:
            return None
        return PageSize.SIZE_4K if self._bits[self._slot_a[pfn >> _SHIFT_2M], pfn & _MASK_2M] else None

    def levels(self, pfn: int, npages: int) -> npt.NDArray[np.int8]:
        """Per-page mapping level of ``[pfn, pfn + npages)`` as int8 (``PageSize`` value, -1 = not present).

        Allocates one byte per page: meant for tests and small ranges.
        """
        self._check_range(pfn, npages)
        if npages == 0:
            return np.empty(0, dtype=np.int8)
        end = pfn + npages
        i0 = pfn >> _SHIFT_2M
        i1 = ((end - 1) >> _SHIFT_2M) + 1
        idx = np.arange(i0, i1, dtype=np.int64)
        pud = self._pud[idx >> _SHIFT_2M]
        pmd = self._pmd[i0:i1]
        code = np.full(i1 - i0, NOT_PRESENT, dtype=np.int8)
        code[pud == _PUD_1G] = PageSize.SIZE_1G
        table = pud == _PUD_TABLE
        code[table & (pmd == _PMD_2M)] = PageSize.SIZE_2M
        grid = np.repeat(code[:, None], PAGES_PER_2M, axis=1)
        sp = np.flatnonzero(table & (pmd == _PMD_SPLIT))
        if sp.size:
            rows = self._bits[self._slot[sp + i0]]
            grid[sp] = np.where(rows, np.int8(PageSize.SIZE_4K), np.int8(NOT_PRESENT))
        off = pfn - (i0 << _SHIFT_2M)
        return grid.reshape(-1)[off : off + npages].copy()

    def levels_of(self, pfns: IntArray) -> npt.NDArray[np.int8]:
        """Vectorised :meth:`level` of scattered frames as int8 (``PageSize`` value, -1 = not present)."""
        pfns = np.asarray(pfns, dtype=np.int64)
        if pfns.size and (int(pfns.min()) < 0 or int(pfns.max()) >= self._nframes):
            raise ValueError(f"pfns outside the direct map [0, {self._nframes:#x})")
        idx = pfns >> _SHIFT_2M
        pud = self._pud[pfns >> _SHIFT_1G]
        pmd = self._pmd[idx]
        code = np.full(pfns.shape, NOT_PRESENT, dtype=np.int8)
        code[pud == _PUD_1G] = PageSize.SIZE_1G
        table = pud == _PUD_TABLE
        code[table & (pmd == _PMD_2M)] = PageSize.SIZE_2M
        sp = np.flatnonzero(table & (pmd == _PMD_SPLIT))
        if sp.size:
            present = self._bits[self._slot[idx[sp]], pfns[sp] & _MASK_2M]
            code[sp[present]] = PageSize.SIZE_4K
        return code

    def count_levels(self, pfn: int, npages: int) -> tuple[int, int, int, int]:
        """Pages of ``[pfn, pfn + npages)`` present at 4K, at 2M, at 1G, and not present (or without an entry)."""
        self._check_range(pfn, npages)
        if npages == 0:
            return (0, 0, 0, 0)
        end = pfn + npages
        i0 = pfn >> _SHIFT_2M
        i1 = ((end - 1) >> _SHIFT_2M) + 1
        idx = np.arange(i0, i1, dtype=np.int64)
        start = idx << _SHIFT_2M
        overlap = np.minimum(start + PAGES_PER_2M, end) - np.maximum(start, pfn)
        pud = self._pud[idx >> _SHIFT_2M]
        pmd = self._pmd[i0:i1]
        c1g = int(overlap[pud == _PUD_1G].sum())
        c2m = int(overlap[(pud == _PUD_TABLE) & (pmd == _PMD_2M)].sum())
        c4k = self._count_bits(pfn, end)
        return (c4k, c2m, c1g, npages - c4k - c2m - c1g)

    # ------------------------------------------------------------------ splitting (public)

    def split_1g(self, gb: int) -> bool:
        """Split the 1G entry of GiB ``gb`` into 512 2M entries; False if it is not a 1G entry."""
        self._check_1g(gb)
        if self._pud_b[gb] == _PUD_TABLE:
            return False
        self._split_1g_one(gb)
        return True

    def split_2m(self, idx2m: int) -> bool:
        """Split 2M range ``idx2m`` into 4K entries (splitting its 1G entry first if needed).

        Returns whether the 2M range was split by this call (False if it already was 4K, or has no entry).
        """
        self._check_2m(idx2m)
        m = self._pmd_b[idx2m]
        if m in (_PMD_SPLIT, _PMD_NONE):
            return False
        gb = idx2m >> _SHIFT_2M
        if self._pud_b[gb] != _PUD_TABLE:
            self._split_1g_one(gb)
        self._split_2m_one(idx2m)
        return True

    def split_2m_many(self, idx2m: IntArray) -> int:
        """:meth:`split_2m` on each listed 2M range (any order, repeats allowed), in ascending order; returns how
        many were split."""
        idx = unique_ints(np.asarray(idx2m, dtype=np.int64))
        if idx.size and (int(idx[0]) < 0 or int(idx[-1]) >= self._n2m_total):
            raise ValueError(f"2M index outside [0, {self._n2m_total})")
        return sum(self.split_2m(i) for i in idx.tolist())

    def set_4k(self, pfn: int) -> int:
        """``set_memory_4k()`` on one page: make its mapping 4K; return the number of splits (0, 1 or 2)."""
        self._check_pfn(pfn)
        idx = pfn >> _SHIFT_2M
        m = self._pmd_b[idx]
        if m in (_PMD_SPLIT, _PMD_NONE):
            return 0
        splits = 0
        gb = pfn >> _SHIFT_1G
        if self._pud_b[gb] != _PUD_TABLE:
            self._split_1g_one(gb)
            splits += 1
        self._split_2m_one(idx)
        return splits + 1

    # ------------------------------------------------------------------ 4K remove / restore

    def remove_4k(self, pfn: int) -> int:
        """``set_direct_map_invalid_noflush()``: clear ``pfn``'s present bit, splitting down to 4K if needed.

        No-op (no split) if the page is already not present. Returns the number of splits.
        """
        self._check_pfn(pfn)
        return self._set_in_2m(pfn, pfn + 1, False)

    def restore_4k(self, pfn: int) -> int:
        """``set_direct_map_default_noflush()``: make ``pfn`` present again, splitting down to 4K if needed.

        No-op (no split) if the page is already present. Returns the number of splits.
        """
        self._check_pfn(pfn)
        return self._set_in_2m(pfn, pfn + 1, True)

    @staticmethod
    def _per_2m(op: Callable[[int, int], int], pfn: int, end: int) -> int:
        """Apply a single-2M-range operation to each 2M piece of ``[pfn, end)``; sum the splits."""
        splits = 0
        while pfn < end:
            nxt = min(((pfn >> _SHIFT_2M) + 1) << _SHIFT_2M, end)
            splits += op(pfn, nxt)
            pfn = nxt
        return splits

    def _set_in_2m(self, pfn: int, end: int, present: bool) -> int:
        """:meth:`remove_range` / :meth:`restore_range` for a range inside one 2M range.

        A large entry already in the requested state is left alone; one in the other state is split (1G, then
        2M); then the 4K present bits are set. A 2M range without an entry is left alone."""
        same_pud, same_pmd = (_PUD_1G, _PMD_2M) if present else (_PUD_NP, _PMD_NP)
        gb = pfn >> _SHIFT_1G
        g = self._pud_b[gb]
        if g == same_pud:
            return 0
        splits = 0
        if g != _PUD_TABLE:
            self._split_1g_one(gb)
            splits += 1
        idx = pfn >> _SHIFT_2M
        m = self._pmd_b[idx]
        if m in (same_pmd, _PMD_NONE):
            return splits
        if m != _PMD_SPLIT:
            self._split_2m_one(idx)
            splits += 1
        base = idx << _SHIFT_2M
        seg = self._bits[self._slot_a[idx], pfn - base : end - base]
        was = int(np.count_nonzero(seg))
        seg[...] = present
        now = end - pfn
        if present and idx in self._exists:
            exists = self._exists[idx][pfn - base : end - base]
            seg &= exists
            now = int(np.count_nonzero(exists))
        self._absent -= (now - was) if present else -was
        return splits

    def remove_range(self, pfn: int, npages: int) -> int:
        """:meth:`remove_4k` on every page of ``[pfn, pfn + npages)``, a 2M piece at a time; returns the splits."""
        self._check_range(pfn, npages)
        return self._per_2m(lambda lo, hi: self._set_in_2m(lo, hi, False), pfn, pfn + npages)

    def remove_pages(self, pfns: IntArray) -> int:
        """:meth:`remove_4k` of every frame of ``pfns`` (sorted, distinct), a run of consecutive frames at a time
        (:meth:`remove_range`); returns the splits."""
        return sum(self.remove_range(lo, hi - lo) for lo, hi in consecutive_runs(pfns))

    def restore_pages(self, pfns: IntArray) -> int:
        """:meth:`restore_4k` of every frame of ``pfns`` (sorted, distinct); returns the splits."""
        return sum(self.restore_range(lo, hi - lo) for lo, hi in consecutive_runs(pfns))

    def restore_range(self, pfn: int, npages: int) -> int:
        """:meth:`restore_4k` on every page of ``[pfn, pfn + npages)``, a 2M piece at a time; returns the splits."""
        self._check_range(pfn, npages)
        return self._per_2m(lambda lo, hi: self._set_in_2m(lo, hi, True), pfn, pfn + npages)

    # ------------------------------------------------------------------ 2M / 1G remove / restore

    def _frames_2m(self, idx2m: int) -> tuple[int, int]:
        lo = idx2m << _SHIFT_2M
        return lo, min(lo + PAGES_PER_2M, self._nframes)

    def remove_2m(self, idx2m: int) -> int:
        """``set_memory_np()`` on the whole 2M range ``idx2m``: not present, without splitting it to 4K.

        A covering present 1G entry is split into 2M entries first (1 split, returned). A 2M mapping has its
        present bit cleared (it stays counted in ``DirectMap2M``); a range already split to 4K has all its 4K
        entries cleared and stays split.
        """
        self._check_2m(idx2m)
        gb = idx2m >> _SHIFT_2M
        g = self._pud_b[gb]
        if g == _PUD_NP:
            return 0
        splits = 0
        if g == _PUD_1G:
            self._split_1g_one(gb)
            splits = 1
        m = self._pmd_b[idx2m]
        if m == _PMD_2M:
            self._pmd_b[idx2m] = _PMD_NP
            self._absent += PAGES_PER_2M
        elif m == _PMD_SPLIT:
            self._absent += self._set_bits(*self._frames_2m(idx2m), False)
        return splits

    def restore_2m(self, idx2m: int) -> int:
        """Make the 2M range ``idx2m`` present again without splitting it to 4K (inverse of :meth:`remove_2m`).

        A covering not-present 1G entry is split first (1 split, returned); a range split to 4K stays split
        with all its 4K entries present (see :meth:`merge_2m`).
        """
        self._check_2m(idx2m)
        gb = idx2m >> _SHIFT_2M
        g = self._pud_b[gb]
        if g == _PUD_1G:
            return 0
        splits = 0
        if g == _PUD_NP:
            self._split_1g_one(gb)
            splits = 1
        m = self._pmd_b[idx2m]
        if m == _PMD_NP:
            self._pmd_b[idx2m] = _PMD_2M
            self._absent -= PAGES_PER_2M
        elif m == _PMD_SPLIT:
            self._absent -= self._set_bits(*self._frames_2m(idx2m), True)
        return splits

    def _pmd_slice_1g(self, gb: int) -> npt.NDArray[np.uint8]:
        base = gb * _PMDS_PER_PUD
        return self._pmd[base : min(base + _PMDS_PER_PUD, self._n2m_total)]

    def _frames_1g(self, gb: int) -> tuple[int, int]:
        lo = gb << _SHIFT_1G
        return lo, min(lo + PAGES_PER_1G, self._nframes)

    def remove_1g(self, gb: int) -> int:
        """Make GiB ``gb`` not present without splitting (a split GiB stays split, all its entries cleared)."""
        self._check_1g(gb)
        g = self._pud_b[gb]
        if g == _PUD_1G:
            self._pud_b[gb] = _PUD_NP
            self._absent += PAGES_PER_1G
        elif g == _PUD_TABLE:
            pmd = self._pmd_slice_1g(gb)
            mapped = pmd == _PMD_2M
            self._absent += int(np.count_nonzero(mapped)) * PAGES_PER_2M
            pmd[mapped] = _PMD_NP
            self._absent += self._set_bits(*self._frames_1g(gb), False)
        return 0

    def restore_1g(self, gb: int) -> int:
        """Make GiB ``gb`` present again without splitting (a split GiB stays split, all entries present)."""
        self._check_1g(gb)
        g = self._pud_b[gb]
        if g == _PUD_NP:
            self._pud_b[gb] = _PUD_1G
            self._absent -= PAGES_PER_1G
        elif g == _PUD_TABLE:
            pmd = self._pmd_slice_1g(gb)
            absent = pmd == _PMD_NP
            self._absent -= int(np.count_nonzero(absent)) * PAGES_PER_2M
            pmd[absent] = _PMD_2M
            self._absent -= self._set_bits(*self._frames_1g(gb), True)
        return 0

    # ------------------------------------------------------------------ merging (as collapse_pmd_page())

    def merge_2m(self, idx2m: int) -> bool:
        """Collapse split 2M range ``idx2m`` back to one 2M mapping if all 512 4K entries are present."""
        self._check_2m(idx2m)
        if self._max_level < PageSize.SIZE_2M or self._pmd_b[idx2m] != _PMD_SPLIT:
            return False
        slot = self._slot_a[idx2m]
        if not self._bits[slot].all():
            return False
        self._pmd_b[idx2m] = _PMD_2M
        self._slot_a[idx2m] = -1
        self._push_free(np.array([slot], dtype=np.int64))
        self._n4k -= PAGES_PER_2M
        self._n2m += 1
        self._merges += 1
        return True

    def merge_1g(self, gb: int) -> bool:
        """Collapse split GiB ``gb`` back to one 1G mapping if all 512 2M entries are present 2M mappings."""
        self._check_1g(gb)
        if self._max_level < PageSize.SIZE_1G or self._pud_b[gb] != _PUD_TABLE or gb >= self._full1g_total:
            return False
        pmd = self._pmd_slice_1g(gb)
        if not bool((pmd == _PMD_2M).all()):
            return False
        pmd[:] = _PMD_UNDER_PUD
        self._pud_b[gb] = _PUD_1G
        self._n2m -= _PMDS_PER_PUD
        self._n1g += 1
        self._merges += 1
        return True

    def try_merge(self, pfn: int, npages: int) -> int:
        """Merge every mergeable 2M range intersecting the range, then every mergeable GiB; return merges."""
        self._check_range(pfn, npages)
        if npages == 0 or self._max_level < PageSize.SIZE_2M:
            return 0
        before = self._merges
        end = pfn + npages
        i0, i1 = pfn >> _SHIFT_2M, ((end - 1) >> _SHIFT_2M) + 1
        sp = np.flatnonzero(self._pmd[i0:i1] == _PMD_SPLIT) + i0
        if sp.size:
            slots = self._slot[sp].astype(np.int64)
            ok = self._bits[slots].all(axis=1)
            k = int(np.count_nonzero(ok))
            if k:
                merged = sp[ok]
                self._pmd[merged] = _PMD_2M
                self._slot[merged] = -1
                self._push_free(slots[ok])
                self._n4k -= k * PAGES_PER_2M
                self._n2m += k
                self._merges += k
        if self._max_level >= PageSize.SIZE_1G:
            g0 = pfn >> _SHIFT_1G
            g1 = min(((end - 1) >> _SHIFT_1G) + 1, self._full1g_total)
            if g1 > g0:
                pmd = self._pmd[g0 * _PMDS_PER_PUD : g1 * _PMDS_PER_PUD].reshape(g1 - g0, _PMDS_PER_PUD)
                ok = (self._pud[g0:g1] == _PUD_TABLE) & (pmd == _PMD_2M).all(axis=1)
                k = int(np.count_nonzero(ok))
                if k:
                    pmd[ok] = _PMD_UNDER_PUD
                    self._pud[g0:g1][ok] = _PUD_1G
                    self._n2m -= k * _PMDS_PER_PUD
                    self._n1g += k
                    self._merges += k
        return self._merges - before

    def levels_2m(self) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int16]]:
        """Per 2 MiB range: the level of the entry mapping it and its present 4K pages.

        Level: ``PageSize.SIZE_1G`` (a 1G entry), ``SIZE_2M`` (a 2M entry), ``SIZE_4K`` (a PTE table, whatever
        its present bits) or :data:`NOT_PRESENT` (a not-present 1G or 2M entry). Present pages: 512 under a
        present 1G/2M entry, 0 under a not-present one, the present bits of a PTE table. O(nframes / 512) plus
        the split ranges' PTE rows, in bounded chunks (the report's memory picture of a 2 TiB host)."""
        pud = np.repeat(self._pud, _PMDS_PER_PUD)[: self._n2m_total]
        level = np.full(self._n2m_total, NOT_PRESENT, dtype=np.int8)
        level[pud == _PUD_1G] = PageSize.SIZE_1G
        table = pud == _PUD_TABLE
        level[table & (self._pmd == _PMD_2M)] = PageSize.SIZE_2M
        split = np.flatnonzero(table & (self._pmd == _PMD_SPLIT))
        level[split] = PageSize.SIZE_4K
        present = np.where(level > PageSize.SIZE_4K, PAGES_PER_2M, 0).astype(np.int16)
        slots = self._slot[split]
        for k in range(0, split.size, 1 << 16):
            present[split[k : k + (1 << 16)]] = np.count_nonzero(self._bits[slots[k : k + (1 << 16)]], axis=1)
        return level, present

    # ------------------------------------------------------------------ self-check

    def check_invariants(self) -> None:
        """Verify the internal structure and that the counters equal a full recount (O(nframes / 512)).

        Raises :class:`AssertionError` on the first violation. Meant for tests.
        """

        def fail(msg: str) -> None:
            raise AssertionError(f"DirectMap invariant: {msg}")

        pud, pmd = self._pud, self._pmd
        if not np.isin(pud, (_PUD_NP, _PUD_1G, _PUD_TABLE)).all():
            fail("bad PUD state")
        if not np.isin(pmd, (_PMD_NP, _PMD_2M, _PMD_SPLIT, _PMD_UNDER_PUD, _PMD_NONE)).all():
            fail("bad PMD state")
        if self._max_level < PageSize.SIZE_1G and (pud != _PUD_TABLE).any():
            fail("1G entry with max_level < 1G")
        if (pud[self._full1g_total :] != _PUD_TABLE).any():
            fail("1G entry over a partial GiB")
        under = np.repeat(pud != _PUD_TABLE, _PMDS_PER_PUD)[: self._n2m_total]
        if ((pmd == _PMD_UNDER_PUD) != under).any():
            fail("PMD bytes disagree with their PUD")
        if self._max_level < PageSize.SIZE_2M and ((pmd == _PMD_2M) | (pmd == _PMD_NP)).any():
            fail("2M entry with max_level 4K")
        if self._nframes & _MASK_2M and pmd[-1] not in (_PMD_SPLIT, _PMD_NONE):
            fail("partial 2M tail not mapped at 4K")
        split = pmd == _PMD_SPLIT
        slots = self._slot[split]
        if (self._slot[~split] != -1).any() or (slots < 0).any() or (slots >= self._nslots).any():
            fail("slot array disagrees with PMD states")
        if unique_ints(slots).size != slots.size or np.intersect1d(slots, self._free_rows()).size:
            fail("PTE pool row shared or both used and free")
        if slots.size + self._nfree != self._nslots:
            fail("PTE pool rows leaked")
        if list(self._exists_idx.tolist()) != sorted(self._exists):
            fail("index of the PTE tables with holes is stale")
        keyed = zip(self._exists_idx.tolist(), self._exists_rows, strict=True)
        if any(not np.array_equal(self._exists[i], row) for i, row in keyed):
            fail("masks of the PTE tables with holes are stale")
        missing = 0
        for idx, mask in self._exists.items():
            if pmd[idx] != _PMD_SPLIT:
                fail(f"2M range {idx} with missing PTEs is not a PTE table")
            if self._bits[self._slot_a[idx]][~mask].any():
                fail(f"present bit on a PTE that does not exist in 2M range {idx}")
            missing += PAGES_PER_2M - int(np.count_nonzero(mask))
        # direct_pages_count[]: entries at each level, present or not, summing to the mapped memory
        e4k = int(slots.size) * PAGES_PER_2M - missing
        e2m = int(np.count_nonzero((pmd == _PMD_2M) | (pmd == _PMD_NP)))
        e1g = int(np.count_nonzero(pud != _PUD_TABLE))
        if (e4k, e2m, e1g) != (self._n4k, self._n2m, self._n1g):
            fail(f"counters {(self._n4k, self._n2m, self._n1g)} != recount {(e4k, e2m, e1g)}")
        if e4k + e2m * PAGES_PER_2M + e1g * PAGES_PER_1G != self._mapped:
            fail("the DirectMap counters do not sum to the direct-mapped memory")
        c4k, c2m, c1g, absent = self.count_levels(0, self._nframes)
        if int(np.count_nonzero(self._bits[slots])) != c4k:
            fail("4K recount mismatch")
        if c2m != int(np.count_nonzero(pmd == _PMD_2M)) * PAGES_PER_2M:
            fail("2M recount mismatch")
        if c1g != int(np.count_nonzero(pud == _PUD_1G)) * PAGES_PER_1G:
            fail("1G recount mismatch")
        if absent - (self._nframes - self._mapped) != self._absent:
            fail(f"not-present count {self._absent} != recount {absent - (self._nframes - self._mapped)}")

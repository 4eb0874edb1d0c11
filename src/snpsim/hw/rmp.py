"""The SEV-SNP Reverse Map Table (RMP) and the SNP instructions that read and write it.

Models the RMP of AMD APM vol. 2 §15.36 (one 16-byte entry per 4K page of system memory, all entries start
hypervisor-owned) and the instructions RMPUPDATE, PSMASH, PVALIDATE, RMPADJUST and RMPREAD with their return
codes, plus the hardware RMP checks on host writes and guest accesses (APM Table 15-39). Facts and sources:
``shared/reference/amd-snp-arch.md`` §1 (entry), §3 (RMPUPDATE), §4 (PSMASH), §5 (PVALIDATE), §6 (RMPADJUST,
RMPREAD), §7 (access checks and error-code bits), §8 (#VC 0x404).

Storage follows the kernel's *segmented RMP* (Linux ``arch/x86/virt/svm/sev.c``, RMP_CFG segments,
linux-snp-host.md §1): the table is cut into 1 GiB segments allocated on first write, so an untouched segment
costs nothing and a 1 TiB host fits easily. Each 4K page has a flag byte, a GFN and an ASID (the GFN is stored
as its offset from the page's index in the segment, so that a run of pages bound to consecutive GFNs, as a range
operation or a 2M entry writes, holds one value); VMPL1-3 permission masks are allocated per segment on the
first RMPADJUST. Like the Zen raw RMP that Linux reads
(``snp_lookup_rmpentry``: ``assigned`` from the page's own entry, level from the 2M-aligned entry), a 2M entry is
stored in all 512 of its 4K slots with consecutive GPAs, so every page of a 2M entry reads the authoritative 2M
state. A per-2M-range count of assigned pages makes the large-mapping host-write check O(1).

Modelling assumptions where the reference marks a fact unknown ([?]/[I]); each is named in :data:`ASSUMPTIONS`:

- ``rmpopt-clear``: RMPOPT's per-CPU table ("Hardware automatically clears bits in the RMPOPT table when RMP
  contents are changed during RMPUPDATE instruction", RMPOPT v4 cover letter): a successful RMPUPDATE that makes an
  entry assigned clears the bit of its 1 GiB region on every CPU (a set bit means "entirely hypervisor-owned", so
  an unassigning RMPUPDATE cannot make it wrong and is taken to leave it).
- ``rmpupdate-input``: RMPUPDATE returns FAIL_INPUT for a non-4K-aligned SPA or GPA, an SPA (or any page of a
  2M request) beyond the table, a page size other than 4K/2M, a 2M request whose SPA or GPA is not 2M-aligned,
  and assigned=0 with ASID != 0 or Immutable=1 (§3, §10 item 2).
- ``rmpupdate-overlap``: a 4K RMPUPDATE inside an *assigned* 2M entry and a 2M RMPUPDATE over a range where any
  of the 511 other 4K entries is assigned return FAIL_OVERLAP (§3: KVM PSMASHes first and checks
  ``is_large_rmp_possible``; RMPREAD's 2MB-region-status counts only *other* pages). A 2M RMPUPDATE may replace
  an existing 2M entry or an assigned 4K entry at the 2M-aligned page itself.
- ``rmpupdate-demote``: a 4K RMPUPDATE inside an *unassigned* 2M entry succeeds and turns that 2M entry into 512
  unassigned 4K entries (a hypervisor-owned 2M entry and 512 hypervisor-owned 4K entries are equivalent).
- ``rmpupdate-clears``: every successful RMPUPDATE clears Validated and VMSA and resets the VMPL masks
  (VMPL0 all permissions when assigned, others none), even a byte-identical one (§3, §10 item 3).
- ``check-order``: FAIL_INPUT, then FAIL_INUSE, then FAIL_PERMISSION (immutable), then FAIL_OVERLAP.
- ``psmash-code``: PSMASH of a 2M-aligned entry that is not an assigned 2M entry returns 7 (MS-docs) rather than
  the 2020 RFC's 4 (§10 item 1); an immutable 2M entry can be smashed (all fields are copied, §4).
- ``pvalidate-vmpl``: PVALIDATE at VMPL > 0 returns FAIL_PERMISSION (§5, §10 item 4).
- ``rmpread-gpa``: RMPREAD of a page inside a 2M entry reports the 2M entry (page size 2M) with the GPA of that
  4K page (entry GPA + offset), which is what PSMASH would leave in the 4K entry.
- ``npf-bits``: RMP #NPF EXITINFO1 carries RMP (bit 31) plus ENC for private accesses, WRITE/FETCH by access
  type, SIZEM only for PVALIDATE/RMPADJUST size mismatches and VMPL for permission failures (§7).
- ``uncovered``: pages beyond the table are hypervisor-owned: host writes never fault on them; guest private
  accesses, PVALIDATE and RMPADJUST on them fail the Covered check (#NPF with the RMP bit).
- ``guest-instr-align``: PVALIDATE and RMPADJUST take a guest virtual address, so a 2M request returns
  FAIL_INPUT only when the GPA is not 2M-aligned (§5 [I]); the SPA it translates to is not checked for
  alignment: a 2M request reaching a 4K RMP entry returns FAIL_SIZEMISMATCH (Table 15-40), and one reaching
  the middle of a 2M entry fails the Reverse-Map check (#NPF).

Speed: the simulator calls the single-page instructions per page, so each keeps a short straight-line path for
the common case (a 4K entry in an allocated segment, no in-use/immutable/2M complication) that reads and writes
the segment arrays through ``memoryview``s (indexing a memoryview with a Python int costs about half of numpy
scalar indexing) and returns pre-built results; anything else falls through to the general code, which is the
specification. The scattered-PFN operations :meth:`Rmp.rmpupdate_pfns` and :meth:`Rmp.pvalidate_pfns` (the host
kernel's and the guest's bulk 4K paths) are exactly what they are specified as: the loop of the single-page
instruction, whatever the number of pages or their order (the fast engine, :mod:`snpsim.fast.rmp`, compiles that
loop on these arrays). The range operations (``rmpupdate_range``, ``pvalidate_range``, ``psmash_range``: one
instruction stepped over one ascending run, an API of its own) work on contiguous slices of each segment with a
vectorised common-case check; in a 4K range, the 2M ranges holding pages that need the general rules (in-use,
immutable or 2M entries) go through the general RMPUPDATE page by page. Tests in ``tests/hw`` compare every path
against loops of the single-page instructions, the general code and a naive dict-per-page model.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from snpsim.hw.types import (
    NPF_ENC,
    NPF_FETCH,
    NPF_PRESENT,
    NPF_RMP,
    NPF_SIZEM,
    NPF_VMPL,
    NPF_WRITE,
    NUM_VMPLS,
    PAGE_SHIFT,
    PAGE_SIZE,
    PAGES_PER_2M,
    PERM_ALL,
    PERM_EXEC_SUPERVISOR,
    PERM_READ,
    PERM_RESERVED,
    PERM_WRITE,
    PF_PRESENT,
    PF_RMP,
    PF_WRITE,
    HostPageFault,
    NestedPageFault,
    PageSize,
    RmpEntry,
    RmpStatus,
    VmmCommunicationException,
)
from snpsim.pfnmap import lazy_zeros
from snpsim.segments import by_segment

ASSUMPTIONS: dict[str, str] = {
    "rmpopt-clear": "a successful assigning RMPUPDATE clears the region's RMPOPT bit on every CPU",
    "rmpupdate-input": "misaligned/out-of-range/inconsistent RMPUPDATE input -> FAIL_INPUT",
    "rmpupdate-overlap": "4K inside assigned 2M, or 2M over other assigned 4K entries -> FAIL_OVERLAP",
    "rmpupdate-demote": "4K RMPUPDATE inside an unassigned 2M entry demotes it to 512 4K entries",
    "rmpupdate-clears": "every successful RMPUPDATE clears Validated/VMSA and resets VMPL masks",
    "check-order": "RMPUPDATE checks: input, in-use, permission, overlap",
    "psmash-code": "PSMASH of a non-2M or unassigned entry returns 7 (FAIL_BADADDR)",
    "pvalidate-vmpl": "PVALIDATE at VMPL>0 returns FAIL_PERMISSION",
    "rmpread-gpa": "RMPREAD inside a 2M entry reports page size 2M and gpa = entry gpa + offset",
    "npf-bits": "RMP NPF: RMP|ENC(private)|WRITE|FETCH; SIZEM only for PVALIDATE/RMPADJUST; VMPL for perms",
    "uncovered": "pages beyond the RMP are hypervisor-owned and fail guest private checks",
    "guest-instr-align": "PVALIDATE/RMPADJUST 2M: FAIL_INPUT only for a misaligned GPA; an SPA on a 4K entry "
    "gives FAIL_SIZEMISMATCH",
}

# Flag bits of the per-page flag byte (model-internal, not the raw Zen layout).
F_ASSIGNED = 1 << 0
F_SIZE2M = 1 << 1
F_IMMUTABLE = 1 << 2
F_VMSA = 1 << 3
F_VALIDATED = 1 << 4

#: Pages per RMP segment: 1 GiB, the granularity of the kernel's segmented RMP (RST entries map GB units).
SEGMENT_SHIFT = 18
#: RMPOPT functions (RCX bit 0; RMPOPT v2 3/7 ``enum rmpopt_function``)
RMPOPT_FUNC_VERIFY_AND_REPORT_STATUS = 0
RMPOPT_FUNC_REPORT_STATUS = 1
SEGMENT_PAGES = 1 << SEGMENT_SHIFT
_SEG_MASK = SEGMENT_PAGES - 1
_REGIONS_PER_SEGMENT = SEGMENT_PAGES // PAGES_PER_2M
_2M_MASK = PAGES_PER_2M - 1

_STEP_NPF = -1
"""Status recorded by :meth:`Rmp.pvalidate_range` and :meth:`Rmp.pvalidate_pfns` for a step that raises #NPF in the
single-page instruction."""

_F_IMM_2M = F_IMMUTABLE | F_SIZE2M
_F_OWNER = F_ASSIGNED | F_IMMUTABLE | F_SIZE2M
_F_GUEST_OK = F_ASSIGNED | F_IMMUTABLE | F_VALIDATED
_CLEAR_VALIDATED = np.uint8(0xFF & ~F_VALIDATED)
_CLEAR_SIZE2M = np.uint8(0xFF & ~F_SIZE2M)
_PAGE_MASK = PAGE_SIZE - 1
_SIZE_2M_BYTES = PAGES_PER_2M * PAGE_SIZE

# Pre-built results returned by the single-page fast paths (immutable objects: equal to freshly made ones).
_SUCCESS = RmpStatus.SUCCESS
_FAIL_INPUT = RmpStatus.FAIL_INPUT
_FAIL_PERMISSION = RmpStatus.FAIL_PERMISSION
_FAIL_INUSE = RmpStatus.FAIL_INUSE
_FAIL_OVERLAP = RmpStatus.FAIL_OVERLAP
_FAIL_SIZEMISMATCH = RmpStatus.FAIL_SIZEMISMATCH
_FAIL_BADADDR = RmpStatus.FAIL_BADADDR
_K4 = PageSize.SIZE_4K
_M2 = PageSize.SIZE_2M
_OK_CF = (RmpStatus.SUCCESS, True)
_OK_NO_CF = (RmpStatus.SUCCESS, False)
_EMPTY_ENTRY = RmpEntry()
_PERMS_ASSIGNED = (PERM_ALL, 0, 0, 0)
_PERMS_NONE = (0, 0, 0, 0)
_PF_RMP_WRITE = PF_PRESENT | PF_WRITE | PF_RMP

#: Pages per block of :meth:`Rmp.pvalidate_range` at 4K (a block's arrays stay in cache between its passes) and of
#: the scattered-PFN loops (their Python lists of frame numbers stay small).
_BLOCK = 1 << 15


def _entry_builder() -> bool:
    """Whether :class:`RmpEntry` is the frozen slotted dataclass whose slots :meth:`Rmp.rmpread` fills directly
    (8 slot-descriptor calls are ~2x faster than the frozen dataclass ``__init__``, which goes through
    ``object.__setattr__`` per field); checked once at import, else rmpread calls the constructor."""
    names = ("assigned", "page_size", "immutable", "gpa", "asid", "vmsa", "validated", "vmpl_perms")
    try:
        if tuple(f.name for f in fields(RmpEntry)) != names:
            return False
        setters = [RmpEntry.__dict__[n].__set__ for n in names]
        if not all(type(RmpEntry.__dict__[n]).__name__ == "member_descriptor" for n in names):
            return False
        sample = (True, _M2, True, 0x5000, 7, True, False, (1, 2, 3, 4))
        e = object.__new__(RmpEntry)
        for s, v in zip(setters, sample, strict=True):
            s(e, v)
        return e == RmpEntry(*sample)
    except (KeyError, AttributeError, TypeError):  # pragma: no cover - RmpEntry changed shape
        return False


_FAST_ENTRY = _entry_builder()
_new_entry = object.__new__
_d = RmpEntry.__dict__
if _FAST_ENTRY:
    _set_assigned = _d["assigned"].__set__
    _set_page_size = _d["page_size"].__set__
    _set_immutable = _d["immutable"].__set__
    _set_gpa = _d["gpa"].__set__
    _set_asid = _d["asid"].__set__
    _set_vmsa = _d["vmsa"].__set__
    _set_validated = _d["validated"].__set__
    _set_vmpl_perms = _d["vmpl_perms"].__set__
del _d


#: Per flag byte: (assigned, page_size, immutable, vmsa, validated, VMPL masks without RMPADJUST) as RMPREAD
#: reports them (pre-built, so that reading an entry computes nothing per field).
_FLAG_FIELDS = [
    (
        bool(f & F_ASSIGNED),
        _M2 if f & F_SIZE2M else _K4,
        bool(f & F_IMMUTABLE),
        bool(f & F_VMSA),
        bool(f & F_VALIDATED),
        _PERMS_ASSIGNED if f & F_ASSIGNED else _PERMS_NONE,
    )
    for f in range(256)
]


class _Segment:
    """RMP entries of one 1 GiB segment (struct-of-arrays).

    The numpy arrays serve the vectorised operations; ``fv``/``ov``/``av``/``rv`` are memoryviews of the same
    memory for the per-page instructions (made when the segment is allocated; they add no storage). ``uv`` is
    ``fv`` while the single-page RMPUPDATE may take its fast path here, None while the segment has VMPL masks
    or in-use pages (see :meth:`Rmp._refresh_fast`).
    """

    __slots__ = ("asid", "av", "flags", "fv", "gofs", "npages", "ov", "perms", "region_assigned", "rv", "uv")

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.flags = lazy_zeros(npages, np.uint8)
        #: GFN minus the page's index in the segment ("GFN offset"). Range operations and 2M entries bind runs of
        #: pages to consecutive GFNs, which is one value here: range writes are fills, range checks min/max.
        #: Every entry starts with GFN 0, i.e. offset -index.
        self.gofs = np.arange(0, -npages, -1, dtype=np.int64)
        self.asid = lazy_zeros(npages, np.uint32)
        #: VMPL1..3 permission masks, allocated on first RMPADJUST.
        self.perms: npt.NDArray[np.uint8] | None = None
        #: assigned 4K pages per 2M region (for O(1) large-mapping checks).
        self.region_assigned = np.zeros((npages + _2M_MASK) // PAGES_PER_2M, dtype=np.int32)
        self._make_views()

    def _make_views(self) -> None:
        self.fv = self.flags.data
        self.ov = self.gofs.data
        self.av = self.asid.data
        self.rv = self.region_assigned.data
        self.uv: memoryview | None = self.fv

    def __getstate__(self) -> tuple[object, ...]:
        fast = self.uv is not None
        return (self.npages, self.flags, self.gofs, self.asid, self.perms, self.region_assigned, fast)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        self.npages, self.flags, self.gofs, self.asid, self.perms, self.region_assigned, fast = state  # type: ignore[assignment]
        self._make_views()
        if not fast:
            self.uv = None


def _or_flags(fl: npt.NDArray[np.uint8]) -> int:
    """Bitwise OR of all flag bytes (0 for an empty slice)."""
    return int(np.bitwise_or.reduce(fl)) if fl.size else 0


def _and_flags(fl: npt.NDArray[np.uint8]) -> int:
    """Bitwise AND of all flag bytes (0xFF for an empty slice)."""
    return int(np.bitwise_and.reduce(fl)) if fl.size else 0xFF


def _runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of True in a 1-D boolean mask."""
    if not mask.size:
        return []
    if mask.all():
        return [(0, mask.size)]
    edges = np.flatnonzero(np.diff(mask.astype(np.int8), prepend=0, append=0))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def _page_pairs(pfns: npt.NDArray[np.int64], gfns: npt.NDArray[np.int64]) -> Iterator[tuple[int, int, int]]:
    """``(k, pfns[k], gfns[k])`` as Python ints, in order, a block at a time; ValueError unless both are 1-D arrays
    of one length."""
    if pfns.ndim != 1 or gfns.shape != pfns.shape:
        raise ValueError(f"pfns and gfns must be 1-D arrays of one length, got shapes {pfns.shape}, {gfns.shape}")
    for a in range(0, pfns.size, _BLOCK):
        yield from zip(itertools.count(a), pfns[a : a + _BLOCK].tolist(), gfns[a : a + _BLOCK].tolist())


@dataclass(frozen=True, slots=True)
class _Chunk:
    """A piece of a page range that lies inside one segment."""

    seg: int
    lo: int  # first page index inside the segment
    hi: int  # one past the last
    off: int  # index of ``lo`` inside the caller's range


class Rmp:
    """The RMP covering SPA ``[0, npages * 4096)``; every entry starts hypervisor-owned (all zero)."""

    def __init__(self, npages: int) -> None:
        if npages < 0:
            raise ValueError("npages must be >= 0")
        self.npages = int(npages)
        nseg = (self.npages + _SEG_MASK) >> SEGMENT_SHIFT
        self._segs: list[_Segment | None] = [None] * nseg
        self._in_use: set[int] = set()
        #: Instructions executed (successful or not), for the cost model and metrics.
        self.rmpupdate_count = 0
        self.psmash_count = 0
        self.pvalidate_count = 0
        self.rmpadjust_count = 0
        #: the RMPOPT table (:meth:`enable_rmpopt`): one row per CPU, one bit per 1 GiB region; None: no RMPOPT
        self.rmpopt_table: npt.NDArray[np.bool_] | None = None
        #: some bit of :attr:`rmpopt_table` is set (assigning RMPUPDATEs then clear bits)
        self._rmpopt_live = False
        self.rmpopt_count = 0

    # ------------------------------------------------------------------ RMPOPT
    def enable_rmpopt(self, ncpus: int) -> None:
        """The CPU supports RMPOPT (``X86_FEATURE_RMPOPT``): a per-CPU RMPOPT table of one bit per 1 GiB region
        of the RMP, all clear (RMPOPT v4 cover letter: "RMPOPT table is a per-CPU table which indicates if 1GB
        regions of physical memory are entirely hypervisor-owned or not"; a 1 GiB region is a segment here)."""
        if ncpus < 1:
            raise ValueError("ncpus must be >= 1")
        self.rmpopt_table = np.zeros((int(ncpus), len(self._segs)), dtype=bool)
        self._rmpopt_live = False

    def _region_hv_owned(self, region: int) -> bool:
        seg = self._segs[region] if 0 <= region < len(self._segs) else None
        return seg is None or not seg.region_assigned.any()

    def rmpopt(self, spa: int, function: int, cpu: int) -> bool:
        """RMPOPT (``F2 0F 01 FC``) executed on ``cpu`` for the 1 GiB region holding ``spa`` (RAX, aligned down to
        1 GiB as the kernel's ``(u64)val & PUD_MASK``), function in RCX bit 0. ``RMPOPT_FUNC_VERIFY_AND_REPORT_STATUS``
        (0): "the CPU will read the RMP contents, verify the entire 1GB region starting at the provided SPA is
        HV-owned ... and then accordingly updates the RMPOPT table"; ``RMPOPT_FUNC_REPORT_STATUS`` (1): "returns
        the optimization status for the 1GB region" (RMPOPT v4 cover letter). Returns the region's bit on ``cpu``
        afterwards. Needs :meth:`enable_rmpopt`."""
        table = self.rmpopt_table
        if table is None:
            raise ValueError("RMPOPT is not enabled (enable_rmpopt)")
        self.rmpopt_count += 1
        region = spa >> (SEGMENT_SHIFT + PAGE_SHIFT)
        if not 0 <= region < table.shape[1]:
            return False
        if function == RMPOPT_FUNC_VERIFY_AND_REPORT_STATUS:
            ok = self._region_hv_owned(region)
            table[cpu, region] = ok
            self._rmpopt_live = self._rmpopt_live or ok
        return bool(table[cpu, region])

    def rmpopt_regions_all_cpus(self) -> npt.NDArray[np.bool_]:
        """Per 1 GiB region: its RMPOPT bit is set on every CPU (host writes there skip the RMP check on any CPU)."""
        if self.rmpopt_table is None:
            return np.zeros(len(self._segs), dtype=bool)
        return self.rmpopt_table.all(axis=0)  # type: ignore[return-value]

    def _rmpopt_clear(self, pfns: npt.NDArray[np.int64] | int) -> None:
        """rmpopt-clear: the regions of these frames, just assigned, lose their bit on every CPU."""
        assert self.rmpopt_table is not None
        regions = np.asarray(pfns, dtype=np.int64) >> SEGMENT_SHIFT
        self.rmpopt_table[:, regions[(regions >= 0) & (regions < self.rmpopt_table.shape[1])]] = False
        self._rmpopt_live = bool(self.rmpopt_table.any())

    # ------------------------------------------------------------------ storage
    def _seg(self, pfn: int) -> _Segment | None:
        return self._segs[pfn >> SEGMENT_SHIFT]

    def _seg_w(self, pfn: int) -> _Segment:
        i = pfn >> SEGMENT_SHIFT
        seg = self._segs[i]
        if seg is None:
            seg = _Segment(min(SEGMENT_PAGES, self.npages - (i << SEGMENT_SHIFT)))
            self._segs[i] = seg
            if self._in_use:
                self._refresh_fast(i)
        return seg

    def _refresh_fast(self, s: int) -> None:
        """Enable RMPUPDATE's fast path on segment ``s`` unless it has VMPL masks or an in-use page."""
        seg = self._segs[s] if 0 <= s < len(self._segs) else None
        if seg is not None:
            slow = seg.perms is not None or any(p >> SEGMENT_SHIFT == s for p in self._in_use)
            seg.uv = None if slow else seg.fv

    def _chunks(self, pfn: int, n: int) -> Iterator[_Chunk]:
        """Split the in-table part of ``[pfn, pfn+n)`` at segment boundaries."""
        end = min(pfn + n, self.npages)
        p = pfn
        while p < end:
            s = p >> SEGMENT_SHIFT
            stop = min(end, (s + 1) << SEGMENT_SHIFT)
            yield _Chunk(s, p & _SEG_MASK, stop - (s << SEGMENT_SHIFT), p - pfn)
            p = stop

    @property
    def allocated_bytes(self) -> int:
        """Bytes of numpy storage held by allocated segments (the memoryviews over it add none)."""
        total = 0
        for seg in self._segs:
            if seg is not None:
                total += seg.flags.nbytes + seg.gofs.nbytes + seg.asid.nbytes + seg.region_assigned.nbytes
                total += 0 if seg.perms is None else seg.perms.nbytes
        return total

    def assigned_size(self, pfn: int) -> PageSize | None:
        """The page size of ``pfn``'s entry if it is assigned, else None (a cheap :meth:`rmpread` for the kernel's
        page-by-page paths)."""
        f = self._flags(pfn)
        return None if not f & F_ASSIGNED else PageSize.SIZE_2M if f & F_SIZE2M else PageSize.SIZE_4K

    def _flags(self, pfn: int) -> int:
        if 0 <= pfn < self.npages:
            seg = self._segs[pfn >> SEGMENT_SHIFT]
            if seg is not None:
                return seg.fv[pfn & _SEG_MASK]  # type: ignore[no-any-return]
        return 0

    # ------------------------------------------------------------------ VMRUN in-use marks
    def mark_in_use(self, spa: int) -> None:
        """VMRUN marks the VMCB, VMSA and AVIC backing pages in use (APM Table 15-41)."""
        self._in_use.add(spa >> PAGE_SHIFT)
        self._refresh_fast(spa >> PAGE_SHIFT >> SEGMENT_SHIFT)

    def clear_in_use(self, spa: int) -> None:
        """#VMEXIT clears the in-use mark."""
        self._in_use.discard(spa >> PAGE_SHIFT)
        self._refresh_fast(spa >> PAGE_SHIFT >> SEGMENT_SHIFT)

    def _any_in_use(self, pfn: int, n: int) -> bool:
        return bool(self._in_use) and any(pfn <= p < pfn + n for p in self._in_use)

    def _in_use_between(self, lo: int, hi: int) -> list[int]:
        """In-use PFNs in ``[lo, hi)``."""
        return [p for p in self._in_use if lo <= p < hi] if self._in_use else []

    # ------------------------------------------------------------------ RMPREAD
    def rmpread(self, spa: int) -> RmpEntry:
        """RMPREAD: the entry that governs the 4K page containing ``spa`` (hypervisor-owned beyond the table)."""
        pfn = spa >> PAGE_SHIFT
        if pfn < 0:
            return _EMPTY_ENTRY
        try:
            seg = self._segs[pfn >> SEGMENT_SHIFT]
            if seg is None:  # an untouched segment
                return _EMPTY_ENTRY
            i = pfn & _SEG_MASK
            f = seg.fv[i]
        except IndexError:  # beyond the table
            return _EMPTY_ENTRY
        gfn = seg.ov[i] + i
        asid = seg.av[i]
        assigned, page_size, immutable, vmsa, validated, perms_ = _FLAG_FIELDS[f]
        perms: tuple[int, ...] = perms_
        if seg.perms is None:
            if not (f | gfn | asid):
                return _EMPTY_ENTRY
            if _FAST_ENTRY:
                e = _new_entry(RmpEntry)
                _set_assigned(e, assigned)
                _set_page_size(e, page_size)
                _set_immutable(e, immutable)
                _set_gpa(e, gfn << PAGE_SHIFT)
                _set_asid(e, asid)
                _set_vmsa(e, vmsa)
                _set_validated(e, validated)
                _set_vmpl_perms(e, perms)
                return e  # type: ignore[no-any-return]
        else:
            perms = (perms[0], *(int(x) for x in seg.perms[i]))
        return RmpEntry(
            assigned=assigned,
            page_size=page_size,
            immutable=immutable,
            gpa=gfn << PAGE_SHIFT,
            asid=asid,
            vmsa=vmsa,
            validated=validated,
            vmpl_perms=perms,
        )

    def region_status(self, spa: int) -> bool:
        """RMPREAD's 2MB-region status: ``spa`` is 2M-aligned and another page of its 2M range is assigned."""
        pfn = spa >> PAGE_SHIFT
        if pfn & _2M_MASK or spa & _PAGE_MASK:
            return False
        own = 1 if self._flags(pfn) & F_ASSIGNED else 0
        return self.assigned_in_2m(pfn) - own > 0

    def assigned_in_2m(self, pfn: int) -> int:
        """Number of assigned 4K pages in the 2M range containing ``pfn`` (0 beyond the table)."""
        if 0 <= pfn < self.npages:
            seg = self._segs[pfn >> SEGMENT_SHIFT]
            if seg is not None:
                return seg.rv[(pfn & _SEG_MASK) >> 9]  # type: ignore[no-any-return]
        return 0

    def assigned_in_2m_of(self, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.int32]:
        """Vectorised :meth:`assigned_in_2m` for an array of PFNs."""
        return self._gather(np.asarray(pfns, dtype=np.int64), np.int32, lambda seg, i, _: seg.region_assigned[i >> 9])

    def _gather(
        self,
        pfns: npt.NDArray[np.int64],
        dtype: Any,
        read: Callable[[_Segment, npt.NDArray[np.int64], npt.NDArray[np.int64]], npt.NDArray[Any]],
    ) -> npt.NDArray[Any]:
        """Per-PFN values ``read(segment, offsets in it, positions in pfns)``, one call per allocated segment; 0
        for PFNs beyond the table or in an untouched segment (a hypervisor-owned entry)."""
        out = np.zeros(pfns.shape, dtype=dtype)
        inside = np.flatnonzero((pfns >= 0) & (pfns < self.npages))
        sub = pfns[inside]
        for s, sel in by_segment(sub, SEGMENT_SHIFT):
            seg = self._segs[s]
            if seg is not None:
                k = inside[sel]
                out[k] = read(seg, sub[sel] & _SEG_MASK, k)
        return out

    def assigned_pages(self, pfn: int, n: int) -> npt.NDArray[np.int64]:
        """PFNs of the assigned pages in ``[pfn, pfn+n)``."""
        out = []
        for c in self._chunks(pfn, n):
            seg = self._segs[c.seg]
            if seg is not None and seg.region_assigned[c.lo >> 9 : ((c.hi - 1) >> 9) + 1].any():
                idx = np.flatnonzero(seg.flags[c.lo : c.hi] & F_ASSIGNED)
                out.append(idx + (c.seg << SEGMENT_SHIFT) + c.lo)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def assigned_mask(self, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Vectorised ``rmpread(pfn).assigned`` for an array of PFNs (False beyond the table)."""
        return (self._flags_of(pfns) & F_ASSIGNED) != 0

    def assigned_2m_mask(self, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Vectorised ``rmpread(pfn)`` is an assigned 2M entry, for an array of PFNs (False beyond the table)."""
        return (self._flags_of(pfns) & (F_ASSIGNED | F_SIZE2M)) == F_ASSIGNED | F_SIZE2M

    def _flags_of(self, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
        """The flags byte of each PFN's entry (0 beyond the table or in an untouched segment)."""
        return self._gather(pfns, np.uint8, lambda seg, i, _: seg.flags[i])

    def assigned_count(self) -> int:
        """Assigned 4K pages in the whole table."""
        return sum(int(s.region_assigned.sum()) for s in self._segs if s is not None)

    # ------------------------------------------------------------------ RMPUPDATE
    @staticmethod
    def _rmpupdate_args_bad(
        spa: int, page_size: PageSize | int, gpa: int, assigned: bool, asid: int, immutable: bool
    ) -> bool:
        """Input errors that do not depend on where the page lies (rmpupdate-input)."""
        if page_size not in (_K4, _M2):
            return True
        if spa < 0 or gpa < 0 or asid < 0 or spa & _PAGE_MASK or gpa & _PAGE_MASK:
            return True
        if not assigned and (asid != 0 or immutable):
            return True
        return page_size == _M2 and bool((spa | gpa) & (_SIZE_2M_BYTES - 1))

    def rmpupdate(
        self,
        spa: int,
        *,
        assigned: bool,
        page_size: PageSize | int = PageSize.SIZE_4K,
        gpa: int = 0,
        asid: int = 0,
        immutable: bool = False,
    ) -> RmpStatus:
        """RMPUPDATE: write the RMP entry of the page at ``spa`` (4K) or of the 2M page at ``spa`` (2M)."""
        self.rmpupdate_count += 1
        # Fast path: a 4K request with aligned non-negative addresses on a page of an allocated segment without
        # VMPL masks or in-use pages (``uv``), holding neither an immutable nor a 2M entry. Everything else takes
        # the general path: a missing segment, a page beyond the table or ``uv`` None raise inside the ``try``
        # (free in CPython 3.11 unless raised), a negative or too large ASID makes the memoryview refuse it before
        # anything is written. ``not gpa >> 63``: 0 <= gpa < 2**63, so the GFN offset always fits. (Separate
        # small-mask tests are cheaper than one test of ``spa | gpa``, which allocates a big int.)
        if (
            (page_size is _K4 or page_size == 0)
            and not spa & _PAGE_MASK
            and not gpa & _PAGE_MASK
            and spa >= 0
            and not gpa >> 63
        ):
            pfn = spa >> PAGE_SHIFT
            try:
                # None (untouched segment) raises AttributeError on the next lines, ``uv`` None TypeError
                seg: _Segment = self._segs[pfn >> SEGMENT_SHIFT]  # type: ignore[assignment]
                i = pfn & _SEG_MASK
                uv: memoryview = seg.uv  # type: ignore[assignment]
                f = uv[i]
            except (IndexError, AttributeError, TypeError):
                f = _F_IMM_2M
            if not f & _F_IMM_2M:
                if assigned:
                    try:
                        seg.av[i] = asid
                    except ValueError:  # negative (FAIL_INPUT) or beyond uint32 (numpy's OverflowError)
                        return self._rmpupdate_opt(spa, assigned, page_size, gpa, asid, immutable)
                    if not f & F_ASSIGNED:
                        seg.rv[i >> 9] += 1
                    if self._rmpopt_live:
                        self._rmpopt_clear(pfn)
                    uv[i] = (F_ASSIGNED | F_IMMUTABLE) if immutable else F_ASSIGNED
                elif asid or immutable:
                    return _FAIL_INPUT
                else:
                    seg.av[i] = 0
                    if f & F_ASSIGNED:
                        seg.rv[i >> 9] -= 1
                    uv[i] = 0
                seg.ov[i] = (gpa >> PAGE_SHIFT) - i
                return _SUCCESS
        return self._rmpupdate_opt(spa, assigned, page_size, gpa, asid, immutable)

    def _rmpupdate_opt(
        self, spa: int, assigned: bool, page_size: PageSize | int, gpa: int, asid: int, immutable: bool
    ) -> RmpStatus:
        """The general RMPUPDATE, then rmpopt-clear for a successful assigning one."""
        status = self._rmpupdate(spa, assigned, page_size, gpa, asid, immutable)
        if assigned and status == _SUCCESS and self._rmpopt_live:
            self._rmpopt_clear(spa >> PAGE_SHIFT)
        return status

    def _rmpupdate(
        self, spa: int, assigned: bool, page_size: PageSize | int, gpa: int, asid: int, immutable: bool
    ) -> RmpStatus:
        """The general RMPUPDATE (not counted)."""
        pfn = spa >> PAGE_SHIFT
        if self._rmpupdate_args_bad(spa, page_size, gpa, assigned, asid, immutable) or (
            pfn + (PAGES_PER_2M if page_size == _M2 else 1) > self.npages
        ):
            return _FAIL_INPUT
        if page_size == _M2:
            return self._rmpupdate_2m(pfn, gpa >> PAGE_SHIFT, assigned, asid, immutable)
        if self._in_use and pfn in self._in_use:
            return _FAIL_INUSE
        seg = self._seg_w(pfn)
        i = pfn & _SEG_MASK
        f = int(seg.flags[i])
        if f & F_IMMUTABLE:
            return _FAIL_PERMISSION
        if f & F_SIZE2M:
            if f & F_ASSIGNED:
                return _FAIL_OVERLAP
            head = i & ~_2M_MASK
            seg.flags[head : head + PAGES_PER_2M] &= _CLEAR_SIZE2M  # rmpupdate-demote
        if f & F_ASSIGNED:
            seg.region_assigned[i >> 9] -= 1
        if assigned:
            seg.region_assigned[i >> 9] += 1
        seg.flags[i] = (F_ASSIGNED if assigned else 0) | (F_IMMUTABLE if immutable else 0)
        seg.gofs[i] = (gpa >> PAGE_SHIFT) - i
        seg.asid[i] = asid
        if seg.perms is not None:
            seg.perms[i] = 0
        return _SUCCESS

    def _rmpupdate_2m(self, pfn: int, gfn: int, assigned: bool, asid: int, immutable: bool) -> RmpStatus:
        if self._any_in_use(pfn, PAGES_PER_2M):
            return _FAIL_INUSE
        seg = self._seg_w(pfn)
        i = pfn & _SEG_MASK
        fl = seg.flags[i : i + PAGES_PER_2M]
        if _or_flags(fl) & F_IMMUTABLE:
            return _FAIL_PERMISSION
        if not fl[0] & F_SIZE2M and seg.region_assigned[i >> 9] - (fl[0] & F_ASSIGNED) > 0:
            return _FAIL_OVERLAP  # another of the 511 entries is assigned
        newf = F_SIZE2M | (F_ASSIGNED if assigned else 0) | (F_IMMUTABLE if immutable else 0)
        self._write_run(seg, i, i + PAGES_PER_2M, gfn, newf, asid)
        seg.region_assigned[i >> 9] = PAGES_PER_2M if assigned else 0
        return _SUCCESS

    @staticmethod
    def _write_run(seg: _Segment, lo: int, hi: int, gfn: int, newf: int, asid: int) -> None:
        """Write entries ``[lo, hi)`` of ``seg``: flags ``newf``, consecutive GFNs from ``gfn``, ``asid``, VMPL
        masks reset (rmpupdate-clears). ``region_assigned`` is the caller's."""
        seg.flags[lo:hi] = newf
        seg.gofs[lo:hi] = gfn - lo
        seg.asid[lo:hi] = asid
        if seg.perms is not None:
            seg.perms[lo:hi] = 0

    def rmpupdate_range(
        self,
        spa: int,
        npages: int,
        *,
        assigned: bool,
        page_size: PageSize | int = PageSize.SIZE_4K,
        gpa: int = 0,
        asid: int = 0,
        immutable: bool = False,
    ) -> npt.NDArray[np.int64]:
        """Vectorised RMPUPDATE over ``npages`` 4K pages from ``spa``, stepping 4K or 2M by ``page_size``.

        Equivalent to calling :meth:`rmpupdate` for each step in ascending order (step ``k`` at
        ``spa + k*step``, ``gpa + k*step``); returns the per-step status codes. Steps are independent: a
        4K step only reads its own entry and the demotable 2M entry around it, so all checks are taken on the
        initial state and the successful steps are then written together.
        """
        step = PAGES_PER_2M if page_size == _M2 else 1
        nsteps = max(0, -(-npages // step))
        self.rmpupdate_count += nsteps
        status = np.zeros(nsteps, dtype=np.int64)
        if self._rmpupdate_args_bad(spa, page_size, gpa, assigned, asid, immutable):
            status[:] = _FAIL_INPUT
            return status
        pfn0 = spa >> PAGE_SHIFT
        gfn0 = gpa >> PAGE_SHIFT
        # Steps whose pages fall (partly) beyond the table fail with FAIL_INPUT.
        in_table = max(0, min(nsteps, (self.npages - pfn0) // step)) if pfn0 < self.npages else 0
        status[in_table:] = _FAIL_INPUT
        if in_table == 0:
            return status
        if step == PAGES_PER_2M:
            self._rmpupdate_range_2m(pfn0, gfn0, in_table, status, assigned, asid, immutable)
        else:
            self._rmpupdate_range_4k(pfn0, gfn0, in_table, status, assigned, asid, immutable)
        if assigned and self._rmpopt_live:
            self._rmpopt_clear(pfn0 + np.flatnonzero(status == _SUCCESS) * step)
        return status

    def _rmpupdate_range_4k(
        self,
        pfn0: int,
        gfn0: int,
        n: int,
        status: npt.NDArray[np.int64],
        assigned: bool,
        asid: int,
        immutable: bool,
    ) -> None:
        """4K steps on the in-table pages ``[pfn0, pfn0+n)`` (``status`` all SUCCESS on entry).

        Per segment chunk: when no page is in use and none holds an immutable or 2M entry, every step succeeds
        and the chunk is written with slice operations. Otherwise the steps in the 2M regions holding such a page
        are the general RMPUPDATE, page by page (their outcome depends only on entries of the same region), and
        the rest is written with slices as before.
        """
        newf = (F_ASSIGNED if assigned else 0) | (F_IMMUTABLE if immutable else 0)
        for c in self._chunks(pfn0, n):
            seg = self._seg_w(c.seg << SEGMENT_SHIFT)
            base = c.seg << SEGMENT_SHIFT
            lo, hi = c.lo, c.hi
            g_lo = gfn0 + c.off
            in_use = self._in_use_between(base + lo, base + hi)
            fl = seg.flags[lo:hi]
            if not in_use and not _or_flags(fl) & _F_IMM_2M:
                self._write_4k_run(seg, lo, hi, g_lo, newf, asid)
                continue
            special = np.flatnonzero(fl & _F_IMM_2M) + lo
            if in_use:
                special = np.concatenate([special, np.array(in_use, dtype=np.int64) - base])
            r_first = lo >> 9
            dirty = np.zeros(((hi - 1) >> 9) - r_first + 1, dtype=bool)
            dirty[(special >> 9) - r_first] = True
            for a, b in _runs(~dirty):
                run_lo, run_hi = max(lo, (r_first + a) << 9), min(hi, (r_first + b) << 9)
                self._write_4k_run(seg, run_lo, run_hi, g_lo + run_lo - lo, newf, asid)
            idx = np.flatnonzero(np.repeat(dirty, PAGES_PER_2M)[lo - (r_first << 9) : hi - (r_first << 9)])
            for k in idx.tolist():
                spa, gpa = (base + lo + k) << PAGE_SHIFT, (g_lo + k) << PAGE_SHIFT
                status[c.off + k] = self._rmpupdate(spa, assigned, _K4, gpa, asid, immutable)

    @staticmethod
    def _write_4k_run(seg: _Segment, lo: int, hi: int, gfn: int, newf: int, asid: int) -> None:
        """Successful 4K RMPUPDATEs of ``[lo, hi)`` (no in-use, immutable or 2M entry among them)."""
        ra = seg.region_assigned
        new = PAGES_PER_2M if newf & F_ASSIGNED else 0
        full_lo, full_hi = (lo + _2M_MASK) >> 9, hi >> 9  # 2M regions wholly inside [lo, hi)
        if full_lo > full_hi:  # [lo, hi) lies inside one 2M region
            edges = [(lo, hi)]
        else:
            ra[full_lo:full_hi] = new
            edges = [(lo, full_lo << 9), (full_hi << 9, hi)]
        for a, b in edges:  # partial 2M regions: count what was assigned before the write
            if a < b:
                ra[a >> 9] += (b - a if new else 0) - int(np.count_nonzero(seg.flags[a:b] & F_ASSIGNED))
        Rmp._write_run(seg, lo, hi, gfn, newf, asid)

    def rmpupdate_pfns(
        self,
        pfns: npt.NDArray[np.int64],
        gfns: npt.NDArray[np.int64] | None = None,
        *,
        assigned: bool,
        asid: int = 0,
        immutable: bool = False,
    ) -> npt.NDArray[np.int64]:
        """4K RMPUPDATE of *distinct* PFNs (any order), page ``k`` bound to ``gfns[k]`` (GFN 0 without ``gfns``);
        the per-page status codes.

        The loop of :meth:`rmpupdate` at 4K over the pages, in order, which is the definition (a PFN < 0 or beyond
        the table, or a GFN < 0, is that instruction's FAIL_INPUT; each step is counted in ``rmpupdate_count``, and
        an assigning one clears its RMPOPT region). Steps on distinct pages are independent (a 4K step reads its own
        entry and the demotable 2M entry around it, see :meth:`rmpupdate_range`), so the order does not change the
        result. ValueError (before any step) unless ``pfns`` and ``gfns`` are 1-D arrays of one length.
        """
        pfns = np.asarray(pfns, dtype=np.int64)
        gfns = np.zeros_like(pfns) if gfns is None else np.asarray(gfns, dtype=np.int64)
        status = np.empty(pfns.size, dtype=np.int64)
        for k, p, g in _page_pairs(pfns, gfns):
            status[k] = self.rmpupdate(
                p << PAGE_SHIFT, assigned=assigned, gpa=g << PAGE_SHIFT, asid=asid, immutable=immutable
            )
        return status

    def _rmpupdate_range_2m(
        self,
        pfn0: int,
        gfn0: int,
        nsteps: int,
        status: npt.NDArray[np.int64],
        assigned: bool,
        asid: int,
        immutable: bool,
    ) -> None:
        """2M steps on whole in-table 2M regions from the 2M-aligned ``pfn0`` (``status`` all SUCCESS on entry).

        The checks of a step read its own region only (in use, any immutable page, and for a region that is
        not a 2M entry any assigned page but the head: ``region_assigned`` minus the head), so they are taken
        per region on the initial state; runs of successful regions are then written with slices.
        """
        newf = F_SIZE2M | (F_ASSIGNED if assigned else 0) | (F_IMMUTABLE if immutable else 0)
        in_use_steps = [(p - pfn0) >> 9 for p in self._in_use_between(pfn0, pfn0 + nsteps * PAGES_PER_2M)]
        for c in self._chunks(pfn0, nsteps * PAGES_PER_2M):
            seg = self._seg_w(c.seg << SEGMENT_SHIFT)
            r0, nreg, reg_lo = c.off >> 9, (c.hi - c.lo) >> 9, c.lo >> 9
            fl = seg.flags[c.lo : c.hi]
            heads = fl[::PAGES_PER_2M]
            st = status[r0 : r0 + nreg]
            others = seg.region_assigned[reg_lo : reg_lo + nreg] - (heads & F_ASSIGNED)
            st[((heads & F_SIZE2M) == 0) & (others > 0)] = _FAIL_OVERLAP
            if _or_flags(fl) & F_IMMUTABLE:
                st[(fl.reshape(nreg, PAGES_PER_2M) & F_IMMUTABLE).any(axis=1)] = _FAIL_PERMISSION
            st[[r - r0 for r in in_use_steps if r0 <= r < r0 + nreg]] = _FAIL_INUSE
            for a, b in _runs(st == _SUCCESS):
                lo, hi = c.lo + a * PAGES_PER_2M, c.lo + b * PAGES_PER_2M
                self._write_run(seg, lo, hi, gfn0 + c.off + a * PAGES_PER_2M, newf, asid)
                seg.region_assigned[reg_lo + a : reg_lo + b] = PAGES_PER_2M if assigned else 0

    # ------------------------------------------------------------------ PSMASH
    def psmash(self, spa: int) -> RmpStatus:
        """PSMASH: split the assigned 2M entry at 2M-aligned ``spa`` into 512 4K entries (fields preserved)."""
        self.psmash_count += 1
        pfn = spa >> PAGE_SHIFT
        if spa < 0 or spa & (_SIZE_2M_BYTES - 1) or pfn + PAGES_PER_2M > self.npages:
            return _FAIL_INPUT
        if self._in_use and self._any_in_use(pfn, PAGES_PER_2M):
            return _FAIL_INUSE
        seg = self._segs[pfn >> SEGMENT_SHIFT]
        i = pfn & _SEG_MASK
        if seg is None or (seg.fv[i] & (F_ASSIGNED | F_SIZE2M)) != (F_ASSIGNED | F_SIZE2M):
            return _FAIL_BADADDR
        fl = seg.flags[i : i + PAGES_PER_2M]
        np.bitwise_and(fl, _CLEAR_SIZE2M, out=fl)
        return _SUCCESS

    def psmash_range(self, spa: int, npages: int) -> npt.NDArray[np.int64]:
        """One PSMASH per 2M step in ``[spa, spa + npages*4K)``; equivalent to a loop of :meth:`psmash`."""
        nsteps = max(0, -(-npages // PAGES_PER_2M))
        self.psmash_count += nsteps
        status = np.zeros(nsteps, dtype=np.int64)
        if spa < 0 or spa & (_SIZE_2M_BYTES - 1):
            status[:] = _FAIL_INPUT  # every step has the same misalignment
            return status
        pfn0 = spa >> PAGE_SHIFT
        in_table = max(0, min(nsteps, (self.npages - pfn0) // PAGES_PER_2M)) if pfn0 < self.npages else 0
        status[in_table:] = _FAIL_INPUT
        if in_table == 0:
            return status
        in_use_steps = [(p - pfn0) >> 9 for p in self._in_use_between(pfn0, pfn0 + in_table * PAGES_PER_2M)]
        status[:in_table] = _FAIL_BADADDR
        for c in self._chunks(pfn0, in_table * PAGES_PER_2M):
            seg = self._segs[c.seg]
            if seg is None:
                continue  # no 2M entry: FAIL_BADADDR
            r0, nreg = c.off >> 9, (c.hi - c.lo) >> 9
            fl = seg.flags[c.lo : c.hi]
            ok = (fl[::PAGES_PER_2M] & (F_ASSIGNED | F_SIZE2M)) == (F_ASSIGNED | F_SIZE2M)
            ok[[r - r0 for r in in_use_steps if r0 <= r < r0 + nreg]] = False
            status[r0 : r0 + nreg][ok] = _SUCCESS
            for a, b in _runs(ok):
                part = fl[a * PAGES_PER_2M : b * PAGES_PER_2M]
                np.bitwise_and(part, _CLEAR_SIZE2M, out=part)
        status[in_use_steps] = _FAIL_INUSE
        return status

    # ------------------------------------------------------------------ guest-side RMP checks
    def _owner_fault(self, pfn: int, f: int, asid: int, gpa: int) -> bool:
        """The first group of RMP checks (Covered, Guest-Owned, Reverse-Map, Mutable) fails."""
        if pfn >= self.npages or not f & F_ASSIGNED or f & F_IMMUTABLE:
            return True
        seg = self._segs[pfn >> SEGMENT_SHIFT]
        assert seg is not None
        i = pfn & _SEG_MASK
        return seg.av[i] != asid or seg.ov[i] + i != gpa >> PAGE_SHIFT  # type: ignore[no-any-return]

    def _guest_instr_checks(self, spa: int, asid: int, gpa: int, page_size: int) -> RmpStatus | None:
        """Checks shared by PVALIDATE and RMPADJUST (Table 15-40); raises #NPF, returns a failure or None."""
        pfn = spa >> PAGE_SHIFT
        f = self._flags(pfn)
        if self._owner_fault(pfn, f, asid, gpa):
            raise NestedPageFault(NPF_PRESENT | NPF_RMP | NPF_ENC, gpa, "RMP ownership check")
        if page_size == _K4 and f & F_SIZE2M:
            raise NestedPageFault(NPF_PRESENT | NPF_RMP | NPF_ENC | NPF_SIZEM, gpa, "4K request on 2M RMP entry")
        if page_size == _M2 and not f & F_SIZE2M:
            return _FAIL_SIZEMISMATCH
        return None

    @staticmethod
    def _guest_instr_input(spa: int, gpa: int, page_size: int) -> RmpStatus | None:
        """Input checks of PVALIDATE/RMPADJUST: the operand is a guest address, so a 2M request needs a 2M-aligned
        GPA (``guest-instr-align``); the SPA it translates to is not an input: a 2M request landing on a 4K RMP
        entry (e.g. through a 4K NPT mapping of a frame that is not 2M-aligned) fails the size check instead."""
        if page_size not in (_K4, _M2) or spa < 0 or gpa < 0:
            return _FAIL_INPUT
        if page_size == _M2 and gpa & (_SIZE_2M_BYTES - 1):
            return _FAIL_INPUT
        return None

    # ------------------------------------------------------------------ PVALIDATE
    def pvalidate(
        self, spa: int, *, asid: int, gpa: int, page_size: PageSize | int, validate: bool, vmpl: int = 0
    ) -> tuple[RmpStatus, bool]:
        """PVALIDATE executed by guest ``asid`` at ``gpa`` (translating to ``spa``); returns (status, CF).

        CF=1 means the Validated bit already had the requested value and nothing changed. A 4K request on a
        2M entry raises :class:`NestedPageFault` with RMP and SIZEM (the hypervisor PSMASHes, the guest
        retries); a 2M request on 4K entries returns FAIL_SIZEMISMATCH (the guest retries with 512 4K).
        """
        self.pvalidate_count += 1
        # Fast path: 4K at VMPL0 on an assigned, mutable 4K entry owned by (asid, gpa); else the general path.
        if (page_size is _K4 or page_size == 0) and not vmpl and spa >= 0 and gpa >= 0:
            pfn = spa >> PAGE_SHIFT
            try:
                seg: _Segment = self._segs[pfn >> SEGMENT_SHIFT]  # type: ignore[assignment]  # None: AttributeError
                i = pfn & _SEG_MASK
                fv = seg.fv
                f = fv[i]
            except (IndexError, AttributeError):
                f = 0
            if f & _F_OWNER == F_ASSIGNED and seg.av[i] == asid and seg.ov[i] + i == gpa >> PAGE_SHIFT:
                if validate:
                    if f & F_VALIDATED:
                        return _OK_CF
                    fv[i] = f | F_VALIDATED
                else:
                    if not f & F_VALIDATED:
                        return _OK_CF
                    fv[i] = f & ~F_VALIDATED
                return _OK_NO_CF
        return self._pvalidate(spa, asid, gpa, page_size, validate, vmpl)

    def _pvalidate(
        self, spa: int, asid: int, gpa: int, page_size: PageSize | int, validate: bool, vmpl: int
    ) -> tuple[RmpStatus, bool]:
        """The general PVALIDATE (not counted)."""
        spa &= ~_PAGE_MASK
        gpa &= ~_PAGE_MASK if page_size == _K4 else ~0
        bad = self._guest_instr_input(spa, gpa, page_size)
        if bad is not None:
            return bad, False
        if vmpl != 0:
            return _FAIL_PERMISSION, False  # pvalidate-vmpl
        bad = self._guest_instr_checks(spa, asid, gpa, page_size)
        if bad is not None:
            return bad, False
        pfn = spa >> PAGE_SHIFT
        seg = self._segs[pfn >> SEGMENT_SHIFT]
        assert seg is not None
        i = pfn & _SEG_MASK
        if bool(seg.fv[i] & F_VALIDATED) == bool(validate):
            return _OK_CF
        fl = seg.flags[i : i + PAGES_PER_2M] if page_size == _M2 else seg.flags[i : i + 1]
        if validate:
            np.bitwise_or(fl, F_VALIDATED, out=fl)
        else:
            np.bitwise_and(fl, _CLEAR_VALIDATED, out=fl)
        return _OK_NO_CF

    def pvalidate_range(
        self, spa: int, npages: int, *, asid: int, gpa: int, page_size: PageSize | int, validate: bool
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Vectorised PVALIDATE over ``npages`` 4K pages stepping by ``page_size``.

        Equivalent to a loop of :meth:`pvalidate`; a step that raises #NPF in the loop records status -1.
        Returns (status per step, CF per step).
        """
        step = PAGES_PER_2M if page_size == _M2 else 1
        nsteps = max(0, -(-npages // step))
        self.pvalidate_count += nsteps
        status = np.zeros(nsteps, dtype=np.int64)
        cf = np.zeros(nsteps, dtype=bool)
        spa &= ~_PAGE_MASK
        if page_size == _K4:
            gpa &= ~_PAGE_MASK
        bad = self._guest_instr_input(spa, gpa, page_size)
        if bad is not None:
            status[:] = bad
            return status, cf
        if step != 1 and spa & (_SIZE_2M_BYTES - 1):
            for k in range(nsteps):
                try:
                    st, c = self._pvalidate(
                        spa + k * _SIZE_2M_BYTES, asid, gpa + k * _SIZE_2M_BYTES, page_size, validate, 0
                    )
                    status[k], cf[k] = st, c
                except NestedPageFault:
                    status[k] = _STEP_NPF
            return status, cf
        pfn0, gfn0 = spa >> PAGE_SHIFT, gpa >> PAGE_SHIFT
        if step == 1:
            self._pvalidate_range_4k(pfn0, gfn0, nsteps, asid, bool(validate), status, cf)
        else:
            self._pvalidate_range_2m(pfn0, gfn0, nsteps, asid, bool(validate), status, cf)
        return status, cf

    def _pvalidate_range_4k(
        self,
        pfn0: int,
        gfn0: int,
        nsteps: int,
        asid: int,
        validate: bool,
        status: npt.NDArray[np.int64],
        cf: npt.NDArray[np.bool_],
    ) -> None:
        """4K steps from ``pfn0`` (``status`` all SUCCESS, ``cf`` all False on entry), in cache-sized blocks."""
        in_table = max(0, min(pfn0 + nsteps, self.npages) - pfn0)
        status[in_table:] = _STEP_NPF  # beyond the table: the Covered check fails
        for c in self._chunks(pfn0, nsteps):
            seg = self._segs[c.seg]
            if seg is None:
                status[c.off : c.off + c.hi - c.lo] = _STEP_NPF  # all hypervisor-owned
                continue
            for a in range(c.lo, c.hi, _BLOCK):
                b = min(a + _BLOCK, c.hi)
                k = c.off + a - c.lo
                self._pvalidate_block(seg, a, b, gfn0 + k, asid, validate, status[k : k + b - a], cf[k : k + b - a])

    @staticmethod
    def _pvalidate_block(
        seg: _Segment,
        a: int,
        b: int,
        gfn: int,
        asid: int,
        validate: bool,
        status: npt.NDArray[np.int64],
        cf: npt.NDArray[np.bool_],
    ) -> None:
        """4K PVALIDATE of pages ``[a, b)`` of ``seg`` bound to consecutive GFNs from ``gfn``."""
        fl = seg.flags[a:b]
        asids = seg.asid[a:b]
        gofs = seg.gofs[a:b]  # == gfn - a on every page bound to its GFN
        want = gfn - a
        if (
            _and_flags(fl) & F_ASSIGNED
            and not _or_flags(fl) & _F_IMM_2M
            and asids.min() == asid == asids.max()
            and gofs.min() == want == gofs.max()
        ):
            # Common case: every step passes the checks; CF = Validated already as requested.
            cf_u8 = cf.view(np.uint8)
            np.right_shift(fl, 4, out=cf_u8)  # F_VALIDATED is bit 4
            np.bitwise_and(cf_u8, 1, out=cf_u8)
            if validate:
                np.bitwise_or(fl, F_VALIDATED, out=fl)
            else:
                np.bitwise_xor(cf_u8, 1, out=cf_u8)
                np.bitwise_and(fl, _CLEAR_VALIDATED, out=fl)
            return
        ok = ((fl & _F_OWNER) == F_ASSIGNED) & (asids == asid) & (gofs == want)  # else #NPF (a 2M entry: SIZEM)
        status[~ok] = _STEP_NPF
        same = ((fl & F_VALIDATED) != 0) == validate
        np.logical_and(ok, same, out=cf)
        change = ok & ~same
        if validate:
            fl[change] |= np.uint8(F_VALIDATED)
        else:
            fl[change] &= _CLEAR_VALIDATED

    def _pvalidate_range_2m(
        self,
        pfn0: int,
        gfn0: int,
        nsteps: int,
        asid: int,
        validate: bool,
        status: npt.NDArray[np.int64],
        cf: npt.NDArray[np.bool_],
    ) -> None:
        """2M steps from the 2M-aligned ``pfn0``: the checks read the head entry of each step's region."""
        status[:] = _STEP_NPF  # pages beyond the table fail the Covered check
        for c in self._chunks(pfn0, nsteps * PAGES_PER_2M):
            seg = self._segs[c.seg]
            if seg is None:
                continue  # all hypervisor-owned: every step #NPF
            r0 = c.off // PAGES_PER_2M
            heads = seg.flags[c.lo : c.hi : PAGES_PER_2M]
            nst = len(heads)
            gfn_ok = seg.gofs[c.lo : c.hi : PAGES_PER_2M] == gfn0 + c.off - c.lo  # step k: gfn0 + c.off + 512k
            owner_ok = (
                ((heads & (F_ASSIGNED | F_IMMUTABLE)) == F_ASSIGNED)
                & (seg.asid[c.lo : c.hi : PAGES_PER_2M] == asid)
                & gfn_ok
            )
            is2m = (heads & F_SIZE2M) != 0
            st = status[r0 : r0 + nst]
            st[owner_ok] = _SUCCESS
            st[owner_ok & ~is2m] = _FAIL_SIZEMISMATCH
            ok = st == _SUCCESS
            same = ((heads & F_VALIDATED) != 0) == validate
            cf[r0 : r0 + nst] = ok & same
            change = ok & ~same  # only 2M entries, so only whole regions inside the table
            for a, b in _runs(change):
                part = seg.flags[c.lo + a * PAGES_PER_2M : c.lo + b * PAGES_PER_2M]
                if validate:
                    np.bitwise_or(part, F_VALIDATED, out=part)
                else:
                    np.bitwise_and(part, _CLEAR_VALIDATED, out=part)

    def pvalidate_pfns(
        self, pfns: npt.NDArray[np.int64], gfns: npt.NDArray[np.int64], *, asid: int, validate: bool
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """4K PVALIDATE at VMPL0 of *distinct* frames ``pfns`` at guest frames ``gfns`` (any order): per page the
        status and CF.

        The loop of :meth:`pvalidate` at 4K over the pages, in order, which is the definition: a step that raises
        #NPF (:class:`NestedPageFault`) records status -1 and CF 0, and the loop goes on; a PFN or GFN < 0 is
        that instruction's FAIL_INPUT; each step is counted in ``pvalidate_count``. A step reads and writes only
        its own entry, so the order does not change the result. ValueError (before any step) unless ``pfns`` and
        ``gfns`` are 1-D arrays of one length.
        """
        pfns = np.asarray(pfns, dtype=np.int64)
        gfns = np.asarray(gfns, dtype=np.int64)
        status = np.empty(pfns.size, dtype=np.int64)
        cf = np.zeros(pfns.size, dtype=bool)
        for k, p, g in _page_pairs(pfns, gfns):
            try:
                status[k], cf[k] = self.pvalidate(
                    p << PAGE_SHIFT, asid=asid, gpa=g << PAGE_SHIFT, page_size=_K4, validate=validate
                )
            except NestedPageFault:
                status[k] = _STEP_NPF
        return status, cf

    # ------------------------------------------------------------------ RMPADJUST
    def rmpadjust(
        self,
        spa: int,
        *,
        asid: int,
        gpa: int,
        page_size: PageSize | int,
        vmpl: int,
        target_vmpl: int,
        perms: int,
        vmsa: bool = False,
    ) -> RmpStatus:
        """RMPADJUST executed at ``vmpl``: set ``target_vmpl``'s permission mask (and VMSA at VMPL0).

        Rules (APM 15.36.7): only a numerically higher VMPL may be modified, and never with permissions the
        current VMPL lacks (both FAIL_PERMISSION); the VMSA bit is honoured only at VMPL0.
        """
        self.rmpadjust_count += 1
        spa &= ~(PAGE_SIZE - 1)
        if perms & PERM_RESERVED or perms < 0 or not 0 <= target_vmpl < NUM_VMPLS or not 0 <= vmpl < NUM_VMPLS:
            return RmpStatus.FAIL_INPUT
        bad = self._guest_instr_input(spa, gpa, page_size)
        if bad is not None:
            return bad
        if vmsa and page_size == PageSize.SIZE_2M:
            return RmpStatus.FAIL_INPUT
        if target_vmpl <= vmpl:
            return RmpStatus.FAIL_PERMISSION
        bad = self._guest_instr_checks(spa, asid, gpa, page_size)
        if bad is not None:
            return bad
        current = self.rmpread(spa).vmpl_perms[vmpl]
        if perms & ~current:
            return RmpStatus.FAIL_PERMISSION
        pfn = spa >> PAGE_SHIFT
        seg = self._seg(pfn)
        assert seg is not None
        if seg.perms is None:
            seg.perms = np.zeros((seg.npages, NUM_VMPLS - 1), dtype=np.uint8)
            self._refresh_fast(pfn >> SEGMENT_SHIFT)
        i = pfn & _SEG_MASK
        sl = slice(i, i + PAGES_PER_2M) if page_size == PageSize.SIZE_2M else slice(i, i + 1)
        seg.perms[sl, target_vmpl - 1] = perms
        if vmpl == 0:
            if vmsa:
                seg.flags[sl] |= np.uint8(F_VMSA)
            else:
                seg.flags[sl] &= ~np.uint8(F_VMSA)
        return RmpStatus.SUCCESS

    # ------------------------------------------------------------------ AMD-SP page transitions (SNP firmware)
    def fw_launch_update(self, spa: int, *, vmsa: bool = False) -> RmpStatus:
        """``SNP_LAUNCH_UPDATE`` of one 4K page by the AMD-SP (SNP firmware ABI 56860 §8.17; amd-snp-arch.md §2):
        the page must be Pre-Guest (assigned to a guest ASID, immutable, 4K: KVM's ``rmp_make_private(pfn, gpa,
        PG_LEVEL_4K, asid, true)`` before the command); it becomes Guest-Valid (Validated=1, Immutable=0), with
        the VMSA bit for a ``KVM_SEV_SNP_PAGE_TYPE_VMSA`` page. [I] Immutable is cleared: KVM releases populated
        pages with a plain RMPUPDATE (``sev_gmem_invalidate`` / ``sev_free_vcpu``'s ``kvm_rmp_make_shared``) and
        only a failed update needs the firmware's reclaim (``sev_gmem_post_populate``: ``snp_page_reclaim`` of the
        failing PFN only). Another state: FAIL_INPUT (the firmware's INVALID_PAGE_STATE)."""
        pfn = spa >> PAGE_SHIFT
        seg = self._seg(pfn) if 0 <= pfn < self.npages and not spa & _PAGE_MASK else None
        if seg is None:
            return _FAIL_INPUT
        i = pfn & _SEG_MASK
        if int(seg.flags[i]) & _F_OWNER != F_ASSIGNED | F_IMMUTABLE or seg.asid[i] == 0:
            return _FAIL_INPUT
        seg.flags[i] = F_ASSIGNED | F_VALIDATED | (F_VMSA if vmsa else 0)
        return _SUCCESS

    def fw_launch_update_pfns(self, pfns: npt.NDArray[np.int64], *, vmsa: bool = False) -> int:
        """:meth:`fw_launch_update` of distinct 4K frames (vectorised per segment); returns how many failed."""
        pfns = np.asarray(pfns, dtype=np.int64)
        if pfns.size <= 4:
            return sum(self.fw_launch_update(int(p) << PAGE_SHIFT, vmsa=vmsa) != _SUCCESS for p in pfns.tolist())
        failed = int(np.count_nonzero((pfns < 0) | (pfns >= self.npages)))
        pfns = pfns[(pfns >= 0) & (pfns < self.npages)]
        new = np.uint8(F_ASSIGNED | F_VALIDATED | (F_VMSA if vmsa else 0))
        for sidx in np.unique(pfns >> SEGMENT_SHIFT).tolist():
            idx = pfns[(pfns >> SEGMENT_SHIFT) == sidx] & _SEG_MASK
            seg = self._segs[sidx]
            if seg is None:
                failed += int(idx.size)
                continue
            ok = ((seg.flags[idx] & _F_OWNER) == (F_ASSIGNED | F_IMMUTABLE)) & (seg.asid[idx] != 0)
            seg.flags[idx[ok]] = new
            failed += int(np.count_nonzero(~ok))
        return failed

    def fw_page_reclaim(self, spa: int) -> RmpStatus:
        """``SNP_PAGE_RECLAIM`` of one 4K page by the AMD-SP: a Firmware page (assigned, ASID 0, immutable:
        ``rmp_mark_pages_firmware``; a context page after ``SNP_DECOMMISSION``) becomes Reclaim (assigned, ASID 0,
        mutable, amd-snp-arch.md §2 [I]), which the host's RMPUPDATE can then make hypervisor-owned
        (``snp_reclaim_pages`` → ``rmp_make_shared``). Another state: FAIL_INPUT (INVALID_PAGE_STATE)."""
        pfn = spa >> PAGE_SHIFT
        seg = self._seg(pfn) if 0 <= pfn < self.npages and not spa & _PAGE_MASK else None
        if seg is None:
            return _FAIL_INPUT
        i = pfn & _SEG_MASK
        if int(seg.flags[i]) & _F_OWNER != F_ASSIGNED | F_IMMUTABLE or seg.asid[i] != 0:
            return _FAIL_INPUT
        seg.flags[i] = F_ASSIGNED
        return _SUCCESS

    # ------------------------------------------------------------------ hardware access checks
    def check_host_write(self, spa: int, mapping_size: PageSize | int) -> None:
        """RMP check of a host data write through a mapping of ``mapping_size`` (APM Table 15-39).

        A 4K mapping faults if the page is assigned. A 2M or 1G mapping faults if *any* 4K page of the
        2M range containing ``spa`` is assigned ("1GB accesses are treated as 2MB accesses"), even when
        the target page is hypervisor-owned. Host reads are never checked. Raises :class:`HostPageFault`
        with error code P|W|RMP (bit 31).
        """
        pfn = spa >> PAGE_SHIFT
        if 0 <= pfn < self.npages:
            seg = self._segs[pfn >> SEGMENT_SHIFT]
            if seg is not None:
                i = pfn & _SEG_MASK
                if seg.fv[i] & F_ASSIGNED if mapping_size == 0 else seg.rv[i >> 9]:
                    raise HostPageFault(spa, _PF_RMP_WRITE, "RMP violation")

    def guest_access_ok(
        self,
        pfns: npt.NDArray[np.int64],
        gfns: npt.NDArray[np.int64],
        *,
        asid: int,
        npt_huge: npt.NDArray[np.bool_],
        write: bool,
        encrypted: bool,
    ) -> npt.NDArray[np.bool_]:
        """Vectorised :meth:`check_guest_access` at VMPL0, no fetch: True where the access of ``gfns[k]`` to frame
        ``pfns[k]`` (mapped 2M/1G in the NPT where ``npt_huge``) passes every check, False where the scalar
        check would raise (#NPF or #VC)."""
        if not encrypted:  # shared: only writes are checked, against the page (4K) or its whole 2M range
            if not write:
                return np.ones(pfns.size, dtype=bool)
            hit = np.where(npt_huge, self.assigned_in_2m_of(pfns) > 0, self.assigned_mask(pfns))
            return ~hit

        def passes(seg: _Segment, i: npt.NDArray[np.int64], k: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
            f = seg.flags[i]
            return (
                ((f & _F_GUEST_OK) == F_ASSIGNED | F_VALIDATED)
                & (((f & F_SIZE2M) != 0) == npt_huge[k])
                & (seg.asid[i] == asid)
                & (seg.gofs[i] + i == gfns[k])
            )

        return self._gather(pfns, bool, passes)

    def check_guest_access(
        self,
        spa: int,
        *,
        asid: int,
        gpa: int,
        npt_size: PageSize | int,
        write: bool = False,
        fetch: bool = False,
        encrypted: bool = True,
        vmpl: int = 0,
    ) -> None:
        """RMP checks of an SNP guest access (APM Table 15-39, priority: first group > Validated > VMPL).

        Shared (C=0) data reads are unchecked; shared writes need a hypervisor-owned page (the whole 2M range
        for a 2M/1G NPT mapping). Private accesses (C=1, and every fetch) check Covered, Guest-Owned,
        Reverse-Map, Mutable and an exact NPT/RMP page-size match (#NPF), then Validated (#VC 0x404), then
        the VMPL permission mask (#NPF with the VMPL bit).
        """
        # Fast path: a private access at VMPL0 to an assigned, validated, mutable entry owned by (asid, gpa) whose
        # size matches the NPT mapping passes every check; anything else goes through the checks below.
        if encrypted and not vmpl and spa >= 0:
            pfn = spa >> PAGE_SHIFT
            try:
                seg: _Segment = self._segs[pfn >> SEGMENT_SHIFT]  # type: ignore[assignment]  # None: AttributeError
                i = pfn & _SEG_MASK
                f = seg.fv[i]
            except (IndexError, AttributeError):  # beyond the table, or an untouched segment
                f = 0
            if (
                f & _F_GUEST_OK == F_ASSIGNED | F_VALIDATED
                and (f & F_SIZE2M == 0) == (npt_size is _K4 or npt_size == 0)
                and seg.av[i] == asid
                and seg.ov[i] + i == gpa >> PAGE_SHIFT
            ):
                return
        pfn = spa >> PAGE_SHIFT
        access = (NPF_WRITE if write else 0) | (NPF_FETCH if fetch else 0)
        if not encrypted and not fetch:
            if not write or not 0 <= pfn < self.npages:
                return
            hit = (self._flags(pfn) & F_ASSIGNED) if npt_size == PageSize.SIZE_4K else self.assigned_in_2m(pfn)
            if hit:
                raise NestedPageFault(NPF_PRESENT | NPF_RMP | access, gpa, "shared write to assigned page")
            return
        f = self._flags(pfn)
        size_ok = bool(f & F_SIZE2M) == (npt_size != PageSize.SIZE_4K)
        if self._owner_fault(pfn, f, asid, gpa) or not size_ok:
            raise NestedPageFault(NPF_PRESENT | NPF_RMP | NPF_ENC | access, gpa, "RMP check")
        if not f & F_VALIDATED:
            raise VmmCommunicationException(gpa=gpa)
        if vmpl:
            need = PERM_EXEC_SUPERVISOR if fetch else (PERM_WRITE | PERM_READ if write else PERM_READ)
            have = self.rmpread(spa).vmpl_perms[vmpl]
            if need & ~have:
                raise NestedPageFault(NPF_PRESENT | NPF_RMP | NPF_ENC | NPF_VMPL | access, gpa, "VMPL check")

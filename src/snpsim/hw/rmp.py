"""The SEV-SNP Reverse Map Table (RMP) and the SNP instructions that read and write it.

Models the RMP of AMD APM vol. 2 §15.36 (one 16-byte entry per 4K page of system memory, all entries start
hypervisor-owned) and the instructions RMPUPDATE, PSMASH, PVALIDATE, RMPADJUST and RMPREAD with their return
codes, plus the hardware RMP checks on host writes and guest accesses (APM Table 15-39). Facts and sources:
``shared/reference/amd-snp-arch.md`` §1 (entry), §3 (RMPUPDATE), §4 (PSMASH), §5 (PVALIDATE), §6 (RMPADJUST,
RMPREAD), §7 (access checks and error-code bits), §8 (#VC 0x404).

Storage follows the kernel's *segmented RMP* (Linux ``arch/x86/virt/svm/sev.c``, RMP_CFG segments,
linux-snp-host.md §1): the table is cut into 1 GiB segments allocated on first write, so an untouched segment
costs nothing and a 1 TiB host fits easily. Each 4K page has a flag byte, a GFN and an ASID; VMPL1-3 permission
masks are allocated per segment on the first RMPADJUST. Like the Zen raw RMP that Linux reads
(``snp_lookup_rmpentry``: ``assigned`` from the page's own entry, level from the 2M-aligned entry), a 2M entry is
stored in all 512 of its 4K slots with consecutive GPAs, so every page of a 2M entry reads the authoritative 2M
state. A per-2M-range count of assigned pages makes the large-mapping host-write check O(1).

Modelling assumptions where the reference marks a fact unknown ([?]/[I]); each is named in :data:`ASSUMPTIONS`:

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
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

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

ASSUMPTIONS: dict[str, str] = {
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
SEGMENT_PAGES = 1 << SEGMENT_SHIFT
_SEG_MASK = SEGMENT_PAGES - 1
_REGIONS_PER_SEGMENT = SEGMENT_PAGES // PAGES_PER_2M
_2M_MASK = PAGES_PER_2M - 1

_STEP_NPF = -1
"""Status recorded by :meth:`Rmp.pvalidate_range` for a step that raises #NPF in the single-page instruction."""


class _Segment:
    """RMP entries of one 1 GiB segment (struct-of-arrays)."""

    __slots__ = ("asid", "flags", "gfn", "npages", "perms", "region_assigned")

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.flags = np.zeros(npages, dtype=np.uint8)
        self.gfn = np.zeros(npages, dtype=np.int64)
        self.asid = np.zeros(npages, dtype=np.uint32)
        #: VMPL1..3 permission masks, allocated on first RMPADJUST.
        self.perms: npt.NDArray[np.uint8] | None = None
        #: assigned 4K pages per 2M region (for O(1) large-mapping checks).
        self.region_assigned = np.zeros((npages + _2M_MASK) // PAGES_PER_2M, dtype=np.int32)


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

    # ------------------------------------------------------------------ storage
    def _seg(self, pfn: int) -> _Segment | None:
        return self._segs[pfn >> SEGMENT_SHIFT]

    def _seg_w(self, pfn: int) -> _Segment:
        i = pfn >> SEGMENT_SHIFT
        seg = self._segs[i]
        if seg is None:
            seg = _Segment(min(SEGMENT_PAGES, self.npages - (i << SEGMENT_SHIFT)))
            self._segs[i] = seg
        return seg

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
        """Bytes of numpy storage held by allocated segments."""
        total = 0
        for seg in self._segs:
            if seg is not None:
                total += seg.flags.nbytes + seg.gfn.nbytes + seg.asid.nbytes + seg.region_assigned.nbytes
                total += 0 if seg.perms is None else seg.perms.nbytes
        return total

    def _flags(self, pfn: int) -> int:
        if pfn >= self.npages:
            return 0
        seg = self._seg(pfn)
        return 0 if seg is None else int(seg.flags[pfn & _SEG_MASK])

    # ------------------------------------------------------------------ VMRUN in-use marks
    def mark_in_use(self, spa: int) -> None:
        """VMRUN marks the VMCB, VMSA and AVIC backing pages in use (APM Table 15-41)."""
        self._in_use.add(spa >> PAGE_SHIFT)

    def clear_in_use(self, spa: int) -> None:
        """#VMEXIT clears the in-use mark."""
        self._in_use.discard(spa >> PAGE_SHIFT)

    def _any_in_use(self, pfn: int, n: int) -> bool:
        return bool(self._in_use) and any(pfn <= p < pfn + n for p in self._in_use)

    # ------------------------------------------------------------------ RMPREAD
    def rmpread(self, spa: int) -> RmpEntry:
        """RMPREAD: the entry that governs the 4K page containing ``spa`` (hypervisor-owned beyond the table)."""
        pfn = spa >> PAGE_SHIFT
        seg = self._seg(pfn) if 0 <= pfn < self.npages else None
        if seg is None:
            return RmpEntry()
        i = pfn & _SEG_MASK
        f = int(seg.flags[i])
        assigned = bool(f & F_ASSIGNED)
        perms = (PERM_ALL if assigned else 0, 0, 0, 0)
        if seg.perms is not None:
            perms = (perms[0], *(int(x) for x in seg.perms[i]))
        return RmpEntry(
            assigned=assigned,
            page_size=PageSize.SIZE_2M if f & F_SIZE2M else PageSize.SIZE_4K,
            immutable=bool(f & F_IMMUTABLE),
            gpa=int(seg.gfn[i]) << PAGE_SHIFT,
            asid=int(seg.asid[i]),
            vmsa=bool(f & F_VMSA),
            validated=bool(f & F_VALIDATED),
            vmpl_perms=perms,
        )

    def region_status(self, spa: int) -> bool:
        """RMPREAD's 2MB-region status: ``spa`` is 2M-aligned and another page of its 2M range is assigned."""
        pfn = spa >> PAGE_SHIFT
        if pfn & _2M_MASK or spa & (PAGE_SIZE - 1):
            return False
        own = 1 if self._flags(pfn) & F_ASSIGNED else 0
        return self.assigned_in_2m(pfn) - own > 0

    def assigned_in_2m(self, pfn: int) -> int:
        """Number of assigned 4K pages in the 2M range containing ``pfn`` (0 beyond the table)."""
        if not 0 <= pfn < self.npages:
            return 0
        seg = self._seg(pfn)
        return 0 if seg is None else int(seg.region_assigned[(pfn & _SEG_MASK) >> 9])

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
        out = np.zeros(pfns.shape, dtype=bool)
        inside = (pfns >= 0) & (pfns < self.npages)
        segs = pfns >> SEGMENT_SHIFT
        for s in np.unique(segs[inside]).tolist():
            seg = self._segs[s]
            if seg is not None:
                sel = inside & (segs == s)
                out[sel] = (seg.flags[pfns[sel] & _SEG_MASK] & F_ASSIGNED) != 0
        return out

    def assigned_count(self) -> int:
        """Assigned 4K pages in the whole table."""
        return sum(int(s.region_assigned.sum()) for s in self._segs if s is not None)

    # ------------------------------------------------------------------ RMPUPDATE
    @staticmethod
    def _rmpupdate_args_bad(
        spa: int, page_size: PageSize | int, gpa: int, assigned: bool, asid: int, immutable: bool
    ) -> bool:
        """Input errors that do not depend on where the page lies (rmpupdate-input)."""
        if page_size not in (PageSize.SIZE_4K, PageSize.SIZE_2M):
            return True
        if spa < 0 or gpa < 0 or asid < 0 or spa & (PAGE_SIZE - 1) or gpa & (PAGE_SIZE - 1):
            return True
        if not assigned and (asid != 0 or immutable):
            return True
        return page_size == PageSize.SIZE_2M and bool((spa | gpa) & (PageSize.SIZE_2M.nbytes - 1))

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
        pfn = spa >> PAGE_SHIFT
        if self._rmpupdate_args_bad(spa, page_size, gpa, assigned, asid, immutable) or (
            pfn + PageSize(page_size).npages > self.npages
        ):
            return RmpStatus.FAIL_INPUT
        if page_size == PageSize.SIZE_2M:
            return self._rmpupdate_2m(pfn, gpa >> PAGE_SHIFT, assigned, asid, immutable)
        if self._in_use and pfn in self._in_use:
            return RmpStatus.FAIL_INUSE
        seg = self._seg_w(pfn)
        i = pfn & _SEG_MASK
        f = int(seg.flags[i])
        if f & F_IMMUTABLE:
            return RmpStatus.FAIL_PERMISSION
        if f & F_SIZE2M:
            if f & F_ASSIGNED:
                return RmpStatus.FAIL_OVERLAP
            head = i & ~_2M_MASK
            seg.flags[head : head + PAGES_PER_2M] &= ~np.uint8(F_SIZE2M)  # rmpupdate-demote
        if f & F_ASSIGNED:
            seg.region_assigned[i >> 9] -= 1
        if assigned:
            seg.region_assigned[i >> 9] += 1
        seg.flags[i] = (F_ASSIGNED if assigned else 0) | (F_IMMUTABLE if immutable else 0)
        seg.gfn[i] = gpa >> PAGE_SHIFT
        seg.asid[i] = asid
        if seg.perms is not None:
            seg.perms[i] = 0
        return RmpStatus.SUCCESS

    def _rmpupdate_2m(self, pfn: int, gfn: int, assigned: bool, asid: int, immutable: bool) -> RmpStatus:
        if self._any_in_use(pfn, PAGES_PER_2M):
            return RmpStatus.FAIL_INUSE
        seg = self._seg_w(pfn)
        i = pfn & _SEG_MASK
        fl = seg.flags[i : i + PAGES_PER_2M]
        if (fl & F_IMMUTABLE).any():
            return RmpStatus.FAIL_PERMISSION
        if not fl[0] & F_SIZE2M and (fl[1:] & F_ASSIGNED).any():
            return RmpStatus.FAIL_OVERLAP
        self._write_2m(seg, i, gfn, assigned, asid, immutable)
        return RmpStatus.SUCCESS

    @staticmethod
    def _write_2m(seg: _Segment, i: int, gfn: int, assigned: bool, asid: int, immutable: bool) -> None:
        seg.flags[i : i + PAGES_PER_2M] = F_SIZE2M | (F_ASSIGNED if assigned else 0) | (F_IMMUTABLE if immutable else 0)
        seg.gfn[i : i + PAGES_PER_2M] = np.arange(gfn, gfn + PAGES_PER_2M, dtype=np.int64)
        seg.asid[i : i + PAGES_PER_2M] = asid
        if seg.perms is not None:
            seg.perms[i : i + PAGES_PER_2M] = 0
        seg.region_assigned[i >> 9] = PAGES_PER_2M if assigned else 0

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
        step = PAGES_PER_2M if page_size == PageSize.SIZE_2M else 1
        nsteps = max(0, -(-npages // step))
        self.rmpupdate_count += nsteps
        status = np.zeros(nsteps, dtype=np.int64)
        if self._rmpupdate_args_bad(spa, page_size, gpa, assigned, asid, immutable):
            status[:] = RmpStatus.FAIL_INPUT
            return status
        pfn0 = spa >> PAGE_SHIFT
        gfn0 = gpa >> PAGE_SHIFT
        # Steps whose pages fall (partly) beyond the table fail with FAIL_INPUT.
        in_table = max(0, min(nsteps, (self.npages - pfn0) // step)) if pfn0 < self.npages else 0
        status[in_table:] = RmpStatus.FAIL_INPUT
        if in_table == 0:
            return status
        if step == PAGES_PER_2M:
            self._rmpupdate_range_2m(pfn0, gfn0, in_table, status, assigned, asid, immutable)
        else:
            self._rmpupdate_4k_many(
                np.arange(pfn0, pfn0 + in_table, dtype=np.int64),
                np.arange(gfn0, gfn0 + in_table, dtype=np.int64),
                status[:in_table],
                assigned,
                asid,
                immutable,
            )
        return status

    def _in_use_mask(self, pfn: int, n: int) -> npt.NDArray[np.bool_]:
        mask = np.zeros(n, dtype=bool)
        for p in self._in_use:
            if pfn <= p < pfn + n:
                mask[p - pfn] = True
        return mask

    def rmpupdate_pfns(
        self,
        pfns: npt.NDArray[np.int64],
        gfns: npt.NDArray[np.int64] | None = None,
        *,
        assigned: bool,
        asid: int = 0,
        immutable: bool = False,
    ) -> npt.NDArray[np.int64]:
        """Vectorised 4K RMPUPDATE of *distinct* PFNs (any order), page ``k`` bound to ``gfns[k]``.

        Equivalent to a loop of :meth:`rmpupdate` at 4K over the pages (in any order: steps on distinct pages
        are independent, see :meth:`rmpupdate_range`); returns the per-page status codes.
        """
        pfns = np.asarray(pfns, dtype=np.int64)
        gfns = np.zeros_like(pfns) if gfns is None else np.asarray(gfns, dtype=np.int64)
        self.rmpupdate_count += int(pfns.size)
        status = np.zeros(pfns.size, dtype=np.int64)
        if self._rmpupdate_args_bad(0, PageSize.SIZE_4K, 0, assigned, asid, immutable):
            status[:] = RmpStatus.FAIL_INPUT
            return status
        status[(pfns < 0) | (pfns >= self.npages) | (gfns < 0)] = RmpStatus.FAIL_INPUT
        self._rmpupdate_4k_many(pfns, gfns, status, assigned, asid, immutable)
        return status

    def _rmpupdate_4k_many(
        self,
        pfns: npt.NDArray[np.int64],
        gfns: npt.NDArray[np.int64],
        status: npt.NDArray[np.int64],
        assigned: bool,
        asid: int,
        immutable: bool,
    ) -> None:
        """Checks and writes of 4K RMPUPDATEs on distinct in-table pages whose ``status`` is still SUCCESS."""
        if self._in_use:
            status[(status == RmpStatus.SUCCESS) & np.isin(pfns, list(self._in_use))] = RmpStatus.FAIL_INUSE
        new_flags = np.uint8((F_ASSIGNED if assigned else 0) | (F_IMMUTABLE if immutable else 0))
        live = status == RmpStatus.SUCCESS
        segs = pfns >> SEGMENT_SHIFT
        for sidx in np.unique(segs[live]).tolist():
            sel = np.flatnonzero(live & (segs == sidx))
            seg = self._seg_w(sidx << SEGMENT_SHIFT)
            idx = pfns[sel] & _SEG_MASK
            fl = seg.flags[idx]
            st = np.zeros(sel.size, dtype=np.int64)
            st[(fl & (F_SIZE2M | F_ASSIGNED)) == (F_SIZE2M | F_ASSIGNED)] = RmpStatus.FAIL_OVERLAP
            st[(fl & F_IMMUTABLE) != 0] = RmpStatus.FAIL_PERMISSION
            status[sel] = st
            ok = st == RmpStatus.SUCCESS
            if not ok.any():
                continue
            # rmpupdate-demote: every unassigned 2M entry touched by a successful step becomes 4K.
            demote = ok & ((fl & F_SIZE2M) != 0)
            if demote.any():
                for head in np.unique(idx[demote] & ~_2M_MASK).tolist():
                    seg.flags[head : head + PAGES_PER_2M] &= ~np.uint8(F_SIZE2M)
            w = idx[ok]
            was = (seg.flags[w] & F_ASSIGNED).astype(np.int32)
            np.add.at(seg.region_assigned, w >> 9, (1 if assigned else 0) - was)
            seg.flags[w] = new_flags
            seg.gfn[w] = gfns[sel][ok]
            seg.asid[w] = asid
            if seg.perms is not None:
                seg.perms[w] = 0

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
        in_use = self._in_use_mask(pfn0, nsteps * PAGES_PER_2M).reshape(nsteps, PAGES_PER_2M).any(axis=1)
        for c in self._chunks(pfn0, nsteps * PAGES_PER_2M):
            seg = self._seg_w(c.seg << SEGMENT_SHIFT)
            r0, r1 = c.off // PAGES_PER_2M, (c.off + c.hi - c.lo) // PAGES_PER_2M
            fl = seg.flags[c.lo : c.hi].reshape(-1, PAGES_PER_2M)
            st = status[r0:r1]
            overlap = ((fl[:, 0] & F_SIZE2M) == 0) & (fl[:, 1:] & F_ASSIGNED).any(axis=1)
            st[overlap] = RmpStatus.FAIL_OVERLAP
            st[(fl & F_IMMUTABLE).any(axis=1)] = RmpStatus.FAIL_PERMISSION
            st[in_use[r0:r1]] = RmpStatus.FAIL_INUSE
            for r in np.flatnonzero(st == RmpStatus.SUCCESS):
                i = c.lo + int(r) * PAGES_PER_2M
                self._write_2m(seg, i, gfn0 + (r0 + int(r)) * PAGES_PER_2M, assigned, asid, immutable)

    # ------------------------------------------------------------------ PSMASH
    def psmash(self, spa: int) -> RmpStatus:
        """PSMASH: split the assigned 2M entry at 2M-aligned ``spa`` into 512 4K entries (fields preserved)."""
        self.psmash_count += 1
        pfn = spa >> PAGE_SHIFT
        if spa < 0 or spa & (PageSize.SIZE_2M.nbytes - 1) or pfn + PAGES_PER_2M > self.npages:
            return RmpStatus.FAIL_INPUT
        if self._any_in_use(pfn, PAGES_PER_2M):
            return RmpStatus.FAIL_INUSE
        seg = self._seg(pfn)
        i = pfn & _SEG_MASK
        if seg is None or (int(seg.flags[i]) & (F_ASSIGNED | F_SIZE2M)) != (F_ASSIGNED | F_SIZE2M):
            return RmpStatus.FAIL_BADADDR
        seg.flags[i : i + PAGES_PER_2M] &= ~np.uint8(F_SIZE2M)
        return RmpStatus.SUCCESS

    def psmash_range(self, spa: int, npages: int) -> npt.NDArray[np.int64]:
        """One PSMASH per 2M step in ``[spa, spa + npages*4K)``; equivalent to a loop of :meth:`psmash`."""
        nsteps = max(0, -(-npages // PAGES_PER_2M))
        return np.array([self.psmash(spa + k * PageSize.SIZE_2M.nbytes) for k in range(nsteps)], dtype=np.int64)

    # ------------------------------------------------------------------ guest-side RMP checks
    def _owner_fault(self, pfn: int, f: int, asid: int, gpa: int) -> bool:
        """The first group of RMP checks (Covered, Guest-Owned, Reverse-Map, Mutable) fails."""
        if pfn >= self.npages or not f & F_ASSIGNED or f & F_IMMUTABLE:
            return True
        seg = self._seg(pfn)
        assert seg is not None
        i = pfn & _SEG_MASK
        return int(seg.asid[i]) != asid or int(seg.gfn[i]) != gpa >> PAGE_SHIFT

    def _guest_instr_checks(self, spa: int, asid: int, gpa: int, page_size: int) -> RmpStatus | None:
        """Checks shared by PVALIDATE and RMPADJUST (Table 15-40); raises #NPF, returns a failure or None."""
        pfn = spa >> PAGE_SHIFT
        f = self._flags(pfn) if pfn >= 0 else 0
        if self._owner_fault(pfn, f, asid, gpa):
            raise NestedPageFault(NPF_PRESENT | NPF_RMP | NPF_ENC, gpa, "RMP ownership check")
        if page_size == PageSize.SIZE_4K and f & F_SIZE2M:
            raise NestedPageFault(NPF_PRESENT | NPF_RMP | NPF_ENC | NPF_SIZEM, gpa, "4K request on 2M RMP entry")
        if page_size == PageSize.SIZE_2M and not f & F_SIZE2M:
            return RmpStatus.FAIL_SIZEMISMATCH
        return None

    @staticmethod
    def _guest_instr_input(spa: int, gpa: int, page_size: int) -> RmpStatus | None:
        """Input checks of PVALIDATE/RMPADJUST: the operand is a guest address, so a 2M request needs a 2M-aligned
        GPA (``guest-instr-align``); the SPA it translates to is not an input: a 2M request landing on a 4K RMP
        entry (e.g. through a 4K NPT mapping of a frame that is not 2M-aligned) fails the size check instead."""
        if page_size not in (PageSize.SIZE_4K, PageSize.SIZE_2M) or spa < 0 or gpa < 0:
            return RmpStatus.FAIL_INPUT
        if page_size == PageSize.SIZE_2M and gpa & (PageSize.SIZE_2M.nbytes - 1):
            return RmpStatus.FAIL_INPUT
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
        spa &= ~(PAGE_SIZE - 1)
        gpa &= ~(PAGE_SIZE - 1) if page_size == PageSize.SIZE_4K else ~0
        bad = self._guest_instr_input(spa, gpa, page_size)
        if bad is not None:
            return bad, False
        if vmpl != 0:
            return RmpStatus.FAIL_PERMISSION, False  # pvalidate-vmpl
        bad = self._guest_instr_checks(spa, asid, gpa, page_size)
        if bad is not None:
            return bad, False
        pfn = spa >> PAGE_SHIFT
        seg = self._seg(pfn)
        assert seg is not None
        i = pfn & _SEG_MASK
        if bool(int(seg.flags[i]) & F_VALIDATED) == bool(validate):
            return RmpStatus.SUCCESS, True
        sl = slice(i, i + PAGES_PER_2M) if page_size == PageSize.SIZE_2M else slice(i, i + 1)
        if validate:
            seg.flags[sl] |= np.uint8(F_VALIDATED)
        else:
            seg.flags[sl] &= ~np.uint8(F_VALIDATED)
        return RmpStatus.SUCCESS, False

    def pvalidate_range(
        self, spa: int, npages: int, *, asid: int, gpa: int, page_size: PageSize | int, validate: bool
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Vectorised PVALIDATE over ``npages`` 4K pages stepping by ``page_size``.

        Equivalent to a loop of :meth:`pvalidate`; a step that raises #NPF in the loop records status -1.
        Returns (status per step, CF per step).
        """
        step = PAGES_PER_2M if page_size == PageSize.SIZE_2M else 1
        nsteps = max(0, -(-npages // step))
        self.pvalidate_count += nsteps
        status = np.zeros(nsteps, dtype=np.int64)
        cf = np.zeros(nsteps, dtype=bool)
        spa &= ~(PAGE_SIZE - 1)
        if page_size == PageSize.SIZE_4K:
            gpa &= ~(PAGE_SIZE - 1)
        bad = self._guest_instr_input(spa, gpa, page_size)
        if bad is not None:
            status[:] = bad
            return status, cf
        if step != 1 and spa & (PageSize.SIZE_2M.nbytes - 1):
            self.pvalidate_count -= nsteps  # counted again by the single-instruction loop
            for k in range(nsteps):
                try:
                    st, c = self.pvalidate(
                        spa + k * PageSize.SIZE_2M.nbytes,
                        asid=asid,
                        gpa=gpa + k * PageSize.SIZE_2M.nbytes,
                        page_size=page_size,
                        validate=validate,
                    )
                    status[k], cf[k] = st, c
                except NestedPageFault:
                    status[k] = _STEP_NPF
            return status, cf
        pfn0, gfn0 = spa >> PAGE_SHIFT, gpa >> PAGE_SHIFT
        if step == 1:
            self.pvalidate_count -= nsteps  # counted by pvalidate_pfns
            return self.pvalidate_pfns(
                np.arange(pfn0, pfn0 + nsteps, dtype=np.int64),
                np.arange(gfn0, gfn0 + nsteps, dtype=np.int64),
                asid=asid,
                validate=validate,
            )
        status[:] = _STEP_NPF  # pages beyond the table fail the Covered check
        for c in self._chunks(pfn0, nsteps * step):
            seg = self._segs[c.seg]
            r0 = c.off // step
            if seg is None:
                continue  # all hypervisor-owned: every step #NPF
            fl = seg.flags[c.lo : c.hi : step]
            nst = len(fl)
            gfn_ok = seg.gfn[c.lo : c.hi : step] == gfn0 + c.off + np.arange(nst) * step
            owner_ok = (
                ((fl & (F_ASSIGNED | F_IMMUTABLE)) == F_ASSIGNED) & (seg.asid[c.lo : c.hi : step] == asid) & gfn_ok
            )
            is2m = (fl & F_SIZE2M) != 0
            st = status[r0 : r0 + nst]
            st[owner_ok] = RmpStatus.SUCCESS
            if step == 1:
                st[owner_ok & is2m] = _STEP_NPF
            else:
                st[owner_ok & ~is2m] = RmpStatus.FAIL_SIZEMISMATCH
            ok = st == RmpStatus.SUCCESS
            same = ((fl & F_VALIDATED) != 0) == bool(validate)
            cf[r0 : r0 + nst] = ok & same
            change = np.flatnonzero(ok & ~same) * step + c.lo
            if step != 1:
                change = (change[:, None] + np.arange(PAGES_PER_2M)).ravel()
            if validate:
                seg.flags[change] |= np.uint8(F_VALIDATED)
            else:
                seg.flags[change] &= ~np.uint8(F_VALIDATED)
        return status, cf

    def pvalidate_pfns(
        self, pfns: npt.NDArray[np.int64], gfns: npt.NDArray[np.int64], *, asid: int, validate: bool
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Vectorised 4K PVALIDATE of *distinct* frames ``pfns`` at guest frames ``gfns`` (any order).

        Equivalent to a loop of :meth:`pvalidate` at 4K; a step that raises #NPF records status -1.
        """
        pfns = np.asarray(pfns, dtype=np.int64)
        gfns = np.asarray(gfns, dtype=np.int64)
        self.pvalidate_count += int(pfns.size)
        status = np.full(pfns.size, _STEP_NPF, dtype=np.int64)  # beyond the table: Covered check fails
        cf = np.zeros(pfns.size, dtype=bool)
        inside = (pfns >= 0) & (pfns < self.npages)
        segs = pfns >> SEGMENT_SHIFT
        for sidx in np.unique(segs[inside]).tolist():
            seg = self._segs[sidx]
            if seg is None:
                continue  # all hypervisor-owned: every step #NPF
            sel = np.flatnonzero(inside & (segs == sidx))
            idx = pfns[sel] & _SEG_MASK
            fl = seg.flags[idx]
            owner_ok = ((fl & (F_ASSIGNED | F_IMMUTABLE)) == F_ASSIGNED) & (seg.asid[idx] == asid)
            owner_ok &= seg.gfn[idx] == gfns[sel]
            ok = owner_ok & ((fl & F_SIZE2M) == 0)  # a 4K request on a 2M entry: #NPF (SIZEM)
            status[sel[ok]] = RmpStatus.SUCCESS
            same = ((fl & F_VALIDATED) != 0) == bool(validate)
            cf[sel[ok & same]] = True
            change = idx[ok & ~same]
            if validate:
                seg.flags[change] |= np.uint8(F_VALIDATED)
            else:
                seg.flags[change] &= ~np.uint8(F_VALIDATED)
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
        i = pfn & _SEG_MASK
        sl = slice(i, i + PAGES_PER_2M) if page_size == PageSize.SIZE_2M else slice(i, i + 1)
        seg.perms[sl, target_vmpl - 1] = perms
        if vmpl == 0:
            if vmsa:
                seg.flags[sl] |= np.uint8(F_VMSA)
            else:
                seg.flags[sl] &= ~np.uint8(F_VMSA)
        return RmpStatus.SUCCESS

    # ------------------------------------------------------------------ hardware access checks
    def check_host_write(self, spa: int, mapping_size: PageSize | int) -> None:
        """RMP check of a host data write through a mapping of ``mapping_size`` (APM Table 15-39).

        A 4K mapping faults if the page is assigned. A 2M or 1G mapping faults if *any* 4K page of the
        2M range containing ``spa`` is assigned ("1GB accesses are treated as 2MB accesses"), even when
        the target page is hypervisor-owned. Host reads are never checked. Raises :class:`HostPageFault`
        with error code P|W|RMP (bit 31).
        """
        pfn = spa >> PAGE_SHIFT
        if not 0 <= pfn < self.npages:
            return
        hit = self._flags(pfn) & F_ASSIGNED if mapping_size == PageSize.SIZE_4K else self.assigned_in_2m(pfn)
        if hit:
            raise HostPageFault(spa, PF_PRESENT | PF_WRITE | PF_RMP, "RMP violation")

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
        pfn = spa >> PAGE_SHIFT
        access = (NPF_WRITE if write else 0) | (NPF_FETCH if fetch else 0)
        if not encrypted and not fetch:
            if not write or not 0 <= pfn < self.npages:
                return
            hit = (self._flags(pfn) & F_ASSIGNED) if npt_size == PageSize.SIZE_4K else self.assigned_in_2m(pfn)
            if hit:
                raise NestedPageFault(NPF_PRESENT | NPF_RMP | access, gpa, "shared write to assigned page")
            return
        f = self._flags(pfn) if pfn >= 0 else 0
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

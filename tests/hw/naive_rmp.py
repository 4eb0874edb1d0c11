"""A deliberately naive reference model of the SNP RMP, written from the rules only.

Independent of ``snpsim.hw.rmp``: one plain record per 4K page in a dict (absent = hypervisor-owned), no
segments, no numpy state. A 2M RMP entry is represented by giving every one of its 512 pages a copy of the
entry (``page_size`` SIZE_2M, ``gpa`` = entry gpa + page offset), so the page's own record always *is* its
authoritative entry (amd-snp-arch.md §1 "authoritative RMP entry").

Rules implemented (amd-snp-arch.md §1-§8 plus the modelling decisions of the test brief, numbered 1-7 below).
Where the rules leave something open the model picks the most literal reading and says so in a comment.

Faults are raised as the real exception classes. A :class:`ModelNestedPageFault` / :class:`ModelHostPageFault`
additionally carries ``checked``: the error-code bits whose value the rules fix. Comparisons against the
implementation must only look at ``error & checked`` (the rules say "test bits with masks").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from snpsim.hw.types import (
    NPF_ENC,
    NPF_FETCH,
    NPF_RMP,
    NPF_SIZEM,
    NPF_VMPL,
    NPF_WRITE,
    NUM_VMPLS,
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
    SIZE_2M_BYTES,
    HostPageFault,
    NestedPageFault,
    PageSize,
    RmpEntry,
    RmpStatus,
    VmmCommunicationException,
)

#: Bits of EXITINFO1 the rules fix for PVALIDATE / RMPADJUST faults (rule 4).
PVALIDATE_CHECKED = NPF_RMP | NPF_SIZEM
#: Bits fixed for a private guest access that fails an ownership / size check (rule 7).
PRIVATE_CHECKED = NPF_RMP | NPF_ENC | NPF_WRITE | NPF_FETCH | NPF_VMPL
#: Bits fixed for a VMPL permission fault (rule 7: "NPF_RMP|NPF_VMPL").
VMPL_CHECKED = NPF_RMP | NPF_VMPL
#: Bits fixed for a shared (C=0) guest write to an assigned page (rule 7: RMP|WRITE set, ENC clear).
SHARED_CHECKED = NPF_RMP | NPF_WRITE | NPF_ENC | NPF_FETCH | NPF_VMPL
#: Host #PF bits fixed by rule 6.
HOST_PF_BITS = PF_RMP | PF_WRITE | PF_PRESENT


class ModelNestedPageFault(NestedPageFault):
    """A NestedPageFault whose ``checked`` mask says which bits of ``exit_info1`` are specified."""

    def __init__(self, exit_info1: int, gpa: int, checked: int) -> None:
        super().__init__(exit_info1, gpa)
        self.checked = checked


class ModelHostPageFault(HostPageFault):
    def __init__(self, address: int) -> None:
        super().__init__(address, HOST_PF_BITS)
        self.checked = HOST_PF_BITS


@dataclass
class _Page:
    assigned: bool = False
    page_size: PageSize = PageSize.SIZE_4K
    immutable: bool = False
    gpa: int = 0
    asid: int = 0
    vmsa: bool = False
    validated: bool = False
    perms: list[int] = field(default_factory=lambda: [0] * NUM_VMPLS)

    def copy(self) -> _Page:
        return _Page(
            self.assigned,
            self.page_size,
            self.immutable,
            self.gpa,
            self.asid,
            self.vmsa,
            self.validated,
            list(self.perms),
        )


def _size_ok(page_size: int) -> bool:
    return page_size in (PageSize.SIZE_4K, PageSize.SIZE_2M)


class NaiveRmp:
    """Same public API as ``snpsim.hw.Rmp``; every operation is a plain loop over 4K pages."""

    def __init__(self, npages: int) -> None:
        self.npages = npages
        self.pages: dict[int, _Page] = {}
        self.in_use: set[int] = set()

    # ---------------------------------------------------------------- helpers
    def _covered(self, pfn: int) -> bool:
        return 0 <= pfn < self.npages

    def _page(self, pfn: int) -> _Page:
        """The authoritative entry of ``pfn`` (a default record for uncovered pages, §1)."""
        return self.pages.get(pfn, _Page()) if self._covered(pfn) else _Page()

    @staticmethod
    def _head(pfn: int) -> int:
        return pfn - pfn % PAGES_PER_2M

    # ---------------------------------------------------------------- RMPREAD (rule 2)
    def rmpread(self, spa: int) -> RmpEntry:
        p = self._page(spa // PAGE_SIZE)
        return RmpEntry(
            assigned=p.assigned,
            page_size=p.page_size,
            immutable=p.immutable,
            gpa=p.gpa,
            asid=p.asid,
            vmsa=p.vmsa,
            validated=p.validated,
            vmpl_perms=tuple(p.perms),
        )

    def mark_in_use(self, spa: int) -> None:
        self.in_use.add(spa // PAGE_SIZE)

    def clear_in_use(self, spa: int) -> None:
        self.in_use.discard(spa // PAGE_SIZE)

    # ---------------------------------------------------------------- RMPUPDATE (§3, rule 1)
    def rmpupdate(
        self,
        spa: int,
        *,
        assigned: bool,
        page_size: PageSize = PageSize.SIZE_4K,
        gpa: int = 0,
        asid: int = 0,
        immutable: bool = False,
    ) -> RmpStatus:
        if spa % PAGE_SIZE or gpa % PAGE_SIZE or not _size_ok(page_size):
            return RmpStatus.FAIL_INPUT
        if not assigned and (asid != 0 or immutable):
            return RmpStatus.FAIL_INPUT
        is_2m = page_size == PageSize.SIZE_2M
        if is_2m and (spa % SIZE_2M_BYTES or gpa % SIZE_2M_BYTES):
            return RmpStatus.FAIL_INPUT
        pfn = spa // PAGE_SIZE
        n = PAGES_PER_2M if is_2m else 1
        if pfn < 0 or pfn + n > self.npages:
            return RmpStatus.FAIL_INPUT
        targets = range(pfn, pfn + n)
        if any(t in self.in_use for t in targets):
            return RmpStatus.FAIL_INUSE
        if any(self._page(t).immutable for t in targets):
            return RmpStatus.FAIL_PERMISSION
        head = self._head(pfn)
        head_is_2m = self._page(head).page_size == PageSize.SIZE_2M
        if not is_2m:
            if head_is_2m and self._page(head).assigned:
                return RmpStatus.FAIL_OVERLAP
        elif not head_is_2m and any(self._page(p).assigned for p in range(head + 1, head + PAGES_PER_2M)):
            return RmpStatus.FAIL_OVERLAP

        perms = [PERM_ALL, 0, 0, 0] if assigned else [0, 0, 0, 0]
        if is_2m:
            for k in range(PAGES_PER_2M):
                self.pages[pfn + k] = _Page(
                    assigned, PageSize.SIZE_2M, immutable, gpa + k * PAGE_SIZE, asid, False, False, list(perms)
                )
        else:
            if head_is_2m:  # demote an unassigned 2M entry: the other 511 pages become unassigned 4K entries
                for p in range(head, head + PAGES_PER_2M):
                    self.pages.pop(p, None)
            self.pages[pfn] = _Page(assigned, PageSize.SIZE_4K, immutable, gpa, asid, False, False, perms)
        return RmpStatus.SUCCESS

    # ---------------------------------------------------------------- PSMASH (§4, rule 3)
    def psmash(self, spa: int) -> RmpStatus:
        pfn = spa // PAGE_SIZE
        if spa % SIZE_2M_BYTES or pfn < 0 or pfn + PAGES_PER_2M > self.npages:
            return RmpStatus.FAIL_INPUT
        # Open point: which pages count as "in use"; this model takes any of the 512 entries PSMASH rewrites.
        if any(p in self.in_use for p in range(pfn, pfn + PAGES_PER_2M)):
            return RmpStatus.FAIL_INUSE
        head = self._page(pfn)
        if not (head.assigned and head.page_size == PageSize.SIZE_2M):
            return RmpStatus.FAIL_BADADDR
        for p in range(pfn, pfn + PAGES_PER_2M):
            self.pages[p].page_size = PageSize.SIZE_4K  # gpa already holds entry gpa + offset
        return RmpStatus.SUCCESS

    # ---------------------------------------------------------------- shared guest-instruction checks
    def _input_2m_ok(self, spa: int, gpa: int, page_size: int) -> bool:
        if not _size_ok(page_size):
            return False
        # guest-instr-align: the operand is a guest address; only the GPA must be 2M-aligned for a 2M request
        return not (page_size == PageSize.SIZE_2M and gpa % SIZE_2M_BYTES)

    def _owned_entry(self, spa: int, *, asid: int, gpa: int, page_size: PageSize) -> _Page | RmpStatus:
        """RMP ownership + size checks common to PVALIDATE and RMPADJUST (§5, rule 4)."""
        pfn = spa // PAGE_SIZE
        p = self._page(pfn)
        if (
            not self._covered(pfn)
            or not p.assigned
            or p.immutable
            or p.asid != asid
            or p.gpa // PAGE_SIZE != gpa // PAGE_SIZE
        ):
            raise ModelNestedPageFault(NPF_RMP, gpa, PVALIDATE_CHECKED)
        if page_size == PageSize.SIZE_4K and p.page_size == PageSize.SIZE_2M:
            raise ModelNestedPageFault(NPF_RMP | NPF_SIZEM, gpa, PVALIDATE_CHECKED)
        if page_size == PageSize.SIZE_2M and p.page_size == PageSize.SIZE_4K:
            return RmpStatus.FAIL_SIZEMISMATCH
        return p

    def _entry_pages(self, spa: int) -> range:
        """All 4K pages sharing the authoritative entry of ``spa``."""
        pfn = spa // PAGE_SIZE
        if self._page(pfn).page_size == PageSize.SIZE_2M:
            head = self._head(pfn)
            return range(head, head + PAGES_PER_2M)
        return range(pfn, pfn + 1)

    # ---------------------------------------------------------------- PVALIDATE (§5, rule 4)
    def pvalidate(
        self, spa: int, *, asid: int, gpa: int, page_size: PageSize, validate: bool, vmpl: int = 0
    ) -> tuple[RmpStatus, bool]:
        if not self._input_2m_ok(spa, gpa, page_size):
            return RmpStatus.FAIL_INPUT, False
        if vmpl != 0:
            return RmpStatus.FAIL_PERMISSION, False
        p = self._owned_entry(spa, asid=asid, gpa=gpa, page_size=page_size)
        if isinstance(p, RmpStatus):
            return p, False
        if p.validated == bool(validate):
            return RmpStatus.SUCCESS, True
        for q in self._entry_pages(spa):
            self.pages[q].validated = bool(validate)
        return RmpStatus.SUCCESS, False

    # ---------------------------------------------------------------- RMPADJUST (§6, rule 5)
    def rmpadjust(
        self,
        spa: int,
        *,
        asid: int,
        gpa: int,
        page_size: PageSize,
        vmpl: int,
        target_vmpl: int,
        perms: int,
        vmsa: bool = False,
        subset_first: bool = False,
    ) -> RmpStatus:
        """Rule 5. The rule lists the 'perms subset of the current VMPL's mask' check and the ownership/size
        checks without saying which comes first. Default: ownership/size first (a page's masks mean nothing
        to a guest that does not own it, and PVALIDATE checks ownership first too); ``subset_first=True``
        gives the other order. Both orders agree whenever one of the checks passes."""
        if perms & PERM_RESERVED or not 0 <= target_vmpl < NUM_VMPLS:
            return RmpStatus.FAIL_INPUT
        if not self._input_2m_ok(spa, gpa, page_size):
            return RmpStatus.FAIL_INPUT
        if vmsa and page_size == PageSize.SIZE_2M:
            return RmpStatus.FAIL_INPUT
        if target_vmpl <= vmpl:
            return RmpStatus.FAIL_PERMISSION
        if subset_first and perms & ~self._page(spa // PAGE_SIZE).perms[vmpl]:
            return RmpStatus.FAIL_PERMISSION
        p = self._owned_entry(spa, asid=asid, gpa=gpa, page_size=page_size)
        if isinstance(p, RmpStatus):
            return p
        if perms & ~p.perms[vmpl]:
            return RmpStatus.FAIL_PERMISSION
        for q in self._entry_pages(spa):
            self.pages[q].perms[target_vmpl] = perms
            if vmpl == 0:
                # RDX bit 16 is written by RMPADJUST at VMPL0 (Linux snp_set_vmsa clears it with attrs=1).
                self.pages[q].vmsa = bool(vmsa)
        return RmpStatus.SUCCESS

    # ---------------------------------------------------------------- hardware checks (§7, rules 6-7)
    def _range_pages(self, spa: int, size: PageSize) -> range:
        pfn = spa // PAGE_SIZE
        if size == PageSize.SIZE_4K:
            return range(pfn, pfn + 1)
        head = self._head(pfn)  # 1G mappings are checked as 2M (§7, LKML-1G)
        return range(head, head + PAGES_PER_2M)

    def _any_assigned(self, spa: int, size: PageSize) -> bool:
        return any(self._covered(p) and self._page(p).assigned for p in self._range_pages(spa, size))

    def check_host_write(self, spa: int, mapping_size: PageSize) -> None:
        if self._any_assigned(spa, mapping_size):
            raise ModelHostPageFault(spa)

    def check_guest_access(
        self,
        spa: int,
        *,
        asid: int,
        gpa: int,
        npt_size: PageSize,
        write: bool = False,
        fetch: bool = False,
        encrypted: bool = True,
        vmpl: int = 0,
    ) -> None:
        if not encrypted and not fetch:
            if write and self._any_assigned(spa, npt_size):
                raise ModelNestedPageFault(NPF_RMP | NPF_WRITE, gpa, SHARED_CHECKED)
            return
        pfn = spa // PAGE_SIZE
        p = self._page(pfn)
        access = NPF_ENC | (NPF_WRITE if write else 0) | (NPF_FETCH if fetch else 0)
        want_size = PageSize.SIZE_4K if npt_size == PageSize.SIZE_4K else PageSize.SIZE_2M
        if (
            not self._covered(pfn)
            or not p.assigned
            or p.asid != asid
            or p.gpa // PAGE_SIZE != gpa // PAGE_SIZE
            or p.immutable
            or p.page_size != want_size
        ):
            raise ModelNestedPageFault(NPF_RMP | access, gpa, PRIVATE_CHECKED)
        if not p.validated:
            raise VmmCommunicationException(0x404, gpa)
        need = PERM_EXEC_SUPERVISOR if fetch else PERM_WRITE if write else PERM_READ
        if not p.perms[vmpl] & need:
            raise ModelNestedPageFault(NPF_RMP | NPF_VMPL, gpa, VMPL_CHECKED)

    # ---------------------------------------------------------------- range operations (loops)
    def rmpupdate_range(
        self,
        spa: int,
        npages: int,
        *,
        assigned: bool,
        page_size: PageSize = PageSize.SIZE_4K,
        gpa: int = 0,
        asid: int = 0,
        immutable: bool = False,
    ) -> np.ndarray:
        step_pages = PAGES_PER_2M if page_size == PageSize.SIZE_2M else 1
        step = step_pages * PAGE_SIZE
        out = [
            self.rmpupdate(
                spa + i * step,
                assigned=assigned,
                page_size=page_size,
                gpa=gpa + i * step,
                asid=asid,
                immutable=immutable,
            )
            for i in range(npages // step_pages)
        ]
        return np.array(out, dtype=np.int64)

    def pvalidate_range(
        self, spa: int, npages: int, *, asid: int, gpa: int, page_size: PageSize, validate: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        step_pages = PAGES_PER_2M if page_size == PageSize.SIZE_2M else 1
        step = step_pages * PAGE_SIZE
        status: list[int] = []
        cf: list[bool] = []
        for i in range(npages // step_pages):
            try:
                s, c = self.pvalidate(
                    spa + i * step, asid=asid, gpa=gpa + i * step, page_size=page_size, validate=validate
                )
            except NestedPageFault:
                s, c = -1, False
            status.append(int(s))
            cf.append(c)
        return np.array(status, dtype=np.int64), np.array(cf, dtype=bool)

    def psmash_range(self, spa: int, npages: int) -> np.ndarray:
        first = -(-spa // SIZE_2M_BYTES) * SIZE_2M_BYTES
        end = spa + npages * PAGE_SIZE
        return np.array([self.psmash(a) for a in range(first, end, SIZE_2M_BYTES)], dtype=np.int64)

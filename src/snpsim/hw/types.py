"""Architectural types of AMD SEV-SNP: RMP entry, instruction return codes, page sizes and fault exceptions.

Models the values software sees from the SNP instructions and from the hardware RMP checks
(AMD APM vol. 2 §15.36, tables 15-34..15-41; vol. 3 RMPUPDATE/PSMASH/PVALIDATE/RMPADJUST/RMPREAD).
Sources: ``shared/reference/amd-snp-arch.md`` §1, §3-§8 (return codes from MS-docs, Linux
``arch/x86/include/asm/sev.h``; error-code bits from Linux ``trap_pf.h``/``kvm_host.h`` PFERR_*).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
#: 4K pages in a 2M page (PTRS_PER_PMD).
PAGES_PER_2M = 512
#: 4K pages in a 1G page.
PAGES_PER_1G = 512 * 512
SIZE_2M_BYTES = PAGE_SIZE * PAGES_PER_2M
SIZE_1G_BYTES = PAGE_SIZE * PAGES_PER_1G


class RmpStatus(IntEnum):
    """Return codes in EAX of RMPUPDATE / PSMASH / PVALIDATE / RMPADJUST (amd-snp-arch.md §3-§6)."""

    SUCCESS = 0
    FAIL_INPUT = 1
    FAIL_PERMISSION = 2
    FAIL_INUSE = 3
    FAIL_OVERLAP = 4
    FAIL_SIZEMISMATCH = 6
    #: PSMASH: "the page doesn't meet the requirements for expansion" (MS-docs code 7; §10 item 1).
    FAIL_BADADDR = 7


class PageSize(IntEnum):
    """RMP Page_Size (0 = 4K, 1 = 2M); ``SIZE_1G`` exists for host/NPT mappings only."""

    SIZE_4K = 0
    SIZE_2M = 1
    SIZE_1G = 2

    @property
    def npages(self) -> int:
        """Number of 4K pages covered by a page of this size."""
        return (1, PAGES_PER_2M, PAGES_PER_1G)[int(self)]

    @property
    def nbytes(self) -> int:
        return self.npages * PAGE_SIZE


# VMPL permission mask bits (APM Table 15-36, amd-snp-arch.md §1).
PERM_READ = 1 << 0
PERM_WRITE = 1 << 1
PERM_EXEC_USER = 1 << 2
PERM_EXEC_SUPERVISOR = 1 << 3
PERM_SUPERVISOR_SHADOW_STACK = 1 << 4
PERM_ALL = 0x1F
PERM_RESERVED = 0xE0
#: VMPLs implemented by the model (SNP implements 4: VMPL0..3).
NUM_VMPLS = 4

# Host #PF error code bits (Linux arch/x86/include/asm/trap_pf.h).
PF_PRESENT = 1 << 0
PF_WRITE = 1 << 1
PF_USER = 1 << 2
PF_INSTR = 1 << 4
PF_RMP = 1 << 31

# #VMEXIT(NPF) EXITINFO1 bits (Linux PFERR_*, openvmm SevNpfInfo; amd-snp-arch.md §7).
NPF_PRESENT = 1 << 0
NPF_WRITE = 1 << 1
NPF_USER = 1 << 2
NPF_FETCH = 1 << 4
NPF_RMP = 1 << 31
NPF_GUEST_FINAL = 1 << 32
NPF_GUEST_PAGE = 1 << 33
NPF_ENC = 1 << 34
NPF_SIZEM = 1 << 35
NPF_VMPL = 1 << 36

#: SEV-ES exit code of the #VC raised on an access to an unvalidated private page.
VC_PAGE_NOT_VALIDATED = 0x404
#: #VMEXIT exit code of a nested page fault.
SVM_EXIT_NPF = 0x400


@dataclass(frozen=True, slots=True)
class RmpEntry:
    """One RMP entry as software reads it (APM Table 15-34).

    ``gpa`` is a byte address. ``vmpl_perms`` holds the permission masks of VMPL0..3. For a page covered by
    an assigned 2M entry, the entry returned is the 2M entry's view of that 4K page (assigned, page size
    SIZE_2M, gpa = the 2M entry's gpa + the page's offset), see :class:`snpsim.hw.rmp.Rmp`.
    """

    assigned: bool = False
    page_size: PageSize = PageSize.SIZE_4K
    immutable: bool = False
    gpa: int = 0
    asid: int = 0
    vmsa: bool = False
    validated: bool = False
    vmpl_perms: tuple[int, ...] = (0, 0, 0, 0)


class HostPageFault(Exception):
    """A #PF taken by the host kernel; ``error_code`` bit 31 (``PF_RMP``) marks an RMP violation."""

    def __init__(self, address: int, error_code: int, reason: str = "") -> None:
        self.address = address
        self.error_code = error_code
        self.reason = reason
        super().__init__(f"host #PF at {address:#x} error_code {error_code:#x} {reason}".rstrip())

    @property
    def rmp(self) -> bool:
        return bool(self.error_code & PF_RMP)


class NestedPageFault(Exception):
    """#VMEXIT(NPF): ``exit_info1`` carries the PFERR bits, ``gpa`` is EXITINFO2 (the faulting GPA)."""

    exit_code = SVM_EXIT_NPF

    def __init__(self, exit_info1: int, gpa: int = 0, reason: str = "") -> None:
        self.exit_info1 = exit_info1
        self.gpa = gpa
        self.reason = reason
        super().__init__(f"#NPF gpa {gpa:#x} exit_info1 {exit_info1:#x} {reason}".rstrip())


class VmmCommunicationException(Exception):
    """#VC raised inside the guest; ``error_code`` 0x404 = PAGE_NOT_VALIDATED."""

    def __init__(self, error_code: int = VC_PAGE_NOT_VALIDATED, gpa: int = 0) -> None:
        self.error_code = error_code
        self.gpa = gpa
        super().__init__(f"#VC error_code {error_code:#x} gpa {gpa:#x}")

"""The architecture every layer shares: page geometry, SNP instruction results, fault events, guest instructions.

What guest software, the host kernel, KVM and the VMM can see of an AMD SEV-SNP machine, as the AMD APM and the
GHCB specification define it (APM vol. 2 §15.36, tables 15-34..15-41; vol. 3 RMPUPDATE/PSMASH/PVALIDATE/
RMPADJUST/RMPREAD; GHCB spec 56421 §2.3.1, §4.1.6). Sources: ``shared/reference/amd-snp-arch.md`` §1, §3-§9
(return codes from MS-docs and Linux ``arch/x86/include/asm/sev.h``, ``sev-common.h``; error-code bits from Linux
``trap_pf.h``/``kvm_host.h`` PFERR_*).

The layers implement this vocabulary, they do not own it: :mod:`snpsim.hw` implements the RMP and the instructions
(and re-exports these types as its public API), the guest builds instructions and PSC descriptors, KVM decodes
them. So ``guest``, ``vmm`` and ``kvm`` import this module and never :mod:`snpsim.hw`: only the host layer reaches
the hardware (``shared/DESIGN.md``, "Layers").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

__all__ = [
    "NPF_ENC",
    "NPF_FETCH",
    "NPF_GUEST_FINAL",
    "NPF_GUEST_PAGE",
    "NPF_PRESENT",
    "NPF_RMP",
    "NPF_SIZEM",
    "NPF_USER",
    "NPF_VMPL",
    "NPF_WRITE",
    "NUM_VMPLS",
    "PAGES_PER_1G",
    "PAGES_PER_2M",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "PERM_ALL",
    "PERM_EXEC_SUPERVISOR",
    "PERM_EXEC_USER",
    "PERM_READ",
    "PERM_RESERVED",
    "PERM_SUPERVISOR_SHADOW_STACK",
    "PERM_WRITE",
    "PF_INSTR",
    "PF_PRESENT",
    "PF_RMP",
    "PF_USER",
    "PF_WRITE",
    "SIZE_1G_BYTES",
    "SIZE_2M_BYTES",
    "SVM_EXIT_NPF",
    "VC_PAGE_NOT_VALIDATED",
    "Compute",
    "HostPageFault",
    "Instruction",
    "NestedPageFault",
    "PageSize",
    "Protocol",
    "PscEntry",
    "PscRequest",
    "PscResult",
    "Pvalidate",
    "PvalidateResult",
    "RmpEntry",
    "RmpStatus",
    "Touch",
    "VcRaised",
    "Vmgexit",
    "VmmCommunicationException",
]

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


# ---------------------------------------------------------------------------------------------- GHCB protocol


class Protocol(StrEnum):
    """How the guest sends a Page State Change (GHCB spec 56421 §4.1.6; amd-snp-arch.md §9)."""

    #: GHCB MSR protocol (GHCBInfo 0x014): one 4K page per request; used before a GHCB exists.
    MSR = "msr"
    #: GHCB NAE event SVM_VMGEXIT_PSC (0x80000010): a descriptor of up to 253 entries (Linux sends at most 64).
    GHCB = "ghcb"


#: 4K pages in a 2M PSC entry.
_PSC_2M_PAGES = PAGES_PER_2M


@dataclass(frozen=True, slots=True)
class PscEntry:
    """One PSC entry: ``gfn`` (bits 51:12), ``size`` (bit 56: 0 = 4K, 1 = 2M), operation private/shared."""

    gfn: int
    size: int  # 0 = 4K, 1 = 2M
    to_private: bool

    @property
    def npages(self) -> int:
        """4K pages covered by the entry."""
        return _PSC_2M_PAGES if self.size == 1 else 1


@dataclass(frozen=True, slots=True)
class PscRequest:
    """One guest exit: a GHCB PSC descriptor (one VMGEXIT) or one MSR-protocol request (one 4K entry)."""

    protocol: Protocol
    entries: tuple[PscEntry, ...]

    @property
    def gfn(self) -> int:
        """First GFN covered (entries are GFN-contiguous and ascending)."""
        return self.entries[0].gfn

    @property
    def npages(self) -> int:
        """4K pages covered by all entries."""
        return sum(e.npages for e in self.entries)


# ---------------------------------------------------------------------------------------------- guest instructions
# What an SNP guest's vCPU executes, as far as host memory management can see it. A guest program is a generator
# that yields these and receives each one's result (``program.send(result)``); KVM_RUN executes them on the host
# CPU (``snpsim.kvm.vcpu``). Ranges stand for the guest kernel's loops (one PVALIDATE or access per page).


@dataclass(frozen=True, slots=True)
class Compute:
    """The guest runs its own code for ``ns`` (no exit): the time between the events it causes."""

    ns: int


@dataclass(frozen=True, slots=True)
class Touch:
    """Loads/stores to ``npages`` pages from ``gfn``, in order, as private (C=1) or shared (C=0) memory.

    Result: ``None`` when every page was accessed, or a :class:`VcRaised` for the first page whose access raised
    #VC (the pages before it were accessed)."""

    gfn: int
    npages: int
    private: bool
    write: bool = True


@dataclass(frozen=True, slots=True)
class Pvalidate:
    """The guest's PVALIDATE loop (``pvalidate_pages``) over ``npages`` pages from ``gfn`` in ``size`` steps.

    ``retry_4k``: a 2M step that fails with FAIL_SIZEMISMATCH (4K RMP entries) is retried as 512 4K PVALIDATEs
    and the loop goes on, as Linux's ``pvalidate_pages`` does ("if (rc == PVALIDATE_FAIL_SIZEMISMATCH && size ==
    RMP_PG_SIZE_2M) ... pvalidate_4k_page"); the retries touch pages no other step touches, so they run after the
    2M steps, together. Result: a :class:`PvalidateResult`: the loop stops at the first instruction that does not
    succeed (an RMP #NPF is handled by the hypervisor and the instruction re-executed, as the hardware restarts
    it)."""

    gfn: int
    npages: int
    size: PageSize
    validate: bool
    retry_4k: bool = False


@dataclass(frozen=True, slots=True)
class Vmgexit:
    """VMGEXIT carrying a Page State Change request (GHCB NAE event or MSR protocol). Result: :class:`PscResult`."""

    request: PscRequest


Instruction = Compute | Touch | Pvalidate | Vmgexit


@dataclass(frozen=True, slots=True)
class VcRaised:
    """#VC raised by an access to ``gfn`` (``error_code`` 0x404: PAGE_NOT_VALIDATED)."""

    gfn: int
    error_code: int = VC_PAGE_NOT_VALIDATED


@dataclass(frozen=True, slots=True)
class PvalidateResult:
    """``done`` pages passed (succeeded or unchanged) before instruction stopped the loop with ``status``
    (``SUCCESS``: the whole range was done); ``changed`` pages had their Validated bit changed."""

    done: int
    status: RmpStatus
    changed: int


@dataclass(frozen=True, slots=True)
class PscResult:
    """The hypervisor's answer to a PSC request: 0 on success (GHCB ``sw_exit_info_2``), else an error."""

    error: int = 0

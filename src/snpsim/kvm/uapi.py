"""KVM's userspace API as the VMM sees it: the exits ``KVM_RUN`` returns (``include/uapi/linux/kvm.h``).

``KVM_RUN`` returns to the VMM with ``kvm_run->exit_reason`` set when KVM cannot finish what the guest asked for
on its own (``shared/reference/linux-snp-host.md`` §4-§5):

- ``KVM_EXIT_HYPERCALL`` with ``nr = KVM_HC_MAP_GPA_RANGE`` (args: gpa, npages, attributes): the guest's Page State
  Change, forwarded by ``snp_begin_psc`` / ``snp_begin_psc_msr`` (one exit per run of coalesced PSC entries);
- ``KVM_EXIT_MEMORY_FAULT`` (gpa, size, flags ``KVM_MEMORY_EXIT_FLAG_PRIVATE``): the guest accessed a page as
  private or shared against its memory attribute (an implicit conversion); ``size`` is ``PAGE_SIZE``
  (``kvm_mmu_prepare_memory_fault_exit``);
- ``KVM_EXIT_SHUTDOWN``: the guest has nothing more to run (here: its program ended).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from snpsim.arch import PAGE_SHIFT

KVM_EXIT_HYPERCALL = 3
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_MEMORY_FAULT = 39
KVM_HC_MAP_GPA_RANGE = 12
#: ``KVM_MAP_GPA_RANGE_ENCRYPTED`` (attributes bit 4) and the page-size flags of the hypercall's attributes
KVM_MAP_GPA_RANGE_ENCRYPTED = 1 << 4
KVM_MAP_GPA_RANGE_PAGE_SZ_2M = 1 << 0
KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3


@dataclass(frozen=True, slots=True)
class HypercallExit:
    """``KVM_EXIT_HYPERCALL`` / ``KVM_HC_MAP_GPA_RANGE``: convert ``npages`` 4K pages from ``gfn``."""

    gfn: int
    npages: int
    to_private: bool
    huge: bool = False
    reason: int = KVM_EXIT_HYPERCALL

    @property
    def gpa(self) -> int:
        return self.gfn << PAGE_SHIFT

    @property
    def attributes(self) -> int:
        return (KVM_MAP_GPA_RANGE_ENCRYPTED if self.to_private else 0) | (
            KVM_MAP_GPA_RANGE_PAGE_SZ_2M if self.huge else 0
        )


@dataclass(frozen=True, slots=True)
class MemoryFaultExit:
    """``KVM_EXIT_MEMORY_FAULT``: the guest accessed ``npages`` pages from ``gfn`` as ``private`` (or shared)
    against their attribute."""

    gfn: int
    npages: int
    private: bool
    reason: int = KVM_EXIT_MEMORY_FAULT

    @property
    def flags(self) -> int:
        return KVM_MEMORY_EXIT_FLAG_PRIVATE if self.private else 0


@dataclass(frozen=True, slots=True)
class ShutdownExit:
    """``KVM_EXIT_SHUTDOWN``: the vCPU has stopped."""

    reason: int = KVM_EXIT_SHUTDOWN


KvmExit = HypercallExit | MemoryFaultExit | ShutdownExit


class SnpPageType(IntEnum):
    """``KVM_SEV_SNP_PAGE_TYPE_*`` of ``struct kvm_sev_snp_launch_update`` (include/uapi/linux/kvm.h)."""

    NORMAL = 1
    ZERO = 3
    UNMEASURED = 4
    SECRETS = 5
    CPUID = 6


@dataclass(frozen=True, slots=True)
class SnpLaunchUpdate:
    """One ``KVM_SEV_SNP_LAUNCH_UPDATE`` (``struct kvm_sev_snp_launch_update``: ``gfn_start``, ``len``, ``type``):
    ``npages`` 4K pages from ``gfn`` loaded into private guest_memfd memory before the guest runs
    (``kvm_gmem_populate`` -> ``sev_gmem_post_populate``)."""

    gfn: int
    npages: int
    type: SnpPageType = SnpPageType.NORMAL

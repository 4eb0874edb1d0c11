"""guest -> vmm -> kvm -> host -> hw for single conversions, with figures computed by hand.

Sources: linux-snp-host.md §4 (mapping level = min(folio, RMP level, uniform attributes); sev_gmem_prepare 2M
when the folio allows and all 512 frames are unassigned; sev_handle_rmp_fault PSMASHes), §5 (punch hole frees
only whole folios; QEMU discards shared memory on to-private, never for hugetlb), amd-snp-arch.md §8-§9.
"""

from __future__ import annotations

import numpy as np
import pytest

from snpsim.guest.events import Access, Conversion, Protocol
from snpsim.host import HostKernel
from snpsim.hw import PageSize
from snpsim.metrics import Counters
from snpsim.policy import Policy, presets
from snpsim.runner import GuestDriver
from snpsim.vmm.qemu import Qemu

HOST_FRAMES = 262144  # 1 GiB
GUEST_PAGES = 16384  # 64 MiB
M2 = 2 << 20
K4 = 4096


def stack(policy: Policy | str) -> tuple[HostKernel, Qemu, GuestDriver, Counters]:
    pol = presets[policy] if isinstance(policy, str) else policy
    host = HostKernel(HOST_FRAMES, pol)
    counters = Counters()
    ram = np.ones(GUEST_PAGES, dtype=bool)
    vmm = Qemu(host, pol, ram, asid=1, counters=counters)
    return host, vmm, GuestDriver(vmm), counters


def test_msr_ghcb_share_is_one_request_one_exit_per_page() -> None:
    _, vmm, guest, c = stack("upstream")
    for vcpu in range(4):
        guest.execute(Conversion(100 + vcpu, 1, False, Protocol.MSR, what="ghcb", vcpu=vcpu))
    assert (c.psc_request_count, c.vmm_exit_count, c.to_shared_count, c.to_private_count) == (4, 4, 4, 0)
    assert not vmm.kvm.attrs.private[100:104].any()
    assert vmm.kvm.attrs.private[104]  # QEMU set all guest_memfd RAM private at memslot creation


def test_ghcb_psc_merges_adjacent_entries_into_one_exit() -> None:
    _, _, guest, c = stack("upstream")
    # 130 4K pages: descriptors of 64 + 64 + 2 entries; each descriptor's entries are contiguous: one exit each
    guest.execute(Conversion(1000, 130, False, Protocol.GHCB))
    assert (c.psc_request_count, c.vmm_exit_count, c.to_shared_count) == (3, 3, 130)


@pytest.mark.parametrize("prefault", [False, True])
def test_upstream_private_fault_maps_4k_and_assigns_4k(prefault: bool) -> None:
    host, vmm, guest, c = stack(Policy(**{**presets["upstream"].as_dict(), "prefault_on_convert": prefault}))
    guest.execute(Conversion(0, 512, True, Protocol.GHCB, huge_ok=True))  # one 2M entry, then PVALIDATE 2M
    # 4K guest_memfd folios: 512 4K RMPUPDATEs, 512 4K NPT mappings; the 2M PVALIDATE fails with
    # FAIL_SIZEMISMATCH and the guest validates 512 x 4K. Without pre-fault each mapping is one #NPF ("each page
    # validation will result in VMEXIT to map the page", QEMU 4cdc489eb9c2); with it, KVM_PRE_FAULT_MEMORY maps
    # all 512 after the conversion and no #NPF remains.
    assert host.rmp.rmpupdate_count == 512
    assert c.npf_count == (0 if prefault else 512)
    assert vmm.kvm.npt_bytes() == (M2, 0, 0)
    assert vmm.private_bytes() == M2
    assert all(host.rmp.rmpread(int(p) * K4).validated for p in vmm.kvm.npt.pfn[:512])
    assert vmm.guest_bytes() == M2


def test_2m_folio_private_fault_is_one_2m_rmpupdate_one_2m_mapping() -> None:
    host, vmm, guest, c = stack("upm-nosplit")
    guest.execute(Conversion(512, 512, True, Protocol.GHCB, huge_ok=True))
    assert host.rmp.rmpupdate_count == 1
    assert c.npf_count == 0  # the 2M mapping is installed by QEMU's pre-fault, not by a #NPF
    assert vmm.kvm.npt_bytes() == (0, M2, 0)
    assert host.rmp.rmpread(int(vmm.kvm.npt.pfn[700]) * K4).validated  # one 2M PVALIDATE
    assert host.metrics()["directmap_4k"] == 0


def test_partial_to_shared_keeps_the_2m_folio_and_costs_waste() -> None:
    host, vmm, guest, c = stack("upm-nosplit")
    guest.execute(Conversion(512, 512, True, Protocol.GHCB, huge_ok=True))
    guest.execute(Conversion(600, 1, False, Protocol.GHCB))  # rescind 4K on a 2M entry: #NPF SIZEM -> PSMASH
    assert host.rmp.psmash_count == 1
    guest.execute(Access(600, 1, private=False))
    # the 2M folio is not freed by a 4K hole; the shared page is a new 4K page of the VMM
    assert vmm.private_bytes() == M2
    assert vmm.shared_bytes() == K4
    assert vmm.guest_bytes() == M2
    assert vmm.private_bytes() + vmm.shared_bytes() - vmm.guest_bytes() == K4
    # the 2M range now has mixed attributes: no 2M NPT mapping may remain
    assert vmm.kvm.npt.level[512:1024].max() == int(PageSize.SIZE_4K)
    guest.execute(Access(601, 1, private=True))
    assert c.guest_vc_count == 0


def test_hugetlb_shared_page_costs_a_2m_page_and_is_never_discarded() -> None:
    host, vmm, guest, _ = stack("hugetlb")
    # the hugetlbfs mmap reserved the whole 64 MiB RAM block (hugetlb_reserve_pages): 32 huge pages, held from now
    ram = GUEST_PAGES * K4
    assert host.hugetlb_reserved(9) == 32 and vmm.shared_bytes() == ram
    guest.execute(Conversion(512, 512, True, Protocol.GHCB, huge_ok=True))
    guest.execute(Conversion(600, 1, False, Protocol.GHCB))
    guest.execute(Access(600, 1, private=False))
    # the shared fault takes one reserved 2M page: 31 stay reserved, the host's memory for the block is unchanged
    assert host.hugetlb_reserved(9) == 31 and vmm.memory.allocated_pages == 512
    assert vmm.shared_bytes() == ram
    # guest_bytes: 511 private pages of the 2M folio + the one shared page; the rest of the reservation is waste
    assert vmm.guest_bytes() == M2
    assert vmm.private_bytes() + vmm.shared_bytes() - vmm.guest_bytes() == ram
    guest.execute(Conversion(600, 1, True, Protocol.GHCB))  # back to private: hugetlb is not discarded
    assert vmm.memory.allocated_pages == 512 and vmm.shared_bytes() == ram


def test_4k_backing_discards_shared_copy_on_to_private() -> None:
    _, vmm, guest, _ = stack("upstream")
    guest.execute(Conversion(0, 8, True, Protocol.GHCB))
    guest.execute(Conversion(0, 8, False, Protocol.GHCB))
    guest.execute(Access(0, 8, private=False))
    assert (vmm.private_bytes(), vmm.shared_bytes()) == (0, 8 * K4)  # punched gmem, faulted shared
    guest.execute(Conversion(0, 8, True, Protocol.GHCB))
    assert (vmm.private_bytes(), vmm.shared_bytes()) == (8 * K4, 0)


def test_no_discard_keeps_both_copies() -> None:
    pol = Policy(
        private_backing="gmem",
        private_granularity="4k",
        shared_backing="4k",
        discard_on_convert=False,
        directmap="split",
        directmap_restore="never",
        rmp_fault="oops",
    )
    _, vmm, guest, _ = stack(pol)
    guest.execute(Conversion(0, 8, True, Protocol.GHCB))
    guest.execute(Conversion(0, 8, False, Protocol.GHCB))
    guest.execute(Access(0, 8, private=False))
    assert (vmm.private_bytes(), vmm.shared_bytes(), vmm.double_allocated_bytes()) == (8 * K4, 8 * K4, 8 * K4)


def test_implicit_conversion_on_mismatched_access() -> None:
    _, vmm, guest, c = stack("upstream")
    guest.execute(Access(50, 1, private=False))  # attribute is private: KVM_EXIT_MEMORY_FAULT
    assert c.vmm_exit_count == 1
    assert not vmm.kvm.attrs.private[50]
    assert vmm.shared_bytes() == K4


def test_fixup_turns_a_host_write_into_a_guest_vc() -> None:
    host, vmm, guest, c = stack("fixup")
    guest.execute(Conversion(0, 1, True, Protocol.GHCB))  # pre-UPM: the VMM's page, made private in place
    pfn = int(vmm.kvm.npt.pfn[0])
    assert host.rmp.rmpread(pfn * K4).validated
    neighbour = pfn ^ 1  # same 2M range, hypervisor-owned, mapped by the 1G direct map
    assert host.kernel_write(neighbour, "test") is True
    assert host.fixup_page_count == 1 and host.host_crash_count == 0
    guest.execute(Access(0, 1, private=True))
    assert c.guest_vc_count == 1


def test_oops_policy_crashes_instead_and_guest_keeps_integrity() -> None:
    host, vmm, guest, c = stack(
        Policy(
            private_backing="vmm",
            private_granularity="4k",
            shared_backing="4k",
            discard_on_convert=True,
            directmap="keep",
            directmap_restore="never",
            rmp_fault="oops",
        )
    )
    guest.execute(Conversion(0, 1, True, Protocol.GHCB))
    pfn = int(vmm.kvm.npt.pfn[0])
    assert host.kernel_write(pfn ^ 1, "test") is False
    assert host.host_crash_count == 1
    guest.execute(Access(0, 1, private=True))
    assert c.guest_vc_count == 0


def test_destroy_releases_everything_and_upm_remerges() -> None:
    host, vmm, guest, _ = stack("upm")
    guest.execute(Conversion(0, 600, True, Protocol.GHCB))
    guest.execute(Conversion(10, 5, False, Protocol.GHCB))
    guest.execute(Access(10, 5, private=False))
    assert host.metrics()["directmap_4k"] > 0
    vmm.destroy()
    assert host.buddy.used_frames == 0
    assert host.rmp.assigned_count() == 0
    m = host.metrics()
    assert (m["directmap_4k"], m["directmap_2m"], m["directmap_1g"]) == (0, 0, 1 << 30)

"""Host-side SNP pages and the launch: VMSAs, the SNP context, guest-request and firmware pages, kvm_gmem_populate.

Expected values are derived from the kernel sources quoted at each test:

- arch/x86/kvm/svm/sev.c ``snp_safe_alloc_page_node()``: "p = alloc_pages_node(node, gfp | __GFP_ZERO, 1);
  ... if (IS_ALIGNED(pfn, PTRS_PER_PMD)) __free_page(p++); else __free_page(p + 1);"
- ``snp_launch_update_vmsa()``: "ret = rmp_make_private(pfn, INITIAL_VMSA_GPA, PG_LEVEL_4K, sev->asid, true);"
- drivers/crypto/ccp/sev-dev.c ``rmp_mark_pages_firmware()``: "rc = rmp_make_private(pfn, 0, PG_LEVEL_4K, 0, true);"
- ``snp_guest_req_init()``: the request page is ``alloc_page()``, the response page ``snp_alloc_firmware_page()``.
- arch/x86/virt/svm/sev.c ``adjust_direct_map()`` (upstream, directmap = split): a 4K RMPUPDATE splits the 2M
  direct-map range holding the page.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snpsim.arch import PAGE_SHIFT, PAGES_PER_2M
from snpsim.guest.linux import OVMF_IMAGE_BYTES, OVMF_SEV_METADATA, LinuxGuestConfig, boot_events
from snpsim.host import HostKernel, Owner
from snpsim.hw.types import PageSize
from snpsim.kvm.uapi import SnpLaunchUpdate, SnpPageType
from snpsim.kvm.vm import INITIAL_VMSA_GPA
from snpsim.metrics import METRICS, Counters
from snpsim.policy import presets
from snpsim.runner import default_launch
from snpsim.vmm.qemu import Qemu

GIB_PAGES = 1 << 18
HOST_PAGES = 2 * GIB_PAGES  # a clean 2 GiB host, all of it direct-mapped at 1G


def _vm(
    preset: str, vcpus: int, launch: list[SnpLaunchUpdate], host: HostKernel | None = None
) -> tuple[HostKernel, Qemu]:
    policy = presets[preset]
    host = host or HostKernel(HOST_PAGES, policy, max_level=PageSize.SIZE_2M)
    ram = np.zeros(64 << 20 >> PAGE_SHIFT, dtype=bool)
    ram[:] = True  # a 64 MiB guest, all RAM (no hole inside its gfn span)
    qemu = Qemu(host, policy, ram, asid=1, counters=Counters(), launch=launch)
    for v in range(vcpus):
        qemu.kvm.sev_es_vcpu_create(v)
    qemu.sev_snp_launch_finish()
    return host, qemu


def test_snp_host_bytes_is_a_metric() -> None:
    assert "snp_host_bytes" in METRICS


def test_safe_alloc_never_returns_a_2m_aligned_page() -> None:
    host = HostKernel(HOST_PAGES, presets["upstream"])
    pfns = [host.snp_safe_alloc_page() for _ in range(600)]
    assert all(p is not None and p % PAGES_PER_2M for p in pfns)
    # the other page of each order-1 pair went back: 600 pages allocated, not 1200
    assert np.count_nonzero(host.frames.tags(0, HOST_PAGES) == Owner.KERNEL) == 600


def test_four_vcpus_upstream_exact_pages_states_and_splits() -> None:
    host = HostKernel(HOST_PAGES, presets["upstream"], max_level=PageSize.SIZE_2M)
    splits0 = host.directmap.level2_splits
    host, qemu = _vm("upstream", 4, [], host)
    kvm = qemu.kvm
    vmsas = [kvm.vmsas[v] for v in range(4)]
    # 4 VMSAs + the context page + the guest-request response page are assigned; the request page is not
    assert host.metrics()["snp_host_bytes"] == (4 + 1 + 1) * 4096
    assert kvm.guest_req_buf is not None and not host.rmp.rmpread(kvm.guest_req_buf << PAGE_SHIFT).assigned
    for pfn in vmsas:
        e = host.rmp.rmpread(pfn << PAGE_SHIFT)
        # rmp_make_private(pfn, INITIAL_VMSA_GPA, PG_LEVEL_4K, asid, true), then SNP_LAUNCH_UPDATE (type VMSA)
        assert (e.assigned, e.page_size, e.asid, e.gpa, e.vmsa) == (True, PageSize.SIZE_4K, 1, INITIAL_VMSA_GPA, True)
        assert e.validated and not e.immutable  # Guest-Valid after the firmware's update [I]
    for pfn in (kvm.snp_context, kvm.guest_resp_buf):
        assert pfn is not None
        e = host.rmp.rmpread(pfn << PAGE_SHIFT)
        # rmp_mark_pages_firmware: rmp_make_private(pfn, 0, PG_LEVEL_4K, 0, true) -> the Firmware state
        assert (e.assigned, e.asid, e.immutable, e.vmsa) == (True, 0, True, False)
    # adjust_direct_map: one 2M->4K split per distinct 2M range holding a host SNP page
    ranges = {p // PAGES_PER_2M for p in host.snp_pages}
    assert host.directmap.level2_splits - splits0 == len(ranges)
    for p in host.snp_pages:
        assert host.directmap.level(p) == PageSize.SIZE_4K


def test_vmsas_in_distinct_2m_ranges_split_one_range_each() -> None:
    """Fill each 2M range's head so that every VMSA lands in a new 2M range: 4 VMSAs, 4 more splits."""
    host = HostKernel(HOST_PAGES, presets["upstream"], max_level=PageSize.SIZE_2M)
    vm_pfns = []
    for _ in range(4):
        pfn = host.snp_safe_alloc_page()
        assert pfn is not None
        vm_pfns.append(pfn)
        # take the rest of its 2M range so that the next allocation comes from another one
        while True:
            q = host.alloc(0, Owner.KERNEL, zero=False)
            assert q is not None
            if q // PAGES_PER_2M != pfn // PAGES_PER_2M:
                host.free(q, 0)
                break
    assert len({p // PAGES_PER_2M for p in vm_pfns}) == 4
    s0 = host.directmap.level2_splits
    for p in vm_pfns:
        host.snp_make_kernel_page_private(p, INITIAL_VMSA_GPA, 1, "vmsa")
    assert host.directmap.level2_splits - s0 == 4
    assert host.metrics()["snp_host_bytes"] == 4 * 4096
    # before SNP_LAUNCH_UPDATE: Pre-Guest (assigned to the guest ASID, immutable, no VMSA bit yet)
    e = host.rmp.rmpread(vm_pfns[0] << PAGE_SHIFT)
    assert (e.assigned, e.asid, e.immutable, e.vmsa, e.validated) == (True, 1, True, False, False)
    # the host cannot take an immutable page back by itself (RMPUPDATE: FAIL_PERMISSION, amd-snp-arch.md §3)
    assert host.rmp_make_shared(vm_pfns[0], PageSize.SIZE_4K) != 0
    assert host.snp_launch_update(np.array(vm_pfns, dtype=np.int64), vmsa=True) == 0
    e = host.rmp.rmpread(vm_pfns[0] << PAGE_SHIFT)
    assert (e.assigned, e.asid, e.immutable, e.vmsa, e.validated) == (True, 1, False, True, True)
    # a second update of a Guest-Valid page is refused (not Pre-Guest)
    assert host.snp_launch_update(np.array(vm_pfns[:1], dtype=np.int64)) == 1


@pytest.mark.parametrize("preset", sorted(presets))
def test_teardown_gives_every_host_snp_page_back(preset: str) -> None:
    host, qemu = _vm(preset, 2, default_launch(LinuxGuestConfig(64 << 20, 2)))
    assert host.metrics()["snp_host_bytes"] == 4 * 4096  # 2 VMSAs, context, response page
    pages = list(host.snp_pages)
    qemu.destroy()
    assert host.metrics()["snp_host_bytes"] == 0
    assert not host.snp_leaked
    for p in pages:
        assert not host.rmp.rmpread(p << PAGE_SHIFT).assigned  # hypervisor-owned again
        assert host.frames.tag(p) == Owner.FREE
        assert host.directmap.level(p) is not None  # mapped again under every preset
    assert host.rmp.assigned_count() == 0


def test_bulk_registers_and_merges_back_the_firmware_ram_block() -> None:
    """QEMU registers every RAM block, pc.bios too: ``sev_ram_block_added()`` "r = kvm_vm_ioctl(kvm_state,
    KVM_MEMORY_ENCRYPT_REG_REGION, &range)", and ``sev_ram_block_removed()`` unregisters it. Under ``bulk`` the
    OVMF image (4 MiB below 4 GiB, outside a 64 MiB guest's RAM: the firmware block's 1,024 frames) is split at
    registration and merged back at unregistration, like guest RAM; only the 2M ranges of host SNP pages (whose 4K
    RMPUPDATEs split them, as upstream's ``adjust_direct_map``) stay at 4K."""
    host, qemu = _vm("bulk", 2, default_launch(LinuxGuestConfig(64 << 20, 2)))
    bios = np.array(sorted(qemu.kvm.bios_folios.values()), dtype=np.int64)
    assert bios.size == OVMF_IMAGE_BYTES >> PAGE_SHIFT == 1024
    assert (host.directmap.levels_of(bios) == int(PageSize.SIZE_4K)).all()
    snp_2m = {p // PAGES_PER_2M for p in host.snp_pages}
    qemu.destroy()
    back = bios[~np.isin(bios // PAGES_PER_2M, list(snp_2m))]
    assert back.size and (host.directmap.levels_of(back) >= int(PageSize.SIZE_2M)).all()


@pytest.mark.parametrize("preset", sorted(presets))
def test_kernel_page_direct_map_per_preset(preset: str) -> None:
    """keep: untouched; split/bulk/unmap-nosplit: the 2M range split, the page mapped (unmap-nosplit cannot remove
    2M of kernel memory: its neighbours are other kernel objects); unmap: the page removed at 4K."""
    policy = presets[preset]
    host = HostKernel(HOST_PAGES, policy, max_level=PageSize.SIZE_2M)
    pfn = host.snp_safe_alloc_page()
    assert pfn is not None
    host.snp_make_kernel_page_private(pfn, INITIAL_VMSA_GPA, 1, "vmsa")
    level = host.directmap.level(pfn)
    dm = policy.directmap
    if dm == "keep":
        assert level == PageSize.SIZE_2M and host.directmap.level2_splits == 0
    elif dm == "unmap":
        assert level is None and host.directmap.level2_splits == 1
    else:  # split, bulk, unmap-nosplit
        assert level == PageSize.SIZE_4K and host.directmap.level2_splits == 1
    # a neighbour in the same 2M range can still be written by the kernel without an oops
    neighbour = pfn + 1 if (pfn + 1) % PAGES_PER_2M else pfn - 1
    assert host.kernel_write(neighbour, "test") and host.host_crash_count == 0


@pytest.mark.parametrize("what", ["firmware", "vmsa"])
def test_fixup_cannot_take_a_host_snp_page(what: str) -> None:
    """The ``fixup`` #PF handler makes the faulting page shared and retries; a host SNP page cannot be made shared
    (a firmware page is immutable: RMPUPDATE returns FAIL_PERMISSION; a VMSA is the guest's vCPU state): a kernel
    write to the page itself is a host crash, recorded with its path, and the entry stays assigned. A write to its
    neighbour through the 2M mapping is fixed by splitting the mapping to 4K (no page taken from the guest).
    (Found by the stack state machine's invariant 9: the retried write raised an uncaught HostPageFault.)"""
    host = HostKernel(HOST_PAGES, presets["fixup"], max_level=PageSize.SIZE_2M)
    if what == "firmware":
        pfn = host.snp_alloc_firmware_pages(0, "snp-context")
    else:
        pfn = host.snp_safe_alloc_page()
        assert pfn is not None
        host.snp_make_kernel_page_private(pfn, INITIAL_VMSA_GPA, 1, "vmsa")
    assert pfn is not None and host.directmap.level(pfn) == PageSize.SIZE_2M  # keep: not split
    neighbour = pfn + 1 if (pfn + 1) % PAGES_PER_2M else pfn - 1
    assert host.kernel_write(neighbour, "test:neighbour")
    assert (host.host_rmp_fault_count, host.host_crash_count, host.fixup_page_count) == (1, 0, 0)
    assert host.directmap.level(pfn) == PageSize.SIZE_4K
    assert not host.kernel_write(pfn, "test:self")
    assert (host.host_rmp_fault_count, host.host_crash_count) == (2, 1)
    assert (host.crashes[0].path, host.crashes[0].kind) == ("test:self", "rmp")
    assert host.rmp.rmpread(pfn << PAGE_SHIFT).assigned and pfn in host.snp_pages


def test_snp_init_tmr_is_2m_of_firmware_pages() -> None:
    """__sev_platform_init_handle_tmr with SNP: the 2 MiB TMR as firmware pages (512 4K Firmware entries)."""
    host = HostKernel(HOST_PAGES, presets["upstream"], max_level=PageSize.SIZE_2M)
    host.snp_init()
    assert host.snp_tmr is not None and host.snp_tmr % PAGES_PER_2M == 0
    assert host.metrics()["snp_host_bytes"] == 2 << 20
    assert host.rmp.rmpupdate_count == 512
    assert host.directmap.level2_splits == 1  # its one 2M range, split by the 4K RMPUPDATEs


def test_launch_populate_one_rmpupdate_and_measurement_per_page() -> None:
    cfg = LinuxGuestConfig(64 << 20, 1)
    launch = default_launch(cfg)
    # OVMF's metadata: 0x9000 + 0x1000 + 0x1000 + 0x1000 + 0x12000 bytes = 9 + 1 + 1 + 1 + 18 = 30 pages;
    # the 4 MiB flash: 1024 Normal pages
    metadata_pages = sum(size >> PAGE_SHIFT for _, size, _ in OVMF_SEV_METADATA)
    assert metadata_pages == 30
    assert sum(u.npages for u in launch) == 30 + (OVMF_IMAGE_BYTES >> PAGE_SHIFT) == 1054
    host = HostKernel(HOST_PAGES, presets["upstream"], max_level=PageSize.SIZE_2M)
    r0 = host.rmp.rmpupdate_count
    host, qemu = _vm("upstream", 1, launch, host)
    # context + response page (2), the launch pages (1054, 4K entries), the VMSA (1)
    assert host.rmp.rmpupdate_count - r0 == 2 + 1054 + 1
    assert qemu.kvm.launch_pages == 1054
    assert host.accounts["host"].count_by_op["snp_launch_update"] == 1054 + 1
    for gfn, npages, kind in ((0x800, 9, SnpPageType.ZERO), (0x80C, 1, SnpPageType.SECRETS)):
        assert kind in {u.type for u in launch}
        pfns = qemu.kvm.gmem.pfns(gfn, npages) if qemu.kvm.gmem is not None else None
        assert pfns is not None
        for p in pfns.tolist():
            e = host.rmp.rmpread(p << PAGE_SHIFT)
            assert (e.assigned, e.page_size, e.gpa >> PAGE_SHIFT, e.validated, e.immutable) == (
                True,
                PageSize.SIZE_4K,
                gfn + pfns.tolist().index(p),
                True,
                False,
            )


def test_ovmf_does_not_revalidate_launch_ranges() -> None:
    """edk2 PeiSnpSystemRamValidate.c skips the ranges the launch pre-validated: no prevalidate conversion
    covers a launch page."""
    cfg = LinuxGuestConfig(256 << 20, 1)
    ranges = tuple((u.gfn, u.npages) for u in default_launch(cfg) if u.gfn < cfg.lowmem_pages)
    from dataclasses import replace

    events = boot_events(replace(cfg, launch_validated=ranges))
    launched = np.zeros(cfg.end_gfn, dtype=bool)
    for g, n in ranges:
        launched[g : g + n] = True
    pre = [t.event for t in events if getattr(t.event, "what", "") == "ovmf-prevalidate"]
    covered = np.zeros(cfg.end_gfn, dtype=bool)
    for c in pre:
        covered[c.gfn : c.gfn + c.npages] = True
    assert not np.any(covered & launched)
    assert np.count_nonzero(covered) == cfg.lowmem_pages - 30  # everything else below 4 GiB


def test_run_reports_snp_host_bytes_in_summary_and_timeline() -> None:
    import snpsim

    r = snpsim.run(
        {
            "seed": 1,
            "policy": "upstream",
            "host": {"memory": "2G"},
            "vms": [{"memory": "256M", "vcpus": 2, "workload": "linux-boot"}],
            "duration": "50ms",
        }
    )
    # the TMR (512 pages) + 2 VMSAs + context + response page
    assert r.summary["snp_host_bytes"] == (512 + 2 + 1 + 1) * 4096
    assert "snp_host_bytes" in r.timeline.columns
    assert r.summary["host_crash_count"] == 0


def test_replayed_trace_carries_the_launch() -> None:
    """examples/traces/qemu-boot.log: its launch updates are populated (kvm_gmem_populate), not the default image.

    The trace's updates: ``gpa 0xffc00000 len 0x400000 (Normal page)`` (the flash, 1024 pages; the following
    ``gpa 0xffe00000 len 0x200000`` is its continuation), ``gpa 0x800000 len 0x11000 (Zero page)`` (17),
    ``0x811000 len 0x1000 (Secrets page)`` (1), ``0x812000 len 0x1000 (Cpuid page)`` (1), ``0x813000 len 0xd000
    (Zero page)`` (13): 1056 pages; and ``kvm_create_gmemfd ... size: 0x100000000`` gives a 4 GiB guest."""
    from pathlib import Path

    from snpsim.runner import Simulation
    from snpsim.traces.replay import plan_replay

    trace = Path(__file__).resolve().parents[2] / "examples" / "traces" / "qemu-boot.log"
    plan = plan_replay(trace, "upstream", vcpus=2, host_memory=8 << 30)
    assert plan.scenario.vms[0].memory == 4 << 30  # from the guest_memfd size
    assert sum(u.npages for u in plan.launch) == 1024 + 17 + 1 + 1 + 13
    sim = Simulation(plan.scenario, vm_events={0: plan.events}, vm_launch={0: plan.launch})
    r = sim.run()
    ops = sum((a.count_by_op.get("snp_launch_update", 0) for a in sim.host.accounts.values()), 0)
    assert ops == 1056 + 2  # every launch page and the 2 VMSAs, each measured once
    assert r.summary["snp_host_bytes"] == (512 + 2 + 1 + 1) * 4096  # the VM is still running at the end
    assert r.summary["host_crash_count"] == 0


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    preset=st.sampled_from(sorted(presets)),
    plan=st.lists(st.tuples(st.integers(1, 3), st.booleans()), min_size=1, max_size=3),
)
def test_host_snp_pages_over_vm_lifetimes(preset: str, plan: list[tuple[int, bool]]) -> None:
    """VMs created (with their launch) and destroyed in any order: at every step ``snp_host_bytes`` is (vCPUs + 2)
    pages per live VM, every such page is assigned, DirectMap4k/2M/1G sum to the mapped RAM, no host crash; at the
    end nothing is assigned and nothing leaked."""
    host = HostKernel(HOST_PAGES, presets[preset], max_level=PageSize.SIZE_2M)
    mapped = host.directmap.directmap_4k + host.directmap.directmap_2m + host.directmap.directmap_1g
    live: list[tuple[Qemu, int]] = []
    for asid, (vcpus, destroy_first) in enumerate(plan, start=1):
        if destroy_first and live:
            live.pop(0)[0].destroy()
        policy = presets[preset]
        q = Qemu(host, policy, np.ones(16 << 20 >> PAGE_SHIFT, dtype=bool), asid=asid, counters=Counters(), launch=[])
        for v in range(vcpus):
            q.kvm.sev_es_vcpu_create(v)
        q.sev_snp_launch_finish()
        live.append((q, vcpus))
        assert host.metrics()["snp_host_bytes"] == sum(n + 2 for _, n in live) * 4096
        assert all(host.rmp.rmpread(p << PAGE_SHIFT).assigned for p in host.snp_pages)
        dm = host.directmap
        assert dm.directmap_4k + dm.directmap_2m + dm.directmap_1g == mapped
        assert host.host_crash_count == 0
    for q, _ in live:
        q.destroy()
    assert host.metrics()["snp_host_bytes"] == 0 and not host.snp_leaked
    assert host.rmp.assigned_count() == 0 and host.host_crash_count == 0


@settings(max_examples=20, deadline=None)
@given(states=st.lists(st.sampled_from(("hv", "pre-guest", "firmware", "guest")), min_size=5, max_size=40))
def test_vectorised_launch_update_equals_the_single_page_command(states: list[str]) -> None:
    from snpsim.hw import Rmp

    def build() -> Rmp:
        rmp = Rmp(1 << 19)  # two segments
        for i, state in enumerate(states):
            spa = ((i * 9973) % (1 << 19)) << PAGE_SHIFT
            if state != "hv":
                asid = 0 if state == "firmware" else 3
                rmp.rmpupdate(spa, assigned=True, gpa=i << PAGE_SHIFT, asid=asid, immutable=state != "guest")
        return rmp

    pfns = np.array([(i * 9973) % (1 << 19) for i in range(len(states))], dtype=np.int64)
    a, b = build(), build()
    failed = sum(a.fw_launch_update(int(p) << PAGE_SHIFT, vmsa=True) != 0 for p in pfns.tolist())
    assert b.fw_launch_update_pfns(pfns, vmsa=True) == failed == sum(s != "pre-guest" for s in states)
    for p in pfns.tolist():
        assert a.rmpread(p << PAGE_SHIFT) == b.rmpread(p << PAGE_SHIFT)

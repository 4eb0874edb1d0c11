"""Memory limits: how much memory a VMM's cgroup must allow for one SNP guest under each policy.

The question Roth raised in the seed thread ("worst case would be 2MB per shared page in the guest ... could be
another pain point regarding calculating appropriate memory limits for userspace", linux-snp-host.md §6) and the
operators' reports of double allocation (guest-workloads.md §6). Two answers per policy:

- the *analytic worst case* from the knobs alone, for any guest behaviour:
  private and shared copies are complementary (total = guest RAM) only when every conversion frees the copy it
  leaves behind: pre-UPM single-copy memory, or guest_memfd with 4K folios, ``discard_on_convert`` and a shared
  backing of 4K pages (memory-backend-memfd; not hugetlb, not THP). Otherwise a page can hold both copies:
  without discard everything can be doubled (2 x RAM); with 2M/1G folios one private 4K page pins its whole folio
  while the other pages are shared (RAM + RAM x (n-1)/n for folios of n pages: "each shared 4K page can pin a
  2 MiB private folio"); with hugetlb shared memory, the hugetlbfs ``mmap`` reserves the whole RAM block at VM
  creation (``hugetlb_reserve_pages``) and the private copies come on top (RAM + RAM); with THP shared memory
  (memory-backend-ram), one shared 4K page faults in a whole 2 MiB THP that maps the other 511 pages too, while
  they stay private (RAM x (n-1)/n + RAM: the deferred split shrinker frees only unmapped pages);
- the *observed* peak of private + shared backing in a simulation of the workload.

Both come with the breakdown and the host overhead a cgroup does not see but the host pays: the RMP's 16 bytes
per 4K page (linux-snp-host.md §1: "RMP = 1/256 of RAM") and 8-byte NPT leaf entries per 4K mapping.

**Which cgroup each byte is charged to** (:func:`charges`; worst case from the knobs, peak from the simulation).
Read from the kernel's allocation sites:

- ``memcg`` (the memory cgroup of QEMU, ``memory.max``): QEMU's RAM block (anonymous memory, memfd/shmem and
  THP are charged at fault to the faulting task's memcg); guest_memfd folios, which are page cache:
  ``kvm_gmem_get_folio`` → ``__filemap_get_folio(..., FGP_CREAT, mapping_gfp_mask())`` → ``filemap_add_folio``
  → ``mem_cgroup_charge(folio, NULL, gfp)`` (mm/filemap.c; charged to ``current``'s memcg whatever the gfp: the
  vCPU thread faulting the page or QEMU's thread that pre-faults or populates it, both in QEMU's cgroup); pre-UPM
  private pages (QEMU's own anonymous memory); the nested page tables: KVM's MMU caches are topped up with
  ``mmu_memory_cache_alloc_obj(mc, GFP_KERNEL_ACCOUNT)`` (virt/kvm/kvm_main.c ``__kvm_mmu_topup_memory_cache``),
  so every NPT page-table page is charged to the vCPU thread's memcg; and the SNP pages KVM allocates for the
  VM: each vCPU's VMSA (``snp_safe_alloc_page()`` = ``snp_safe_alloc_page_node(numa_node_id(),
  GFP_KERNEL_ACCOUNT)``, arch/x86/kvm/svm/svm.h), the SNP context page (``snp_context_create``:
  ``snp_alloc_firmware_page(GFP_KERNEL_ACCOUNT)``) and the two guest-request pages (``snp_guest_req_init``,
  the same GFP_KERNEL_ACCOUNT: [I] from the sites above, not re-read).
- ``hugetlb`` (the hugetlb controller, ``hugetlb.<size>.max`` / ``.rsvd.max``): hugetlbfs RAM blocks
  (``shared_backing`` ``hugetlb-2m``/``hugetlb-1g``), charged when the ``mmap`` reserves them
  (``hugetlb_reserve_pages`` → ``hugetlb_cgroup_charge_cgroup_rsvd``) and again at fault; not in memcg unless
  cgroup v2 is mounted with ``memory_hugetlb_accounting`` (Linux 6.7, off by default).
- ``kernel`` (no cgroup): the RMP table, reserved by the BIOS in the e820 map before Linux runs (16 B per 4K of
  RAM, here the guest's share); the host direct map's page-table pages that splits allocate (``__split_large_page``
  takes one 4K page per split, ``GFP_KERNEL`` via ``alloc_pages``: not accounted). The worst case counts a split
  2M and 1G mapping for each host SNP page the guest's VM makes private at 4K (its VMSAs, SNP context and response
  page, and the host's SNP init TMR, once per host) and for each 2M of the firmware RAM block (the OVMF image
  outside guest RAM) wherever the policy's direct map splits around 4K RMP updates; [I] the guest's own memory is
  taken as filling whole 2M ranges (an aged host's allocator hands a guest large blocks: docs/host-memory.md); on a
  host whose free memory is scattered it spans more ranges and splits more (examples/fragmented-host.toml).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import snpsim
from snpsim.arch import PAGE_SIZE
from snpsim.policy import GRANULE_BYTES, Policy

RMP_ENTRY_BYTES = 16
NPT_PTE_BYTES = 8
#: SNP pages KVM allocates with GFP_KERNEL_ACCOUNT per VM besides the VMSAs: context page, guest request/response
SNP_VM_PAGES = 3
#: of those, the pages made firmware-owned in the RMP (context and response page: ``snp_alloc_firmware_page``)
SNP_VM_FIRMWARE_PAGES = 2
_2M = 2 << 20
_1G = 1 << 30
_512G = 512 << 30


def npt_table_bytes(n4k: int, n2m: int, n1g: int) -> int:
    """Page-table pages of an NPT mapping ``n4k``/``n2m``/``n1g`` bytes at each level, densely packed (a lower
    bound; the worst case is every gfn at 4K): PTE pages per 2M of 4K mappings, PMD pages per 1G below 1G
    leaves, PDPT pages per 512G, and the root."""
    pte = -(-n4k // _2M)
    pmd = -(-(n4k + n2m) // _1G)
    pud = -(-(n4k + n2m + n1g) // _512G)
    return (pte + pmd + pud + 1) * PAGE_SIZE


@dataclass(frozen=True)
class Charges:
    """Bytes charged to each cgroup for one guest: the worst case from the knobs and the simulated peak."""

    memcg_worst_bytes: int
    memcg_peak_bytes: int
    hugetlb_worst_bytes: int
    hugetlb_peak_bytes: int
    kernel_worst_bytes: int
    kernel_peak_bytes: int


def charges(
    policy: Policy,
    memory: int,
    vcpus: int,
    *,
    peak_private: int,
    peak_shared: int,
    peak_total: int,
    npt_peak: int,
    directmap_tables: int,
) -> Charges:
    """Per-cgroup charges (module docstring): backing by where it comes from, NPT pages and SNP pages to memcg,
    hugetlbfs to the hugetlb controller, the RMP and direct-map page tables to nobody."""
    wp, ws = worst_case(policy, memory)
    hugetlb = policy.shared_backing.startswith("hugetlb")
    snp_pages = (vcpus + SNP_VM_PAGES) * PAGE_SIZE
    npt_worst = npt_table_bytes(memory, 0, 0)
    rmp = memory // PAGE_SIZE * RMP_ENTRY_BYTES
    # worst direct-map split: every 1G and 2M mapping over the guest's memory split to 4K (one page each)
    dm_worst = (-(-(wp + ws) // _2M) + -(-(wp + ws) // _1G)) * PAGE_SIZE if policy.directmap != "keep" else 0
    if policy.directmap == "unmap-nosplit":  # whole 2M entries removed: only 1G mappings split (to 2M)
        dm_worst = -(-(wp + ws) // _1G) * PAGE_SIZE
    if policy.gmem_no_direct_map != "off" and policy.directmap == "keep":
        dm_worst = (-(-wp // _2M) + -(-wp // _1G)) * PAGE_SIZE
    dm_worst += _host_snp_splits(policy, vcpus) * PAGE_SIZE
    if policy.private_backing == "gmem" and policy.gmem_allocator == "hugetlb":
        # HugeTLB guest_memfd (RFC v2): the whole file is reserved from the pool at KVM_CREATE_GUEST_MEMFD
        # (hugetlb_reserve_pages: the hugetlb controller), and with in-place conversion its shared pages are the
        # same file's; only a VMM RAM block for shared pages (attributes conversion) is memcg's
        shared_memcg = 0 if hugetlb or policy.gmem_conversion == "in-place" else 1
        memcg_worst, memcg_peak = shared_memcg * ws, shared_memcg * peak_shared
        hugetlb_worst, hugetlb_peak = memory + (ws if hugetlb else 0), memory + (peak_shared if hugetlb else 0)
    else:
        memcg_worst, memcg_peak = wp + (0 if hugetlb else ws), (peak_private if hugetlb else peak_total)
        hugetlb_worst, hugetlb_peak = (ws, peak_shared) if hugetlb else (0, 0)
    return Charges(
        memcg_worst_bytes=memcg_worst + npt_worst + snp_pages,
        memcg_peak_bytes=memcg_peak + npt_peak + snp_pages,
        hugetlb_worst_bytes=hugetlb_worst,
        hugetlb_peak_bytes=hugetlb_peak,
        kernel_worst_bytes=rmp + dm_worst,
        kernel_peak_bytes=rmp + directmap_tables,
    )


def _host_snp_splits(policy: Policy, vcpus: int) -> int:
    """Worst direct-map page-table pages for the 4K RMP updates of host SNP pages and the firmware block: each in
    its own 2M range and its own 1G range (one split page each). Kernel pages split as upstream's
    ``adjust_direct_map`` under every splitting policy (``unmap-nosplit`` too: ``HostKernel._directmap_before_private``)
    and under ``fixup``'s handler (a write next to one splits the mapping around it); the firmware block's 4K pages
    follow the guest memory's policy (``unmap-nosplit`` removes them whole: 1G splits only)."""
    from snpsim.guest.linux import OVMF_IMAGE_BYTES

    kernel = vcpus + SNP_VM_FIRMWARE_PAGES + 1  # + the TMR (2M-aligned: one range)
    bios = -(-OVMF_IMAGE_BYTES // _2M) + 1  # not 2M-aligned in the allocator: one range more
    if policy.directmap == "keep":
        return 2 * kernel if policy.rmp_fault == "fixup" else 0
    if policy.directmap == "unmap-nosplit":
        return 2 * kernel + bios
    return 2 * (kernel + bios)


@dataclass(frozen=True)
class Limit:
    preset: str
    worst_case_bytes: int
    worst_private_bytes: int
    worst_shared_bytes: int
    observed_peak_bytes: int
    observed_private_bytes: int
    observed_shared_bytes: int
    rmp_overhead_bytes: int
    npt_overhead_bytes: int
    memcg_worst_bytes: int = 0
    memcg_peak_bytes: int = 0
    hugetlb_worst_bytes: int = 0
    hugetlb_peak_bytes: int = 0
    kernel_worst_bytes: int = 0
    kernel_peak_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def worst_case(policy: Policy, memory: int) -> tuple[int, int]:
    """(private, shared) backing the worst guest behaviour can make the VMM hold at once."""
    if policy.private_backing == "vmm" or policy.gmem_conversion == "in-place":
        # one copy per page, converted in place (pre-UPM: the VMM's page; INPLACE v8: the one guest_memfd page)
        return memory, 0
    shared_page = GRANULE_BYTES[policy.shared_backing]
    folio = GRANULE_BYTES[policy.private_granularity]
    hugetlb = policy.shared_backing.startswith("hugetlb")
    if not policy.discard_on_convert:
        return memory, memory
    if hugetlb:
        # the whole RAM block is reserved at mmap, whatever the guest shares; every page can be private too
        return memory, memory
    if policy.shared_backing == "thp":
        # one shared page per 2M faults in a THP mapping all 512 pages; the other 511 stay private
        return memory - memory // shared_page * PAGE_SIZE, memory
    if folio > PAGE_SIZE:
        # one private page per folio keeps the folio; the rest of it is shared
        return memory, memory - memory // folio * PAGE_SIZE
    return memory, 0  # complementary: the total never exceeds the guest's RAM


def scenario(
    memory: int,
    vcpus: int,
    preset: str,
    *,
    workload: str = "random-conversion",
    duration: str = "3s",
    seed: int = 1,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The scenario simulated for the observed figure: the guest alone on a host of 4 x its RAM (at least 1G)."""
    return {
        "seed": seed,
        "policy": preset,
        "duration": duration,
        "samples": 20,
        "host": {"memory": max(4 * memory, 1 << 30)},
        "vms": [{"memory": memory, "vcpus": vcpus, "workload": workload, "params": params or {}}],
    }


def limits(
    memory: int,
    vcpus: int,
    presets: list[str],
    *,
    workload: str = "random-conversion",
    duration: str = "3s",
    seed: int = 1,
    params: dict[str, Any] | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> list[Limit]:
    """The analytic worst case and the simulated peak for each preset; ``progress(preset, fraction)`` follows
    each simulation. Every preset's scenario is validated before the first simulation."""
    from snpsim.scenario import load

    loaded = {
        name: load(scenario(memory, vcpus, name, workload=workload, duration=duration, seed=seed, params=params))
        for name in presets
    }
    out = []
    for name, sc in loaded.items():
        wp, ws = worst_case(sc.policy, memory)
        result = snpsim.run(
            sc,
            progress=None if progress is None else lambda f, name=name: progress(name, f),  # type: ignore[misc]
        )
        if progress is not None:
            progress(name, 1.0)
        vm = result.vms[0]
        tl = result.timeline
        npt_peak = max(
            (
                npt_table_bytes(int(a), int(b), int(c))
                for a, b, c in zip(tl["npt_4k"], tl["npt_2m"], tl["npt_1g"], strict=True)
            ),
            default=0,
        )
        summ = result.summary
        dm_tables = (int(summ["direct_map_level2_splits"]) + int(summ["direct_map_level3_splits"])) * PAGE_SIZE
        # the VM's own peaks, or the sampled ones where larger (pre-UPM VMMs account only at exits, never taken)
        peak_private = max(vm.peak_private_bytes, int(tl["private_bytes"].max()))
        peak_shared = max(vm.peak_shared_bytes, int(tl["shared_bytes"].max()))
        peak_total = max(vm.peak_total_bytes, int((tl["private_bytes"] + tl["shared_bytes"]).max()))
        ch = charges(
            sc.policy,
            memory,
            vcpus,
            peak_private=peak_private,
            peak_shared=peak_shared,
            peak_total=peak_total,
            npt_peak=npt_peak,
            directmap_tables=dm_tables,
        )
        out.append(
            Limit(
                preset=name,
                worst_case_bytes=wp + ws,
                worst_private_bytes=wp,
                worst_shared_bytes=ws,
                observed_peak_bytes=peak_total,
                observed_private_bytes=peak_private,
                observed_shared_bytes=peak_shared,
                rmp_overhead_bytes=memory // PAGE_SIZE * RMP_ENTRY_BYTES,
                npt_overhead_bytes=memory // PAGE_SIZE * NPT_PTE_BYTES,
                **dataclasses.asdict(ch),
            )
        )
    return out

"""Host memory policies for confidential-VM private memory: the knobs, declared once, and the named presets.

Every design option argued in the seed thread ("[PATCH Part2 v5 39/45] KVM: SVM: Introduce ops for the post gfn
map and unmap", 2021-2022; ``shared/reference/linux-snp-host.md`` §3, §6) and after it is a combination of the
knobs below; a preset is only a set of knob values, and no code branches on a preset name (``shared/DESIGN.md``).

Each knob is declared once, as a field of :class:`Policy` made by :func:`knob`: its default, its values with what
each does in the model and where, its meaning and its source. ``docs/knobs.md`` (:func:`knobs_markdown`),
``snpsim presets`` and the CLI help are generated from these declarations, and the validation rules
(:data:`RULES`) are declared the same way. A preset (:data:`PRESETS`) is a cited set of overrides of the defaults,
which are the ``upstream`` values (QEMU pre-faults on page-state changes for every guest_memfd preset: the VMM
of today, whatever the kernel's design; the pre-UPM presets never exit to QEMU on a conversion).

Behaviours that no knob decides are consequences of one, stated in the value's text: hugetlb shared memory is
never discarded (QEMU ``kvm_convert_memory`` skips the discard when the RAM block's page size is not the host's),
THP falls back to 4K pages when no 2M page is free (``do_huge_pmd_anonymous_page``) and a partly discarded THP is
kept whole until reclaim splits it (``deferred_split_scan``), and pre-UPM RMPUPDATEs are
issued by KVM's in-kernel Page State Change handler (SNP v5 ``__snp_handle_page_state_change``), never by the VMM.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from snpsim.errors import ConfigError


@dataclass(frozen=True, slots=True)
class KnobValue:
    """One value of a knob: what it does in the model, and where (files and functions)."""

    value: Any
    does: str
    where: str = ""


@dataclass(frozen=True, slots=True)
class Knob:
    """A policy knob: name, default, allowed values with their meaning, what the knob decides, and its source."""

    name: str
    default: Any
    values: tuple[KnobValue, ...]
    meaning: str
    source: str

    @property
    def allowed(self) -> tuple[Any, ...]:
        return tuple(v.value for v in self.values)


def knob(default: Any, meaning: str, source: str, values: tuple[KnobValue, ...]) -> Any:
    """A :class:`Policy` field declaring its knob (the name is the field's)."""
    return field(default=default, metadata={"knob": (default, values, meaning, source)})


def _v(value: Any, does: str, where: str = "") -> KnobValue:
    return KnobValue(value, does, where)


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """One host memory policy: the value of every knob (``shared/DESIGN.md``). Keyword arguments only."""

    private_backing: str = knob(
        "gmem",
        "Where guest-private memory comes from.",
        "linux-snp-host.md §5 (guest_memfd), §6 (the seed thread's pre-UPM design)",
        (
            _v(
                "vmm",
                "Pre-UPM SNP (v5-v8). Guest RAM is one QEMU RAM block (host anonymous memory, frames tagged "
                "`Owner.VMM_PRIVATE`: pinned, KSM-scanned). A gfn has one page, converted in place by KVM's "
                "in-kernel Page State Change handler (SNP v5 `__snp_handle_page_state_change`: build the NPT "
                "entry, then `rmp_make_private` / `snp_make_page_shared`): no exit to the VMM, no second copy, "
                "nothing to discard. The RAM block is registered (`MEM_ENCRYPT_REG_REGION`) as it is faulted in "
                "and unregistered at VM destroy. Private NPT mappings are 4K.",
                "`src/snpsim/kvm/vcpu.py` (`KvmVcpu._psc_in_kernel`), `src/snpsim/kvm/sev.py`, `src/snpsim/host/mm.py`",
            ),
            _v(
                "gmem",
                "guest_memfd. Private pages are folios of a `GuestMemfd` (`Owner.GMEM`: unmovable, not mapped "
                "by QEMU), allocated and zeroed on the first private fault and prepared by `sev_gmem_prepare`. "
                "Shared pages come from the VMM's RAM block. QEMU sets all RAM private at memslot creation. A "
                "conversion exits to the VMM (`KVM_HC_MAP_GPA_RANGE`), which sets the attributes and discards or "
                "punches (see `discard_on_convert`). A freed folio is the explicit release point.",
                "`src/snpsim/kvm/gmem.py`, `src/snpsim/kvm/sev.py`, "
                "`src/snpsim/vmm/qemu.py` (`Qemu.kvm_convert_memory`)",
            ),
        ),
    )
    private_granularity: str = knob(
        "4k",
        "The guest_memfd folio size (with `vmm` backing only `4k`).",
        "linux-snp-host.md §5: upstream guest_memfd is order-0 only; the THP (M. Roth, 2024) and HugeTLB "
        "(A. Tng, 2025) series add 2M/1G folios",
        (
            _v(
                "4k",
                "Order-0 folios, as upstream. Every RMP entry and private NPT mapping is 4K.",
                "`src/snpsim/kvm/gmem.py`",
            ),
            _v(
                "2m",
                "2 MiB folios (buddy order 9, unmovable: a fallback claims a whole pageblock; with direct "
                "compaction if needed). `sev_gmem_prepare` makes a 2M RMP entry when the folio and gfn are 2M-aligned "
                "and no page of the 2M range is assigned (`is_large_rmp_possible`), else 4K entries. Private "
                "NPT mappings can be 2M when the RMP entry is 2M and the attributes are uniform. A hole punch "
                "frees only folios wholly inside it; `sev_gmem_invalidate` PSMASHes a partly freed 2M entry.",
                "`src/snpsim/kvm/gmem.py`, `src/snpsim/kvm/sev.py`, `src/snpsim/kvm/vm.py`",
            ),
            _v(
                "1g",
                "1 GiB folios, above the allocator's `MAX_PAGE_ORDER` 10: taken like `alloc_contig_pages`, a "
                "1G-aligned range of free or movable memory emptied by migration (docs/host-memory.md). The same "
                "rules; RMP entries and private NPT mappings stay at most 2M (the RMP has no 1G size).",
                "same",
            ),
        ),
    )
    shared_backing: str = knob(
        "4k",
        "The VMM's guest RAM backend, named by the pages it gets from the host: the shared pages with `gmem`, all of "
        "guest RAM with `vmm`. QEMU's `ram_block_add` madvises every RAM block `MADV_HUGEPAGE`; what that yields "
        "depends on the backend and on the host's `transparent_hugepage` (scenario `host.transparent_hugepage`). The "
        "host mapping level caps the shared NPT mapping. Preset values: AMD's SNP launch script for guest_memfd "
        "hosts uses memory-backend-memfd (`4k`); pre-UPM it used QEMU's default RAM (`-m`: memory-backend-ram, `thp` "
        "on a THP-enabled host), but the pre-UPM presets keep DESIGN.md's `4k`.",
        "QEMU system/physmem.c ram_block_add() (QEMU_MADV_HUGEPAGE), ram_block_discard_range(), file_ram_alloc(); "
        "AMDESE/AMDSEV launch-qemu.sh (snp-latest: '-object memory-backend-memfd,id=ram1,size=${MEM}M,share=true,"
        "prealloc=false'; sev-snp-devel: '-m ${MEM}M'); mm/huge_memory.c, mm/hugetlb.c; guest-workloads.md §1, §6",
        (
            _v(
                "4k",
                "`-object memory-backend-memfd` (shmem; its THP follows `shmem_enabled`, default never; also "
                "memory-backend-ram on a host with THP disabled): 4K pages allocated on first touch, freed exactly "
                "by a discard (`fallocate(PUNCH_HOLE)` + `MADV_DONTNEED`).",
                "`src/snpsim/host/mm.py`",
            ),
            _v(
                "thp",
                "`-object memory-backend-ram` (QEMU's default for `-m`: anonymous memory, madvised "
                "`MADV_HUGEPAGE`) on a host whose `transparent_hugepage` is `always` or `madvise`. A fault takes a "
                "2M THP, mapping all 512 pages, when the whole aligned 2M range is RAM, untouched, and a 2M block can "
                "be had (with compaction and reclaim); otherwise (a consequence, not a knob) 4K pages, as "
                "`do_huge_pmd_anonymous_page` falls back; with `transparent_hugepage = never`, always 4K. A discard "
                "(`MADV_DONTNEED`) of a whole THP frees it; of part of one only splits the PMD (`__split_huge_pmd`): "
                "the THP stays allocated on the host's deferred split queue until reclaim runs the shrinker "
                "(`deferred_split_scan`: kswapd below the low watermark, direct reclaim, drop_caches), which frees "
                "its unmapped pages (metric `thp_deferred_split_bytes`).",
                "`src/snpsim/host/mm.py`, `src/snpsim/host/vmscan.py`",
            ),
            _v(
                "hugetlb-2m",
                "`-object memory-backend-file,mem-path=/dev/hugepages` (hugetlbfs, 2 MiB pages). The RAM block's "
                "`mmap` reserves all its huge pages (`hugetlb_reserve_pages`): from the host's pool "
                "(`host.hugepages`) or, without one, as surplus pages gathered from the allocator then (movable "
                "order-9 blocks, with compaction); a reservation that cannot be had makes QEMU exit at creation "
                "('unable to map backing store for guest RAM'; `VmRecord.exit_error`). The reservation counts in "
                "`shared_bytes` from the start; faults take reserved pages. Never discarded: a consequence of "
                "QEMU's `kvm_convert_memory`, which skips `ram_block_discard_range` when the RAM block's page size "
                "is not the host page size.",
                "`src/snpsim/host/mm.py`, `src/snpsim/host/kernel.py` (`hugetlb_reserve_pages`), "
                "`src/snpsim/vmm/qemu.py`",
            ),
            _v(
                "hugetlb-1g",
                "The same with 1 GiB pages (`mem-path=/dev/hugepages1G`; surplus 1G pages by `alloc_contig_pages`, "
                "as `alloc_gigantic_folio` without CMA) and 1G shared NPT mappings.",
                "same",
            ),
        ),
    )
    discard_on_convert: bool = knob(
        True,
        "Whether the VMM frees the copy a conversion leaves unused (QEMU `kvm_convert_memory`); only with `gmem`.",
        "QEMU accel/kvm/kvm-all.c kvm_convert_memory(); linux-snp-host.md §5",
        (
            _v(
                True,
                "To-private discards the shared pages (`ram_block_discard_range`: whole backing pages only, "
                "never hugetlb); to-shared punches guest_memfd (`fallocate(PUNCH_HOLE)`: whole folios only).",
                "`src/snpsim/vmm/qemu.py`",
            ),
            _v(False, "Neither: once both copies of a gfn exist, both stay until the VM is destroyed.", ""),
        ),
    )
    directmap: str = knob(
        "split",
        "What the host does to its kernel direct map around private pages (`HostKernel` in "
        "`src/snpsim/host/kernel.py` on the page tables of `DirectMap`, `src/snpsim/host/directmap.py`). Splits go "
        "one level at a time (1G → 512 × 2M, 2M → 512 × 4K), each counted once in `direct_map_level3_splits` or "
        "`direct_map_level2_splits` and so in `directmap_split_count`. `directmap_4k`, `directmap_2m` and "
        "`directmap_1g` are `/proc/meminfo`'s `direct_pages_count[]`: an entry made not present stays counted at "
        "its level, so a value that removes pages fragments the direct map exactly as much as one that splits "
        "them. At boot the map is what `init_mem_mapping()` builds on the host's e820 layout "
        "(`src/snpsim/host/e820.py`, scenario field `host.layout`).",
        "linux-snp-host.md §3 (history of the host direct-map policy; DM-COMMIT 661b1c6169e2)",
        (
            _v(
                "keep",
                "Never changes the direct map. A kernel write through a 2M/1G mapping whose 2M range holds an "
                "assigned page fails the hardware RMP check (1G is checked as 2M); `rmp_fault` decides.",
                "`src/snpsim/hw/rmp.py` (`Rmp.check_host_write`)",
            ),
            _v(
                "split",
                "Upstream `adjust_direct_map()`: before every 4K RMPUPDATE, to private and to shared, the 2M "
                "range holding the page is split to 4K (`set_memory_4k`); a 2M RMPUPDATE splits nothing; pages "
                "stay mapped; nothing ever merges.",
                "`src/snpsim/host/kernel.py`, `src/snpsim/host/directmap.py`",
            ),
            _v(
                "unmap",
                "SNP v5-v10: before an RMPUPDATE to private each page's entry is made not present "
                "(`set_direct_map_invalid_noflush`, splitting to 4K first; a 2M RMPUPDATE too removes its 512 "
                "pages 4K at a time, as SNP v5-v10 did); after an RMPUPDATE to shared they are made present again. "
                "A kernel access to a removed page is a not-present #PF, which oopses.",
                "`src/snpsim/host/kernel.py`, `src/snpsim/host/directmap.py`",
            ),
            _v(
                "unmap-nosplit",
                "Removes the whole direct-map entry of the private folio (2M, or 1G for `1g` folios) when any "
                "page of it becomes private, restores it when none is assigned; never splits guest memory to 4K. "
                "Needs `private_granularity` `2m` or `1g`. A host-kernel 4K page the RMP assigns (a VMSA, the SNP "
                "context, firmware pages) cannot be removed 2M at a time (its neighbours are other kernel objects) "
                "nor left behind a 2M mapping (every kernel write to a neighbour would take an RMP #PF): its 2M "
                "range is split to 4K as upstream does and the page stays mapped.",
                "`src/snpsim/host/kernel.py`",
            ),
            _v(
                "bulk",
                "Splits every 2M range of guest memory to 4K when it is registered (VMM RAM as it is faulted "
                "in, guest_memfd folios as they are allocated), then acts like `split`.",
                "`src/snpsim/host/kernel.py` (`register_frames`)",
            ),
        ),
    )
    directmap_restore: str = knob(
        "never",
        "When 2M/1G direct-map mappings are rebuilt: each 2M range holding no assigned page collapses into a 2M "
        "mapping if all its 4K entries are present, then each GiB of present 2M mappings into 1G.",
        "linux-snp-host.md §3 (upstream never merges), §6 (Sean Christopherson, 2022-09-14: the explicit release "
        "point; M. Roth, 2022-09-19: MEM_ENCRYPT_UNREG_REGION)",
        (
            _v("never", "No merge, ever (upstream: 'there isn't currently a mechanism in place to restore').", ""),
            _v(
                "on-release",
                "Merges the ranges of every guest_memfd folio freed (hole punch or VM destruction): the explicit "
                "release point. Needs `gmem`.",
                "`src/snpsim/host/kernel.py` (`release_frames`)",
            ),
            _v(
                "on-unregister",
                "Merges the ranges of a VM's memory when it is destroyed (`MEM_ENCRYPT_UNREG_REGION`).",
                "`src/snpsim/host/kernel.py` (`unregister_frames`)",
            ),
        ),
    )
    rmp_fault: str = knob(
        "oops",
        "What the host #PF handler does with a kernel-mode RMP fault (error code bit 31). A not-present fault "
        "always oopses.",
        "linux-snp-host.md §2 (arch/x86/mm/fault.c; P. Gonda's proposal, Nov 2021, rejected 2022-09-14)",
        (
            _v("oops", "Upstream: the oops path; a `Crash` is recorded and counted.", "`src/snpsim/host/kernel.py`"),
            _v(
                "fixup",
                "P. Gonda's proposal: every assigned page the write depends on is made shared with RMPUPDATE and "
                "the write retried; the guest's next private access takes #VC 0x404.",
                "`src/snpsim/host/kernel.py` (`_handle_rmp_fault`)",
            ),
        ),
    )
    prefault_on_convert: bool = knob(
        True,
        "Whether the VMM calls `KVM_PRE_FAULT_MEMORY` on the range of each `KVM_HC_MAP_GPA_RANGE` exit, after "
        "converting it, so that the guest's following accesses and PVALIDATEs find the NPT mapped.",
        "QEMU commit 4cdc489eb9c2 'i386/kvm: Prefault memory on page state change' (T. Lendacky, 2025; "
        "Message-ID f5411c42340bd2f5c14972551edb4e959995e42b.1743193824.git.thomas.lendacky@amd.com)",
        (
            _v(
                True,
                "After `kvm_convert_memory`, QEMU's `kvm_handle_hc_map_gpa_range` pre-faults the range: KVM maps "
                "it (preparing private pages, faulting in shared ones) without #NPF exits. Memory-fault exits are "
                "not pre-faulted.",
                "`src/snpsim/vmm/qemu.py`, `src/snpsim/kvm/vm.py` (`KvmVm.pre_fault_memory`)",
            ),
            _v(
                False,
                "No pre-fault (QEMU before 10.1, and the pre-UPM presets, whose conversions never exit to QEMU): "
                "with 4K guest_memfd, each page the guest validates after a page-state change is one #NPF exit "
                "('resulting in 1024 additional exits' per 4M accepted).",
                "",
            ),
        ),
    )

    rmpopt: bool = knob(
        False,
        "Whether the host uses RMPOPT: a per-CPU table with one bit per 1 GiB region 'entirely hypervisor-owned', "
        "set by the RMPOPT instruction, letting host (and non-SNP guest) writes there skip the RMP check (metric "
        "`rmpopt_bytes`).",
        "'[PATCH 0/6] Add RMPOPT support' (A. Kalra) cover.1771321114.git.ashish.kalra@amd.com ... v10 "
        "cover.1782841284 (2026-06-30); linux-snp-host.md §1; measurements.md (scan times)",
        (
            _v(
                False,
                "No RMPOPT (Linux as merged): every host write is RMP-checked; `rmpopt_bytes` is 0.",
                "",
            ),
            _v(
                True,
                "At RMP initialisation the kernel scans the first 2 TB of RAM (`ALIGN_DOWN(min_low_pfn)` to "
                "`ALIGN(max_pfn)` at 1 GiB): one RMPOPT verify-and-report per CPU per region (`on_each_cpu_mask`), "
                "which sets the region's bit where no RMP entry is assigned. Any assigning RMPUPDATE clears its "
                "region's bit (hardware). Each SNP VM's teardown calls `snp_rmpopt_all_physmem()`: "
                "`mod_delayed_work` re-arms the rescan 10 s after the *last* termination ('allows batching of "
                "multiple SNP guest terminations'); the rescan runs on the `kthread/rmpopt` worker, charged "
                "`rmpopt_1g_ns` per region (calibrated to the series' 2 TB measurement).",
                "`src/snpsim/hw/rmp.py` (`Rmp.rmpopt`), `src/snpsim/host/rmpopt.py`, "
                "`src/snpsim/kvm/vm.py` (`destroy`)",
            ),
        ),
    )
    gmem_no_direct_map: str = knob(
        "off",
        "`GUEST_MEMFD_FLAG_NO_DIRECT_MAP` on the VM's guest_memfd: folios are removed from the host direct map "
        "after preparation and restored (at 4K, never merged) when freed. v12's x86 hook refuses it for SNP "
        "(`kvm_arch_gmem_supports_no_direct_map`: `vm_type != KVM_X86_TDX_VM` in v11, SNP excluded too in v12); "
        "this knob lets a user force it on to see why. SNP's `sev_gmem_invalidate` flushes each freed private page "
        "through the direct map (`clflush_cache_range(__va(pfn_to_hpa(pfn)), ...)`), so the order of restore and "
        "invalidate in `kvm_gmem_free_folio` decides whether freeing crashes: the series restores first, the review "
        "(A. Tng on the Sashiko report) proposed invalidating first. Needs `private_backing = gmem`.",
        "'Direct Map Removal Support for guest_memfd' (P. Roy / N. Kalyazin) v7 2025-09-24 ... v12 2026-04-10 "
        "(linux-snp-host.md §5 NODM); v11 08/16 Message-ID 20260317141031.514-9-kalyazin@amazon.com; "
        "arch/x86/kvm/svm/sev.c sev_gmem_invalidate()",
        (
            _v("off", "No direct-map removal (upstream; v12 for SNP VMs).", ""),
            _v(
                "restore-first",
                "The series' `kvm_gmem_free_folio`: `kvm_gmem_folio_restore_direct_map(folio)` then "
                "`kvm_arch_gmem_invalidate()`. Folios are zapped from the direct map after `sev_gmem_prepare` "
                "(`kvm_gmem_folio_zap_direct_map`, splitting 2M/1G mappings to 4K). Freeing is safe; any other "
                "kernel access to a prepared folio (a host writer, KSM) is a not-present #PF: an oops.",
                "`src/snpsim/kvm/gmem.py` (`GuestMemfd._free_folios`), `src/snpsim/host/kernel.py` "
                "(`folio_zap_direct_map`)",
            ),
            _v(
                "invalidate-first",
                "The review's order: `kvm_arch_gmem_invalidate()` then restore. `sev_gmem_invalidate`'s "
                "`clflush_cache_range(__va(pfn))` of the first private page freed (a hole punch on to-shared, or "
                "the VM's teardown) hits the not-present entry: a not-present #PF, the host oopses "
                "(`host_notpresent_fault_count`, `host_crash_count`).",
                "same",
            ),
        ),
    )
    gmem_conversion: str = knob(
        "attributes",
        "How a guest_memfd VM converts a page between private and shared, and where its shared pages live.",
        "linux-snp-host.md §5 (INPLACE: '[PATCH v8 00/46] guest_memfd: In-place conversion support', A. Tng, "
        "20260618-gmem-inplace-conversion-v8-0-9d2959357853@google.com; HUGETLB RFC v2 conversion ioctls)",
        (
            _v(
                "attributes",
                "Upstream: `KVM_SET_MEMORY_ATTRIBUTES` on the VM; shared pages are the VMM's RAM block, private "
                "pages guest_memfd's, so a gfn can have two pages; `discard_on_convert` frees the unused one.",
                "`src/snpsim/vmm/qemu.py` (`Qemu.kvm_convert_memory`)",
            ),
            _v(
                "in-place",
                "INPLACE v8: one guest_memfd holds both, shareability tracked per page by guest_memfd, converted in "
                "place by the guest_memfd ioctl (`KVM_SET_MEMORY_ATTRIBUTES2`): no discard, no second allocation "
                "(`shared_bytes` are guest_memfd pages; the RAM block stays empty). Host userspace maps only "
                "shared pages (an access to a private one is SIGBUS). A to-shared conversion makes the RMP "
                "entries shared (`kvm_arch_gmem_invalidate`) without freeing; to-private leaves them to the next "
                "private fault's prepare. A conversion of a page the host holds extra references to (a "
                "`get_user_pages` pin, e.g. vhost I/O in flight) fails with EAGAIN and `error_offset`; QEMU "
                "retries from that offset (`gmem_convert_retries`). Needs `gmem` and `discard_on_convert` false.",
                "`src/snpsim/kvm/gmem.py` (`GuestMemfd.set_attributes`, `pin_pages`), `src/snpsim/kvm/vm.py` "
                "(`KvmVm.gmem_set_memory_attributes`), `src/snpsim/vmm/qemu.py` (`Qemu.kvm_convert_memory`)",
            ),
        ),
    )
    gmem_convert_retries: int = knob(
        8,
        "How many times the VMM retries an in-place conversion refused with EAGAIN (each retry after a back-off "
        "of `gmem_retry_ns`) before it gives up and fails the guest's request. The series leaves the VMM's "
        "policy open ('userspace should retry'); a bounded retry is QEMU's usual pattern.",
        "INPLACE v8 (linux-snp-host.md §5: 'EAGAIN + error_offset on elevated refcount')",
        tuple(_v(n, f"Up to {n} retries.") for n in (0, 1, 8, 64)),
    )
    gmem_allocator: str = knob(
        "buddy",
        "Where guest_memfd folios larger than 4K come from (with `private_granularity` 2m/1g).",
        "linux-snp-host.md §5 (THP: M. Roth, 20241212063635.712877-1-michael.roth@amd.com; HUGETLB: A. Tng, "
        "cover.1747264138.git.ackerleytng@google.com)",
        (
            _v(
                "buddy",
                "The page allocator (with compaction; 1G as `alloc_contig_pages`); a folio that cannot be had is "
                "out of memory.",
                "`src/snpsim/kvm/gmem.py`",
            ),
            _v(
                "thp",
                "THP RFC: `filemap_alloc_folio` of order 9 without reclaim; when no 2M block is free the folio "
                "falls back to 512 order-0 pages (4K RMP entries and NPT mappings for that range). Hole punching "
                "below 2M frees nothing, for 4K fallback pages too ('disallow hole-punching at sub-2MB "
                "granularity').",
                "`src/snpsim/kvm/gmem.py` (`GuestMemfd.get_pfns`)",
            ),
            _v(
                "hugetlb",
                "HUGETLB RFC v2: folios from the host's hugetlb pool of the folio size, reserved for the whole file "
                "at `KVM_CREATE_GUEST_MEMFD` (`hugetlb_reserve_pages`, surplus pages gathered if the pool is "
                "short); a hole smaller than a huge page frees nothing and is only zeroed.",
                "`src/snpsim/kvm/gmem.py`",
            ),
        ),
    )
    gmem_folio_split: str = knob(
        "never",
        "What guest_memfd does to a huge folio when part of it becomes shared in place "
        "(`kvm_gmem_restructure_folios_in_range`); with `gmem_conversion` in-place only.",
        "HUGETLB RFC v2 (linux-snp-host.md §5: split on to-shared, merge on to-private only if "
        "'!kvm_gmem_has_some_shared()' over the whole huge page; future idea: 'split from 1G to 2M first and only "
        "split to 4K if necessary')",
        (
            _v("never", "The folio stays whole; the shared page is mapped 4K.", ""),
            _v(
                "4k",
                "RFC v2: the whole huge folio is split into 4K folios when any page of it goes shared, and merged "
                "back when all of it is private again. While split, its private pages map at 4K.",
                "`src/snpsim/kvm/gmem.py` (`GuestMemfd.restructure_folios_in_range`)",
            ),
            _v(
                "2m-first",
                "The proposed refinement: a 1G folio splits into 2M folios first and only the 2M folio holding "
                "the shared page splits to 4K; merges back level by level.",
                "same",
            ),
        ),
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            allowed = KNOBS[f.name].allowed
            if value not in allowed or (isinstance(value, bool) != isinstance(allowed[0], bool)):
                shown = ", ".join(str(a).lower() for a in allowed)
                raise ConfigError(f"policy.{f.name}", f"{value!r} is not one of: {shown}")
        for rule in RULES:
            if rule.broken(self):
                raise ConfigError(f"policy.{rule.knob}", rule.message)

    @property
    def private_page_bytes(self) -> int:
        return GRANULE_BYTES[self.private_granularity]

    @property
    def shared_page_bytes(self) -> int:
        return GRANULE_BYTES[self.shared_backing]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, field: str = "policy") -> Policy:
        """Build a policy from knob values; unknown knobs raise :class:`ConfigError` naming them."""
        if not isinstance(data, Mapping):
            raise ConfigError(field, f"expected a preset name or a table of knobs, got {type(data).__name__}")
        unknown = sorted(set(data) - set(KNOBS) - {"preset"})
        if unknown:
            raise ConfigError(f"{field}.{unknown[0]}", f"unknown knob (knobs: {', '.join(KNOBS)})")
        base: dict[str, Any] = {}
        if "preset" in data:
            base = presets_by_name(data["preset"], field=f"{field}.preset").as_dict()
        base.update({k: v for k, v in data.items() if k != "preset"})
        return cls(**base)


#: Every knob, read from the :class:`Policy` fields that declare it.
KNOBS: dict[str, Knob] = {f.name: Knob(f.name, *f.metadata["knob"]) for f in fields(Policy)}
#: The allowed values of each knob.
KNOB_VALUES: dict[str, tuple[Any, ...]] = {name: k.allowed for name, k in KNOBS.items()}

#: Bytes of one page of each granularity / backing name.
GRANULE_BYTES = {"4k": 4096, "2m": 2 << 20, "1g": 1 << 30, "thp": 2 << 20, "hugetlb-2m": 2 << 20, "hugetlb-1g": 1 << 30}


@dataclass(frozen=True, slots=True)
class Rule:
    """An impossible combination of knobs: ``broken(policy)`` is true for it; the error names ``knob``."""

    knob: str
    message: str
    broken: Callable[[Policy], bool]


#: The impossible combinations, declared once (``docs/knobs.md`` lists them).
RULES: tuple[Rule, ...] = (
    Rule(
        "directmap",
        "'unmap-nosplit' removes whole 2M/1G mappings only and needs private_granularity 2m or 1g",
        lambda p: p.directmap == "unmap-nosplit" and p.private_granularity == "4k",
    ),
    Rule(
        "private_granularity",
        "a private granularity above 4k needs private_backing 'gmem'",
        lambda p: p.private_granularity != "4k" and p.private_backing != "gmem",
    ),
    Rule(
        "directmap_restore",
        "'on-release' needs private_backing 'gmem' (the explicit release point)",
        lambda p: p.directmap_restore == "on-release" and p.private_backing != "gmem",
    ),
    Rule(
        "gmem_no_direct_map",
        "GUEST_MEMFD_FLAG_NO_DIRECT_MAP is a guest_memfd flag and needs private_backing 'gmem'",
        lambda p: p.gmem_no_direct_map != "off" and p.private_backing != "gmem",
    ),
    Rule(
        "directmap_restore",
        "directmap 'keep' never changes the direct map, there is nothing to restore",
        lambda p: p.directmap_restore != "never" and p.directmap == "keep",
    ),
    Rule(
        "gmem_conversion",
        "'in-place' needs private_backing 'gmem' and discard_on_convert false (one file, nothing to discard)",
        lambda p: p.gmem_conversion == "in-place" and (p.private_backing != "gmem" or p.discard_on_convert),
    ),
    Rule(
        "gmem_folio_split",
        "splitting folios in place needs gmem_conversion 'in-place' and private_granularity 2m or 1g",
        lambda p: p.gmem_folio_split != "never" and (p.gmem_conversion != "in-place" or p.private_granularity == "4k"),
    ),
    Rule(
        "gmem_allocator",
        "'thp' and 'hugetlb' folios need private_backing 'gmem' and private_granularity 2m or 1g ('thp': 2m)",
        lambda p: (
            p.gmem_allocator != "buddy"
            and (p.private_granularity == "4k" or (p.gmem_allocator == "thp" and p.private_granularity != "2m"))
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class Preset:
    """A named design option: what it is, where it was proposed, and its knob values as overrides."""

    name: str
    option: str
    source: str
    overrides: Mapping[str, Any]


#: The seed thread's options and what upstream merged (DESIGN.md "Presets"), as overrides of the defaults.
PRESETS: tuple[Preset, ...] = (
    Preset(
        "fixup",
        "fix up RMP violations in the host #PF handler: make the page shared, the guest gets #VC",
        "P. Gonda, Nov 2021 (linux-snp-host.md §2); pre-UPM SNP v5",
        {"private_backing": "vmm", "directmap": "keep", "rmp_fault": "fixup", "prefault_on_convert": False},
    ),
    Preset(
        "unmap",
        "SNP v5-v10: remove private pages from the direct map at conversion, restore on unassign",
        "'x86/sev: Invalidate pages from the direct map when adding them to the RMP table' (linux-snp-host.md §3)",
        {"private_backing": "vmm", "directmap": "unmap", "prefault_on_convert": False},
    ),
    Preset(
        "bulk",
        "split the whole region to 4K at MEM_ENCRYPT_REG_REGION, restore at unregister",
        "M. Roth, 2022-09-19, 20220919175615.7ehzimgyy2dnt777@amd.com",
        {
            "private_backing": "vmm",
            "directmap": "bulk",
            "directmap_restore": "on-unregister",
            "prefault_on_convert": False,
        },
    ),
    Preset(
        "upm",
        "UPM / guest_memfd: rebuild the direct map at the explicit release point",
        "S. Christopherson, 2022-09-14, YyGLXXkFCmxBfu5U@google.com",
        {"directmap": "unmap", "directmap_restore": "on-release"},
    ),
    Preset(
        "upm-nosplit",
        "refuse to split; userspace eats a 2 MiB allocation per private chunk",
        "S. Christopherson, 2022-09-14, YyGLXXkFCmxBfu5U@google.com ('refuse to split the direct map')",
        {"private_granularity": "2m", "directmap": "unmap-nosplit", "directmap_restore": "on-release"},
    ),
    Preset(
        "hugetlb",
        "'hugetlbfs support of sorts': 2 MiB guest_memfd folios and hugetlb shared memory",
        "the seed thread (linux-snp-host.md §6); HugeTLB guest_memfd series (§5)",
        {
            "private_granularity": "2m",
            "shared_backing": "hugetlb-2m",
            "directmap": "unmap-nosplit",
            "directmap_restore": "on-release",
        },
    ),
    Preset(
        "upstream",
        "Linux as merged (v6.9+): split to 4K around 4K RMP updates, never merge; 4K guest_memfd; QEMU pre-faults "
        "on page-state changes (QEMU 10.1, 2025)",
        "tip commit 661b1c6169e2 (M. Roth, 2024); QEMU commit 4cdc489eb9c2 (T. Lendacky, 2025)",
        {},
    ),
    Preset(
        "gmem-inplace",
        "in-place conversion guest_memfd: one file holds shared and private pages, no second allocation",
        "A. Tng, '[PATCH v8 00/46] guest_memfd: In-place conversion support', 2026, "
        "20260618-gmem-inplace-conversion-v8-0-9d2959357853@google.com",
        {"gmem_conversion": "in-place", "discard_on_convert": False},
    ),
    Preset(
        "gmem-hugetlb",
        "HugeTLB-backed guest_memfd (2M pages here: every scenario's VM sizes; 1G with private_granularity = 1g), "
        "converted in place: split on to-shared, merged when whole again",
        "A. Tng, '[RFC PATCH v2 00/51] 1G page support for guest_memfd', 2025, "
        "cover.1747264138.git.ackerleytng@google.com",
        {
            "private_granularity": "2m",
            "gmem_allocator": "hugetlb",
            "gmem_conversion": "in-place",
            "gmem_folio_split": "4k",
            "discard_on_convert": False,
        },
    ),
    Preset(
        "gmem-thp",
        "2M THP guest_memfd folios, no sub-2M hole punch, 4K fallback when no 2M page is free",
        "M. Roth, '[PATCH RFC v1 0/5] KVM: gmem: 2MB THP support and preparedness tracking changes', 2024, "
        "20241212063635.712877-1-michael.roth@amd.com",
        {"private_granularity": "2m", "gmem_allocator": "thp"},
    ),
)

#: The presets as policies (``snpsim.presets``).
presets: dict[str, Policy] = {p.name: Policy(**p.overrides) for p in PRESETS}


def presets_by_name(name: object, *, field: str = "policy") -> Policy:
    if not isinstance(name, str) or name not in presets:
        raise ConfigError(field, f"unknown preset {name!r} (presets: {', '.join(presets)})")
    return presets[name]


def resolve_policy(value: object, *, field: str = "policy") -> Policy:
    """A preset name, a knob table (optionally with ``preset`` as a base) or a :class:`Policy`."""
    if isinstance(value, Policy):
        return value
    if isinstance(value, str):
        return presets_by_name(value, field=field)
    if isinstance(value, Mapping):
        return Policy.from_mapping(value, field=field)
    raise ConfigError(field, f"expected a preset name or a table of knobs, got {type(value).__name__}")


def _shown(value: Any) -> str:
    return str(value).lower()


def knobs_markdown() -> str:
    """``docs/knobs.md``, generated from the knob declarations (a test checks the file is up to date)."""
    out = [
        "# Policy knobs",
        "",
        "<!-- Generated from the declarations in src/snpsim/policy.py: edit them, then run "
        "`python -c 'import snpsim.policy as p; print(p.knobs_markdown(), end=\"\")' > docs/knobs.md`. -->",
        "",
        "A host memory policy is the frozen dataclass `snpsim.policy.Policy`. Each knob is declared once there "
        "(default, values, meaning, source); a preset ([`presets/`](presets/README.md)) is a cited set of "
        "overrides of the defaults, which are the `upstream` values except where a preset says otherwise. Code "
        "branches on knob values, never on preset names. A scenario gives a policy as a preset name "
        '(`policy = "upstream"`) or as a table of knobs, optionally starting from a preset:',
        "",
        "```toml",
        "[policy]",
        'preset = "upstream"',
        'rmp_fault = "fixup"',
        "```",
        "",
        "## Presets",
        "",
        "| preset | option | source | overrides |",
        "|---|---|---|---|",
    ]
    for p in PRESETS:
        over = ", ".join(f"`{k} = {_shown(v)}`" for k, v in p.overrides.items()) or "(the defaults)"
        out.append(f"| `{p.name}` | {p.option} | {p.source} | {over} |")
    out += ["", "## Impossible combinations", "", "Each raises `snpsim.ConfigError` naming the field:", ""]
    out += ["| rule | field |", "|---|---|"]
    out += [f"| {r.message} | `policy.{r.knob}` |" for r in RULES]
    for k in KNOBS.values():
        out += ["", f"## `{k.name}`", "", k.meaning, "", f"Default: `{_shown(k.default)}`. Source: {k.source}.", ""]
        out += ["| value | what it does in the model | where |", "|---|---|---|"]
        out += [f"| `{_shown(v.value)}` | {v.does} | {v.where} |" for v in k.values]
    return "\n".join(out) + "\n"


def policy_label(value: object, *, field: str = "policy") -> str:
    """A short, readable and filesystem-safe name for a policy, for tables, result folders and reports.

    A preset name stays itself; a policy equal to a preset is that preset's name; any other is the nearest preset
    (its ``preset`` base if the table names one, else the preset differing in the fewest knobs, the first of them
    in preset order) followed by the knobs that differ, in knob order: ``{"preset": "upm", "rmp_fault": "fixup"}``
    -> ``"upm+rmp_fault=fixup"``. Only letters, digits and ``+=._-`` appear (presets and knob values are made of
    those), so the label is also a folder name on Linux, macOS and Windows."""
    policy = resolve_policy(value, field=field)
    if isinstance(value, str):
        return value
    for name, preset in presets.items():
        if preset == policy:
            return name
    knobs = policy.as_dict()

    def differing(name: str) -> list[str]:
        base = presets[name].as_dict()
        return [k for k in knobs if knobs[k] != base[k]]

    base_name = value.get("preset") if isinstance(value, Mapping) else None
    if not isinstance(base_name, str) or base_name not in presets:
        base_name = min(presets, key=lambda n: len(differing(n)))
    return "+".join([base_name, *(f"{k}={str(knobs[k]).lower()}" for k in differing(base_name))])

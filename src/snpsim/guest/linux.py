"""A Linux SNP guest on QEMU q35 + OVMF: its RAM map, where its boot-time objects live, and its boot conversions.

Models the guest side of ``shared/reference/guest-workloads.md`` §2 (catalogue of guest conversion events, rows
#1-#14 cited by number below) plus the OVMF notes of that section: the Linux guest kernel
(``arch/x86/coco/sev/core.c``, ``arch/x86/mm/mem_encrypt_amd.c``, ``kernel/dma/{swiotlb,pool,direct}.c``,
``arch/x86/kernel/kvmclock.c``, ``mm/memblock.c``, ``drivers/firmware/efi/unaccepted_memory.c``) and the firmware
(edk2 OVMF: SNP pre-validation, its GHCB pages, its IoMmu shared pool, accept-all), on a QEMU q35 machine.

What it produces:

* :class:`LinuxGuestConfig` - the guest (RAM, vCPUs, devices) plus every modelling assumption as a named,
  documented field; the reference's [I] (inferred) and [?] (not found) items are fields with their default;
* :func:`guest_layout` - deterministic guest-physical placement of every boot object and of every acceptance the
  boot does (:class:`GuestLayout`, built on :mod:`snpsim.guest.memblock`);
* :func:`boot_events` - the boot sequence as timed :class:`~snpsim.guest.events.Conversion` and
  :class:`~snpsim.guest.events.Access` events (rows #1-#5, #7, #8a, #10, #12, #13, OVMF);
* :func:`kexec_events` - row #14, every shared range back to private before kexec;
* :class:`GuestMemoryView` - the guest's own view of each GFN (unaccepted / private / shared), to replay events
  and check them.

RAM map (QEMU ``pc_q35_init``): RAM below 4 GiB is all of it if the guest has less than 2.75 GiB (0xB0000000),
else 2 GiB; the rest is mapped from GPA 4 GiB. GFNs in ``[lowmem, 4 GiB)`` are not RAM (PCI hole) and no event
ever covers them. Zones (x86-64): ZONE_DMA ``[0, 16 MiB)``, ZONE_DMA32 ``[16 MiB, 4 GiB)``, ZONE_NORMAL above.

The boot, in the order the code runs it (``start_kernel()`` in ``init/main.c``), and where its memory comes from:

1. **OVMF** (firmware phase): PEI pre-validates all RAM below 4 GiB (``AmdSevSnpInitialize()``, before the GHCB
   pages are shared: "the system RAM must be validated before it is made shared"), then ``AmdSevEsInitialize()``
   reserves ``mMaxCpuCount * 2`` pages and makes every other one (the GHCB) shared; DXE's IoMmu makes the data part
   of each piece of its reserved pool shared (``IoMmuInitReservedSharedMem()``: 4x4K, 8x32K, 2x128K, 1x1M, 2x2M,
   each after a private 4K header); at ExitBootServices it re-encrypts them (``IoMmuReleaseReservedSharedMem()``)
   and, without ``AllowUnacceptedMemory()``, accepts all remaining RAM. Every OVMF conversion is sent with edk2's
   253-entry descriptors (``Conversion.max_entries``; :mod:`snpsim.guest.psc`). [I-model] OVMF's allocations are
   at the top of low RAM (PEI and DXE memory), the GHCB area topmost; Linux sees the GHCB area as e820-reserved
   (never used, never unshared at kexec) and the pool as boot-services memory (reserved during boot).
2. **EFI stub**: ``process_unaccepted_memory()`` records high RAM in the unaccepted bitmap (unaligned heads and
   tails, and ranges under two units, are accepted up front; on q35 with 2 MiB units there are none).
3. **setup_arch()**: memblock allocates top-down from the top of the node - the top of high RAM when there is
   any - and ``memblock_alloc_range_nid()`` accepts what it hands out (``accept_memory(found, size)``): the
   2 MiB that ``memory_map_top_down()`` probes and frees (``memblock_phys_alloc_range(PMD_SIZE, PMD_SIZE, ...)``),
   NODE_DATA (``node_data_bytes``), the memmap (64 B per 4K page in 2 MiB per 128 MiB section, 2 MiB-aligned) and
   the vmemmap page tables.
4. **setup_per_cpu_areas()**: the embedded first chunk, ``nr_units * unit_size`` aligned to 2 MiB (the unused tail
   of every unit is given back); each CPU's ``.data..percpu..decrypted`` pages are the last pages of its static
   area (the section is the last one of ``PERCPU_INPUT``, page-aligned at both ends).
5. **smp_prepare_boot_cpu()** -> ``sev_map_percpu_data()`` (row #3), then **vfs_caches_init_early()** (the dentry
   and inode hash tables, ``HASH_EARLY``: memblock), then **trap_init()** -> ``sev_es_init_vc_handling()`` (row #1:
   per CPU ``memblock_alloc(sizeof(struct sev_es_runtime_data))`` = 3 pages, then ``init_ghcb()``). Rows #1 and
   #3 use ``early_set_memory_decrypted()``: per 4K page, ``__set_clr_pte_enc()`` -> ``sme_early_decrypt()`` ->
   ``__sme_early_enc_dec()`` copies through ``sme_early_buffer`` (read through the encrypted mapping, then
   ``snp_memcpy(decrypt=true)``: ``early_snp_set_memory_shared()``, write through the decrypted mapping,
   ``early_snp_set_memory_private()``), then ``early_snp_set_memory_shared()`` before the PTE changes: three
   MSR-protocol PSCs, with PVALIDATE rescind / validate / rescind (``early_set_pages_state()``). Splitting the
   direct map for it (``kernel_physical_mapping_change()``) takes a 4K page-table page from memblock per newly
   split 2 MiB region. These two are the mainline callers of ``early_set_memory_decrypted()``
   (``init_ghcb()``; ``__set_percpu_decrypted()`` for apf_reason, steal_time and kvm_apic_eoi, which share one
   page: the second and third calls find the PTE decrypted already and do nothing); the restricted-injection
   series' #HV doorbell page would be a third. ``.bss..decrypted`` (row #2) calls
   ``early_snp_set_memory_shared()`` directly: one PSC per page, no copy.
6. **mm_core_init()**: SWIOTLB (``memblock_alloc_low``: below 4 GiB, top-down; row #5) and its slot array
   (``memblock_alloc``: top of the node), then ``memblock_free_all()``: whole free MAX_PAGE_ORDER blocks with
   unaccepted memory go on ``zone->unaccepted_pages`` (ascending), smaller free chunks are accepted; with
   ``accept_memory=eager`` every block is accepted here instead.
7. Page-allocator allocations (kvmclock, atomic pools, vrings, attestation): [I-model] taken top-down from low RAM
   (the real buddy allocator serves GFP_KERNEL from ZONE_NORMAL first; that would move these few pages, not
   change their conversions), naturally aligned to their order; the atomic pools are in their zone: DMA below
   16 MiB, DMA32 below 4 GiB, NORMAL in the first block of ``zone->unaccepted_pages``, which it accepts
   (``cond_accept_memory()`` -> ``try_to_accept_memory_one()``). [I-model] The kernel's own page allocations
   between ``mm_core_init()`` and then (slab, page tables, stacks) are assumed to have used up the accepted free
   fragments, so nothing else is accepted at boot.

So a 16 GiB, 4-vCPU guest accepts 296 MiB of high RAM during memblock (2 MiB probe, 256 MiB memmap, 2 MiB per-CPU
chunk, 16 MiB dentry and 8 MiB inode hash, 12 MiB SWIOTLB slot array) and 6 MiB more for the ZONE_NORMAL pool.

Other assumptions (all [I], ours): the first 1 MiB is reserved (x86 ``setup_arch`` always reserves it); the kernel
image is loaded at ``kernel_load_bytes`` (CONFIG_PHYSICAL_START = 16 MiB, no KASLR) and is ``kernel_image_bytes``
long; ``.bss..decrypted`` is its last 2 MiB (``BSS_DECRYPTED`` sits at the end of ``.bss``, PMD-aligned and padded
to PMD_SIZE; LDS); the direct map of the regions early_set_memory_decrypted() splits is 2 MiB-mapped (1G -> 2M
splits, one PMD page each, are not counted: they too would sit in the top 2 MiB, already accepted); smaller
memblock users (mem_section roots, usemaps, the SWIOTLB area array, log buffer, KFENCE pool, ACPI tables) are
not modelled - they fit in memory that is accepted anyway, except config-dependent ones like KFENCE's 2 MiB pool,
which would add its 2 MiB. SWIOTLB is 2M-aligned if ``swiotlb_2m_aligned`` (memblock itself aligns it only to 4K:
row #5).

Timing assumption: boot is a fixed sequence of phases at fixed offsets (``BOOT_PHASES_NS``, ~1 s in total,
``BOOT_END_NS``); inside a phase consecutive events are ``boot_event_gap_ns`` apart, and a phase never starts
before the previous one's last event (so times are always nondecreasing, even when eager acceptance of a large
guest overruns its phase). The time is when the guest *issues* the event; how long the host takes is the host
model's business.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import NamedTuple

from snpsim.errors import ConfigError
from snpsim.guest.events import Access, Conversion, Protocol, Timed
from snpsim.guest.memblock import (
    HASH_BUCKET_BYTES,
    SECTION_MAP_PAGES,
    AllocationError,
    GuestPhysAllocator,
    IntervalMap,
    Placement,
    UnacceptedMemory,
    alloc_large_system_hash_pages,
    free_to_buddy,
    pcpu_build_alloc_info,
    present_sections,
    vmemmap_pgtable_pages,
)
from snpsim.guest.psc import SNP_PAGE_STATE_MAX_ENTRY
from snpsim.guest.swiotlb import IO_TLB_SEGSIZE, IO_TLB_SIZE
from snpsim.units import parse_size

__all__ = [
    "BOOT_END_NS",
    "BOOT_PHASES_NS",
    "FOUR_GIB_GFN",
    "IOMMU_RESERVED_MEM_RANGES",
    "AllocationError",
    "BootAccept",
    "GuestLayout",
    "GuestMemoryView",
    "GuestPhysAllocator",
    "IntervalMap",
    "LinuxGuestConfig",
    "PageState",
    "Placement",
    "atomic_pool_bytes",
    "atomic_pool_zones",
    "boot_end_ns",
    "boot_events",
    "guest_layout",
    "kexec_events",
    "kvmclock_pages",
    "swiotlb_bytes",
    "swiotlb_nareas",
]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
PAGES_PER_2M = 512
PAGES_PER_1G = 512 * 512
#: First GFN above the 32-bit PCI hole: high RAM starts here (q35).
FOUR_GIB_GFN = (4 * GIB) >> PAGE_SHIFT

#: The launch image of the default guest: what QEMU's ``sev_snp_launch_finish()`` hands to
#: ``KVM_SEV_SNP_LAUNCH_UPDATE`` before the guest runs, as ``(gpa, bytes, page type)`` with the page type named as
#: QEMU's ``snp_page_type_to_str()`` (``Normal``, ``Zero``, ``Secrets``, ``Cpuid``). Source: edk2
#: ``OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm`` (the SEV metadata sections QEMU's
#: ``snp_populate_metadata_pages()`` turns into updates: ``SNP_SEC_MEM`` -> Zero, ``SNP_SECRETS`` -> Secrets,
#: ``CPUID`` -> Cpuid) over the MEMFD layout of ``OvmfPkg/OvmfPkgX64.fdf`` (``MEMFD_BASE_ADDRESS`` 0x800000: SEC
#: page tables 0x6000, lock box, guided-extract table, GHCB page table, then the 2-page SEC GHCB (not in the
#: metadata: SEC makes it shared), the work area, the secrets and CPUID pages, and the SEC/PEI temporary RAM up
#: to ``PcdOvmfPeiMemFvBase`` 0x820000). [I] The offsets are those of the fdf as we read it (edk2-stable2024xx);
#: an SVSM calling-area page and the kernel-hashes table (``kernel-hashes=on`` only) are left out.
OVMF_SEV_METADATA: tuple[tuple[int, int, str], ...] = (
    (0x800000, 0x9000, "Zero"),  # SNP_SEC_MEM 1: SEC page tables .. GHCB page table
    (0x80B000, 0x1000, "Zero"),  # SNP_SEC_MEM 2: the OVMF work area
    (0x80C000, 0x1000, "Secrets"),  # SNP_SECRETS: PcdOvmfSnpSecretsBase
    (0x80D000, 0x1000, "Cpuid"),  # CPUID: PcdOvmfCpuidBase
    (0x80E000, 0x12000, "Zero"),  # SNP_SEC_MEM 3: up to PcdOvmfPeiMemFvBase (SEC/PEI temporary RAM)
)
#: [I] The OVMF image QEMU maps at ``[4 GiB - size, 4 GiB)`` (``x86_bios_rom_init``) and encrypts whole
#: (``x86_firmware_configure`` -> ``sev_encrypt_flash``: Normal pages, measured): edk2's default ``FD_SIZE_4MB``
#: build of OvmfPkg/AmdSev (one image, no separate varstore).
OVMF_IMAGE_BYTES = 4 * MIB


def launch_image(cfg: LinuxGuestConfig) -> list[tuple[int, int, str]]:
    """The default launch of a guest (``(gfn, npages, page type)`` in QEMU's order: the flash first, then the
    metadata sections, :data:`OVMF_SEV_METADATA`). Every section lies in low RAM for any valid ``cfg`` (at least
    64 MiB)."""
    out = [((FOUR_GIB_GFN - (OVMF_IMAGE_BYTES >> PAGE_SHIFT)), OVMF_IMAGE_BYTES >> PAGE_SHIFT, "Normal")]
    out += [(gpa >> PAGE_SHIFT, size >> PAGE_SHIFT, kind) for gpa, size, kind in OVMF_SEV_METADATA]
    assert all(g + n <= cfg.lowmem_pages for g, n, _ in out[1:])
    return out


#: q35: guests with at least this much RAM get only 2 GiB below 4 GiB (``pc_q35_init``).
Q35_LOWMEM_THRESHOLD = 0xB000_0000
Q35_LOWMEM_LARGE = 0x8000_0000
#: End of ZONE_DMA (16 MiB) as a GFN; also ``__pa(MAX_DMA_ADDRESS)``, the goal of memmap and per-CPU allocations.
ZONE_DMA_END_GFN = (16 * MIB) >> PAGE_SHIFT
#: x86 reserves the first 1 MiB of RAM (``setup_arch``); nothing is allocated there.
LOW_RESERVED_PAGES = MIB >> PAGE_SHIFT
#: ``ISA_END_ADDRESS``: ``memory_map_top_down(ISA_END_ADDRESS, end)``.
ISA_END_GFN = MIB >> PAGE_SHIFT
#: ``sizeof(struct sev_es_runtime_data)``: two GHCB pages and a few flags, PAGE_SIZE-aligned (``ghcb_page``
#: ``__aligned(PAGE_SIZE)``), so 3 pages; the first page is the GHCB that becomes shared, the backup stays private.
GHCB_RUNTIME_DATA_PAGES = 3
#: ``.bss..decrypted`` is PMD-aligned and padded to PMD_SIZE (row #2).
BSS_DECRYPTED_PAGES = PAGES_PER_2M
#: kvmclock: ``HVC_BOOT_ARRAY_SIZE`` = PAGE_SIZE / sizeof(struct pvclock_vsyscall_time_info) = 4096 / 64 (row #4).
HVC_BOOT_ARRAY_SIZE = 64
PVCLOCK_VSYSCALL_TIME_INFO_BYTES = 64
#: SWIOTLB (row #5): IO_TLB_DEFAULT_SIZE bounds (slab size and slabs per segment: :mod:`snpsim.guest.swiotlb`),
#: and the smallest pool ``swiotlb_init_remap()`` still tries when halving on allocation failure (IO_TLB_MIN_SLABS).
SWIOTLB_MIN_BYTES = 64 * MIB
SWIOTLB_MAX_BYTES = 1 * GIB
IO_TLB_MIN_BYTES = 1 * MIB
#: ``sizeof(struct io_tlb_slot)`` (orig_addr, alloc_size, list/pad_slots: 8 + 8 + 4, padded to 8) - the
#: ``mem->slots`` array ``swiotlb_init_remap()`` takes with ``memblock_alloc()``, one per 2 KiB slab.
IO_TLB_SLOT_BYTES = 24
#: DMA atomic pools (row #7): SZ_128K per SZ_1G of RAM, at least 128 KiB, at most MAX_ORDER_NR_PAGES (4 MiB).
ATOMIC_POOL_MIN_BYTES = 128 * KIB
MAX_ORDER_NR_PAGES = 1024
#: x86-64 ``setup_per_cpu_areas()``: ``pcpu_embed_first_chunk(PERCPU_FIRST_CHUNK_RESERVE, dyn_size, PMD_SIZE, ...)``
#: with PERCPU_MODULE_RESERVE = 8 KiB reserved and PERCPU_DYNAMIC_RESERVE = 28 KiB dynamic (dmesg "r8192 d28672").
PERCPU_MODULE_RESERVE = 8 * KIB
PERCPU_DYNAMIC_RESERVE = 28 * KIB
PERCPU_ATOM_BYTES = 2 * MIB
#: ``dcache_init_early()`` / ``inode_init_early()``: ``alloc_large_system_hash(..., scale 13 / 14, HASH_EARLY)``.
DHASH_SCALE = 13
IHASH_SCALE = 14
#: edk2 ``OvmfPkg/IoMmuDxe/IoMmuBuffer.c`` ``mReservedMemRanges``: (data bytes, slots), each piece a 4K private
#: header then its data, all in one ``AllocatePages()``.
IOMMU_RESERVED_MEM_RANGES: tuple[tuple[int, int], ...] = (
    (4 * KIB, 4),
    (32 * KIB, 8),
    (128 * KIB, 2),
    (MIB, 1),
    (2 * MIB, 2),
)
IOMMU_HEADER_PAGES = 1
#: 4 * (1 + 1) + 8 * (1 + 8) + 2 * (1 + 32) + (1 + 256) + 2 * (1 + 512) = 1,429 pages (5,716 KiB).
IOMMU_POOL_PAGES = sum((IOMMU_HEADER_PAGES + (b >> PAGE_SHIFT)) * n for b, n in IOMMU_RESERVED_MEM_RANGES)
#: Largest guest accepted by :meth:`LinuxGuestConfig.validate` (16 TiB) and KVM_MAX_VCPUS on x86.
MAX_MEMORY_BYTES = 16 << 40
MAX_VCPUS = 4096
MIN_MEMORY_BYTES = 64 * MIB

#: Boot phases and their offsets from the VM's start (ns). See the module docstring (timing assumption).
BOOT_PHASES_NS: dict[str, int] = {
    "firmware": 0,  # OVMF: pre-validation, GHCB pages, IoMmu pool; EFI stub; ExitBootServices (row #13, OVMF)
    "kernel-entry": 100_000_000,  # __startup_64 -> sme_postprocess_startup: .bss..decrypted shared (row #2)
    "setup-arch": 105_000_000,  # memory_map_top_down probe, NODE_DATA, sparse_init (memmap), vmemmap tables
    "percpu": 110_000_000,  # setup_per_cpu_areas; smp_prepare_boot_cpu -> sev_map_percpu_data (row #3)
    "vfs-caches": 115_000_000,  # vfs_caches_init_early: dentry and inode hash tables
    "ghcb": 120_000_000,  # trap_init -> sev_es_init_vc_handling: per-CPU GHCBs (row #1)
    "mm-init": 150_000_000,  # mm_core_init: swiotlb_init, memblock_free_all (row #12: eager acceptance)
    "swiotlb": 300_000_000,  # mem_encrypt_init -> swiotlb_update_mem_attributes (row #5)
    "early-initcall": 350_000_000,  # kvm_setup_vsyscall_timeinfo (row #4)
    "postcore-initcall": 400_000_000,  # dma_atomic_pool_init (row #7)
    "devices": 500_000_000,  # virtio probe: vrings (rows #8, #8a)
    "attestation": 600_000_000,  # sev-guest: snp_msg_alloc (row #10)
    "free-initmem": 900_000_000,  # mem_encrypt_free_decrypted_mem (row #2, second half)
}
#: Runtime workloads start here (or after the last boot event if later).
BOOT_END_NS = 1_000_000_000


def _round_up(x: int, a: int) -> int:
    return -(-x // a) * a


def _next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (x - 1).bit_length()


def _is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


# ------------------------------------------------------------------------------------------------------- config


#: ``LinuxGuestConfig.on_vc_404`` values
ON_VC_404 = ("terminate", "continue")


@dataclass(frozen=True)
class LinuxGuestConfig:
    """One Linux SNP guest: RAM, vCPUs, devices, and the modelling assumptions (guest-workloads.md §2).

    Fields marked [I]/[?] are the reference's inferred/unknown items; [I-model] are placement or timing choices of
    this model. Use :meth:`validate` (or :func:`guest_layout`, which calls it) before use.
    """

    #: Guest RAM in bytes (QEMU ``-m``); a multiple of 2 MiB, at least 64 MiB.
    memory_bytes: int
    #: Possible vCPUs (``num_possible_cpus()``; QEMU ``-smp``).
    vcpus: int
    #: ``accept_memory=lazy`` (the default since the EFI stub calls AllowUnacceptedMemory with
    #: CONFIG_UNACCEPTED_MEMORY=y): RAM above 4 GiB stays unaccepted except what the boot's memblock allocations
    #: and the ZONE_NORMAL atomic pool take; the rest is accepted by workloads later (row #12). False =
    #: ``accept_memory=eager``: ``memblock_free_all()`` accepts all of it in ``accept_unit_bytes`` blocks.
    lazy_accept: bool = True
    #: The EFI stub calls OVMF's ``AllowUnacceptedMemory()`` (Linux with CONFIG_UNACCEPTED_MEMORY=y). False: a
    #: guest without unaccepted-memory support, so OVMF accepts all remaining RAM at ExitBootServices (full
    #: pre-validation, 2M PSC entries; guest-workloads.md §2 OVMF notes) and ``lazy_accept`` has no effect.
    allow_unaccepted_memory: bool = True
    #: OVMF PEI pre-validates all system RAM below 4 GiB with 2M PSC entries (OVMF notes). False [I-model]: the
    #: kernel/EFI stub accepts low RAM itself, in ``accept_unit_bytes`` blocks, before the kernel runs.
    ovmf_prevalidate_below_4g: bool = True
    #: [I] pages of ``.bss..decrypted`` in use (boot GHCB page, hv_clock_boot page, wall_clock); the other
    #: 512 - used pages go back to private in ``mem_encrypt_free_decrypted_mem()`` (row #2).
    bss_decrypted_used_pages: int = 3
    #: [I] 4K pages of ``.data..percpu..decrypted`` per CPU (apf_reason, steal_time, kvm_apic_eoi: >= 1) (row #3).
    percpu_decrypted_pages: int = 1
    #: How the row #3 pages are made shared. ``Protocol.MSR``: as Linux does, ``sev_map_percpu_data()`` ->
    #: ``early_set_memory_decrypted()``: three MSR-protocol PSCs per page (shared, private, shared; see the module
    #: docstring), like row #1. ``Protocol.GHCB`` [what-if]: one ``set_memory_decrypted()``-style GHCB
    #: descriptor per CPU instead.
    percpu_decrypted_protocol: Protocol = Protocol.MSR
    #: [I] ``__per_cpu_end - __per_cpu_start`` of the kernel (config-dependent): 212,992 B in a KVM guest's dmesg
    #: "percpu: Embedded 61 pages/cpu s212992 r8192 d28672 u2097152"; a multiple of 4 KiB (the decrypted section
    #: that ends it is page-aligned). With 4 CPUs: 61-page units, 4 per 2 MiB allocation (``pcpu_build_alloc_info``).
    percpu_static_bytes: int = 212_992
    #: [I] ``sizeof(pg_data_t)`` rounded to a page, NODE_DATA(0) (``alloc_node_data()``, memblock, top of the node):
    #: its two zonelists alone are 2 * (MAX_NUMNODES * MAX_NR_ZONES + 1) * 16 B = 160 KiB with MAX_NUMNODES = 1024.
    #: Only its presence matters: it sits in the 2 MiB the direct-map setup accepted, and pushes the memmap below.
    node_data_bytes: int = 176 * KIB
    #: OVMF's IoMmu reserved shared pool (``IoMmuInitReservedSharedMem()``, 17 pieces, 5,716 KiB with headers):
    #: shared in DXE, touched by the boot loader's DMA, re-encrypted at ExitBootServices. False: a firmware
    #: without it.
    ovmf_iommu_reserved_pool: bool = True
    #: RAM ranges ``(gfn, npages)`` the launch made private and validated (``KVM_SEV_SNP_LAUNCH_UPDATE``: OVMF's SEV
    #: metadata sections, :func:`launch_image`, or a replayed trace's updates): OVMF's pre-validation skips them
    #: (edk2 ``PeiSnpSystemRamValidate.c`` ``DetectPreValidatedOverLap`` / ``mPreValidatedRange``: "the range
    #: is already validated by the hypervisor"), and the guest starts with them validated.
    launch_validated: tuple[tuple[int, int], ...] = ()
    #: virtio-net virtqueues (rx, tx, ctrl; one queue pair unless ``mq``) (row #8b).
    net_queues: int = 3
    #: virtio-blk virtqueues; None = one per vCPU (QEMU virtio-blk-pci ``num-queues`` auto) (row #8b).
    blk_queues: int | None = None
    #: [I] pages per split vring: ``vring_size(256, SMP_CACHE_BYTES)`` = 6,726 B -> an order-1 allocation (row #8a).
    vring_pages: int = 2
    #: SNP guest messaging request + response pages, one ``alloc_shared_pages()`` each (row #10).
    attestation_pages: int = 2
    #: [I-model] place the SWIOTLB pool 2M-aligned (all-2M PSC entries). False: memblock's 4K alignment, which
    #: usually leaves a 4K head and tail (row #5).
    swiotlb_2m_aligned: bool = True
    #: [I] ``swiotlb_adjust_nareas(num_possible_cpus())`` rounds the slab count up to a power of two (and to at
    #: least IO_TLB_SEGSIZE slabs per area): 4 GiB -> 256 MiB instead of 245.76 MiB (row #5).
    swiotlb_round_pow2: bool = True
    #: MAX_PAGE_ORDER block (4 MiB): what ``memblock_free_all()`` puts on ``zone->unaccepted_pages`` and
    #: ``try_to_accept_memory_one()`` accepts at a time (row #12).
    accept_unit_bytes: int = 4 * MIB
    #: EFI unaccepted-memory bitmap unit (``unit_size`` = 2 MiB) (rows #12, #13).
    accept_bitmap_unit_bytes: int = 2 * MIB
    #: ``accept_memory()`` also accepts the next bitmap unit when the range ends unit-aligned (guard for
    #: load_unaligned_zeropad), so the first 4 MiB block accepts 6 MiB and later ones are shifted by 2 MiB (row #12).
    accept_guard_unit: bool = True
    #: [I-model] physical load address of the kernel (CONFIG_PHYSICAL_START, KASLR off); 2M-aligned.
    kernel_load_bytes: int = 16 * MIB
    #: [I-model] size of the loaded kernel image incl. .bss (and .bss..decrypted, its last 2 MiB); multiple of 2M.
    kernel_image_bytes: int = 32 * MIB
    #: [I-model] time between consecutive guest events inside a boot phase (ns).
    boot_event_gap_ns: int = 1_000
    #: What the guest does at a #VC 0x404 (an access to a page that is not validated: the host remapped or took it
    #: back). ``"terminate"``, as Linux does: ``vc_handle_exitcode()`` has no case for it (``ES_UNSUPPORTED``),
    #: so ``exc_vmm_communication()`` → ``sev_es_terminate(SEV_TERM_SET_GEN, GHCB_SEV_ES_GEN_REQ)``
    #: (arch/x86/coco/sev/core.c) and the VM ends. ``"continue"`` [what-if]: re-validate the page and go on
    #: (counting each #VC), as the model did before.
    on_vc_404: str = "terminate"

    # ------------------------------------------------------------------------------------------- construction

    def __post_init__(self) -> None:
        # Scenario convenience: "4M"-style strings for *_bytes fields and "msr"/"ghcb" for the protocol; anything
        # else that is wrong is left for validate() to name.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_bytes") and isinstance(value, str):
                object.__setattr__(self, f.name, parse_size(value, f.name))
        proto = self.percpu_decrypted_protocol
        if isinstance(proto, str) and not isinstance(proto, Protocol) and proto.lower() in ("msr", "ghcb"):
            object.__setattr__(self, "percpu_decrypted_protocol", Protocol(proto.lower()))

    @classmethod
    def from_dict(cls, data: Mapping[str, object], field: str = "vm") -> LinuxGuestConfig:
        """Build from a scenario table: ``memory`` (size string or bytes), ``vcpus`` and any field by name.

        Size fields (``*_bytes``) accept ``"4G"``-style strings. Unknown keys raise :class:`ConfigError`.
        """
        names = {f.name for f in fields(cls)}
        kwargs: dict[str, object] = {}
        for key, value in data.items():
            name = "memory_bytes" if key == "memory" else key
            if name not in names:
                raise ConfigError(f"{field}.{key}", f"unknown guest option (known: memory, {', '.join(sorted(names))})")
            if name.endswith("_bytes"):
                value = parse_size(value, f"{field}.{key}")
            kwargs[name] = value
        for required in ("memory_bytes", "vcpus"):
            if required not in kwargs:
                raise ConfigError(f"{field}.{'memory' if required == 'memory_bytes' else required}", "is required")
        cfg = cls(**kwargs)  # type: ignore[arg-type]
        try:
            cfg.validate()
        except ConfigError as e:
            raise ConfigError(f"{field}.{e.field}", str(e).split(": ", 1)[-1]) from None
        return cfg

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field for any bad value."""

        def need_int(name: str, lo: int, hi: int | None = None) -> int:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(name, f"expected an integer, got {v!r}")
            if v < lo or (hi is not None and v > hi):
                raise ConfigError(name, f"must be in [{lo}, {hi if hi is not None else 'inf'}], got {v}")
            return v

        def need_bool(name: str) -> None:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"expected true/false, got {getattr(self, name)!r}")

        mem = need_int("memory_bytes", MIN_MEMORY_BYTES, MAX_MEMORY_BYTES)
        if mem % (2 * MIB):
            raise ConfigError("memory_bytes", f"must be a multiple of 2 MiB, got {mem}")
        need_int("vcpus", 1, MAX_VCPUS)
        for name in (
            "lazy_accept",
            "allow_unaccepted_memory",
            "ovmf_prevalidate_below_4g",
            "swiotlb_2m_aligned",
            "swiotlb_round_pow2",
            "ovmf_iommu_reserved_pool",
        ):
            need_bool(name)
        need_bool("accept_guard_unit")
        for r in self.launch_validated:
            if (
                not isinstance(r, tuple)
                or len(r) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)
                or r[0] < 0
                or r[1] <= 0
            ):
                raise ConfigError("launch_validated", f"expected (gfn, npages) pairs, got {r!r}")
        need_int("bss_decrypted_used_pages", 1, BSS_DECRYPTED_PAGES)
        need_int("percpu_decrypted_pages", 0, 64)
        static = need_int("percpu_static_bytes", PAGE_SIZE, 64 * MIB)
        if static % PAGE_SIZE or static < self.percpu_decrypted_pages * PAGE_SIZE:
            raise ConfigError(
                "percpu_static_bytes", f"must be a multiple of 4 KiB holding percpu_decrypted_pages, got {static}"
            )
        need_int("node_data_bytes", PAGE_SIZE, 64 * MIB)
        if not isinstance(self.percpu_decrypted_protocol, Protocol):
            bad = self.percpu_decrypted_protocol
            raise ConfigError("percpu_decrypted_protocol", f"expected msr or ghcb, got {bad!r}")
        need_int("net_queues", 0, 1024)
        if self.blk_queues is not None:
            need_int("blk_queues", 0, 1024)
        need_int("vring_pages", 1, 1024)
        need_int("attestation_pages", 0, 64)
        unit = need_int("accept_bitmap_unit_bytes", PAGE_SIZE)
        if not _is_pow2(unit):
            raise ConfigError("accept_bitmap_unit_bytes", f"must be a power of two, got {unit}")
        block = need_int("accept_unit_bytes", PAGE_SIZE)
        if not _is_pow2(block) or block < unit:
            raise ConfigError("accept_unit_bytes", f"must be a power of two >= accept_bitmap_unit_bytes, got {block}")
        load = need_int("kernel_load_bytes", LOW_RESERVED_PAGES * PAGE_SIZE)
        image = need_int("kernel_image_bytes", 2 * BSS_DECRYPTED_PAGES * PAGE_SIZE)
        if load % (2 * MIB):
            raise ConfigError("kernel_load_bytes", f"must be 2 MiB-aligned, got {load}")
        if image % (2 * MIB):
            raise ConfigError("kernel_image_bytes", f"must be a multiple of 2 MiB, got {image}")
        if load + image > self.lowmem_bytes:
            raise ConfigError(
                "memory_bytes", f"the kernel image [{load:#x}, {load + image:#x}) does not fit in RAM below 4 GiB"
            )
        need_int("boot_event_gap_ns", 0)
        if self.on_vc_404 not in ON_VC_404:
            raise ConfigError("on_vc_404", f"expected one of {', '.join(ON_VC_404)}, got {self.on_vc_404!r}")

    # ---------------------------------------------------------------------------------------------- RAM map

    @property
    def lowmem_bytes(self) -> int:
        """RAM below 4 GiB (q35): all of it below 2.75 GiB, else 2 GiB."""
        return Q35_LOWMEM_LARGE if self.memory_bytes >= Q35_LOWMEM_THRESHOLD else self.memory_bytes

    @property
    def accepts_lazily(self) -> bool:
        """RAM above 4 GiB is left unaccepted at boot (``lazy_accept`` and ``allow_unaccepted_memory``)."""
        return self.lazy_accept and self.allow_unaccepted_memory

    @property
    def lowmem_pages(self) -> int:
        return self.lowmem_bytes >> PAGE_SHIFT

    @property
    def high_pages(self) -> int:
        """RAM pages mapped from GPA 4 GiB."""
        return (self.memory_bytes - self.lowmem_bytes) >> PAGE_SHIFT

    @property
    def total_pages(self) -> int:
        return self.memory_bytes >> PAGE_SHIFT

    @property
    def end_gfn(self) -> int:
        """One past the highest RAM GFN (GFN space the VM needs, PCI hole included)."""
        return FOUR_GIB_GFN + self.high_pages if self.high_pages else self.lowmem_pages

    def gfn_limit(self) -> int:
        """GFNs the VM spans: ``end_gfn`` (size of a per-GFN array; includes the non-RAM hole below 4 GiB)."""
        return self.end_gfn

    def ram_ranges(self) -> list[tuple[int, int]]:
        """RAM as ``(gfn, npages)``: ``[(0, lowmem_pages), (4 GiB >> 12, high_pages)]`` (the second iff present)."""
        ranges = [(0, self.lowmem_pages)]
        if self.high_pages:
            ranges.append((FOUR_GIB_GFN, self.high_pages))
        return ranges

    @property
    def effective_blk_queues(self) -> int:
        return self.vcpus if self.blk_queues is None else self.blk_queues

    @property
    def accept_unit_pages(self) -> int:
        return self.accept_unit_bytes >> PAGE_SHIFT

    @property
    def accept_bitmap_unit_pages(self) -> int:
        return self.accept_bitmap_unit_bytes >> PAGE_SHIFT


# ------------------------------------------------------------------------------------------------------ sizes


def swiotlb_bytes(cfg: LinuxGuestConfig) -> int:
    """Default SWIOTLB pool size (row #5): ``clamp(6% of RAM, 64 MiB, 1 GiB)`` in slabs, then rounded.

    ``mem_encrypt_setup_arch()``: ``size = total_mem * 6 / 100`` clamped; ``swiotlb_adjust_size()``: slabs of
    2 KiB aligned to IO_TLB_SEGSIZE (128); with ``swiotlb_round_pow2`` [I], ``swiotlb_adjust_nareas()`` makes it at
    least 128 slabs per area (areas = vCPUs rounded up to a power of two) and a power of two. So 1 GiB -> 64 MiB,
    4 GiB -> 256 MiB, 8 GiB -> 512 MiB, >= 16 GiB -> 1 GiB.
    """
    size = min(max(cfg.memory_bytes * 6 // 100, SWIOTLB_MIN_BYTES), SWIOTLB_MAX_BYTES)
    nslabs = _round_up(-(-size // IO_TLB_SIZE), IO_TLB_SEGSIZE)
    if cfg.swiotlb_round_pow2:
        nslabs = _next_pow2(max(nslabs, IO_TLB_SEGSIZE * _next_pow2(cfg.vcpus)))
    return nslabs * IO_TLB_SIZE


def swiotlb_nareas(cpus: int, nslabs: int) -> int:
    """Areas of a SWIOTLB pool: ``swiotlb_adjust_nareas(num_possible_cpus())`` rounds the CPUs up to a power of
    two; ``limit_nareas()`` keeps at least IO_TLB_SEGSIZE slabs per area (``kernel/dma/swiotlb.c``)."""
    nareas = _next_pow2(cpus)
    return nslabs // IO_TLB_SEGSIZE if nslabs < nareas * IO_TLB_SEGSIZE else nareas


def atomic_pool_bytes(cfg: LinuxGuestConfig) -> int:
    """Size of each DMA atomic pool as allocated and decrypted (row #7; ``kernel/dma/pool.c``).

    ``pages = totalram_pages / (SZ_1G / SZ_128K)``, at most MAX_ORDER_NR_PAGES (1024), at least 128 KiB;
    ``atomic_pool_expand()`` then allocates ``1 << get_order(size)`` pages, i.e. the next power of two.
    [I] totalram_pages is taken as all RAM (the real value is smaller by the kernel image and reservations,
    which can make the real pool one notch smaller on exact powers of two, e.g. 508 KiB -> 512 KiB either way).
    """
    pages = min(cfg.total_pages // ((1 * GIB) // (128 * KIB)), MAX_ORDER_NR_PAGES)
    size = max(pages << PAGE_SHIFT, ATOMIC_POOL_MIN_BYTES)
    return _next_pow2(size >> PAGE_SHIFT) << PAGE_SHIFT


def atomic_pool_zones(cfg: LinuxGuestConfig) -> tuple[str, ...]:
    """Zones that get an atomic pool, in ``dma_atomic_pool_init()`` order: NORMAL iff RAM above 4 GiB, DMA, DMA32.

    ZONE_DMA always has managed pages on q35 (RAM from 1 MiB) and ZONE_DMA32 always does (>= 64 MiB RAM).
    """
    zones = ("normal",) if cfg.high_pages else ()
    return (*zones, "dma", "dma32")


def kvmclock_pages(cfg: LinuxGuestConfig) -> int:
    """Pages of the kvmclock overflow array (row #4): 0 for <= 64 vCPUs, else ``1 << get_order((V-64) * 64)``."""
    if cfg.vcpus <= HVC_BOOT_ARRAY_SIZE:
        return 0
    nbytes = (cfg.vcpus - HVC_BOOT_ARRAY_SIZE) * PVCLOCK_VSYSCALL_TIME_INFO_BYTES
    return _next_pow2(-(-nbytes // PAGE_SIZE))


# -------------------------------------------------------------------------------------------------- placement


class BootAccept(NamedTuple):
    """One ``arch_accept_memory()`` the boot does: ``[gfn, gfn + npages)`` in phase ``phase`` (a key of
    ``BOOT_PHASES_NS``), on behalf of CPU ``cpu``'s per-CPU setup (-1: not per CPU)."""

    phase: str
    cpu: int
    gfn: int
    npages: int


@dataclass(frozen=True)
class GuestLayout:
    """Where the guest's boot-time objects are, and what the boot accepts (see the module docstring).

    ``allocations`` are the disjoint boot allocations still held at the end of boot; the other fields name
    objects, some nested inside an allocation (a GHCB page inside its runtime data, ``.bss..decrypted`` inside the
    kernel image, a CPU's decrypted page inside its per-CPU unit).
    """

    ram: tuple[tuple[int, int], ...]
    allocations: tuple[Placement, ...]
    kernel_image: Placement
    bss_decrypted: Placement
    #: OVMF's ``mMaxCpuCount * 2`` reserved pages (e820-reserved for Linux) and the GHCB page of each CPU in it.
    ovmf_ghcb_area: Placement
    ovmf_ghcbs: tuple[int, ...]
    #: The shared data part of each piece of OVMF's IoMmu reserved pool (empty without the pool).
    ovmf_iommu: tuple[Placement, ...]
    node_data: Placement
    #: The memmap buffer (``sparse_buffer_init()``): 2 MiB per present 128 MiB section.
    memmap: Placement
    #: The per-CPU first chunk as allocated (``nr_units * unit_size``; each unit's tail was given back).
    percpu_area: Placement
    percpu_unit_pages: int
    dentry_hash: Placement
    inode_hash: Placement
    #: GHCB page of each CPU (first page of its 3-page ``sev_es_runtime_data``; CPU 0's is the highest).
    ghcbs: tuple[int, ...]
    percpu_decrypted: tuple[Placement, ...]
    swiotlb: Placement
    swiotlb_slots: Placement
    kvmclock: Placement | None
    #: In ``dma_atomic_pool_init()`` order; ``what`` is ``atomic-pool-<zone>``.
    atomic_pools: tuple[Placement, ...]
    vrings: tuple[Placement, ...]
    attestation: tuple[Placement, ...]
    #: Every acceptance of the first boot, in order (firmware-phase ones are the EFI stub's).
    boot_accepts: tuple[BootAccept, ...]
    #: GFNs of the MAX_PAGE_ORDER blocks still on ``zone->unaccepted_pages`` after boot, in list order.
    unaccepted_blocks: tuple[int, ...]
    #: RAM still unaccepted after boot, ``(gfn, npages)`` ascending (bitmap bits still set).
    unaccepted: tuple[tuple[int, int], ...]
    #: ``(gfn, npages)`` of accepted, free RAM reserved for runtime allocations (:mod:`snpsim.guest.workloads`):
    #: [I-model] the upper half (2M-aligned) of the largest free accepted range after boot.
    runtime_region: tuple[int, int]
    #: Accepted private RAM that no boot object and no runtime allocation ever converts (``(gfn, npages)``).
    stable_private: tuple[tuple[int, int], ...]

    def boot_accepted_ranges(self) -> list[tuple[int, int]]:
        """RAM accepted (validated private or later converted) by the end of boot, as ``(gfn, npages)``."""
        return _subtract(self.ram, self.unaccepted)

    @property
    def boot_accepted_high_pages(self) -> int:
        """Pages of RAM above 4 GiB accepted by the end of boot."""
        return sum(n for g, n in self.boot_accepted_ranges() if g >= FOUR_GIB_GFN)

    def unaccepted_memory(self, cfg: LinuxGuestConfig) -> UnacceptedMemory:
        """A fresh copy of the unaccepted bitmap as the boot left it."""
        bitmap = UnacceptedMemory(cfg.accept_bitmap_unit_pages, cfg.accept_guard_unit)
        for g, n in self.unaccepted:
            bitmap.mark(g, n)
        return bitmap


def _subtract(ranges: Iterable[tuple[int, int]], holes: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(gfn, npages)`` ranges minus holes, ascending."""
    m = IntervalMap(0)
    for g, n in ranges:
        m.assign(g, g + n, 1)
    for g, n in holes:
        m.assign(g, g + n, 0)
    return [(s, e - s) for s, e, v in m.runs(0, 1 << 62) if v == 1]


def _intersect(a: Iterable[tuple[int, int]], b: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(gfn, npages)`` ranges in both ``a`` and ``b``, ascending."""
    m = IntervalMap(0)
    for g, n in a:
        m.assign(g, g + n, 1)
    out: list[tuple[int, int]] = []
    for g, n in b:
        out += [(s, e - s) for s, e, v in m.runs(g, g + n) if v == 1]
    return sorted(out)


class _Boot:
    """Runs the boot's allocations in order against memblock and the unaccepted bitmap (module docstring)."""

    def __init__(self, cfg: LinuxGuestConfig) -> None:
        self.cfg = cfg
        self.alloc = GuestPhysAllocator(cfg.ram_ranges())
        self.bitmap = UnacceptedMemory(cfg.accept_bitmap_unit_pages, cfg.accept_guard_unit)
        self.accepts: list[BootAccept] = []
        self.split_2m: set[int] = set()

    def accept(self, phase: str, gfn: int, npages: int, cpu: int = -1) -> None:
        """``accept_memory(gfn, npages)``: record one acceptance per still-unaccepted run."""
        for g, n in self.bitmap.accept_memory(gfn, npages):
            self.accepts.append(BootAccept(phase, cpu, g, n))

    def memblock(
        self, phase: str, what: str, npages: int, *, align: int = 1, lo: int = 0, hi: int | None = None, cpu: int = -1
    ) -> Placement:
        """``memblock_alloc_range_nid()``: top-down, then ``accept_memory(found, size)``."""
        p = self.alloc.alloc(what, npages, align=align, lo=max(lo, 1), hi=hi)
        self.accept(phase, p.gfn, p.npages, cpu)
        return p

    def split_for(self, phase: str, gfn: int, cpu: int) -> None:
        """``kernel_physical_mapping_change()`` splitting the 2 MiB region of ``gfn``: a page-table page from
        memblock (``alloc_low_pages()``), unless the region is already 4K-mapped (the first 2 MiB always is)."""
        region = gfn // PAGES_PER_2M
        if region and region not in self.split_2m:
            self.split_2m.add(region)
            self.memblock(phase, "pgtable", 1, cpu=cpu)


def _iommu_pieces(base: int) -> list[Placement]:
    """The data part of every piece of the IoMmu pool at ``base``, in ``mReservedMemRanges`` order."""
    out: list[Placement] = []
    g = base
    for data_bytes, slots in IOMMU_RESERVED_MEM_RANGES:
        data = data_bytes >> PAGE_SHIFT
        for _ in range(slots):
            out.append(Placement("ovmf-iommu", g + IOMMU_HEADER_PAGES, data))
            g += IOMMU_HEADER_PAGES + data
    return out


def _build_layout(cfg: LinuxGuestConfig) -> GuestLayout:
    boot = _Boot(cfg)
    alloc = boot.alloc
    low_end, high = cfg.lowmem_pages, cfg.high_pages
    below_4g = min(low_end, FOUR_GIB_GFN)
    v = cfg.vcpus
    alloc.reserve("low-1m", 0, LOW_RESERVED_PAGES)
    kernel = alloc.reserve("kernel-image", cfg.kernel_load_bytes >> PAGE_SHIFT, cfg.kernel_image_bytes >> PAGE_SHIFT)
    bss = Placement("bss-decrypted", kernel.end - BSS_DECRYPTED_PAGES, BSS_DECRYPTED_PAGES)

    # OVMF: GHCB pages (PEI, reserved) and the IoMmu pool (DXE), top of low RAM [I-model].
    ovmf_ghcb = alloc.alloc("ovmf-ghcb", 2 * v, hi=low_end)
    iommu: list[Placement] = []
    if cfg.ovmf_iommu_reserved_pool:
        iommu = _iommu_pieces(alloc.alloc("ovmf-iommu-pool", IOMMU_POOL_PAGES, hi=low_end).gfn)

    # Unaccepted memory: low RAM when OVMF does not pre-validate it (accepted before the kernel runs, block by
    # block), high RAM when the EFI stub allows unaccepted memory (process_unaccepted_memory()).
    unit = cfg.accept_unit_pages
    if not cfg.ovmf_prevalidate_below_4g:
        for g, n in boot.bitmap.process_unaccepted_memory(0, low_end):
            boot.accepts.append(BootAccept("firmware", -1, g, n))
        for block in range(0, low_end, unit):
            boot.accept("firmware", block, min(unit, low_end - block))
    if high and cfg.allow_unaccepted_memory:
        for g, n in boot.bitmap.process_unaccepted_memory(FOUR_GIB_GFN, high):
            boot.accepts.append(BootAccept("firmware", -1, g, n))

    # setup_arch(): memory_map_top_down() probes (and frees) the top 2 MiB; NODE_DATA; sparse_init().
    probe = alloc.find(PAGES_PER_2M, align=PAGES_PER_2M, lo=ISA_END_GFN)
    boot.accept("setup-arch", probe, PAGES_PER_2M)
    node_data = boot.memblock("setup-arch", "node-data", _round_up(cfg.node_data_bytes, PAGE_SIZE) >> PAGE_SHIFT)
    sections = present_sections(cfg.ram_ranges())
    memmap = boot.memblock(
        "setup-arch", "memmap", len(sections) * SECTION_MAP_PAGES, align=SECTION_MAP_PAGES, lo=ZONE_DMA_END_GFN
    )
    for _ in range(vmemmap_pgtable_pages(sections)):
        boot.memblock("setup-arch", "pgtable", 1, lo=ZONE_DMA_END_GFN)
    nr_kernel_pages = alloc.free_pages()  # free_area_init() -> calc_nr_kernel_pages(): free memblock memory

    # setup_per_cpu_areas(): the embedded first chunk; each unit's tail and every unused unit are given back.
    ai = pcpu_build_alloc_info(
        v, cfg.percpu_static_bytes, PERCPU_MODULE_RESERVE, PERCPU_DYNAMIC_RESERVE, PERCPU_ATOM_BYTES
    )
    unit_pages, used = ai.unit_bytes >> PAGE_SHIFT, ai.size_sum_bytes >> PAGE_SHIFT
    area = boot.memblock(
        "percpu", "percpu", ai.nr_units * unit_pages, align=PERCPU_ATOM_BYTES >> PAGE_SHIFT, lo=ZONE_DMA_END_GFN
    )
    for u in range(ai.nr_units):
        keep = used if u < v else 0
        alloc.release(area.gfn + u * unit_pages + keep, unit_pages - keep)
    p, static_pages = cfg.percpu_decrypted_pages, cfg.percpu_static_bytes >> PAGE_SHIFT
    percpu: tuple[Placement, ...] = ()
    if p:
        percpu = tuple(Placement("percpu-decrypted", area.gfn + c * unit_pages + static_pages - p, p) for c in range(v))
    # smp_prepare_boot_cpu() -> sev_map_percpu_data(): early_set_memory_decrypted() splits the direct map.
    if cfg.percpu_decrypted_protocol is Protocol.MSR:
        for c, pl in enumerate(percpu):
            for g in range(pl.gfn, pl.end):
                boot.split_for("percpu", g, c)

    # vfs_caches_init_early(): HASH_EARLY tables sized from nr_kernel_pages (= nr_all_pages without highmem).
    dentry = boot.memblock(
        "vfs-caches",
        "dentry-hash",
        alloc_large_system_hash_pages(nr_kernel_pages, nr_kernel_pages, HASH_BUCKET_BYTES, DHASH_SCALE),
    )
    inode = boot.memblock(
        "vfs-caches",
        "inode-hash",
        alloc_large_system_hash_pages(nr_kernel_pages, nr_kernel_pages, HASH_BUCKET_BYTES, IHASH_SCALE),
    )

    # trap_init() -> sev_es_init_vc_handling(): per CPU alloc_runtime_data() then init_ghcb().
    ghcbs: list[int] = []
    for c in range(v):
        data = boot.memblock("ghcb", "ghcb-runtime-data", GHCB_RUNTIME_DATA_PAGES, cpu=c)
        ghcbs.append(data.gfn)
        boot.split_for("ghcb", data.gfn, c)

    # mm_core_init() -> swiotlb_init(): memblock_alloc_low, halved (in whole segments) on failure; the slot array.
    seg_pages = IO_TLB_SEGSIZE * IO_TLB_SIZE // PAGE_SIZE
    size = swiotlb_bytes(cfg) >> PAGE_SHIFT
    while True:
        align = PAGES_PER_2M if cfg.swiotlb_2m_aligned and size >= PAGES_PER_2M else 1
        try:
            swiotlb = boot.memblock("mm-init", "swiotlb", size, align=align, hi=below_4g)
            break
        except AllocationError:
            if size <= IO_TLB_MIN_BYTES >> PAGE_SHIFT:
                raise
            size = max(_round_up(size // 2, seg_pages), IO_TLB_MIN_BYTES >> PAGE_SHIFT)
    nslabs = swiotlb.npages * PAGE_SIZE // IO_TLB_SIZE
    slots = boot.memblock("mm-init", "swiotlb-slots", -(-nslabs * IO_TLB_SLOT_BYTES // PAGE_SIZE))

    # memblock_free_all(): free blocks to the buddy allocator (zone->unaccepted_pages, or accepted).
    runs, listed = free_to_buddy(boot.bitmap, alloc.free_ranges(), unit, lazy=cfg.lazy_accept)
    boot.accepts += [BootAccept("mm-init", -1, g, n) for g, n in runs]

    # Page allocator: kvmclock (early_initcall), atomic pools (postcore), vrings, attestation.
    kvm: Placement | None = None
    kp = kvmclock_pages(cfg)
    if kp:
        kvm = alloc.alloc("kvmclock", kp, align=kp, hi=low_end)
    pool_pages = atomic_pool_bytes(cfg) >> PAGE_SHIFT
    pools: list[Placement] = []
    for zone in atomic_pool_zones(cfg):
        what = f"atomic-pool-{zone}"
        if zone == "normal":
            lo = FOUR_GIB_GFN
            if listed:  # cond_accept_memory() -> try_to_accept_memory_one(): the first block of the list
                lo = listed.pop(0)
                boot.accept("postcore-initcall", lo, unit)
            pools.append(alloc.alloc(what, pool_pages, align=pool_pages, lo=lo, top_down=False))
        elif zone == "dma":
            pools.append(alloc.alloc(what, pool_pages, align=pool_pages, hi=ZONE_DMA_END_GFN))
        else:
            pools.append(alloc.alloc(what, pool_pages, align=pool_pages, lo=ZONE_DMA_END_GFN, hi=below_4g))
    vr_align = _next_pow2(cfg.vring_pages)
    vrings = tuple(
        alloc.alloc("vring", cfg.vring_pages, align=vr_align, hi=low_end)
        for _ in range(cfg.net_queues + cfg.effective_blk_queues)
    )
    attest = tuple(alloc.alloc("attestation", 1, hi=low_end) for _ in range(cfg.attestation_pages))

    unaccepted = boot.bitmap.ranges()
    free_accepted = _intersect(_subtract(cfg.ram_ranges(), unaccepted), alloc.free_ranges())
    gfn, n = max(free_accepted, key=lambda r: (r[1], -r[0]))
    s2, e2 = _round_up(gfn, PAGES_PER_2M), (gfn + n) // PAGES_PER_2M * PAGES_PER_2M
    if e2 - s2 >= 2 * PAGES_PER_2M:
        mid = _round_up(s2 + (e2 - s2) // 2, PAGES_PER_2M)
        region = (mid, e2 - mid)
    elif e2 > s2:
        region = (s2, e2 - s2)
    else:
        region = (gfn, n)
    stable = (*_subtract(free_accepted, [region]), (kernel.gfn, kernel.npages - BSS_DECRYPTED_PAGES))
    return GuestLayout(
        ram=tuple(cfg.ram_ranges()),
        allocations=tuple(sorted(alloc.placements, key=lambda pl: pl.gfn)),
        kernel_image=kernel,
        bss_decrypted=bss,
        ovmf_ghcb_area=ovmf_ghcb,
        ovmf_ghcbs=tuple(ovmf_ghcb.gfn + 2 * c for c in range(v)),
        ovmf_iommu=tuple(iommu),
        node_data=node_data,
        memmap=memmap,
        percpu_area=area,
        percpu_unit_pages=unit_pages,
        dentry_hash=dentry,
        inode_hash=inode,
        ghcbs=tuple(ghcbs),
        percpu_decrypted=percpu,
        swiotlb=swiotlb,
        swiotlb_slots=slots,
        kvmclock=kvm,
        atomic_pools=tuple(pools),
        vrings=vrings,
        attestation=attest,
        boot_accepts=tuple(boot.accepts),
        unaccepted_blocks=tuple(listed),
        unaccepted=tuple(unaccepted),
        runtime_region=region,
        stable_private=tuple(sorted(stable)),
    )


@functools.lru_cache(maxsize=128)
def guest_layout(cfg: LinuxGuestConfig) -> GuestLayout:
    """The guest's deterministic placement (validates ``cfg``; raises :class:`ConfigError` if RAM is too small)."""
    cfg.validate()
    try:
        return _build_layout(cfg)
    except AllocationError as e:
        msg = f"{cfg.memory_bytes} bytes of RAM is too small for this guest ({e})"
        raise ConfigError("memory_bytes", msg) from None


# ------------------------------------------------------------------------------------------------------- boot


class _Clock:
    """Phase offsets + a fixed gap between consecutive events; never goes backwards."""

    def __init__(self, origin: int, gap: int) -> None:
        self.origin, self.gap = origin, gap
        self.floor = origin
        self.last: int | None = None

    def phase(self, name: str) -> None:
        self.floor = self.origin + BOOT_PHASES_NS[name]

    def next(self) -> int:
        t = self.floor if self.last is None else max(self.floor, self.last + self.gap)
        self.last = t
        return t


class _Events:
    """The boot's event list and how each kind of guest operation turns into events."""

    def __init__(self, cfg: LinuxGuestConfig, start_ns: int) -> None:
        self.clk = _Clock(start_ns, cfg.boot_event_gap_ns)
        self.out: list[Timed] = []

    def conv(
        self,
        gfn: int,
        n: int,
        to_private: bool,
        what: str,
        protocol: Protocol = Protocol.GHCB,
        huge_ok: bool = False,
        max_entries: int | None = None,
    ) -> None:
        self.out.append(
            Timed(self.clk.next(), Conversion(gfn, n, to_private, protocol, huge_ok, what, 0, True, max_entries))
        )

    def access(self, gfn: int, n: int, private: bool, what: str, vcpu: int = 0, write: bool = True) -> None:
        self.out.append(Timed(self.clk.next(), Access(gfn, n, private, write, what, vcpu)))

    def ovmf(self, gfn: int, n: int, to_private: bool, what: str, huge_ok: bool) -> None:
        """edk2 ``InternalSetPageState()``: GHCB protocol, up to 253 entries per VMGEXIT."""
        self.conv(gfn, n, to_private, what, Protocol.GHCB, huge_ok, SNP_PAGE_STATE_MAX_ENTRY)

    def accepts(self, lay: GuestLayout, phase: str, cpu: int = -1) -> None:
        """The acceptances of ``phase`` (for ``cpu``): ``snp_accept_memory()`` = PSC to private, 2M entries."""
        for a in lay.boot_accepts:
            if a.phase == phase and a.cpu == cpu:
                self.conv(a.gfn, a.npages, True, "accept", huge_ok=True)

    def early_decrypt(self, gfn: int, what: str) -> None:
        """``early_set_memory_decrypted()`` of one 4K-mapped page (module docstring, step 5).

        ``__sme_early_enc_dec()``: ``snp_memcpy(sme_early_buffer, src, ...)`` reads it through the encrypted
        mapping; ``snp_memcpy(dst, sme_early_buffer, ..., decrypt=true)``: ``early_snp_set_memory_shared()``
        (PVALIDATE rescind, then MSR PSC), the copy through the decrypted mapping, ``early_snp_set_memory_private()``
        (MSR PSC, then PVALIDATE); then ``__set_clr_pte_enc()``: ``early_snp_set_memory_shared()`` again "before the
        page table updates".
        """
        self.access(gfn, 1, True, what, write=False)
        self.conv(gfn, 1, False, what, Protocol.MSR)
        self.access(gfn, 1, False, what)
        self.conv(gfn, 1, True, what, Protocol.MSR)
        self.conv(gfn, 1, False, what, Protocol.MSR)


def _gaps(lo: int, hi: int, taken: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(gfn, npages)`` pieces of ``[lo, hi)`` outside the ``(gfn, npages)`` ranges ``taken``."""
    out: list[tuple[int, int]] = []
    at = lo
    for g, n in sorted(taken):
        if g + n <= at or g >= hi:
            continue
        if g > at:
            out.append((at, g - at))
        at = max(at, g + n)
    if at < hi:
        out.append((at, hi - at))
    return out


def boot_events(cfg: LinuxGuestConfig, *, start_ns: int = 0, firmware: bool = True) -> list[Timed]:
    """The guest's boot sequence as timed events, in order (module docstring; guest-workloads.md §2 rows inline).

    ``firmware=False`` models a kexec'd kernel (row #14): no OVMF phase and no acceptance (the same layout, so its
    memblock allocations land on memory the first boot accepted; unaccepted memory stays unaccepted), the kernel
    phases are the same. All conversions are issued by vCPU 0 (the boot CPU walks ``for_each_possible_cpu``); the
    Access of a per-CPU decrypted page is by its CPU.
    """
    lay = guest_layout(cfg)
    ev = _Events(cfg, start_ns)
    clk = ev.clk
    low, high = cfg.lowmem_pages, cfg.high_pages
    if firmware:
        clk.phase("firmware")
        # OVMF PEI: pre-validate all RAM below 4 GiB (PSC to private, 2M entries, + PVALIDATE); RAM above 4 GiB is
        # left unaccepted (BZ3937 unaccepted resource HOBs) (§2 OVMF notes, row #13). Without pre-validation the
        # kernel/EFI stub accepts low RAM first (boot_accepts of the firmware phase below 4 GiB).
        if cfg.ovmf_prevalidate_below_4g:
            for lo, n in _gaps(0, low, cfg.launch_validated):
                ev.ovmf(lo, n, True, "ovmf-prevalidate", huge_ok=True)
        else:
            for a in lay.boot_accepts:
                if a.phase == "firmware" and a.gfn < FOUR_GIB_GFN:
                    ev.conv(a.gfn, a.npages, True, "accept", huge_ok=True)
        # AmdSevEsInitialize(): every other page of the reserved area is a GHCB, made shared (SetMemoryEncDec:
        # UseLargeEntry = FALSE) and used by its CPU.
        for cpu, g in enumerate(lay.ovmf_ghcbs):
            ev.ovmf(g, 1, False, "ovmf-ghcb", huge_ok=False)
            ev.access(g, 1, False, "ovmf-ghcb", vcpu=cpu)
        # IoMmuDxe: the reserved pool's data parts shared; [I-model] the boot loader's DMA touches every piece.
        for pc in lay.ovmf_iommu:
            ev.ovmf(pc.gfn, pc.npages, False, "ovmf-iommu", huge_ok=False)
            ev.access(pc.gfn, pc.npages, False, "ovmf-iommu")
        # EFI stub: process_unaccepted_memory() accepts unaligned pieces of high RAM up front.
        for a in lay.boot_accepts:
            if a.phase == "firmware" and a.gfn >= FOUR_GIB_GFN:
                ev.conv(a.gfn, a.npages, True, "accept", huge_ok=True)
        # ExitBootServices: IoMmu pool re-encrypted; without AllowUnacceptedMemory() OVMF accepts all remaining RAM.
        for pc in lay.ovmf_iommu:
            ev.ovmf(pc.gfn, pc.npages, True, "ovmf-iommu-release", huge_ok=False)
        if high and not cfg.allow_unaccepted_memory:
            ev.ovmf(FOUR_GIB_GFN, high, True, "ovmf-accept-all", huge_ok=True)

    def accepts(phase: str, cpu: int = -1) -> None:
        if firmware:
            ev.accepts(lay, phase, cpu)

    # Row #2: __startup_64 -> sme_postprocess_startup(): .bss..decrypted made shared with the MSR protocol
    # (early_snp_set_memory_shared(..., PTRS_PER_PMD) per 2M = 512 4K PSCs); the boot GHCB and hv_clock_boot live
    # there and are written through a C=0 mapping.
    clk.phase("kernel-entry")
    k, bss = lay.kernel_image, lay.bss_decrypted
    ev.access(k.gfn, k.npages - bss.npages, True, "kernel-image")
    ev.conv(bss.gfn, bss.npages, False, "bss-decrypted", Protocol.MSR)
    ev.access(bss.gfn, cfg.bss_decrypted_used_pages, False, "bss-decrypted")

    # setup_arch(): memblock acceptances (direct-map probe, NODE_DATA, memmap, vmemmap tables).
    clk.phase("setup-arch")
    accepts("setup-arch")

    # Row #3: setup_per_cpu_areas(), then smp_prepare_boot_cpu() -> sev_map_percpu_data() (AMD only).
    clk.phase("percpu")
    accepts("percpu")
    for cpu, pl in enumerate(lay.percpu_decrypted):
        accepts("percpu", cpu)
        if cfg.percpu_decrypted_protocol is Protocol.MSR:
            for g in range(pl.gfn, pl.end):
                ev.early_decrypt(g, "percpu-decrypted")
        else:
            ev.conv(pl.gfn, pl.npages, False, "percpu-decrypted", Protocol.GHCB)
        ev.access(pl.gfn, pl.npages, False, "percpu-decrypted", vcpu=cpu)

    clk.phase("vfs-caches")
    accepts("vfs-caches")

    # Row #1: trap_init() -> sev_es_init_vc_handling(): alloc_runtime_data(cpu), init_ghcb(cpu):
    # early_set_memory_decrypted() of the GHCB page, then the boot CPU's memset() of it.
    clk.phase("ghcb")
    for cpu, g in enumerate(lay.ghcbs):
        accepts("ghcb", cpu)
        ev.early_decrypt(g, "ghcb")
        ev.access(g, 1, False, "ghcb")

    # mm_core_init(): swiotlb_init's slot array; memblock_free_all() (row #12; all of it with accept_memory=eager).
    clk.phase("mm-init")
    accepts("mm-init")

    # Row #5: mem_encrypt_init() -> swiotlb_update_mem_attributes(): one set_memory_decrypted over the pool.
    clk.phase("swiotlb")
    ev.conv(lay.swiotlb.gfn, lay.swiotlb.npages, False, "swiotlb", huge_ok=True)

    # Row #4: kvm_setup_vsyscall_timeinfo() -> kvmclock_init_mem(): alloc_pages + set_memory_decrypted.
    clk.phase("early-initcall")
    if lay.kvmclock is not None:
        ev.conv(lay.kvmclock.gfn, lay.kvmclock.npages, False, "kvmclock", huge_ok=True)
        ev.access(lay.kvmclock.gfn, lay.kvmclock.npages, False, "kvmclock")

    # Row #7: dma_atomic_pool_init() -> atomic_pool_expand() -> set_memory_decrypted, one pool per zone. In lazy
    # mode the ZONE_NORMAL pool's allocation first accepts the first block of zone->unaccepted_pages (row #12).
    clk.phase("postcore-initcall")
    for pool in lay.atomic_pools:
        if pool.what == "atomic-pool-normal":
            accepts("postcore-initcall")
        ev.conv(pool.gfn, pool.npages, False, pool.what, huge_ok=True)

    # Rows #8/#8a: virtio probe, one dma_alloc_coherent per virtqueue (direct-map address: huge_ok).
    clk.phase("devices")
    for vr in lay.vrings:
        ev.conv(vr.gfn, vr.npages, False, "vring", huge_ok=True)
        ev.access(vr.gfn, vr.npages, False, "vring")

    # Row #10: snp_msg_alloc(): request and response pages, alloc_shared_pages() each.
    clk.phase("attestation")
    for pg in lay.attestation:
        ev.conv(pg.gfn, pg.npages, False, "attestation", huge_ok=True)

    # Row #2, second half: mem_encrypt_free_decrypted_mem(): [__start_bss_decrypted_unused, __end_bss_decrypted)
    # re-encrypted with set_memory_encrypted (GHCB; < 2M so 4K entries) and freed.
    clk.phase("free-initmem")
    used = cfg.bss_decrypted_used_pages
    if used < bss.npages:
        ev.conv(bss.gfn + used, bss.npages - used, True, "bss-decrypted-unused")
    return ev.out


def boot_end_ns(events: Sequence[Timed], cfg: LinuxGuestConfig, start_ns: int = 0) -> int:
    """When runtime activity may start: ``start_ns + BOOT_END_NS`` or just after the last boot event if later."""
    last = events[-1].time_ns + cfg.boot_event_gap_ns if events else start_ns
    return max(start_ns + BOOT_END_NS, last)


# ------------------------------------------------------------------------------------------------------ kexec


def _mapping_pieces(gfn: int, npages: int) -> Iterator[tuple[int, int]]:
    """Split a range into the largest naturally aligned 1G/2M/4K pieces that fit (direct-map mapping sizes)."""
    end = gfn + npages
    g = gfn
    while g < end:
        for size in (PAGES_PER_1G, PAGES_PER_2M, 1):
            if g % size == 0 and g + size <= end:
                if size == 1:
                    nxt = min(end, _round_up(g + 1, PAGES_PER_2M))
                    # 4K pieces up to the next 2M boundary (or the end), one mapping each
                    for x in range(g, nxt):
                        yield x, 1
                    g = nxt
                else:
                    yield g, size
                    g += size
                break


def kexec_events(cfg: LinuxGuestConfig, shared: Sequence[tuple[int, int]]) -> list[Conversion]:
    """Row #14 (SNP ``snp_kexec_finish()`` -> ``unshare_all_memory()``): every shared range back to private.

    ``shared``: the guest's currently shared ranges ``(gfn, npages)`` (e.g. :meth:`GuestMemoryView.shared_ranges`).
    Order and granularity follow ``unshare_all_memory()``:

    1. the direct map is walked in ascending order and every decrypted mapping is converted on its own
       (``snp_set_memory_private(addr, mapping size)``, GHCB protocol, ``huge_ok``); [I] a shared range is assumed
       mapped at the largest naturally aligned size that fits in it (1G, 2M, else 4K: ``set_memory_decrypted``
       splits large mappings only where needed); per-CPU GHCB pages are skipped here;
    2. ``.bss..decrypted``'s used part, ``[__start_bss_decrypted, __start_bss_decrypted_unused)``, in one call,
       unconditionally (it is reached through the kernel-image mapping, not the direct map);
    3. every CPU's GHCB page, one at a time with the MSR protocol (the GHCBs cannot be used any more), for all
       possible CPUs whether or not ``shared`` lists them (the kernel does not check).

    OVMF's GHCB pages are e820-reserved, so not in the direct map: they stay shared.
    """
    lay = guest_layout(cfg)
    m = IntervalMap(0)
    for g, n in shared:
        m.assign(g, g + n, 1)
    m.assign(lay.ovmf_ghcb_area.gfn, lay.ovmf_ghcb_area.end, 0)
    bss = lay.bss_decrypted
    m.assign(bss.gfn, bss.end, 0)
    for g in lay.ghcbs:
        m.assign(g, g + 1, 0)
    out: list[Conversion] = []
    for s, e, val in m.runs(0, 1 << 62):
        if val != 1:
            continue
        for g, n in _mapping_pieces(s, e - s):
            out.append(Conversion(g, n, True, Protocol.GHCB, True, "kexec-unshare"))
    out.append(Conversion(bss.gfn, cfg.bss_decrypted_used_pages, True, Protocol.GHCB, True, "kexec-bss-decrypted"))
    for g in lay.ghcbs:
        out.append(Conversion(g, 1, True, Protocol.MSR, False, "kexec-ghcb"))
    return out


# ------------------------------------------------------------------------------------------------ guest view


class PageState(IntEnum):
    """The guest's view of a GFN."""

    NONRAM = -1
    UNACCEPTED = 0
    PRIVATE = 1  # validated private (accepted)
    SHARED = 2


class GuestMemoryView:
    """What the guest believes about each of its GFNs; events are replayed into it in time order.

    Starts with all RAM unaccepted (before firmware) unless ``initial`` says otherwise. ``strict`` makes
    :meth:`apply` reject conversions that touch non-RAM GFNs.
    """

    def __init__(self, cfg: LinuxGuestConfig, *, initial: PageState = PageState.UNACCEPTED) -> None:
        self.cfg = cfg
        self._map = IntervalMap(int(PageState.NONRAM))
        for g, n in cfg.ram_ranges():
            self._map.assign(g, g + n, int(initial))

    def apply(self, event: Timed | Conversion | Access, *, strict: bool = True) -> None:
        """Apply a conversion (accesses change nothing). ``strict``: non-RAM GFNs raise ``ValueError``."""
        ev = event.event if isinstance(event, Timed) else event
        if not isinstance(ev, Conversion):
            return
        lo, hi = ev.gfn, ev.gfn + ev.npages
        if strict and any(v == PageState.NONRAM for _, _, v in self._map.runs(lo, hi)):
            raise ValueError(f"conversion {ev} covers non-RAM GFNs")
        self._map.assign(lo, hi, int(PageState.PRIVATE if ev.to_private else PageState.SHARED))

    def replay(self, events: Iterable[Timed | Conversion | Access], *, strict: bool = True) -> None:
        for ev in events:
            self.apply(ev, strict=strict)

    def state(self, gfn: int) -> PageState:
        return PageState(self._map.get(gfn))

    def runs(self, gfn: int, npages: int) -> list[tuple[int, int, PageState]]:
        """``(gfn, npages, state)`` runs covering ``[gfn, gfn + npages)``."""
        return [(s, e - s, PageState(v)) for s, e, v in self._map.runs(gfn, gfn + npages)]

    def ranges(self, state: PageState) -> list[tuple[int, int]]:
        """All ``(gfn, npages)`` ranges in ``state``, ascending."""
        return [(s, e - s) for s, e, v in self._map.runs(0, self.cfg.end_gfn) if v == state]

    def shared_ranges(self) -> list[tuple[int, int]]:
        return self.ranges(PageState.SHARED)

    def pages(self, state: PageState) -> int:
        return sum(n for _, n in self.ranges(state))

    def all_in(self, gfn: int, npages: int, state: PageState) -> bool:
        return all(v == state for _, _, v in self._map.runs(gfn, gfn + npages))

"""A Linux SNP guest on QEMU q35 + OVMF: its RAM map, where its shared objects live, and its boot conversions.

Models the guest side of ``shared/reference/guest-workloads.md`` §2 (catalogue of guest conversion events, rows
#1-#14 cited by number below) plus the OVMF notes of that section: the Linux guest kernel
(``arch/x86/coco/sev/core.c``, ``arch/x86/mm/mem_encrypt*.c``, ``kernel/dma/{swiotlb,pool,direct}.c``,
``arch/x86/kernel/kvmclock.c``, ``drivers/firmware/efi/unaccepted_memory.c``) and the firmware (edk2 OVMF SNP
pre-validation), on a QEMU q35 machine.

What it produces:

* :class:`LinuxGuestConfig` - the guest (RAM, vCPUs, devices) plus every modelling assumption as a named,
  documented field; the reference's [I] (inferred) and [?] (not found) items are fields with their default;
* :func:`guest_layout` - deterministic guest-physical placement of every object the guest shares
  (:class:`GuestPhysAllocator`, :class:`GuestLayout`);
* :func:`boot_events` - the boot sequence as timed :class:`~snpsim.guest.events.Conversion` and
  :class:`~snpsim.guest.events.Access` events (rows #1-#5, #7, #8a, #10, #12, #13, OVMF);
* :func:`kexec_events` - row #14, every shared range back to private before kexec;
* :class:`GuestMemoryView` - the guest's own view of each GFN (unaccepted / private / shared), to replay events
  and check them.

RAM map (QEMU ``pc_q35_init``): RAM below 4 GiB is all of it if the guest has less than 2.75 GiB (0xB0000000),
else 2 GiB; the rest is mapped from GPA 4 GiB. GFNs in ``[lowmem, 4 GiB)`` are not RAM (PCI hole) and no event
ever covers them. Zones (x86-64): ZONE_DMA ``[0, 16 MiB)``, ZONE_DMA32 ``[16 MiB, 4 GiB)``, ZONE_NORMAL above.

Placement assumptions (all [I], ours; the real kernel's choices depend on history that the model does not have):

* the first 1 MiB is reserved (x86 ``setup_arch`` always reserves it) and never allocated;
* the kernel image is loaded at ``kernel_load_bytes`` (CONFIG_PHYSICAL_START = 16 MiB, no KASLR) and is
  ``kernel_image_bytes`` long; ``.bss..decrypted`` is its last 2 MiB (``BSS_DECRYPTED`` sits at the end of
  ``.bss``, PMD-aligned and padded to PMD_SIZE; LDS);
* memblock allocations (per-CPU GHCB runtime data, per-CPU areas, SWIOTLB) are taken top-down from the top of
  *low* RAM (the real memblock takes the top of the node, i.e. high RAM on big guests, accepting what it takes);
  SWIOTLB 2M-aligned if ``swiotlb_2m_aligned`` (memblock itself aligns it only to 4K: row #5);
* page-allocator allocations at boot (kvmclock, vrings, attestation pages) are taken top-down from low RAM,
  naturally aligned to their power-of-two order like the buddy allocator; the atomic pools are in their zone: DMA
  below 16 MiB, DMA32 below 4 GiB, NORMAL at the start of high RAM (the lowest unaccepted block is the first one
  the zone accepts: ``zone->unaccepted_pages`` is in ascending order);
* ``sizeof(struct sev_es_runtime_data)`` = two GHCB pages + 16 bytes, so a PAGE_SIZE-aligned memblock allocation
  spans 3 pages per CPU; the first page is the GHCB that becomes shared, the backup GHCB stays private.

Timing assumption: boot is a fixed sequence of phases at fixed offsets (``BOOT_PHASES_NS``, ~1 s in total,
``BOOT_END_NS``); inside a phase consecutive events are ``boot_event_gap_ns`` apart, and a phase never starts
before the previous one's last event (so times are always nondecreasing, even when eager acceptance of a large
guest overruns its phase). The time is when the guest *issues* the event; how long the host takes is the host
model's business.
"""

from __future__ import annotations

import functools
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import IntEnum

from snpsim.errors import ConfigError
from snpsim.guest.events import Access, Conversion, Protocol, Timed
from snpsim.units import parse_size

__all__ = [
    "BOOT_END_NS",
    "BOOT_PHASES_NS",
    "FOUR_GIB_GFN",
    "AllocationError",
    "GuestLayout",
    "GuestMemoryView",
    "GuestPhysAllocator",
    "IntervalMap",
    "LinuxGuestConfig",
    "PageState",
    "Placement",
    "accept_block",
    "atomic_pool_bytes",
    "atomic_pool_zones",
    "boot_end_ns",
    "boot_events",
    "guest_layout",
    "kexec_events",
    "kvmclock_pages",
    "swiotlb_bytes",
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
#: q35: guests with at least this much RAM get only 2 GiB below 4 GiB (``pc_q35_init``).
Q35_LOWMEM_THRESHOLD = 0xB000_0000
Q35_LOWMEM_LARGE = 0x8000_0000
#: End of ZONE_DMA (16 MiB) as a GFN.
ZONE_DMA_END_GFN = (16 * MIB) >> PAGE_SHIFT
#: x86 reserves the first 1 MiB of RAM (``setup_arch``); nothing is allocated there.
LOW_RESERVED_PAGES = MIB >> PAGE_SHIFT
#: Pages of ``struct sev_es_runtime_data`` per CPU (2 GHCBs + 16 bytes, PAGE_SIZE-aligned memblock allocation).
GHCB_RUNTIME_DATA_PAGES = 3
#: ``.bss..decrypted`` is PMD-aligned and padded to PMD_SIZE (row #2).
BSS_DECRYPTED_PAGES = PAGES_PER_2M
#: kvmclock: ``HVC_BOOT_ARRAY_SIZE`` = PAGE_SIZE / sizeof(struct pvclock_vsyscall_time_info) = 4096 / 64 (row #4).
HVC_BOOT_ARRAY_SIZE = 64
PVCLOCK_VSYSCALL_TIME_INFO_BYTES = 64
#: SWIOTLB (row #5): IO_TLB_DEFAULT_SIZE, slab size (IO_TLB_SIZE), slabs per segment (IO_TLB_SEGSIZE),
#: and the smallest pool ``swiotlb_init_remap()`` still tries when halving on allocation failure (IO_TLB_MIN_SLABS).
SWIOTLB_MIN_BYTES = 64 * MIB
SWIOTLB_MAX_BYTES = 1 * GIB
IO_TLB_SIZE = 2 * KIB
IO_TLB_SEGSIZE = 128
IO_TLB_MIN_BYTES = 1 * MIB
#: DMA atomic pools (row #7): SZ_128K per SZ_1G of RAM, at least 128 KiB, at most MAX_ORDER_NR_PAGES (4 MiB).
ATOMIC_POOL_MIN_BYTES = 128 * KIB
MAX_ORDER_NR_PAGES = 1024
#: Largest guest accepted by :meth:`LinuxGuestConfig.validate` (16 TiB) and KVM_MAX_VCPUS on x86.
MAX_MEMORY_BYTES = 16 << 40
MAX_VCPUS = 4096
MIN_MEMORY_BYTES = 64 * MIB

#: Boot phases and their offsets from the VM's start (ns). See the module docstring (timing assumption).
BOOT_PHASES_NS: dict[str, int] = {
    "firmware": 0,  # OVMF PEI pre-validates low RAM (row #13 / OVMF notes)
    "kernel-entry": 100_000_000,  # __startup_64 -> sme_postprocess_startup: .bss..decrypted shared (row #2)
    "ghcb": 110_000_000,  # sev_es_init_vc_handling: per-CPU GHCBs (row #1)
    "percpu": 120_000_000,  # smp_prepare_boot_cpu -> sev_map_percpu_data (row #3)
    "mm-init": 150_000_000,  # mm_core_init -> memblock_free_all: accept_memory=eager acceptance (row #12)
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
    #: CONFIG_UNACCEPTED_MEMORY=y): RAM above 4 GiB stays unaccepted and is accepted by workloads later (row #12).
    #: False = ``accept_memory=eager``: all of it is accepted at boot in ``accept_unit_bytes`` blocks.
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
    #: How the row #3 pages are made shared. ``sev_map_percpu_data()`` -> ``early_set_memory_decrypted()`` ->
    #: ``__set_clr_pte_enc()`` -> ``early_snp_set_memory_shared()`` -> ``early_set_pages_state()``, which is the
    #: MSR protocol (one request per page), like row #1. Set ``Protocol.GHCB`` to model a descriptor instead.
    percpu_decrypted_protocol: Protocol = Protocol.MSR
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
    #: Lazy-acceptance block: MAX_PAGE_ORDER pages = 4 MiB taken from ``zone->unaccepted_pages`` (row #12).
    accept_unit_bytes: int = 4 * MIB
    #: EFI unaccepted-memory bitmap unit (``unit_size`` = 2 MiB) (rows #12, #13).
    accept_bitmap_unit_bytes: int = 2 * MIB
    #: [I] ``accept_memory()`` also accepts the next bitmap unit when the range ends unit-aligned (guard for
    #: load_unaligned_zeropad), so the first 4 MiB block accepts 6 MiB and later ones are shifted by 2 MiB (row #12).
    accept_guard_unit: bool = True
    #: [I-model] physical load address of the kernel (CONFIG_PHYSICAL_START, KASLR off); 2M-aligned.
    kernel_load_bytes: int = 16 * MIB
    #: [I-model] size of the loaded kernel image incl. .bss (and .bss..decrypted, its last 2 MiB); multiple of 2M.
    kernel_image_bytes: int = 32 * MIB
    #: [I-model] time between consecutive guest events inside a boot phase (ns).
    boot_event_gap_ns: int = 1_000

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
        ):
            need_bool(name)
        need_bool("accept_guard_unit")
        need_int("bss_decrypted_used_pages", 1, BSS_DECRYPTED_PAGES)
        need_int("percpu_decrypted_pages", 0, 64)
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
    def accept_guard_pages(self) -> int:
        return (self.accept_bitmap_unit_bytes >> PAGE_SHIFT) if self.accept_guard_unit else 0


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


def accept_block(range_pages: int, prefix: int, block: int, unit_pages: int, guard_pages: int) -> tuple[int, int]:
    """Accept block ``block`` of a RAM range whose first ``prefix`` pages are already accepted.

    Returns ``(start, end)`` (offsets in the range; ``start == end`` when nothing is left to accept); the new
    prefix is ``end`` (or ``prefix`` if nothing). ``accept_memory(start, size)`` (unaccepted_memory.c) accepts the
    bitmap units in ``[block start, block end + guard)`` that are still unaccepted; acceptance here is always
    ascending, so the accepted part of a range is a prefix and the conversion is ``[prefix, end)``.
    """
    end = min(range_pages, (block + 1) * unit_pages + guard_pages)
    if end <= prefix:
        return prefix, prefix
    return prefix, end


# -------------------------------------------------------------------------------------------------- placement


class AllocationError(MemoryError):
    """No free range satisfies an allocation."""


@dataclass(frozen=True, slots=True)
class Placement:
    """A guest object at GFNs ``[gfn, gfn + npages)``."""

    what: str
    gfn: int
    npages: int

    @property
    def end(self) -> int:
        return self.gfn + self.npages


class GuestPhysAllocator:
    """Deterministic guest-physical allocator over RAM ranges (a stand-in for memblock and the buddy allocator).

    ``alloc`` takes the highest (``top_down``, memblock's default) or lowest fitting, ``align``-aligned range
    inside ``[lo, hi)``; ``reserve`` takes a fixed range; ``free`` gives a range back. Free space is a sorted list
    of disjoint ``[start, end)`` ranges, so allocations can never overlap and never leave RAM.
    """

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        free: list[tuple[int, int]] = []
        for gfn, n in sorted(ranges):
            if n <= 0:
                continue
            if free and gfn <= free[-1][1]:
                free[-1] = (free[-1][0], max(free[-1][1], gfn + n))
            else:
                free.append((gfn, gfn + n))
        self._free = free
        self.placements: list[Placement] = []

    def free_ranges(self) -> list[tuple[int, int]]:
        """Free space as ``(gfn, npages)``, ascending."""
        return [(s, e - s) for s, e in self._free]

    def free_pages(self) -> int:
        return sum(e - s for s, e in self._free)

    def _carve(self, index: int, start: int, end: int) -> None:
        s, e = self._free[index]
        pieces = [(a, b) for a, b in ((s, start), (end, e)) if b > a]
        self._free[index : index + 1] = pieces

    def reserve(self, what: str, gfn: int, npages: int) -> Placement:
        """Take exactly ``[gfn, gfn + npages)``; it must be free."""
        if npages <= 0:
            raise ValueError(f"{what}: npages must be > 0")
        i = bisect_right(self._free, (gfn, float("inf"))) - 1
        if i < 0 or self._free[i][1] < gfn + npages:
            raise AllocationError(f"{what}: [{gfn:#x}, {gfn + npages:#x}) is not free RAM")
        self._carve(i, gfn, gfn + npages)
        p = Placement(what, gfn, npages)
        self.placements.append(p)
        return p

    def alloc(
        self, what: str, npages: int, *, align: int = 1, lo: int = 0, hi: int | None = None, top_down: bool = True
    ) -> Placement:
        """Take ``npages`` aligned to ``align`` pages inside ``[lo, hi)``; raise :class:`AllocationError`."""
        if npages <= 0 or align <= 0:
            raise ValueError(f"{what}: npages and align must be > 0")
        limit = hi if hi is not None else 1 << 62
        order = range(len(self._free) - 1, -1, -1) if top_down else range(len(self._free))
        for i in order:
            s, e = self._free[i]
            s, e = max(s, lo), min(e, limit)
            if e - s < npages:
                continue
            start = (e - npages) // align * align if top_down else _round_up(s, align)
            if start >= s and start + npages <= e:
                self._carve(i, start, start + npages)
                p = Placement(what, start, npages)
                self.placements.append(p)
                return p
        raise AllocationError(f"{what}: no free {npages}-page range aligned to {align} in [{lo:#x}, {limit:#x})")

    def free(self, gfn: int, npages: int) -> None:
        """Give ``[gfn, gfn + npages)`` back (it must be allocated); merges with free neighbours."""
        start, end = gfn, gfn + npages
        i = bisect_left(self._free, (start, start))
        if (i > 0 and self._free[i - 1][1] > start) or (i < len(self._free) and self._free[i][0] < end):
            raise ValueError(f"free of [{start:#x}, {end:#x}) overlaps free space")
        if i > 0 and self._free[i - 1][1] == start:
            i -= 1
            start = self._free[i][0]
            del self._free[i]
        if i < len(self._free) and self._free[i][0] == end:
            end = self._free[i][1]
            del self._free[i]
        self._free.insert(i, (start, end))


@dataclass(frozen=True)
class GuestLayout:
    """Where the guest's boot-time objects are (see the module docstring for the placement assumptions).

    ``allocations`` are the disjoint top-level allocations; the other fields name objects, some nested inside an
    allocation (a GHCB page inside its runtime data, ``.bss..decrypted`` inside the kernel image).
    """

    ram: tuple[tuple[int, int], ...]
    allocations: tuple[Placement, ...]
    kernel_image: Placement
    bss_decrypted: Placement
    #: GHCB page of each CPU (first page of its 3-page ``sev_es_runtime_data``).
    ghcbs: tuple[int, ...]
    percpu_decrypted: tuple[Placement, ...]
    swiotlb: Placement
    kvmclock: Placement | None
    #: In ``dma_atomic_pool_init()`` order; ``what`` is ``atomic-pool-<zone>``.
    atomic_pools: tuple[Placement, ...]
    vrings: tuple[Placement, ...]
    attestation: tuple[Placement, ...]
    #: Pages at the start of high RAM accepted at boot (lazy: the blocks holding the ZONE_NORMAL pool; eager: all).
    boot_accepted_high_pages: int
    #: ``(gfn, npages)`` of accepted, free RAM reserved for runtime allocations (:mod:`snpsim.guest.workloads`):
    #: [I-model] the upper half (2M-aligned) of the largest free accepted range after boot.
    runtime_region: tuple[int, int]
    #: Accepted private RAM that no boot object and no runtime allocation ever converts (``(gfn, npages)``).
    stable_private: tuple[tuple[int, int], ...]

    def boot_accepted_ranges(self) -> list[tuple[int, int]]:
        """RAM accepted (validated private) by the end of boot, as ``(gfn, npages)``."""
        out = [self.ram[0]]
        if len(self.ram) > 1 and self.boot_accepted_high_pages:
            out.append((self.ram[1][0], self.boot_accepted_high_pages))
        return out


def _subtract(ranges: Iterable[tuple[int, int]], holes: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(gfn, npages)`` ranges minus holes, ascending."""
    m = IntervalMap(0)
    for g, n in ranges:
        m.assign(g, g + n, 1)
    for g, n in holes:
        m.assign(g, g + n, 0)
    return [(s, e - s) for s, e, v in m.runs(0, 1 << 62) if v == 1]


def _build_layout(cfg: LinuxGuestConfig) -> GuestLayout:
    alloc = GuestPhysAllocator(cfg.ram_ranges())
    low_end = cfg.lowmem_pages
    below_4g = min(low_end, FOUR_GIB_GFN)
    v = cfg.vcpus
    alloc.reserve("low-1m", 0, LOW_RESERVED_PAGES)
    kernel = alloc.reserve("kernel-image", cfg.kernel_load_bytes >> PAGE_SHIFT, cfg.kernel_image_bytes >> PAGE_SHIFT)
    bss = Placement("bss-decrypted", kernel.end - BSS_DECRYPTED_PAGES, BSS_DECRYPTED_PAGES)

    # memblock, top-down from the top of low RAM.
    ghcb_area = alloc.alloc("ghcb-runtime-data", v * GHCB_RUNTIME_DATA_PAGES, hi=low_end)
    ghcbs = tuple(ghcb_area.gfn + GHCB_RUNTIME_DATA_PAGES * cpu for cpu in range(v))
    p = cfg.percpu_decrypted_pages
    percpu: tuple[Placement, ...] = ()
    if p:
        area = alloc.alloc("percpu-decrypted", v * p, hi=low_end)
        percpu = tuple(Placement("percpu-decrypted", area.gfn + p * cpu, p) for cpu in range(v))
    # SWIOTLB: memblock_alloc_low; swiotlb_init_remap() halves the pool (in whole segments) on failure.
    seg_pages = IO_TLB_SEGSIZE * IO_TLB_SIZE // PAGE_SIZE
    size = swiotlb_bytes(cfg) >> PAGE_SHIFT
    while True:
        align = PAGES_PER_2M if cfg.swiotlb_2m_aligned and size >= PAGES_PER_2M else 1
        try:
            swiotlb = alloc.alloc("swiotlb", size, align=align, hi=below_4g)
            break
        except AllocationError:
            if size <= IO_TLB_MIN_BYTES >> PAGE_SHIFT:
                raise
            size = max(_round_up(size // 2, seg_pages), IO_TLB_MIN_BYTES >> PAGE_SHIFT)

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
            pools.append(alloc.alloc(what, pool_pages, align=pool_pages, lo=FOUR_GIB_GFN, top_down=False))
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

    # Acceptance of high RAM at boot.
    high = cfg.high_pages
    if not high:
        accepted_high = 0
    elif not cfg.accepts_lazily:
        accepted_high = high
    else:
        accepted_high = 0
        normal = next(pl for pl in pools if pl.what == "atomic-pool-normal")
        last_block = (normal.end - FOUR_GIB_GFN - 1) // cfg.accept_unit_pages
        for block in range(last_block + 1):
            _, accepted_high = accept_block(high, accepted_high, block, cfg.accept_unit_pages, cfg.accept_guard_pages)

    accepted = [(0, low_end)] + ([(FOUR_GIB_GFN, accepted_high)] if accepted_high else [])
    free_accepted = _subtract(accepted, [(pl.gfn, pl.npages) for pl in alloc.placements])
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
        allocations=tuple(alloc.placements),
        kernel_image=kernel,
        bss_decrypted=bss,
        ghcbs=ghcbs,
        percpu_decrypted=percpu,
        swiotlb=swiotlb,
        kvmclock=kvm,
        atomic_pools=tuple(pools),
        vrings=vrings,
        attestation=attest,
        boot_accepted_high_pages=accepted_high,
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


def _accept_range_events(
    cfg: LinuxGuestConfig, base: int, npages: int, prefix: int, upto: int | None = None
) -> Iterator[tuple[int, int, int]]:
    """Yield ``(block, gfn, npages)`` acceptance conversions of blocks of the range (ascending) from ``prefix``.

    Stops after the block containing offset ``upto - 1`` if given, else at the end of the range.
    """
    unit, guard = cfg.accept_unit_pages, cfg.accept_guard_pages
    block = prefix // unit
    stop = npages if upto is None else upto
    while block * unit < stop:
        start, end = accept_block(npages, prefix, block, unit, guard)
        if end > start:
            yield block, base + start, end - start
            prefix = end
        block += 1


def boot_events(cfg: LinuxGuestConfig, *, start_ns: int = 0, firmware: bool = True) -> list[Timed]:
    """The guest's boot sequence as timed events, in order (guest-workloads.md §2 rows cited inline).

    ``firmware=False`` models a kexec'd kernel (row #14): no OVMF phase and no acceptance (the memory is already
    validated; unaccepted memory stays unaccepted), the kernel phases are the same. All conversions are issued by
    vCPU 0 (the boot CPU walks ``for_each_possible_cpu``); the Access of a per-CPU GHCB is by its CPU.
    """
    lay = guest_layout(cfg)
    clk = _Clock(start_ns, cfg.boot_event_gap_ns)
    out: list[Timed] = []
    ghcb, msr = Protocol.GHCB, Protocol.MSR

    def conv(gfn: int, n: int, to_private: bool, what: str, protocol: Protocol = ghcb, huge_ok: bool = False) -> None:
        out.append(Timed(clk.next(), Conversion(gfn, n, to_private, protocol, huge_ok, what)))

    def access(gfn: int, n: int, private: bool, what: str, vcpu: int = 0) -> None:
        out.append(Timed(clk.next(), Access(gfn, n, private, True, what, vcpu)))

    low, high = cfg.lowmem_pages, cfg.high_pages
    if firmware:
        # OVMF PEI: pre-validate all RAM below 4 GiB (PSC to private, 2M entries, + PVALIDATE); RAM above 4 GiB
        # is left unaccepted (BZ3937 unaccepted resource HOBs) (§2 OVMF notes, row #13).
        clk.phase("firmware")
        if cfg.ovmf_prevalidate_below_4g:
            conv(0, low, True, "ovmf-prevalidate", huge_ok=True)
        else:
            for _, gfn, n in _accept_range_events(cfg, 0, low, 0):
                conv(gfn, n, True, "accept", huge_ok=True)
        if high and not cfg.allow_unaccepted_memory:
            # ExitBootServices without AllowUnacceptedMemory(): OVMF accepts all remaining RAM (§2 OVMF notes).
            conv(FOUR_GIB_GFN, high, True, "ovmf-accept-all", huge_ok=True)

    # Row #2: __startup_64 -> sme_postprocess_startup(): .bss..decrypted made shared with the MSR protocol
    # (early_snp_set_memory_shared(..., PTRS_PER_PMD) per 2M = 512 4K PSCs); the boot GHCB and hv_clock_boot live
    # there and are written through a C=0 mapping.
    clk.phase("kernel-entry")
    k, bss = lay.kernel_image, lay.bss_decrypted
    access(k.gfn, k.npages - bss.npages, True, "kernel-image")
    conv(bss.gfn, bss.npages, False, "bss-decrypted", msr)
    access(bss.gfn, cfg.bss_decrypted_used_pages, False, "bss-decrypted")

    # Row #1: sev_es_init_vc_handling() -> init_ghcb(): early_set_memory_decrypted(4K) per possible CPU (MSR).
    clk.phase("ghcb")
    for cpu, g in enumerate(lay.ghcbs):
        conv(g, 1, False, "ghcb", msr)
        access(g, 1, False, "ghcb", vcpu=cpu)

    # Row #3: sev_map_percpu_data(): the per-CPU decrypted page(s) (AMD only).
    clk.phase("percpu")
    for cpu, pl in enumerate(lay.percpu_decrypted):
        conv(pl.gfn, pl.npages, False, "percpu-decrypted", cfg.percpu_decrypted_protocol)
        access(pl.gfn, pl.npages, False, "percpu-decrypted", vcpu=cpu)

    # Row #12: accept_memory=eager -> every MAX_ORDER block accepted when memblock frees it to the buddy allocator.
    clk.phase("mm-init")
    if firmware and high and cfg.allow_unaccepted_memory and not cfg.lazy_accept:
        for _, gfn, n in _accept_range_events(cfg, FOUR_GIB_GFN, high, 0):
            conv(gfn, n, True, "accept", huge_ok=True)

    # Row #5: mem_encrypt_init() -> swiotlb_update_mem_attributes(): one set_memory_decrypted over the pool.
    clk.phase("swiotlb")
    conv(lay.swiotlb.gfn, lay.swiotlb.npages, False, "swiotlb", huge_ok=True)

    # Row #4: kvm_setup_vsyscall_timeinfo() -> kvmclock_init_mem(): alloc_pages + set_memory_decrypted.
    clk.phase("early-initcall")
    if lay.kvmclock is not None:
        conv(lay.kvmclock.gfn, lay.kvmclock.npages, False, "kvmclock", huge_ok=True)
        access(lay.kvmclock.gfn, lay.kvmclock.npages, False, "kvmclock")

    # Row #7: dma_atomic_pool_init() -> atomic_pool_expand() -> set_memory_decrypted, one pool per zone. In lazy
    # mode the ZONE_NORMAL pool's allocation first accepts the zone's lowest unaccepted block(s) (row #12).
    clk.phase("postcore-initcall")
    for pool in lay.atomic_pools:
        if firmware and pool.what == "atomic-pool-normal" and cfg.accepts_lazily:
            upto = pool.end - FOUR_GIB_GFN
            for _, gfn, n in _accept_range_events(cfg, FOUR_GIB_GFN, high, 0, upto):
                conv(gfn, n, True, "accept", huge_ok=True)
        conv(pool.gfn, pool.npages, False, pool.what, huge_ok=True)

    # Rows #8/#8a: virtio probe, one dma_alloc_coherent per virtqueue (direct-map address: huge_ok).
    clk.phase("devices")
    for vr in lay.vrings:
        conv(vr.gfn, vr.npages, False, "vring", huge_ok=True)
        access(vr.gfn, vr.npages, False, "vring")

    # Row #10: snp_msg_alloc(): request and response pages, alloc_shared_pages() each.
    clk.phase("attestation")
    for pg in lay.attestation:
        conv(pg.gfn, pg.npages, False, "attestation", huge_ok=True)

    # Row #2, second half: mem_encrypt_free_decrypted_mem(): [__start_bss_decrypted_unused, __end_bss_decrypted)
    # re-encrypted with set_memory_encrypted (GHCB; < 2M so 4K entries) and freed.
    clk.phase("free-initmem")
    used = cfg.bss_decrypted_used_pages
    if used < bss.npages:
        conv(bss.gfn + used, bss.npages - used, True, "bss-decrypted-unused")
    return out


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
    """
    lay = guest_layout(cfg)
    m = IntervalMap(0)
    for g, n in shared:
        m.assign(g, g + n, 1)
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


class IntervalMap:
    """A piecewise-constant ``int -> int`` map over ``[0, inf)``: sorted segment starts and their values.

    Adjacent segments always hold different values. ``assign`` and ``runs`` cost O(log n + k) plus list shifting.
    """

    __slots__ = ("_starts", "_vals")

    def __init__(self, default: int) -> None:
        self._starts: list[int] = [0]
        self._vals: list[int] = [default]

    def __len__(self) -> int:
        return len(self._starts)

    def assign(self, lo: int, hi: int, value: int) -> None:
        """Set ``[lo, hi)`` to ``value``."""
        if lo >= hi:
            return
        if lo < 0:
            raise ValueError("negative key")
        s, v = self._starts, self._vals
        j = bisect_right(s, hi) - 1
        v_hi = v[j]
        i = bisect_left(s, lo)
        s[i : j + 1] = [lo, hi]
        v[i : j + 1] = [value, v_hi]
        if v[i + 1] == value:
            del s[i + 1], v[i + 1]
        if i > 0 and v[i - 1] == value:
            del s[i], v[i]

    def get(self, key: int) -> int:
        return self._vals[bisect_right(self._starts, key) - 1]

    def runs(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """Segments ``(start, end, value)`` clipped to ``[lo, hi)``, ascending."""
        s, v = self._starts, self._vals
        out: list[tuple[int, int, int]] = []
        i = bisect_right(s, lo) - 1
        while i < len(s) and s[i] < hi:
            end = s[i + 1] if i + 1 < len(s) else hi
            out.append((max(s[i], lo), min(end, hi), v[i]))
            i += 1
        return out


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

"""The host's physical memory map: the BIOS e820 table of an SEV-SNP server and what the kernel builds from it.

What is modelled:

* The BIOS-provided e820 map (``arch/x86/kernel/e820.c``, the ``BIOS-e820: [mem ...] usable|reserved`` lines) of
  a two-socket AMD EPYC server, from its installed DRAM: low RAM below 640 KiB; the ISA/VGA/BIOS range
  [640 KiB, 1 MiB) reserved; RAM from 1 MiB to the start of the 32-bit PCI MMIO hole; the hole up to 4 GiB (no
  entry); the rest of the DRAM remapped above 4 GiB (the BIOS hoists the DRAM hidden by the hole).
* The RMP table, which the BIOS reserves in that DRAM (``RMP_BASE`` / ``RMP_END`` MSRs; "SEV firmware increases
  the alignment requirement to require a 1MB alignment", Documentation/arch/x86/amd-memory-encryption.rst; "16KB
  region used for processor bookkeeping followed by the RMP entries, which are 16 bytes in size"). Its size is what
  ``snp_rmptable_init()`` checks, ``(max_rmp_pfn << 4) + RMPTABLE_CPU_BOOKKEEPING_SZ`` with ``max_rmp_pfn`` the
  larger of ``max_pfn`` and the RMP's own end ("The RMP itself must also be covered"), rounded up to 1 MiB.
  It is e820 reserved: not RAM, not in memblock, never direct-mapped.
* ``snp_fixup_e820_tables()`` / ``__snp_fixup_e820_tables()`` (``arch/x86/virt/svm/sev.c``): a start or end of the
  RMP that is not 2 MiB aligned gets its whole 2 MiB block turned from RAM to reserved in ``e820_table``,
  ``e820_table_kexec`` and ``e820_table_firmware`` ("the kexec kernel could try to allocate from within that chunk
  which then causes a fatal RMP fault"): :meth:`HostMemoryMap.e820_fixed`. It runs from
  ``mem_encrypt_setup_arch()``, which ``setup_arch()`` calls *after* ``e820__memblock_setup()`` ("Needs to run
  after memblock setup because it needs the physical memory size") and before ``init_mem_mapping()``: memblock
  keeps the RAM half of such a block, so the running kernel still allocates it and maps it (at 4K, as the 2M
  range is not wholly memory). Only a kexec'ed kernel sees the 2M-aligned reservation.
* What the kernel derives: ``max_pfn`` (``e820__end_of_ram_pfn()``, the end of the highest RAM entry); memblock's
  memory (the RAM entries, :attr:`HostMemoryMap.memory`), from which ``init_mem_mapping()`` builds the direct map
  (:class:`snpsim.host.directmap.DirectMap`); and the RAM the page allocator gets
  (:attr:`HostMemoryMap.ram_ranges`): memory minus the first MiB, which ``setup_arch()`` always reserves
  ("Unconditionally reserve the entire first 1M of RAM", ``memblock_reserve(0, SZ_1M)``).

Assumptions, each a parameter of :func:`server_memory_map` (scenario fields ``host.pci_hole``,
``host.rmp_base``), since platform firmware decides them and no source fixes them:

* the 32-bit PCI hole starts at 2 GiB (:data:`DEFAULT_PCI_HOLE`). EPYC and other x86 servers report the
  PCIe MMCONFIG window at ``0x80000000`` and their last low RAM below it (e.g. ``usable`` up to ``0x6f7fffff``,
  ``reserved 0x6f800000-0x8fffffff``, ``efi: Remove mem84: MMIO range=[0x80000000-0x8fffffff]``); the ACPI/BIOS
  reservations a real BIOS puts just below the hole (tens to hundreds of MiB) are not modelled, which maps a
  little more low RAM at 2M than a real host (DirectMap2M up, by at most the hole's distance from 2 GiB);
* the RMP table sits in low RAM at 277 MiB (:data:`DEFAULT_RMP_BASE` = ``0x11500000``), where one SNP host's BIOS
  put it: ``SEV-SNP: RMP table physical range [0x0000000011500000 - 0x0000000051dfffff]`` and ``Reserving
  start/end of RMP table on a 2MB boundary [0x0000000011400000]`` (AMDESE/AMDSEV issue #271, Linux 6.15). That
  start is 1 MiB but not 2 MiB aligned, so the RAM below it in its 2 MiB block is mapped at 4K. Its size,
  0x40900000 = 1033 MiB, is what the size rule above gives for 256 GiB of DRAM with a 2 GiB PCI hole hoisted
  above 4 GiB ((258 GiB / 4 KiB) x 16 B = 1032 MiB, + 16 KiB, rounded up), which supports the hole assumption
  if that host had 256 GiB. A host whose low RAM cannot hold the table there (above about 400 GiB, or below
  300 MiB) gets it at the top of its DRAM (1 MiB aligned), which then ends the e820 RAM (``max_pfn``);
* contiguous RMP (segmented RMP, Zen 5, is not modelled); no memory hot-plug; one e820 RAM entry per region
  (real maps have more small reserved entries, each of which would cut more 2M ranges to 4K: DirectMap4k here
  is a lower bound);
* the only memblock reservation kept from the allocator is the first MiB: the kernel image, initrd, the memmap
  (64 B per 4 KiB frame, about 1.6 % of RAM), crash kernel and early page tables stay allocatable here, so
  :attr:`HostMemoryMap.ram_bytes` is an upper bound of what a real host's page allocator manages.

The flat map (:func:`flat_memory_map`, ``host.layout = "flat"``) is all of ``[0, nframes)`` RAM, no holes, no
RMP reservation and no first-MiB reservation: what unit tests use.
"""

from __future__ import annotations

from dataclasses import dataclass

from snpsim.hw.types import PAGE_SHIFT, PAGE_SIZE, SIZE_2M_BYTES

__all__ = [
    "DEFAULT_PCI_HOLE",
    "DEFAULT_RMP_BASE",
    "E820Entry",
    "HostMemoryMap",
    "flat_memory_map",
    "rmp_table_bytes",
    "server_memory_map",
]

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
#: end of the conventional low RAM (640 KiB) and of the ISA range (``ISA_END_ADDRESS``, 1 MiB)
LOW_RAM_END = 640 * KIB
ISA_END = 1 * MIB
FOUR_GIB = 4 * GIB
#: ``RMPTABLE_CPU_BOOKKEEPING_SZ``: the 16 KiB of processor bookkeeping at ``RMP_BASE``
RMP_BOOKKEEPING_BYTES = 16 * KIB
#: bytes per RMP entry (one per 4 KiB page)
RMP_ENTRY_BYTES = 16
#: SEV firmware's alignment of ``RMP_BASE`` and ``RMP_END + 1``
RMP_ALIGN = 1 * MIB
#: assumed start of the 32-bit PCI MMIO hole (see the module docstring)
DEFAULT_PCI_HOLE = 2 * GIB
#: assumed BIOS placement of the RMP table (see the module docstring)
DEFAULT_RMP_BASE = 0x11500000

USABLE = "usable"
RESERVED = "reserved"

Ranges = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class E820Entry:
    """One e820 entry: bytes ``[start, end)`` of ``type`` ("usable" is E820_TYPE_RAM)."""

    start: int
    end: int
    type: str

    def __str__(self) -> str:
        """As ``e820__print_table()`` prints it: ``[mem 0x...-0x...] usable`` (inclusive end)."""
        return f"[mem {self.start:#018x}-{self.end - 1:#018x}] {self.type}"


def _align_up(x: int, a: int) -> int:
    return -(-x // a) * a


def rmp_table_bytes(covered_pages: int) -> int:
    """The RMP table the BIOS must reserve to cover frames ``[0, covered_pages)``, rounded up to 1 MiB
    (``snp_rmptable_init()``: ``calc_rmp_sz = (max_rmp_pfn << 4) + RMPTABLE_CPU_BOOKKEEPING_SZ``)."""
    return _align_up(covered_pages * RMP_ENTRY_BYTES + RMP_BOOKKEEPING_BYTES, RMP_ALIGN)


def _pfn_ranges(entries: tuple[E820Entry, ...]) -> Ranges:
    """The usable entries as frame ranges (partial pages at the ends dropped, as ``e820__memblock_setup()``
    rounds RAM entries inwards)."""
    out = []
    for e in entries:
        if e.type == USABLE:
            lo, hi = _align_up(e.start, PAGE_SIZE) >> PAGE_SHIFT, e.end >> PAGE_SHIFT
            if lo < hi:
                out.append((lo, hi))
    return tuple(out)


def _carve(entries: list[E820Entry], start: int, end: int, kind: str) -> list[E820Entry]:
    """Turn bytes ``[start, end)`` of the usable entries into ``kind`` (``e820__range_update``)."""
    out: list[E820Entry] = []
    for e in entries:
        if e.type != USABLE or e.end <= start or e.start >= end:
            out.append(e)
            continue
        if e.start < start:
            out.append(E820Entry(e.start, start, USABLE))
        out.append(E820Entry(max(e.start, start), min(e.end, end), kind))
        if e.end > end:
            out.append(E820Entry(end, e.end, USABLE))
    return out


@dataclass(frozen=True)
class HostMemoryMap:
    """A host's physical memory map: the BIOS e820 table and what the kernel derives from it (module docstring).

    Frame ranges are ``(lo, hi)`` pairs of 4 KiB frame numbers, ``[lo, hi)``, sorted and disjoint.
    """

    #: the BIOS-provided e820 table (what memblock is built from)
    e820: tuple[E820Entry, ...]
    #: bytes ``[base, end)`` of the BIOS-reserved RMP table, or None (no RMP reservation: the flat map)
    rmp: tuple[int, int] | None
    #: installed DRAM in bytes (``host.memory``)
    dram_bytes: int
    #: bytes at the bottom of memory the kernel keeps from the page allocator (the first MiB; 0 on the flat map)
    low_reserved: int = ISA_END

    @property
    def max_pfn(self) -> int:
        """``e820__end_of_ram_pfn()``: one past the last frame of the highest RAM entry."""
        return max(hi for _, hi in _pfn_ranges(self.e820))

    @property
    def memory(self) -> Ranges:
        """memblock's memory: the RAM entries as frame ranges (the input of ``init_mem_mapping()``)."""
        return _pfn_ranges(self.e820)

    @property
    def ram_ranges(self) -> Ranges:
        """The RAM the page allocator gets: memory minus :attr:`low_reserved` (the first MiB ``setup_arch()``
        reserves)."""
        low = self.low_reserved >> PAGE_SHIFT
        return tuple((max(lo, low), hi) for lo, hi in self.memory if hi > low)

    @property
    def ram_pages(self) -> int:
        """Frames given to the page allocator (the host's RAM as memory accounting means it)."""
        return sum(hi - lo for lo, hi in self.ram_ranges)

    @property
    def ram_bytes(self) -> int:
        return self.ram_pages * PAGE_SIZE

    @property
    def rmp_pages(self) -> int:
        """Frames the RMP covers: ``[0, max(max_pfn, the RMP's end))`` (``snp_rmptable_init()``'s
        ``max_rmp_pfn``)."""
        if self.rmp is None:
            return self.max_pfn
        return max(self.max_pfn, _align_up(self.rmp[1], PAGE_SIZE) >> PAGE_SHIFT)

    def e820_fixed(self) -> tuple[E820Entry, ...]:
        """``e820_table`` after ``snp_fixup_e820_tables()``: each RMP end that is not 2 MiB aligned reserves its
        whole 2 MiB block (only the RAM in it changes type)."""
        entries = list(self.e820)
        if self.rmp is not None:
            for pa in self.rmp:
                if pa % SIZE_2M_BYTES:
                    lo = pa // SIZE_2M_BYTES * SIZE_2M_BYTES
                    entries = _carve(entries, lo, lo + SIZE_2M_BYTES, RESERVED)
        merged: list[E820Entry] = []
        for e in entries:  # e820__update_table(): adjacent entries of one type become one
            if merged and merged[-1].type == e.type and merged[-1].end == e.start:
                merged[-1] = E820Entry(merged[-1].start, e.end, e.type)
            else:
                merged.append(e)
        return tuple(merged)

    def format_e820(self, *, fixed: bool = False) -> str:
        """The table as the boot log prints it (``BIOS-e820: [mem ...] usable``), one line per entry."""
        return "".join(f"BIOS-e820: {e}\n" for e in (self.e820_fixed() if fixed else self.e820))


def flat_memory_map(nframes: int) -> HostMemoryMap:
    """All of ``[0, nframes)`` RAM: no ISA hole, no PCI hole, no RMP reservation (what unit tests use)."""
    if nframes <= 0:
        raise ValueError(f"nframes must be positive, got {nframes}")
    return HostMemoryMap((E820Entry(0, nframes * PAGE_SIZE, USABLE),), None, nframes * PAGE_SIZE, low_reserved=0)


def server_memory_map(memory: int, *, pci_hole: int = DEFAULT_PCI_HOLE, rmp_base: int | None = None) -> HostMemoryMap:
    """The e820 map of an SEV-SNP server with ``memory`` bytes of DRAM (module docstring).

    ``pci_hole``: where the 32-bit PCI hole starts (DRAM below it is low RAM, the rest is above 4 GiB).
    ``rmp_base``: where the BIOS put the RMP table (1 MiB aligned, inside the DRAM above 1 MiB); None: at
    :data:`DEFAULT_RMP_BASE` if low RAM holds it there, else at the top of the DRAM. Bad values raise
    :class:`ValueError` naming the parameter.
    """
    if memory < 64 * MIB or memory % PAGE_SIZE:
        raise ValueError(f"memory: must be a multiple of 4K and at least 64M, got {memory}")
    if pci_hole % (2 * MIB) or not 256 * MIB <= pci_hole <= FOUR_GIB:
        raise ValueError(f"pci_hole: must be a multiple of 2M in [256M, 4G], got {pci_hole:#x}")
    low_top = min(memory, pci_hole)
    dram = [(0, low_top)] + ([(FOUR_GIB, FOUR_GIB + memory - low_top)] if memory > low_top else [])
    dram_end = dram[-1][1]
    size = rmp_table_bytes(dram_end >> PAGE_SHIFT)  # covers the DRAM's end, so max_pfn and the RMP itself
    if rmp_base is None:
        rmp_base = DEFAULT_RMP_BASE
        if rmp_base + size > low_top:
            rmp_base = (dram_end - size) // RMP_ALIGN * RMP_ALIGN
    if rmp_base % RMP_ALIGN:
        raise ValueError(f"rmp_base: must be 1M aligned (SEV firmware), got {rmp_base:#x}")
    if not any(lo <= rmp_base and rmp_base + size <= hi for lo, hi in [(ISA_END, low_top), *dram[1:]]):
        ranges = ", ".join(f"[{max(lo, ISA_END):#x}, {hi:#x})" for lo, hi in dram)
        raise ValueError(f"rmp_base: the {size:#x} byte RMP table at {rmp_base:#x} is not inside DRAM {ranges}")
    entries = [
        E820Entry(0, LOW_RAM_END, USABLE),
        E820Entry(LOW_RAM_END, ISA_END, RESERVED),
        E820Entry(ISA_END, low_top, USABLE),
        *(E820Entry(lo, hi, USABLE) for lo, hi in dram[1:]),
    ]
    entries = [e for e in _carve(entries, rmp_base, rmp_base + size, RESERVED) if e.start < e.end]
    return HostMemoryMap(tuple(entries), (rmp_base, rmp_base + size), memory)

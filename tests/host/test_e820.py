"""The host e820 layout (snpsim.host.e820) and the boot-time direct map init_mem_mapping() builds on it.

Every expected value is derived by hand from the cited rules:

* RMP size (arch/x86/virt/svm/sev.c snp_rmptable_init): ``calc_rmp_sz = (max_rmp_pfn << 4) +
  RMPTABLE_CPU_BOOKKEEPING_SZ``, 1 MiB aligned by SEV firmware;
* ``__snp_fixup_e820_tables(pa)``: ``pa = ALIGN_DOWN(pa, PMD_SIZE); if (e820__mapped_any(pa, pa + PMD_SIZE,
  E820_TYPE_RAM)) ... e820__range_update(pa, PMD_SIZE, E820_TYPE_RAM, E820_TYPE_RESERVED)``;
* arch/x86/mm/init.c init_mem_mapping(): "the ISA range is always mapped regardless of memory holes";
  adjust_range_page_size_mask(): ``if (memblock_is_region_memory(start, end - start)) mr[i].page_size_mask |=
  1<<PG_LEVEL_2M`` (and 1G alike) for the aligned region around each piece.

The 4 GiB server: DRAM [0, 2G) below the PCI hole, [4G, 6G) above it; max_pfn = 0x180000. RMP: 0x180000 x 16 =
0x1800000 (24 MiB), + 0x4000, rounded up to 1 MiB: 0x1900000 (25 MiB), at 0x11500000 (277 MiB): [277M, 302M).
"""

from __future__ import annotations

import numpy as np
import pytest

import snpsim
from snpsim.errors import ConfigError
from snpsim.host import HostKernel, Owner
from snpsim.host.directmap import DirectMap
from snpsim.host.e820 import E820Entry, flat_memory_map, rmp_table_bytes, server_memory_map
from snpsim.hw.types import PAGES_PER_1G, PAGES_PER_2M, PageSize
from snpsim.policy import presets
from snpsim.scenario import load

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
P2M, P1G = PAGES_PER_2M, PAGES_PER_1G


def test_server_4g_e820_as_the_boot_log_prints_it() -> None:
    m = server_memory_map(4 * GIB)
    assert m.e820 == (
        E820Entry(0, 0xA0000, "usable"),
        E820Entry(0xA0000, 0x100000, "reserved"),
        E820Entry(0x100000, 0x11500000, "usable"),
        E820Entry(0x11500000, 0x12E00000, "reserved"),  # the RMP table, 25 MiB
        E820Entry(0x12E00000, 0x80000000, "usable"),  # to the PCI hole at 2 GiB
        E820Entry(0x100000000, 0x180000000, "usable"),  # the 2 GiB behind the hole, hoisted above 4 GiB
    )
    assert m.format_e820().splitlines()[0] == "BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff] usable"
    assert m.rmp == (0x11500000, 0x12E00000)
    assert m.max_pfn == m.rmp_pages == 0x180000
    # snp_fixup_e820_tables(): the start 0x11500000 is not 2M aligned -> [0x11400000, 0x11600000) reserved;
    # the end 0x12e00000 = 0x97 x 2 MiB is aligned -> nothing
    assert m.e820_fixed()[2:4] == (
        E820Entry(0x100000, 0x11400000, "usable"),
        E820Entry(0x11400000, 0x12E00000, "reserved"),
    )
    # memblock keeps the pre-fixup RAM; the allocator gets it minus the first MiB
    assert m.memory == ((0, 160), (256, 0x11500), (0x12E00, 0x80000), (0x100000, 0x180000))
    assert m.ram_ranges == ((256, 0x11500), (0x12E00, 0x80000), (0x100000, 0x180000))
    assert m.ram_bytes == (4096 - 25 - 1) * MIB


def test_256g_server_rmp_matches_a_real_hosts_log() -> None:
    """AMDESE/AMDSEV#271: "RMP table physical range [0x0000000011500000 - 0x0000000051dfffff]" and "Reserving
    start/end of RMP table on a 2MB boundary [0x0000000011400000]". 256 GiB with a 2 GiB hole: DRAM ends at
    258 GiB, (258 GiB / 4 KiB) x 16 = 1032 MiB, + 16 KiB -> 1033 MiB = 0x40900000; 0x11500000 + 0x40900000 =
    0x51e00000."""
    m = server_memory_map(256 * GIB)
    assert m.rmp == (0x11500000, 0x51DFFFFF + 1)
    assert E820Entry(0x11400000, 0x51E00000, "reserved") in m.e820_fixed()


def test_rmp_size_for_2_tib() -> None:
    # measurements.md: "~8.5GB of RMP table for 2TB": 2^29 pages x 16 B = 8 GiB, + 16 KiB -> 8 GiB + 1 MiB
    assert rmp_table_bytes(2 << 40 >> 12) == 8 * GIB + MIB
    assert 8.5e9 < rmp_table_bytes(2 << 40 >> 12) < 8.6e9


def test_a_table_too_big_for_low_ram_goes_to_the_top_of_dram() -> None:
    # 512 GiB: DRAM ends at 514 GiB; 514 GiB / 256 = 2056 MiB, + 16 KiB -> 2057 MiB > 2 GiB - 277 MiB of low RAM
    m = server_memory_map(512 * GIB)
    size = 2057 * MIB
    assert m.rmp == (514 * GIB - size, 514 * GIB)
    assert m.max_pfn == (514 * GIB - size) >> 12  # e820__end_of_ram_pfn(): the RAM now ends at the table
    assert m.rmp_pages == 514 * GIB >> 12  # "The RMP itself must also be covered"


def test_bad_placements_are_refused() -> None:
    with pytest.raises(ValueError, match="rmp_base: must be 1M aligned"):
        server_memory_map(4 * GIB, rmp_base=0x11580000)
    with pytest.raises(ValueError, match=r"rmp_base: .* not inside DRAM"):
        server_memory_map(4 * GIB, rmp_base=3 * GIB)  # in the PCI hole
    with pytest.raises(ValueError, match="pci_hole"):
        server_memory_map(4 * GIB, pci_hole=3 * GIB + 4096)
    for host, field in (
        ({"memory": "4G", "rmp_base": "3G"}, "host.rmp_base"),
        ({"memory": "4G", "rmp_base": "1000K"}, "host.rmp_base"),
        ({"memory": "4G", "pci_hole": "100M"}, "host.pci_hole"),
        ({"memory": "4G", "layout": "desktop"}, "host.layout"),
        ({"memory": "4G", "layout": "flat", "rmp_base": "277M"}, "host.rmp_base"),
    ):
        with pytest.raises(ConfigError) as exc:
            load({"host": host, "vms": [{"memory": "1G"}]})
        assert exc.value.field == field


def test_vms_are_checked_against_the_ram_not_the_dram() -> None:
    # 1 GiB server: 5 MiB RMP ((262144 x 16 + 16 KiB) rounded up) and the first MiB are not RAM
    with pytest.raises(ConfigError) as exc:
        load({"host": {"memory": "1G"}, "vms": [{"memory": "1022M"}]})
    assert exc.value.field == "vms"
    load({"host": {"memory": "1G", "layout": "flat"}, "vms": [{"memory": "1022M"}]})


def test_boot_direct_map_of_the_4g_server() -> None:
    """[0, 1M) (ISA) and [1M, 2M): 4K, as [0, 2M) is not all memory (the ISA hole); [276M, 277M): 4K (the RMP's
    2M range); [2M, 276M) = 137 and [302M, 1G) = 361 2M ranges; GiB 1, 4, 5 wholly RAM: 1G; the RMP and the
    PCI hole: no entry."""
    m = server_memory_map(4 * GIB)
    d = DirectMap(m.max_pfn, memory=m.memory)
    assert d.meminfo() == {"DirectMap4k": 3 * 1024, "DirectMap2M": (137 + 361) * 2048, "DirectMap1G": 3 * 1024**2}
    assert d.mapped_bytes == (4096 - 25) * MIB  # the ISA hole is mapped, the RMP is not
    assert d.format_meminfo().splitlines()[0] == "DirectMap4k:        3072 kB"
    levels = {
        0: PageSize.SIZE_4K,  # page 0, in the ISA range
        0xA0: PageSize.SIZE_4K,  # 640 KiB: the ISA hole is mapped anyway
        0x1FF: PageSize.SIZE_4K,
        0x200: PageSize.SIZE_2M,  # 2 MiB
        0x11400: PageSize.SIZE_4K,  # 276 MiB
        0x114FF: PageSize.SIZE_4K,
        0x11500: None,  # 277 MiB: the RMP table
        0x12DFF: None,
        0x12E00: PageSize.SIZE_2M,  # 302 MiB
        P1G: PageSize.SIZE_1G,
        2 * P1G: None,  # the PCI hole
        4 * P1G: PageSize.SIZE_1G,
        6 * P1G - 1: PageSize.SIZE_1G,
    }
    for pfn, level in levels.items():
        assert d.level(pfn) == level, hex(pfn)
    # no 2M/1G max level: the GiBs become 512 2M entries each
    d2 = DirectMap(m.max_pfn, memory=m.memory, max_level=PageSize.SIZE_2M)
    assert d2.meminfo() == {"DirectMap4k": 3 * 1024, "DirectMap2M": (498 + 3 * 512) * 2048, "DirectMap1G": 0}
    d.check_invariants()
    d2.check_invariants()


def test_holes_are_left_alone_and_never_made_present() -> None:
    m = server_memory_map(4 * GIB)
    d = DirectMap(m.max_pfn, memory=m.memory)
    d._small_range_2m = 0  # the vectorised path too
    before = d.meminfo()
    # __cpa_process_fault(): "Ignore the NULL PTE for kernel identity mapping, as it is expected to have holes"
    assert d.set_4k(0x11600) == 0 and not d.split_2m(0x11600 // P2M)
    assert d.remove_4k(3 * P1G) == 0 and d.restore_4k(0x12000) == 0
    assert d.meminfo() == before and d.split_count == 0
    # the 2M range [276M, 278M) has PTEs for its first 256 frames only: making it all present keeps the rest out
    d.remove_2m(0x11400 // P2M)
    assert d.count_levels(0x11400, P2M) == (0, 0, 0, P2M)
    d.restore_range(0x11400 - P2M, 3 * P2M)
    assert d.count_levels(0x11400, P2M) == (256, 0, 0, 256)
    assert not d.merge_2m(0x11400 // P2M)  # collapse_pmd_page(): every PTE must be present
    d.remove_1g(0)
    d.restore_1g(0)
    assert d.count_levels(0x11400, P2M) == (256, 0, 0, 256) and d.level(0x11500) is None
    assert d.meminfo() == before
    d.check_invariants()


def test_splits_before_system_running_move_the_levels_but_not_vmstat() -> None:
    """split_page_count(): ``direct_pages_count[level]--`` always, ``count_vm_event(DIRECT_MAP_LEVEL2_SPLIT)``
    / ``DIRECT_MAP_LEVEL3_SPLIT`` only ``if (system_state == SYSTEM_RUNNING)``."""
    d = DirectMap(P1G, running=False)
    assert d.set_4k(5) == 2  # 1G -> 512 x 2M -> 511 x 2M + 512 x 4K
    assert d.meminfo() == {"DirectMap4k": 2048, "DirectMap2M": 511 * 2048, "DirectMap1G": 0}
    assert d.vmstat() == {"direct_map_level2_splits": 0, "direct_map_level3_splits": 0} and d.split_count == 0
    d.running = True
    assert d.set_4k(P2M * 7) == 1
    assert d.vmstat() == {"direct_map_level2_splits": 1, "direct_map_level3_splits": 0} and d.split_count == 1
    assert d.meminfo() == {"DirectMap4k": 2 * 2048, "DirectMap2M": 510 * 2048, "DirectMap1G": 0}


def test_host_kernel_allocates_only_ram_and_covers_the_rmp() -> None:
    m = server_memory_map(1 * GIB)  # 5 MiB RMP at [277M, 282M); RAM [1M, 277M) and [282M, 1G)
    with pytest.raises(ValueError, match="max_pfn"):
        HostKernel(P1G + 1, presets["upstream"], memory_map=m)
    h = HostKernel(m.max_pfn, presets["upstream"], memory_map=m)
    assert h.rmp.npages == P1G
    assert h.buddy.free_frames == (1024 - 5 - 1) * 256
    got = h.alloc_bulk(0, h.buddy.free_frames, Owner.USER, zero=False)
    assert got is not None and h.buddy.alloc(0) is None
    ram = np.zeros(P1G, dtype=bool)
    for lo, hi in m.ram_ranges:
        ram[lo:hi] = True
    assert ram[got].all() and np.unique(got).size == got.size == int(ram.sum())
    assert h.frames.get(0) == h.frames.get(277 * 256) == Owner.RESERVED
    assert h.frames.count(Owner.RESERVED) == 256 + 5 * 256


def test_flat_is_the_old_host() -> None:
    m = flat_memory_map(P1G)
    assert m.memory == m.ram_ranges == ((0, P1G),) and m.rmp is None and m.max_pfn == P1G
    s = snpsim.run(
        {
            "policy": "fixup",
            "host": {"memory": "1G", "layout": "flat"},
            "vms": [{"memory": "64M", "vcpus": 1, "workload": "idle"}],
            "duration": "10ms",
        }
    ).summary
    # one 1G mapping, but for the 2M range fixup's #PF handler splits around a host SNP page (a VMSA or firmware
    # page it cannot make shared, docs/launch.md): 1G -> 2M, then that 2M -> 4K
    assert (s["directmap_4k"], s["directmap_2m"], s["directmap_1g"]) == (2 << 20, GIB - (2 << 20), 0)

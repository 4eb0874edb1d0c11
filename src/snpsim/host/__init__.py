"""host: the KVM host's physical memory, kernel direct map, #PF handler and the kernel paths that touch memory.

Models Linux ``mm/page_alloc.c`` (buddy allocator with zones, pageblocks and migratetypes: :mod:`.buddy`),
``mm/compaction.c`` and ``alloc_contig_pages`` (:mod:`.compaction`), the host's history before its VMs start
(:mod:`.aging`), ``arch/x86/kernel/e820.c`` + ``arch/x86/mm/init.c`` (the e820 map and the boot-time direct map:
:mod:`.e820`), ``arch/x86/mm/init_64.c`` + ``arch/x86/mm/pat/set_memory.c`` (direct map),
``arch/x86/virt/svm/sev.c`` (RMP table placement, RMP updates, ``adjust_direct_map``) and ``arch/x86/mm/fault.c``;
facts in ``shared/reference/linux-snp-host.md``; the allocator, ageing and who allocates what in
``docs/host-memory.md``.
"""

from snpsim.host.buddy import BuddyAllocator, Migratetype, ZoneType
from snpsim.host.directmap import DirectMap
from snpsim.host.e820 import HostMemoryMap, flat_memory_map, server_memory_map
from snpsim.host.frames import FrameTable, Owner
from snpsim.host.kernel import Crash, HostKernel

__all__ = [
    "BuddyAllocator",
    "Crash",
    "DirectMap",
    "FrameTable",
    "HostKernel",
    "HostMemoryMap",
    "Migratetype",
    "Owner",
    "ZoneType",
    "flat_memory_map",
    "server_memory_map",
]

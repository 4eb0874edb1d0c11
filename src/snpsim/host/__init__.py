"""host: the KVM host's physical memory, kernel direct map, #PF handler and the kernel paths that touch memory.

Models Linux ``mm/page_alloc.c`` (buddy allocator with zones, pageblocks and migratetypes: :mod:`.buddy`),
``mm/compaction.c`` and ``alloc_contig_pages`` (:mod:`.compaction`), the host's history before its VMs start
(:mod:`.aging`), ``arch/x86/mm/init_64.c`` + ``arch/x86/mm/pat/set_memory.c`` (direct map),
``arch/x86/virt/svm/sev.c`` (RMP updates, ``adjust_direct_map``) and ``arch/x86/mm/fault.c``; facts in
``shared/reference/linux-snp-host.md``; the allocator, ageing and who allocates what in ``docs/host-memory.md``.
"""

from snpsim.host.buddy import BuddyAllocator, Migratetype, ZoneType
from snpsim.host.directmap import DirectMap
from snpsim.host.frames import FrameTable, Owner
from snpsim.host.kernel import Crash, HostKernel

__all__ = ["BuddyAllocator", "Crash", "DirectMap", "FrameTable", "HostKernel", "Migratetype", "Owner", "ZoneType"]

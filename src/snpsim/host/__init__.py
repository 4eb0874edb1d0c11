"""host: the KVM host's physical memory, kernel direct map, #PF handler and the kernel paths that touch memory.

Models Linux ``mm/page_alloc.c`` (buddy allocator), ``arch/x86/kernel/e820.c`` + ``arch/x86/mm/init.c`` (the
e820 map and the boot-time direct map), ``arch/x86/mm/init_64.c`` + ``arch/x86/mm/pat/set_memory.c`` (direct map),
``arch/x86/virt/svm/sev.c`` (RMP table placement, RMP updates, ``adjust_direct_map``) and ``arch/x86/mm/fault.c``;
facts in ``shared/reference/linux-snp-host.md``.
"""

from snpsim.host.buddy import BuddyAllocator
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
    "Owner",
    "flat_memory_map",
    "server_memory_map",
]

"""KVM memory attributes (``KVM_SET_MEMORY_ATTRIBUTES``) and the mixed-attribute huge-page rule.

Models ``virt/kvm/kvm_main.c`` ``kvm_vm_ioctl_set_mem_attributes()`` (only ``KVM_MEMORY_ATTRIBUTE_PRIVATE``,
per gfn, "At VM creation time, all memory is shared") and ``arch/x86/kvm/mmu/mmu.c``
``hugepage_has_attrs()`` / ``KVM_LPAGE_MIXED_FLAG`` (a 2M range may be mapped huge only if all its 512 gfns have
identical attributes; a 1G range only if no 2M child is mixed and all children agree). Source:
``shared/reference/linux-snp-host.md`` §4. Instead of flags maintained on every change the model answers the
question directly from the per-gfn array (same result: the flag is exactly "attributes are not uniform").
"""

from __future__ import annotations

import numpy as np

from snpsim.arch import PageSize

KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3


class MemoryAttributes:
    """The PRIVATE attribute of every gfn in ``[0, npages)``; all shared at creation."""

    def __init__(self, npages: int) -> None:
        self.npages = int(npages)
        self.private = np.zeros(self.npages, dtype=bool)
        #: KVM_SET_MEMORY_ATTRIBUTES calls that changed something
        self.set_count = 0

    def set(self, gfn: int, npages: int, private: bool) -> int:
        """``KVM_SET_MEMORY_ATTRIBUTES`` over ``[gfn, gfn+npages)``; returns the number of gfns changed."""
        if gfn < 0 or npages < 0 or gfn + npages > self.npages:
            raise ValueError(f"gfn range [{gfn:#x}, {gfn + npages:#x}) outside the VM")
        seg = self.private[gfn : gfn + npages]
        changed = int(np.count_nonzero(seg != private))
        if changed:
            seg[:] = private
            self.set_count += 1
        return changed

    def uniform_value(self, gfn: int, level: PageSize) -> bool | None:
        """The attribute shared by the whole ``level``-aligned range holding ``gfn`` (PRIVATE or not), or None if
        the range is mixed (``KVM_LPAGE_MIXED_FLAG``) or runs past the end of the VM."""
        n = level.npages
        lo = gfn // n * n
        if lo + n > self.npages:
            return None
        seg = self.private[lo : lo + n]
        if seg.all():
            return True
        return False if not seg.any() else None

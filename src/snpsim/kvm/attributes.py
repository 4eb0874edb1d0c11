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
import numpy.typing as npt

from snpsim.hw.types import PageSize

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

    def is_private(self, gfn: int) -> bool:
        return bool(self.private[gfn])

    def uniform(self, gfn: int, level: PageSize) -> bool:
        """``!(disallow_lpage & KVM_LPAGE_MIXED_FLAG)`` for the ``level``-aligned range holding ``gfn``."""
        n = level.npages
        lo = gfn // n * n
        hi = lo + n
        if hi > self.npages:
            return False
        seg = self.private[lo:hi]
        return bool(seg.all() or not seg.any())

    def uniform_mask(self, level: PageSize) -> npt.NDArray[np.bool_]:
        """Per ``level``-aligned range of the VM: are its attributes uniform (the last partial range: False)."""
        n = level.npages
        full = self.npages // n
        if level == PageSize.SIZE_4K:
            return np.ones(self.npages, dtype=bool)
        blocks = self.private[: full * n].reshape(full, n)
        return blocks.all(axis=1) | ~blocks.any(axis=1)

"""The SNP guest kernel's side of a conversion: PVALIDATE ordering around Page State Change requests.

Models Linux ``arch/x86/coco/sev/core.c`` ``snp_set_memory_shared()`` / ``snp_set_memory_private()`` and
``snp_accept_memory()`` (``shared/reference/amd-snp-arch.md`` §8, ``guest-workloads.md`` §1): to make memory
shared the guest first rescinds validation (PVALIDATE validate=0) and then sends the PSC; to make it private it
sends the PSC and then validates (PVALIDATE validate=1). Rescinding before sharing means the host never gets a
page the guest still treats as valid; validating after the host assigned the page means any later remapping by
the host clears Validated and the guest sees #VC (the integrity argument, §8).

The guest remembers which of its pages it validated (``validated``) so it rescinds only those, as Linux only
converts memory it owns in a known state.
"""

from __future__ import annotations

import numpy as np

from snpsim.guest.events import Access, Conversion
from snpsim.guest.psc import build_requests, pvalidate_plan
from snpsim.hw.types import PageSize
from snpsim.pfnmap import lazy_zeros
from snpsim.vmm.qemu import Qemu


class SnpGuest:
    """Executes guest events against the VM's VMM (which runs the vCPUs through KVM)."""

    def __init__(self, vmm: Qemu, max_psc_entries: int = 64) -> None:
        self.vmm = vmm
        self.max_psc_entries = max_psc_entries
        self.validated = lazy_zeros(vmm.kvm.npages, bool)

    def execute(self, event: Conversion | Access) -> None:
        if isinstance(event, Access):
            self.vmm.access(event.gfn, event.npages, event.private, event.write)
        elif event.to_private:
            self._to_private(event)
        else:
            self._to_shared(event)

    def _to_shared(self, conv: Conversion) -> None:
        for gfn, npages, size in pvalidate_plan(conv):
            seg = self.validated[gfn : gfn + npages]
            if not seg.any():
                continue
            if seg.all():
                self.vmm.pvalidate(gfn, npages, PageSize(size), False)
            else:  # rescind only what this guest validated, page by page
                for k in np.flatnonzero(seg).tolist():
                    self.vmm.pvalidate(gfn + k, 1, PageSize.SIZE_4K, False)
            seg[:] = False
        for request in build_requests(conv, self.max_psc_entries):
            self.vmm.psc(request)

    def _to_private(self, conv: Conversion) -> None:
        for request in build_requests(conv, self.max_psc_entries):
            self.vmm.psc(request)
        if not conv.validate:
            return
        for gfn, npages, size in pvalidate_plan(conv):
            self.vmm.pvalidate(gfn, npages, PageSize(size), True)
            self.validated[gfn : gfn + npages] = True

"""The host CPU in guest mode (VMRUN): the hardware checks it applies to an SNP guest's accesses and PVALIDATEs.

When KVM runs a vCPU (``svm_vcpu_run`` → VMRUN), the guest's instructions execute on the host's physical CPU,
which applies the nested page table and the RMP checks of AMD APM vol. 2 §15.36.10 (Table 15-39) to every access
and executes PVALIDATE (vol. 3) against the RMP (``shared/reference/amd-snp-arch.md`` §7-§8). An access or
PVALIDATE that fails a check is a #VMEXIT(NPF) to KVM or a #VC inside the guest. KVM sees the outcome, never the
RMP itself: this module is the one place where guest-mode execution reaches :mod:`snpsim.hw` (the layer rule of
``shared/DESIGN.md``: only the host layer touches the hardware model), and it charges the cost of each PVALIDATE to
the running thread (the vCPU thread: PVALIDATE runs inside ``KVM_RUN``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from snpsim.arch import PAGE_SHIFT, PageSize, RmpStatus

if TYPE_CHECKING:
    from snpsim.host.kernel import HostKernel

IntArray = npt.NDArray[np.int64]


class GuestMode:
    """The CPU executing an SNP guest for ``host`` (``host.svm``)."""

    def __init__(self, host: HostKernel) -> None:
        self.host = host
        self.rmp = host.rmp

    def pvalidate(self, pfn: int, gfn: int, *, asid: int, size: PageSize, validate: bool) -> tuple[RmpStatus, bool]:
        """One PVALIDATE of the guest page ``gfn`` (backed by ``pfn``) at ``size``: (status, CF).

        Raises :class:`snpsim.arch.NestedPageFault` (RMP, SIZEM) for a 4K PVALIDATE on a 2M RMP entry, as the
        hardware does; KVM handles it and the guest retries."""
        costs = self.host.costs
        if size == PageSize.SIZE_2M:
            self.host.charge("pvalidate_2m", costs.pvalidate_2m_ns)
        else:
            self.host.charge("pvalidate_4k", costs.pvalidate_4k_ns)
        return self.rmp.pvalidate(
            pfn << PAGE_SHIFT, asid=asid, gpa=gfn << PAGE_SHIFT, page_size=size, validate=validate
        )

    def pvalidate_4k_pfns(
        self, pfns: IntArray, gfns: IntArray, *, asid: int, validate: bool
    ) -> tuple[IntArray, npt.NDArray[np.bool_]]:
        """A run of 4K PVALIDATEs (distinct frames, in order): per page the status (-1 where the step took an
        RMP #NPF) and CF. Same result as a loop of :meth:`pvalidate`."""
        n = int(pfns.size)
        self.host.charge("pvalidate_4k", n * self.host.costs.pvalidate_4k_ns, n)
        return self.rmp.pvalidate_pfns(pfns, gfns, asid=asid, validate=validate)

    def access_ok(
        self, pfns: IntArray, gfns: IntArray, *, asid: int, npt_huge: npt.NDArray[np.bool_], write: bool, private: bool
    ) -> npt.NDArray[np.bool_]:
        """Whether each access ``gfns[k]`` → ``pfns[k]`` passes every hardware check (no #NPF, no #VC)."""
        return self.rmp.guest_access_ok(pfns, gfns, asid=asid, npt_huge=npt_huge, write=write, encrypted=private)

    def access(self, pfn: int, gfn: int, *, asid: int, npt_size: PageSize, write: bool, private: bool) -> None:
        """One guest access; raises :class:`~snpsim.arch.NestedPageFault` or
        :class:`~snpsim.arch.VmmCommunicationException` as the hardware would."""
        self.rmp.check_guest_access(
            pfn << PAGE_SHIFT, asid=asid, gpa=gfn << PAGE_SHIFT, npt_size=npt_size, write=write, encrypted=private
        )

"""``gmem_no_direct_map`` (GUEST_MEMFD_FLAG_NO_DIRECT_MAP, NODM v12): zap after prepare, restore at free.

By hand from the series (linux-snp-host.md §5 NODM): "guest_memfd folios will be removed from the direct map after
preparation, with direct map entries only restored when the folios are freed" (v11 10/16); the series'
``kvm_gmem_free_folio`` restores, then calls ``kvm_arch_gmem_invalidate``; SNP's ``sev_gmem_invalidate`` runs
``clflush_cache_range(__va(pfn_to_hpa(pfn)), ...)`` on each page it made shared, a direct-map access, so with the
order the review proposed (invalidate first) the flush hits a not-present entry: a not-present #PF, an oops.
"""

from __future__ import annotations

import numpy as np
import pytest

from snpsim import ConfigError
from snpsim.guest.events import Access, Conversion, Protocol
from snpsim.host import HostKernel
from snpsim.host.directmap import NOT_PRESENT
from snpsim.kvm.gmem import PATH_GMEM_INVALIDATE
from snpsim.metrics import Counters
from snpsim.policy import Policy
from snpsim.runner import GuestDriver
from snpsim.vmm.qemu import Qemu

HOST_FRAMES = 262144  # 1 GiB
GUEST_PAGES = 4096  # 16 MiB


def stack(value: str) -> tuple[HostKernel, Qemu, GuestDriver]:
    pol = Policy(gmem_no_direct_map=value)
    host = HostKernel(HOST_FRAMES, pol)
    vmm = Qemu(host, pol, np.ones(GUEST_PAGES, dtype=bool), asid=1, counters=Counters())
    return host, vmm, GuestDriver(vmm)


@pytest.mark.parametrize("value", ["restore-first", "invalidate-first"])
def test_prepared_folios_leave_the_direct_map(value: str) -> None:
    host, vmm, guest = stack(value)
    guest.execute(Access(100, 8, private=True))
    assert vmm.gmem is not None
    pfns = vmm.gmem.pfns(100, 8)
    assert (host.directmap.levels_of(pfns) == NOT_PRESENT).all()


def test_restore_first_frees_safely_and_restores_at_4k() -> None:
    host, vmm, guest = stack("restore-first")
    guest.execute(Access(100, 8, private=True))
    assert vmm.gmem is not None
    pfns = vmm.gmem.pfns(100, 8)
    guest.execute(Conversion(100, 8, False, Protocol.GHCB))  # to shared: QEMU punches the 8 folios
    assert host.host_crash_count == 0
    assert (host.directmap.levels_of(pfns) == 0).all()  # present again, at 4K (PageSize.SIZE_4K == 0): no merge


def test_invalidate_first_oopses_in_sev_gmem_invalidate_on_the_first_punch() -> None:
    host, _vmm, guest = stack("invalidate-first")
    guest.execute(Access(100, 8, private=True))
    guest.execute(Conversion(100, 8, False, Protocol.GHCB))
    assert host.host_crash_count == 1  # one punch, one invalidate: its first flush oopses
    assert host.host_notpresent_fault_count == 1
    assert host.crashes[0].path == PATH_GMEM_INVALIDATE and host.crashes[0].kind == "not-present"


def test_off_keeps_the_direct_map_and_needs_gmem() -> None:
    host, vmm, guest = stack("off")
    guest.execute(Access(100, 8, private=True))
    assert vmm.gmem is not None
    assert (host.directmap.levels_of(vmm.gmem.pfns(100, 8)) != NOT_PRESENT).all()
    with pytest.raises(ConfigError, match="gmem_no_direct_map"):
        Policy(private_backing="vmm", gmem_no_direct_map="restore-first")

"""The defining consequences of the issue-15 guest_memfd presets, derived by hand from their series.

- ``gmem-inplace`` (INPLACE v8, 20260618-gmem-inplace-conversion-v8-0-9d2959357853@google.com): "one guest_memfd
  holds shared and private pages" -> no gfn ever has two pages, whatever the conversions; a conversion "fails with
  EAGAIN and error_offset" while the host holds references, and QEMU retries; "accesses to guest-private pages ...
  will result in a SIGBUS".
- ``gmem-hugetlb`` (HUGETLB RFC v2, cover.1747264138.git.ackerleytng@google.com): a 1G folio of a private region is
  one 1G NPT mapping (512 2M RMP entries: "NPT says 2MB/1GB => RMP.Page_Size=1", amd-snp-arch.md §7);
  ``kvm_gmem_restructure_folios_in_range`` splits only the folio a shared page falls in and merges it back when
  ``!kvm_gmem_has_some_shared()``.
- ``gmem-thp`` (THP RFC, 20241212063635.712877-1-michael.roth@amd.com): 4K fallback when no 2M page is free;
  "disallow hole-punching at sub-2MB granularity".
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import snpsim
from snpsim.guest.events import Access, Conversion, Protocol
from snpsim.guest.workloads import WORKLOADS
from snpsim.host import HostKernel, Owner
from snpsim.hw import PageSize
from snpsim.kvm.gmem import SigBus
from snpsim.metrics import Counters
from snpsim.policy import Policy, presets
from snpsim.runner import GuestDriver
from snpsim.vmm.qemu import Qemu

P2M = 512
P1G = 1 << 18
#: the preset with the RFC's 1G pages (the preset itself uses 2M, which every scenario's VM size allows)
HUGETLB_1G = Policy(**{**presets["gmem-hugetlb"].as_dict(), "private_granularity": "1g"})


def _stack(policy: Policy, host_frames: int, guest_pages: int) -> tuple[HostKernel, Qemu, GuestDriver]:
    host = HostKernel(host_frames, policy)
    vmm = Qemu(host, policy, np.ones(guest_pages, dtype=bool), asid=1, counters=Counters())
    return host, vmm, GuestDriver(vmm)


# ---------------------------------------------------------------------- gmem-inplace
@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1023), st.integers(1, 64), st.booleans(), st.booleans()), min_size=1, max_size=12)
)
def test_inplace_never_allocates_twice(ops: list[tuple[int, int, bool, bool]]) -> None:
    host, vmm, guest = _stack(presets["gmem-inplace"], 65536, 1024)
    for gfn, n, to_private, touch in ops:
        n = min(n, 1024 - gfn)
        guest.execute(Conversion(gfn, n, to_private, Protocol.GHCB))
        if touch:
            guest.execute(Access(gfn, n, private=to_private))
        # one page per gfn, in guest_memfd: the RAM block is never faulted, nothing is allocated twice
        assert vmm.memory.allocated_pages == 0 and vmm.double_allocated_bytes() == 0
        # waste = private + shared - guest = 0 with 4K folios (DESIGN.md)
        assert vmm.private_bytes() + vmm.shared_bytes() == vmm.guest_bytes()
        gm = vmm.gmem
        assert gm is not None
        frames = gm.pfns(0, 1024)
        shared = frames[(frames >= 0) & ~vmm.kvm.attrs.private]
        assert not host.rmp_assigned(shared).any()  # a shared page of the file is hypervisor-owned


def test_inplace_converts_without_moving_the_page() -> None:
    _, vmm, guest = _stack(presets["gmem-inplace"], 65536, 1024)
    guest.execute(Conversion(0, 8, True, Protocol.GHCB), Access(0, 8, private=True))
    gm = vmm.gmem
    assert gm is not None
    before = gm.pfns(0, 8).copy()
    guest.execute(Conversion(0, 8, False, Protocol.GHCB), Access(0, 8, private=False))
    assert np.array_equal(gm.pfns(0, 8), before)  # in place: no discard, no second allocation
    assert np.array_equal(vmm.kvm.npt.pfn[0:8], before)  # the shared NPT mapping is the guest_memfd page


def test_inplace_eagain_then_retry_succeeds() -> None:
    pol = presets["gmem-inplace"]
    _, vmm, guest = _stack(pol, 65536, 1024)
    guest.execute(Conversion(0, 4, False, Protocol.GHCB), Access(0, 4, private=False))
    gm = vmm.gmem
    assert gm is not None
    pin = gm.pin_pages(2, 1, completes_after=3)  # vhost I/O in flight on gfn 2, done after 3 back-offs
    assert gm.busy_offset(0, 4) == 2  # error_offset: pages from the start of the range
    vmm.kvm_convert_memory(0, 4, True)
    # attempts 1-3 find the reference (EAGAIN), the 3rd back-off completes the I/O, attempt 4 succeeds
    assert gm.eagain_count == 3 and pin not in gm.pins and gm.refs[2] == 0
    assert vmm.kvm.attrs.private[0:4].all() and vmm.convert_failures == 0
    assert (vmm.counters.gmem_eagain_count, vmm.counters.gmem_convert_failure_count) == (3, 0)


def test_inplace_gives_up_after_the_retries() -> None:
    pol = presets["gmem-inplace"]
    _, vmm, guest = _stack(pol, 65536, 1024)
    guest.execute(Conversion(0, 4, False, Protocol.GHCB))
    gm = vmm.gmem
    assert gm is not None
    gm.pin_pages(1, 1)  # held until unpinned
    vmm.kvm_convert_memory(0, 4, True)
    assert gm.eagain_count == pol.gmem_convert_retries + 1  # the first attempt and every retry
    assert vmm.convert_failures == 1 and not vmm.kvm.attrs.private[0:4].any()  # nothing converted
    assert (vmm.counters.gmem_eagain_count, vmm.counters.gmem_convert_failure_count) == (9, 1)  # 8 retries + 1


@functools.cache
def _zerocopy_run(zcopytx: bool, completes_after: int) -> dict[str, float]:
    """A hostile guest (it converts the pages host I/O uses to private) under vhost-net with zero-copy TX."""
    vhost = {"zcopytx": zcopytx, "tx_completes_after": completes_after}
    scenario = {
        "name": "zerocopy",
        "seed": 3,
        "duration": "3s",
        "policy": "gmem-inplace",
        "host": {"memory": "4G", "writers": {"vhost": vhost}},
        "vms": [{"memory": "512M", "vcpus": 2, "workload": "hostile-convert"}],
    }
    return snpsim.run(scenario).summary


def test_vhost_copy_holds_no_reference() -> None:
    """drivers/vhost/net.c: "static int experimental_zcopytx = 0;": by default handle_rx/handle_tx copy
    (``copy_to_iter``/``copy_from_iter``), so no reference outlives a copy and no conversion is refused."""
    s = _zerocopy_run(False, 2)
    assert s["gmem_eagain_count"] == s["gmem_convert_failure_count"] == 0


def test_vhost_zerocopy_tx_refuses_conversions_until_the_send_completes() -> None:
    """handle_tx_zerocopy holds ``get_user_pages`` references on the TX pages until ``vhost_zerocopy_complete``:
    INPLACE v8's conversion "fails with EAGAIN" meanwhile. Completing within 2 back-offs (<= the 8 retries of
    ``gmem_convert_retries``) every refused conversion succeeds on a retry; never completing within a conversion,
    each one that meets a pin is given up after all 9 attempts (9 EAGAINs each, more for the conversions whose
    pins had been counted down by earlier back-offs)."""
    quick = _zerocopy_run(True, 2)
    assert quick["gmem_eagain_count"] > 0 and quick["gmem_convert_failure_count"] == 0
    # a TX page the guest made private cannot be faulted (VM_FAULT_SIGBUS): get_user_pages fails, -EFAULT
    assert quick["host_efault_count"] > _zerocopy_run(False, 2)["host_efault_count"]
    slow = _zerocopy_run(True, 1000)
    assert slow["gmem_convert_failure_count"] > 0
    assert slow["gmem_eagain_count"] >= 9 * slow["gmem_convert_failure_count"]


def test_inplace_private_page_is_sigbus_for_userspace() -> None:
    _, vmm, guest = _stack(presets["gmem-inplace"], 65536, 1024)
    gm = vmm.gmem
    assert gm is not None
    with pytest.raises(SigBus):
        gm.fault_user(5)  # all RAM is private at memslot creation
    guest.execute(Conversion(5, 1, False, Protocol.MSR))
    assert gm.fault_user(5) == int(gm.pfns(5, 1)[0])
    with pytest.raises(SigBus):
        gm.pin_pages(4, 2)  # gfn 4 is private: get_user_pages cannot reach it


# ---------------------------------------------------------------------- gmem-hugetlb (1G folios)
@pytest.fixture(scope="module")
def hugetlb_1g() -> tuple[HostKernel, Qemu, GuestDriver]:
    host, vmm, guest = _stack(HUGETLB_1G, 3 * P1G, 2 * P1G)  # 3 GiB host, 2 GiB guest: two 1G folios
    vmm.kvm.pre_fault_memory(0, 2 * P1G)  # all RAM private at creation
    return host, vmm, guest


def test_hugetlb_private_1g_region_is_one_1g_npt_entry(hugetlb_1g: tuple[HostKernel, Qemu, GuestDriver]) -> None:
    host, vmm, _ = hugetlb_1g
    npt = vmm.kvm.npt
    assert npt.bytes_at(PageSize.SIZE_1G) == 2 << 30 and npt.bytes_at(PageSize.SIZE_2M) == 0
    assert npt.map_count == 2  # one SPTE per 1 GiB folio
    gm = vmm.gmem
    assert gm is not None and gm.allocated_folios == 2 and gm.reserved == 0
    heads = gm.pfns(0, P1G)[::P2M]
    assert heads.size == 512 and host.rmp_assigned_2m(heads).all()  # 512 2M RMP entries under the 1G SPTE
    assert host.hugetlb_reserved(18) == 0


def test_hugetlb_splits_only_the_folio_of_the_shared_page_and_merges_back(
    hugetlb_1g: tuple[HostKernel, Qemu, GuestDriver],
) -> None:
    host, vmm, guest = hugetlb_1g
    gm = vmm.gmem
    assert gm is not None
    npt = vmm.kvm.npt
    g = P1G + 7 * P2M + 3  # a page of the second folio
    guest.execute(Conversion(g, 1, False, Protocol.MSR))
    assert gm.split_count == 1 and gm.split_4k[P1G // P2M : 2 * P1G // P2M].all()
    assert not gm.split_4k[: P1G // P2M].any()  # the first folio is untouched
    assert (npt.level[:P1G] == int(PageSize.SIZE_1G)).all()  # and still one 1G mapping
    assert gm.mapping_level(P1G) == PageSize.SIZE_4K  # RFC v2 splits the whole folio to 4K
    assert not host.rmp_assigned(gm.pfns(g, 1)).any()  # the shared page is made shared in place
    guest.execute(Conversion(g, 1, True, Protocol.MSR))
    assert gm.merge_count == 1 and not gm.split_4k.any()  # whole private again: merged
    assert gm.mapping_level(P1G) == PageSize.SIZE_1G


def test_hugetlb_2m_first_splits_one_2m_block() -> None:
    pol = Policy(**{**HUGETLB_1G.as_dict(), "gmem_folio_split": "2m-first"})
    _, vmm, guest = _stack(pol, 2 * P1G, P1G)
    gm = vmm.gmem
    assert gm is not None
    vmm.kvm.pre_fault_memory(0, P1G)
    guest.execute(Conversion(3 * P2M + 1, 1, False, Protocol.MSR))
    # 1G -> 2M folios, and only the 2M folio holding the page -> 4K: two splits
    assert gm.split_2m[0] and np.flatnonzero(gm.split_4k).tolist() == [3] and gm.split_count == 2
    assert gm.mapping_level(0) == PageSize.SIZE_2M and gm.mapping_level(3 * P2M) == PageSize.SIZE_4K


def test_hugetlb_sub_folio_punch_frees_nothing() -> None:
    _, vmm, guest = _stack(presets["gmem-hugetlb"], 65536, 4096)
    guest.execute(Access(0, 4, private=True))
    gm = vmm.gmem
    assert gm is not None
    before = gm.private_bytes
    assert gm.punch_hole(1, 100) == 0 and gm.private_bytes == before  # "Those ranges are only zeroed"
    assert gm.punch_hole(0, P2M) == 1 and gm.private_bytes == before - (2 << 20)


# ---------------------------------------------------------------------- gmem-thp
def _fragment(host: HostKernel) -> None:
    """Leave no free 2M block: take every free page and give back every other one (unmovable kernel pages, which
    compaction cannot migrate)."""
    pages = host.alloc_bulk(0, host.buddy.free_frames, Owner.KERNEL, zero=False)
    assert pages is not None
    host.free_bulk(np.sort(pages)[::2], 0)


def test_thp_falls_back_to_4k_when_no_2m_is_free() -> None:
    host, vmm, guest = _stack(presets["gmem-thp"], 32768, 2048)
    guest.execute(Access(0, 1, private=True))  # a free host: a 2M folio
    gm = vmm.gmem
    assert gm is not None and gm.allocated_folios == 1 and not gm.small_folio[0]
    _fragment(host)
    guest.execute(Access(P2M, 1, private=True))
    assert gm.small_folio[1] and gm.allocated_folios == 1 and gm.allocated_small_pages == P2M
    frames = gm.pfns(P2M, P2M)
    assert (frames >= 0).all() and not (np.diff(frames) == 1).all()  # 512 order-0 pages, not one block
    assert vmm.kvm.npt.level[P2M] == int(PageSize.SIZE_4K)  # the fallback maps 4K: no 2M RMP entry for it
    assert not host.rmp_assigned_2m(frames[:1]).any()


def test_thp_never_punches_sub_2m_holes() -> None:
    host, vmm, guest = _stack(presets["gmem-thp"], 32768, 2048)
    guest.execute(Access(0, 2 * P2M, private=True))
    gm = vmm.gmem
    assert gm is not None
    _fragment(host)
    guest.execute(Access(2 * P2M, 1, private=True))  # a fallback folio
    before = gm.private_bytes
    guest.execute(Conversion(5, 1, False, Protocol.MSR), Conversion(2 * P2M + 9, 3, False, Protocol.GHCB))
    assert gm.private_bytes == before  # QEMU punched [5, 6) and [1033, 1036): sub-2M, nothing freed
    assert gm.punch_hole(2 * P2M, P2M) == 1 and gm.allocated_small_pages == 0  # a whole 2M range frees it


# ---------------------------------------------------------------------- every workload runs
@pytest.mark.parametrize("preset", ["gmem-inplace", "gmem-hugetlb", "gmem-thp"])
def test_every_workload_runs(preset: str) -> None:
    for name in WORKLOADS:
        r = snpsim.run(
            {
                "seed": 3,
                "policy": preset,
                "host": {"memory": "3G"},
                "vms": [{"memory": "256M", "vcpus": 2, "workload": name}],
                "duration": "50ms",
            }
        )
        s = r.summary
        assert s["host_crash_count"] == 0, (preset, name)
        assert s["waste_bytes"] >= 0, (preset, name)

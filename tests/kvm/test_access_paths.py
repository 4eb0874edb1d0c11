"""The fast engine's range paths in KVM give the reference's page-by-page loops' outcome.

The reference ``KvmVm.guest_access`` checks the pages of a range in order, one by one; the fast engine's
(:class:`snpsim.fast.FastKvmVm`) checks them all at once with ``Rmp.guest_access_ok``, handles the first failure
(#VC re-validation, RMP #NPF: PSMASH and zap, a zapped page faulted in again) page by page and checks the rest
again. The reference ``KvmVm._map_needed`` on 2M/1G guest_memfd folios decides the mapping level block by block;
the fast one decides every 2M block at once. With the fast engine's threshold patched to 0 (every range on
arrays), the two engines must leave the same VM and host: the same counters, NPT, RMP and allocator state,
whatever mix of 2M/4K folios, RAM holes, unvalidated pages and conversions the history made.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.fast.checked import same_directmap

from snpsim.engine import engine
from snpsim.fast import kvm as fast_kvm
from snpsim.guest.events import Access, Conversion
from snpsim.host import HostKernel
from snpsim.metrics import Counters
from snpsim.policy import presets
from snpsim.runner import GuestDriver
from snpsim.vmm.qemu import Qemu

GUEST = 4 * 512
HOST = 16 * 512
HOLE = slice(3 * 512 + 40, 3 * 512 + 60)

gfn_st = st.integers(0, GUEST - 1)
event_st = st.one_of(
    st.builds(
        lambda g, n, p, huge, val: Conversion(g, min(n, GUEST - g), p, huge_ok=huge, validate=val),
        gfn_st,
        st.integers(1, 700),
        st.booleans(),
        st.booleans(),
        st.sampled_from([True, True, False]),
    ),
    st.builds(
        lambda g, n, p, w: Access(g, min(n, GUEST - g), p, write=w),
        gfn_st,
        st.integers(1, 700),
        st.booleans(),
        st.booleans(),
    ),
)


def run(policy: str, events: list[Conversion | Access], name: str) -> tuple[HostKernel, Qemu, Counters]:
    """The events on engine ``name``; the fast engine with every range on arrays (its threshold 0)."""
    pol = presets[policy]
    components = engine(name)
    host = components.host(HOST, pol)
    counters = Counters()
    ram = np.ones(GUEST, dtype=bool)
    ram[HOLE] = False  # not RAM (like the PCI hole): never private at creation, never mapped huge
    vmm = Qemu(host, pol, ram, asid=1, counters=counters, kvm_vm=components.kvm_vm)
    guest = GuestDriver(vmm)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(fast_kvm, "SCALAR_MAX", 0)
        for e in events:
            try:
                guest.execute(e)
            except MemoryError:
                break
    return host, vmm, counters


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(sorted(presets)), events=st.lists(event_st, min_size=1, max_size=12))
def test_vectorised_access_check_equals_the_page_loop(policy: str, events: list[Conversion | Access]) -> None:
    h1, v1, c1 = run(policy, events, "reference")  # every access page by page
    h2, v2, c2 = run(policy, events, "fast")  # every access vectorised first
    assert c1.as_dict() == c2.as_dict()
    assert h1.metrics() == h2.metrics() and h1.busy_ns == h2.busy_ns
    n1, n2 = v1.kvm.npt, v2.kvm.npt
    assert np.array_equal(n1.level, n2.level) and np.array_equal(n1.pfn[:], n2.pfn[:])
    assert np.array_equal(n1.private, n2.private)
    frames = np.arange(HOST, dtype=np.int64)
    assert [h1.rmp.rmpread(p << 12) for p in range(0, HOST, 3)] == [h2.rmp.rmpread(p << 12) for p in range(0, HOST, 3)]
    assert np.array_equal(h1.frames.tags_of(frames), h2.frames.tags_of(frames))
    assert h1.buddy.free_blocks() == h2.buddy.free_blocks()
    same_directmap(h1.directmap, h2.directmap)


def test_the_vectorised_check_handles_unvalidated_pages_in_order() -> None:
    """By hand: 64 private pages, the middle 32 never validated. Each of those takes a #VC (the model re-validates
    the page), in both paths."""
    events: list[Conversion | Access] = [
        Conversion(0, 16, True),
        Conversion(16, 32, True, validate=False),
        Conversion(48, 16, True),
        Access(0, 64, private=True),
    ]
    for name in ("reference", "fast"):
        _, _, c = run("upstream", events, name)
        assert c.guest_vc_count == 32

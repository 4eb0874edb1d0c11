"""``prefault_on_convert`` reproduces QEMU commit 4cdc489eb9c2's figure exactly.

The commit ("i386/kvm: Prefault memory on page state change", T. Lendacky, 2025) says: "with 4K guest_memfd and
lazy acceptance in 4M chunks, each page validation will result in VMEXIT to map the page, resulting in 1024
additional exits" - and calls KVM_PRE_FAULT_MEMORY on the range of each page-state change so that they go away.

Here a 3 GiB guest (2 GiB below 4 GiB, 1 GiB above: q35) boots under ``upstream`` (4K guest_memfd) with lazy
acceptance, then the ``lazy-accept`` workload's page allocator accepts ``zone->unaccepted_pages`` one 4 MiB
MAX_PAGE_ORDER block at a time (``try_to_accept_memory_one``). Each acceptance is one PSC to private (2M entries),
then a 2M PVALIDATE per 2 MiB, which fails with FAIL_SIZEMISMATCH on the 4K RMP entries and is retried as 512 4K
PVALIDATEs. Without the pre-fault, KVM maps each gfn on its #NPF: one exit per 4K page, 1024 per 4 MiB; with it,
QEMU's KVM_PRE_FAULT_MEMORY mapped the range before the guest validates it: none.
"""

from __future__ import annotations

import numpy as np
import pytest

from snpsim.guest.events import Access, Conversion, Timed
from snpsim.guest.linux import LinuxGuestConfig, boot_events
from snpsim.guest.workloads import lazy_accept
from snpsim.host import HostKernel
from snpsim.metrics import Counters
from snpsim.policy import Policy, presets
from snpsim.runner import GuestDriver
from snpsim.vmm.qemu import Qemu

MIB = 1 << 20
CHUNK_PAGES = 4 * MIB // 4096  # 1024


def accept_lazily(prefault: bool) -> list[tuple[Conversion | Access, int]]:
    """Boot, then run every lazy acceptance; (event, #NPF exits it caused) for each event after the boot."""
    policy = Policy(**{**presets["upstream"].as_dict(), "prefault_on_convert": prefault})
    cfg = LinuxGuestConfig(3 << 30, 1)
    ram = np.zeros(cfg.end_gfn, dtype=bool)
    for lo, n in cfg.ram_ranges():
        ram[lo : lo + n] = True
    host = HostKernel(cfg.end_gfn + (1 << 18), policy)  # the guest's gfn span plus 1 GiB
    counters = Counters()
    driver = GuestDriver(Qemu(host, policy, ram, asid=1, counters=counters))
    driver.execute(*(t.event for t in boot_events(cfg)))
    out = []
    stream: list[Timed] = list(lazy_accept(cfg, np.random.default_rng(0), poisson=False))
    for timed in stream:
        assert isinstance(timed.event, Conversion | Access)
        before = counters.npf_count
        driver.execute(timed.event)
        out.append((timed.event, counters.npf_count - before))
    return out


@pytest.fixture(scope="module")
def without() -> list[tuple[Conversion | Access, int]]:
    return accept_lazily(False)


@pytest.fixture(scope="module")
def with_prefault() -> list[tuple[Conversion | Access, int]]:
    return accept_lazily(True)


def test_each_4m_chunk_accepted_is_1024_exits_without_prefault(without: list[tuple[Conversion | Access, int]]) -> None:
    conversions = [(ev, n) for ev, n in without if isinstance(ev, Conversion)]
    # the blocks are 4 MiB; the boot's ZONE_NORMAL atomic pool accepted the first one and accept_memory()'s guard
    # unit after it, so every later conversion is shifted by 2 MiB and 4 MiB long - but the last, whose upper half
    # is the bottom of what memblock accepted top-down at boot (memmap, hash tables, ...): 2 MiB
    assert [ev.npages for ev, _ in conversions[:-1]] == [CHUNK_PAGES] * (len(conversions) - 1)
    assert conversions[-1][0].npages == CHUNK_PAGES // 2
    assert len(conversions) > 200  # most of the 256 blocks of the 1 GiB above 4 GiB
    assert {n for _, n in conversions[:-1]} == {1024}
    # every acceptance, whatever its size: one #NPF exit per 4K page it validates
    assert all(n == ev.npages for ev, n in conversions)
    # the allocation using the block afterwards finds every page mapped
    assert all(n == 0 for ev, n in without if isinstance(ev, Access))


def test_prefault_on_convert_removes_them(
    without: list[tuple[Conversion | Access, int]], with_prefault: list[tuple[Conversion | Access, int]]
) -> None:
    assert [ev for ev, _ in with_prefault] == [ev for ev, _ in without]  # the same acceptances
    assert all(n == 0 for _, n in with_prefault)
    extra = sum(n for _, n in without)
    assert extra == sum(ev.npages for ev, _ in without if isinstance(ev, Conversion))

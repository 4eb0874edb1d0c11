"""The fast engine's direct map (:class:`snpsim.fast.FastDirectMap`) against the reference.

The reference's state machine (tests/host/test_directmap.py ``DirectMapMachine``, checked against the naive
per-frame model of arch/x86/mm/pat/set_memory.c written there) runs on the fast direct map, and on
:class:`CheckedDirectMap`, which runs every mutating call on a reference twin too and compares the whole state
after it (entries, PTE pool rows and their bits, the free row stack, the counters).
"""

from __future__ import annotations

import pickle

import numpy as np
from hypothesis import HealthCheck, settings
from tests.fast.checked import CheckedDirectMap, same_directmap
from tests.host.test_directmap import DirectMapMachine

from snpsim.fast import FastDirectMap
from snpsim.host.directmap import DirectMap
from snpsim.hw import PageSize


class FastDirectMapMachine(DirectMapMachine):
    directmap_class = FastDirectMap


class CheckedDirectMapMachine(DirectMapMachine):
    directmap_class = CheckedDirectMap


for machine in (FastDirectMapMachine, CheckedDirectMapMachine):
    machine.TestCase.settings = settings(
        max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
TestFastDirectMapMachine = FastDirectMapMachine.TestCase
TestCheckedDirectMapMachine = CheckedDirectMapMachine.TestCase


def test_scattered_removals_on_a_large_host_match_the_reference() -> None:
    """100k scattered frames of a 64 GiB host with holes, removed then restored: same splits and state."""
    n = 1 << 24
    memory = [(0, 0x9F), (0x100, 0xC0000), (0x100000, n - 4096)]
    ref, fast = DirectMap(n, memory=memory), FastDirectMap(n, memory=memory)
    rng = np.random.default_rng(7)
    ram = np.concatenate([np.arange(lo, hi) for lo, hi in memory])
    pfns = np.unique(rng.choice(ram, 100_000, replace=False))
    assert fast.remove_pages(pfns) == ref.remove_pages(pfns) > 0
    same_directmap(ref, fast)
    half = pfns[::2]
    assert fast.restore_pages(half) == ref.restore_pages(half)
    assert fast.remove_range(1 << 20, 1 << 19) == ref.remove_range(1 << 20, 1 << 19)
    same_directmap(ref, fast)
    fast.check_invariants()


def test_a_pickled_direct_map_keeps_its_views() -> None:
    """The explorer snapshots worlds by pickling: the copy's single-entry views must be its own arrays' (they
    were a bytearray and a numpy view of it, which pickling separated: a scalar split went to one, a range
    query read the other)."""
    for cls in (DirectMap, FastDirectMap):
        copy = pickle.loads(pickle.dumps(cls(1 << 20)))
        copy.remove_4k(5)  # splits the first GiB and its first 2M range through the scalar views
        copy.check_invariants()
        assert copy.levels_of(np.array([5, 600])).tolist() == [-1, int(PageSize.SIZE_2M)]  # 600: a 2M entry now

"""Fast-engine components that check themselves against a reference twin at every call (a test helper).

:class:`CheckedAllocator` is a :class:`snpsim.fast.FastBuddyAllocator` carrying a reference
:class:`snpsim.host.buddy.BuddyAllocator` built with the same arguments: every call that changes the free lists
(``alloc``, ``alloc_bulk``, ``free``, ``free_bulk``, ``take_free_range``, ``take_page_off_buddy``) runs on both,
and the results and the whole state (every free list's words, counts and top words, the pageblock types, the zone
table) must be equal afterwards. A host built with it (``HostKernel(allocator=CheckedAllocator)``) runs any test
-- a layer's state machine, a scenario -- with the two engines' allocators in lockstep inside the real stack.
:class:`CheckedDirectMap` does the same for the direct map (entries, PTE pool rows, the free row stack,
counters).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from snpsim.fast import FastBuddyAllocator, FastDirectMap
from snpsim.host.buddy import BuddyAllocator
from snpsim.host.directmap import COUNTERS, DirectMap


def same_state(a: BuddyAllocator, b: BuddyAllocator) -> None:
    sa, sb = a._store, b._store
    assert np.array_equal(sa.words, sb.words), "free lists differ"
    assert np.array_equal(sa.count, sb.count), "free list counts differ"
    assert np.array_equal(sa.top, sb.top), "free list summaries differ"
    assert np.array_equal(a._pb, b._pb), "pageblock types differ"
    assert np.array_equal(a._zt, b._zt), "zone tables differ"
    assert a.free_frames == b.free_frames


class CheckedAllocator(FastBuddyAllocator):
    """Fast allocator, reference twin, compared after every mutating call."""

    calls = 0  # how many calls were compared, over all instances (tests check the twin was exercised)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.twin = BuddyAllocator(*args, **kwargs)
        same_state(self, self.twin)

    def _both(self, name: str, *args: Any, **kwargs: Any) -> Any:
        mine = getattr(super(), name)(*args, **kwargs)
        theirs = getattr(self.twin, name)(*args, **kwargs)
        if isinstance(mine, np.ndarray) or isinstance(theirs, np.ndarray):
            assert mine is not None and theirs is not None and np.array_equal(mine, theirs), name
        else:
            assert mine == theirs, (name, mine, theirs)
        same_state(self, self.twin)
        CheckedAllocator.calls += 1
        return mine

    def alloc(self, order: int, migratetype: int = 1) -> int | None:
        return self._both("alloc", order, migratetype)  # type: ignore[no-any-return]

    def alloc_bulk(self, order: int, count: int, migratetype: int = 1) -> npt.NDArray[np.int64] | None:
        return self._both("alloc_bulk", order, count, migratetype)  # type: ignore[no-any-return]

    def free(self, pfn: int, order: int, *, check_free: bool = True) -> None:
        self._both("free", pfn, order, check_free=check_free)

    def free_bulk(self, pfns: npt.ArrayLike, order: int, *, check_free: bool = True) -> None:
        self._both("free_bulk", np.array(pfns, dtype=np.int64), order, check_free=check_free)

    def take_free_range(self, lo: int, hi: int) -> npt.NDArray[np.int64]:
        return self._both("take_free_range", lo, hi)  # type: ignore[no-any-return]

    def take_page_off_buddy(self, pfn: int) -> bool:
        return self._both("take_page_off_buddy", pfn)  # type: ignore[no-any-return]


def same_directmap(a: DirectMap, b: DirectMap) -> None:
    """Equal direct maps: entries, PTE pool rows in use and their bits, the free row stack, every counter."""
    for name in ("_pud", "_pmd", "_slot", "_ct"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    n = int(a._ct[COUNTERS.index("nslots")])
    assert np.array_equal(a._bits[:n], b._bits[:n]), "PTE rows differ"
    assert np.array_equal(a._free_rows(), b._free_rows()), "free PTE rows differ"


class CheckedDirectMap(FastDirectMap):
    """Fast direct map, reference twin, compared after every mutating call."""

    calls = 0
    MUTATORS = (
        "set_4k", "split_1g", "split_2m", "split_2m_many", "remove_4k", "restore_4k", "remove_range",
        "restore_range", "remove_pages", "restore_pages", "remove_2m", "restore_2m", "remove_1g", "restore_1g",
        "merge_2m", "merge_1g", "try_merge",
    )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.twin = DirectMap(*args, **kwargs)
        same_directmap(self, self.twin)

    _inside = False  # a mutator calling another on self is checked once, as the outer call

    def __getattribute__(self, name: str) -> Any:
        method = super().__getattribute__(name)
        if name not in CheckedDirectMap.MUTATORS or super().__getattribute__("_inside"):
            return method

        def both(*args: Any, **kwargs: Any) -> Any:
            twin = super(CheckedDirectMap, self).__getattribute__("twin")
            twin.running = super(CheckedDirectMap, self).__getattribute__("running")
            self._inside = True
            try:
                mine = method(*args, **kwargs)
            finally:
                self._inside = False
            theirs = getattr(twin, name)(*args, **kwargs)
            assert mine == theirs, (name, mine, theirs)
            same_directmap(self, twin)
            CheckedDirectMap.calls += 1
            return mine

        return both

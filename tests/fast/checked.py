"""Fast-engine components that check themselves against a reference twin at every call (a test helper).

:class:`CheckedAllocator` is a :class:`snpsim.fast.FastBuddyAllocator` carrying a reference
:class:`snpsim.host.buddy.BuddyAllocator` built with the same arguments: every call that changes the free lists
(``alloc``, ``alloc_bulk``, ``free``, ``free_bulk``, ``take_free_range``, ``take_page_off_buddy``) runs on both,
and the results and the whole state (every free list's words, counts and top words, the pageblock types, the zone
table) must be equal afterwards. A host built with it (``HostKernel(allocator=CheckedAllocator)``) runs any test
-- a layer's state machine, a scenario -- with the two engines' allocators in lockstep inside the real stack.
:class:`CheckedDirectMap` does the same for the direct map (entries, PTE pool rows, the free row stack,
counters), :class:`CheckedRmp` for the RMP (every segment's arrays, which segments exist, in-use marks, the RMPOPT
table, the instruction counters; an instruction's exception is part of its result), all three through the mixin
:class:`Twinned`, which wraps the methods they name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from snpsim.fast import FastBuddyAllocator, FastDirectMap, FastRmp
from snpsim.host.buddy import BuddyAllocator
from snpsim.host.directmap import COUNTERS, DirectMap
from snpsim.hw import Rmp


def same_state(a: BuddyAllocator, b: BuddyAllocator) -> None:
    sa, sb = a._store, b._store
    assert np.array_equal(sa.words, sb.words), "free lists differ"
    assert np.array_equal(sa.count, sb.count), "free list counts differ"
    assert np.array_equal(sa.top, sb.top), "free list summaries differ"
    assert np.array_equal(a._pb, b._pb), "pageblock types differ"
    assert np.array_equal(a._zt, b._zt), "zone tables differ"
    assert a.free_frames == b.free_frames


def same_directmap(a: DirectMap, b: DirectMap) -> None:
    """Equal direct maps: entries, PTE pool rows in use and their bits, the free row stack, every counter."""
    for name in ("_pud", "_pmd", "_slot", "_ct"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    n = int(a._ct[COUNTERS.index("nslots")])
    assert np.array_equal(a._bits[:n], b._bits[:n]), "PTE rows differ"
    assert np.array_equal(a._free_rows(), b._free_rows()), "free PTE rows differ"


def same_result(name: str, mine: Any, theirs: Any) -> None:
    """Equal results: arrays element by element (also inside tuples), anything else by ``==``."""
    if isinstance(mine, tuple) and isinstance(theirs, tuple):
        assert len(mine) == len(theirs), name
        for x, y in zip(mine, theirs, strict=True):
            same_result(name, x, y)
    elif isinstance(mine, np.ndarray) or isinstance(theirs, np.ndarray):
        assert isinstance(mine, np.ndarray) and isinstance(theirs, np.ndarray), name
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs), (name, mine, theirs)
    else:
        assert mine == theirs, (name, mine, theirs)


def outcome(call: Any) -> tuple[Any, BaseException | None]:
    """``(result, None)``, or ``(None, exception)`` for a call that raised."""
    try:
        return call(), None
    except Exception as e:  # an instruction's fault is part of its result
        return None, e


class Twinned:
    """Mixin of a fast component whose methods named in :attr:`MUTATORS` also run on ``self.twin``, a reference
    instance: the results must be equal (an exception too: same class, same fields; then it is raised), and the
    states after the call (:meth:`same`). A mutator calling another on self is checked once, as the outer call."""

    MUTATORS: tuple[str, ...] = ()
    #: the reference class the twin is an instance of (built with the same arguments)
    REFERENCE: type
    calls = 0  # calls compared, over all instances (each class its own count: tests check the twin was exercised)
    twin: Any
    _inside = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.twin = type(self).REFERENCE(*args, **kwargs)
        self.same(self, self.twin)

    @staticmethod
    def same(mine: Any, twin: Any) -> None:
        raise NotImplementedError

    def sync(self, twin: Any) -> None:
        """Before each checked call: copy to the twin what the caller sets on the component directly."""

    def __getattribute__(self, name: str) -> Any:
        method = super().__getattribute__(name)
        if name not in type(self).MUTATORS or super().__getattribute__("_inside"):
            return method

        def both(*args: Any, **kwargs: Any) -> Any:
            twin = self.twin
            self.sync(twin)
            self._inside = True
            try:
                mine, error = outcome(lambda: method(*args, **kwargs))
            finally:
                self._inside = False
            theirs, their_error = outcome(lambda: getattr(twin, name)(*args, **kwargs))
            assert type(error) is type(their_error), (name, error, their_error)
            if error is not None:
                assert vars(error) == vars(their_error), (name, error, their_error)
            else:
                same_result(name, mine, theirs)
            self.same(self, twin)
            type(self).calls += 1
            if error is not None:
                raise error
            return mine

        return both


class CheckedAllocator(Twinned, FastBuddyAllocator):
    """Fast allocator, reference twin, compared after every call that changes the free lists."""

    calls = 0
    MUTATORS = ("alloc", "alloc_bulk", "free", "free_bulk", "take_free_range", "take_page_off_buddy")
    REFERENCE = BuddyAllocator
    same = staticmethod(same_state)

    def free_tagged(self, pfns: Any, order: int) -> bool:
        """The host kernel's compiled bulk free, checked: when it frees, the twin frees the same blocks by the
        reference's ``free_bulk`` (the frame tags are one array the two share, so the twin's are set too)."""
        done = FastBuddyAllocator.free_tagged(self, pfns, order)
        if done:
            self.twin.free_bulk(pfns, order, check_free=False)
            self.same(self, self.twin)
            type(self).calls += 1
        return done


class CheckedDirectMap(Twinned, FastDirectMap):
    """Fast direct map, reference twin, compared after every mutating call."""

    calls = 0
    MUTATORS = (
        "set_4k", "split_1g", "split_2m", "split_2m_many", "remove_4k", "restore_4k", "remove_range",
        "restore_range", "remove_pages", "restore_pages", "remove_2m", "restore_2m", "remove_1g", "restore_1g",
        "merge_2m", "merge_1g", "try_merge",
    )  # fmt: skip
    REFERENCE = DirectMap
    same = staticmethod(same_directmap)

    def sync(self, twin: DirectMap) -> None:
        twin.running = self.running  # the boot-time splits are not counted in /proc/vmstat


RMP_COUNTERS = ("rmpupdate_count", "psmash_count", "pvalidate_count", "rmpadjust_count", "rmpopt_count")


def same_rmp(a: Rmp, b: Rmp) -> None:
    """Equal RMPs: the same segments allocated, each with equal arrays (flags, GFN offsets, ASIDs, per-2M assigned
    counts, VMPL masks or none) and the same RMPUPDATE fast-path switch; in-use marks, RMPOPT table, counters."""
    assert a.npages == b.npages
    assert len(a._segs) == len(b._segs)
    for s, (x, y) in enumerate(zip(a._segs, b._segs, strict=True)):
        assert (x is None) == (y is None), f"segment {s} allocated in one table only"
        if x is None or y is None:
            continue
        for name in ("flags", "gofs", "asid", "region_assigned"):
            assert np.array_equal(getattr(x, name), getattr(y, name)), f"segment {s} {name}"
        assert (x.perms is None) == (y.perms is None), f"segment {s} VMPL masks allocated in one table only"
        if x.perms is not None and y.perms is not None:
            assert np.array_equal(x.perms, y.perms), f"segment {s} VMPL masks"
        assert (x.uv is None) == (y.uv is None), f"segment {s} fast-path switch"
    assert a._in_use == b._in_use, "in-use marks"
    assert (a.rmpopt_table is None) == (b.rmpopt_table is None), "RMPOPT enabled in one table only"
    if a.rmpopt_table is not None and b.rmpopt_table is not None:
        assert np.array_equal(a.rmpopt_table, b.rmpopt_table), "RMPOPT table"
    assert a._rmpopt_live == b._rmpopt_live, "RMPOPT live"
    for name in RMP_COUNTERS:
        assert getattr(a, name) == getattr(b, name), name


class CheckedRmp(Twinned, FastRmp):
    """Fast RMP, reference twin, compared after every mutating call (the instructions' faults included)."""

    calls = 0
    MUTATORS = (
        "rmpupdate", "rmpupdate_range", "rmpupdate_pfns", "psmash", "psmash_range", "pvalidate", "pvalidate_range",
        "pvalidate_pfns", "rmpadjust", "fw_launch_update", "fw_launch_update_pfns", "fw_page_reclaim",
        "mark_in_use", "clear_in_use", "enable_rmpopt", "rmpopt",
    )  # fmt: skip
    REFERENCE = Rmp
    same = staticmethod(same_rmp)

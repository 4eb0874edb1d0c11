"""The fast engine's RMP (:class:`snpsim.fast.FastRmp`) against the reference (:class:`snpsim.hw.Rmp`).

A lockstep machine drives a reference and a fast table with the same calls -- RMPUPDATE (single, range, scattered
PFNs; 4K and 2M), PSMASH (single, range), PVALIDATE (single, range, scattered PFNs), RMPADJUST, the firmware's page
transitions, in-use marks, RMPOPT, the vectorised reads -- and compares after every step the results (exceptions
included) and the whole state (:func:`tests.fast.checked.same_rmp`: which segments exist, every segment array,
in-use marks, RMPOPT table, counters). The table has two segments, the second partial and ending inside a 2M range,
and the operations concentrate on the 2M ranges around the boundary and the table end
(``tests/hw/test_fast_paths.py``'s geometry and initial states), so that scattered calls span segments, untouched
segments, pages beyond the table and every special entry. The examples below check the scattered operations'
per-page rules by hand (``shared/reference/amd-snp-arch.md`` §3, §5 and the assumptions of :mod:`snpsim.hw.rmp`),
on both classes.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from tests.fast.checked import CheckedRmp, outcome, same_result, same_rmp
from tests.hw.test_fast_paths import FIRST_REGION, GPA_OFFSET, NPAGES, WINDOW, Op, apply_setup, head, setups, spa_of

from snpsim.fast import FastRmp
from snpsim.hw import NestedPageFault, PageSize, Rmp, RmpStatus
from snpsim.hw.rmp import RMPOPT_FUNC_REPORT_STATUS, RMPOPT_FUNC_VERIFY_AND_REPORT_STATUS, SEGMENT_PAGES
from snpsim.hw.types import PAGE_SIZE, PAGES_PER_2M, PERM_READ

K4, M2 = PageSize.SIZE_4K, PageSize.SIZE_2M
GPA_PAGES = GPA_OFFSET // PAGE_SIZE
#: pages the scattered calls draw from: the window's 2M ranges, a little beyond the table, two negative PFNs
POOL = np.array([-3, -1, *range(head(FIRST_REGION), NPAGES + 6)], dtype=np.int64)

pages = st.one_of(
    st.integers(head(FIRST_REGION), NPAGES + 4),
    st.sampled_from([0, 1, SEGMENT_PAGES - 1, SEGMENT_PAGES, NPAGES - 1, NPAGES]),
)
heads = st.sampled_from([head(r) for r in [*WINDOW, WINDOW[-1] + 1]])
asids = st.sampled_from([1, 1, 1, 2, 0, 1 << 32])
sizes = st.sampled_from([K4, K4, M2])


class Lockstep(RuleBasedStateMachine):
    """The same calls on a reference and a fast RMP; results and the whole state compared after each."""

    @initialize(
        ops=setups(), populate=st.booleans(), busy=st.lists(pages, max_size=3), rmpopt=st.sampled_from([0, 0, 1, 2])
    )
    def setup(self, ops: list[Op], populate: bool, busy: list[int], rmpopt: int) -> None:
        self.ref, self.fast = Rmp(NPAGES), FastRmp(NPAGES)
        for r in (self.ref, self.fast):
            if populate:  # else the segments start untouched
                apply_setup(r, ops)
            for p in busy:  # VMRUN's in-use marks, also in untouched segments
                r.mark_in_use(spa_of(p))
            if rmpopt:  # every region verified on every CPU: the hypervisor-owned ones get their bit
                r.enable_rmpopt(rmpopt)
                for region in range(2):
                    for cpu in range(rmpopt):
                        r.rmpopt(region * SEGMENT_PAGES * PAGE_SIZE, RMPOPT_FUNC_VERIFY_AND_REPORT_STATUS, cpu)
        self.ncpus = rmpopt

    def both(self, name: str, *args: Any, **kwargs: Any) -> Any:
        mine, error = outcome(lambda: getattr(self.fast, name)(*args, **kwargs))
        theirs, their_error = outcome(lambda: getattr(self.ref, name)(*args, **kwargs))
        assert type(error) is type(their_error), (name, error, their_error)
        if error is None:
            same_result(name, mine, theirs)
        else:
            assert vars(error) == vars(their_error), (name, error, their_error)
        return mine

    # ------------------------------------------------------------------ the scattered-PFN operations
    def _pfns(self, data: st.DataObject) -> np.ndarray:
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
        n = data.draw(st.sampled_from([0, 1, 2, 5, 17, 64, 300, 1100]), label="pages")
        kinds = ["run", "scattered", "one 2M range", "two segments"] + ["in use"] * bool(self.ref._in_use)
        kind = data.draw(st.sampled_from(kinds), label="kind")
        if kind == "in use":  # pages VMRUN marked (all of them in an untouched segment: it stays untouched)
            busy = np.array(sorted(self.ref._in_use), dtype=np.int64)
            pfns = rng.choice(busy, size=min(n, busy.size), replace=False)
        elif kind == "run":
            first = data.draw(st.integers(head(FIRST_REGION), NPAGES + 4), label="first")
            pfns = np.arange(first, first + n, dtype=np.int64)
        elif kind == "one 2M range":
            h = data.draw(heads, label="2M range")
            pfns = h + rng.choice(PAGES_PER_2M, size=min(n, PAGES_PER_2M), replace=False)
        elif kind == "two segments":
            half = SEGMENT_PAGES - 3 * PAGES_PER_2M + rng.choice(3 * PAGES_PER_2M, size=min(n, 1536), replace=False)
            pfns = np.concatenate([half, half + 3 * PAGES_PER_2M])
        else:
            pfns = rng.choice(POOL, size=min(n, POOL.size), replace=False)
        order = data.draw(st.sampled_from(["ascending", "as drawn", "descending"]), label="order")
        pfns = np.sort(pfns) if order == "ascending" else -np.sort(-pfns) if order == "descending" else pfns
        return pfns.astype(np.int64)

    @staticmethod
    def _gfns(data: st.DataObject, pfns: np.ndarray) -> np.ndarray | None:
        how = data.draw(st.sampled_from(["bound", "bound", "next", "random", "negative", "none"]), label="gfns")
        if how == "none":
            return None
        gfns = pfns + GPA_PAGES + (1 if how == "next" else 0)
        if how == "random":
            gfns = np.random.default_rng(pfns.size).integers(0, 1 << 40, size=pfns.size)
        if how == "negative" and pfns.size:
            gfns = gfns.copy()
            gfns[:: max(1, pfns.size // 3)] = -1
        return gfns

    @rule(data=st.data(), assigned=st.booleans(), asid=asids, immutable=st.sampled_from([False] * 5 + [True]))
    def rmpupdate_pfns(self, data: st.DataObject, assigned: bool, asid: int, immutable: bool) -> None:
        pfns = self._pfns(data)
        gfns = self._gfns(data, pfns)
        if not assigned and data.draw(st.integers(0, 5), label="valid shared"):
            asid, immutable = 0, False  # else the whole call fails its input check
        self.both("rmpupdate_pfns", pfns, gfns, assigned=assigned, asid=asid, immutable=immutable)

    @rule(data=st.data(), asid=asids, validate=st.booleans())
    def pvalidate_pfns(self, data: st.DataObject, asid: int, validate: bool) -> None:
        pfns = self._pfns(data)
        gfns = self._gfns(data, pfns)
        self.both("pvalidate_pfns", pfns, pfns + GPA_PAGES if gfns is None else gfns, asid=asid, validate=validate)

    @rule(data=st.data())
    def vectorised_reads(self, data: st.DataObject) -> None:
        """The kernel's reads of many pages (flags, per-2M assigned counts; 0 beyond the table and in an untouched
        segment)."""
        pfns = self._pfns(data)
        for name in ("assigned_mask", "assigned_2m_mask", "assigned_in_2m_of"):
            self.both(name, pfns)

    # ------------------------------------------------------------------ the other instructions (inherited)
    @rule(p=pages, size=sizes, assigned=st.booleans(), asid=asids, bound=st.booleans(), immutable=st.booleans())
    def rmpupdate(self, p: int, size: PageSize, assigned: bool, asid: int, bound: bool, immutable: bool) -> None:
        if size == M2:
            p -= p % PAGES_PER_2M
        gpa = spa_of(p) + GPA_OFFSET if bound else 0
        if not assigned:
            asid, immutable = 0, False
        self.both("rmpupdate", spa_of(p), assigned=assigned, page_size=size, gpa=gpa, asid=asid, immutable=immutable)

    @rule(p=pages, n=st.sampled_from([1, 7, 512, 1500]), size=sizes, assigned=st.booleans())
    def rmpupdate_range(self, p: int, n: int, size: PageSize, assigned: bool) -> None:
        if size == M2:
            p -= p % PAGES_PER_2M
        asid = 1 if assigned else 0
        gpa = spa_of(p) + GPA_OFFSET
        self.both("rmpupdate_range", spa_of(p), n, assigned=assigned, page_size=size, gpa=gpa, asid=asid)

    @rule(h=heads, n=st.sampled_from([1, 512, 2048]))
    def psmash(self, h: int, n: int) -> None:
        if n == 1:
            self.both("psmash", spa_of(h))
        else:
            self.both("psmash_range", spa_of(h), n)

    @rule(p=pages, size=sizes, asid=asids, shift=st.sampled_from([0, 0, 0, 1]), validate=st.booleans())
    def pvalidate(self, p: int, size: PageSize, asid: int, shift: int, validate: bool) -> None:
        if size == M2:
            p -= p % PAGES_PER_2M
        gpa = spa_of(p + shift) + GPA_OFFSET
        self.both("pvalidate", spa_of(p), asid=asid, gpa=gpa, page_size=size, validate=validate)

    @rule(p=pages, n=st.sampled_from([1, 9, 700]), asid=asids, validate=st.booleans())
    def pvalidate_range(self, p: int, n: int, asid: int, validate: bool) -> None:
        gpa = spa_of(p) + GPA_OFFSET
        self.both("pvalidate_range", spa_of(p), n, asid=asid, gpa=gpa, page_size=K4, validate=validate)

    @rule(p=pages, size=sizes, perms=st.sampled_from([0, PERM_READ]))
    def rmpadjust(self, p: int, size: PageSize, perms: int) -> None:
        """VMPL1 masks: the segment gets its VMPL mask array (RMPUPDATE resets the masks of the pages it writes)."""
        if size == M2:
            p -= p % PAGES_PER_2M
        args = {"asid": 1, "gpa": spa_of(p) + GPA_OFFSET, "page_size": size, "vmpl": 0, "target_vmpl": 1}
        self.both("rmpadjust", spa_of(p), perms=perms, **args)

    @rule(p=pages, on=st.booleans())
    def in_use(self, p: int, on: bool) -> None:
        self.both("mark_in_use" if on else "clear_in_use", spa_of(p))

    @rule(p=pages, launch=st.booleans(), vmsa=st.booleans())
    def firmware(self, p: int, launch: bool, vmsa: bool) -> None:
        if launch:
            self.both("fw_launch_update", spa_of(p), vmsa=vmsa)
        else:
            self.both("fw_page_reclaim", spa_of(p))

    @precondition(lambda self: self.ncpus > 0)
    @rule(region=st.integers(0, 2), verify=st.booleans(), cpu=st.integers(0, 1))
    def rmpopt(self, region: int, verify: bool, cpu: int) -> None:
        function = RMPOPT_FUNC_VERIFY_AND_REPORT_STATUS if verify else RMPOPT_FUNC_REPORT_STATUS
        self.both("rmpopt", region * SEGMENT_PAGES * PAGE_SIZE, function, cpu % self.ncpus)

    @invariant()
    def same(self) -> None:
        if hasattr(self, "ref"):
            same_rmp(self.fast, self.ref)


Lockstep.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLockstep = Lockstep.TestCase


# ---------------------------------------------------------------------------------------------- hand-made examples
S1 = SEGMENT_PAGES  # the first page of segment 1


def example_table(cls: type[Rmp]) -> Rmp:
    """Segment 0: an assigned 2M entry at 2M range 1 (ASID 1, GPA = SPA + GPA_OFFSET), a hypervisor-owned 2M entry
    at range 2, an immutable page 3 (Pre-Guest: ASID 1), page 4 in use, pages 10..12 assigned 4K to ASID 1 (bound
    as the 2M entry), page 11 validated. Segment 1 untouched."""
    rmp = cls(NPAGES)
    bound = {"asid": 1}
    assert rmp.rmpupdate(spa_of(512), assigned=True, page_size=M2, gpa=spa_of(512) + GPA_OFFSET, **bound) == 0
    assert rmp.rmpupdate(spa_of(1024), assigned=False, page_size=M2) == 0
    assert rmp.rmpupdate(spa_of(3), assigned=True, gpa=spa_of(3) + GPA_OFFSET, immutable=True, **bound) == 0
    rmp.mark_in_use(spa_of(4))
    for p in (10, 11, 12):
        assert rmp.rmpupdate(spa_of(p), assigned=True, gpa=spa_of(p) + GPA_OFFSET, **bound) == 0
    assert rmp.pvalidate(spa_of(11), asid=1, gpa=spa_of(11) + GPA_OFFSET, page_size=K4, validate=True) == (0, False)
    return rmp


@pytest.mark.parametrize("cls", [Rmp, FastRmp])
def test_rmpupdate_pfns_takes_each_page_through_the_4k_rules(cls: type[Rmp]) -> None:
    """Per page, RMPUPDATE's checks in their order (rmpupdate-input, check-order, rmpupdate-overlap,
    rmpupdate-demote): input (PFN < 0, beyond the table, GFN < 0), in use, immutable, inside an assigned 2M entry;
    inside a hypervisor-owned 2M entry the entry is demoted to 4K and the step succeeds."""
    rmp = example_table(cls)
    pfns = np.array([-1, 20, NPAGES, 21, 4, 3, 600, 1030, S1 + 5], dtype=np.int64)
    gfns = np.array([9, 109, 9, -1, 9, 9, 9, 309, 409], dtype=np.int64)
    status = rmp.rmpupdate_pfns(pfns, gfns, assigned=True, asid=2)
    assert status.tolist() == [1, 0, 1, 1, 3, 2, 4, 0, 0]
    assert status.dtype == np.int64
    assert rmp.rmpupdate_count == 6 + 9  # the example table's six, and every step here
    e = rmp.rmpread(spa_of(20))
    assert (e.assigned, e.page_size, e.asid, e.gpa, e.validated) == (True, K4, 2, 109 * PAGE_SIZE, False)
    e = rmp.rmpread(spa_of(1030))
    assert (e.assigned, e.page_size, e.asid, e.gpa) == (True, K4, 2, 309 * PAGE_SIZE)
    e = rmp.rmpread(spa_of(1031))
    assert (e.assigned, e.page_size) == (False, K4)  # the rest of range 2: hypervisor-owned 4K entries now
    assert rmp.assigned_in_2m(1024) == 1 and rmp.assigned_in_2m(0) == 5  # pages 3, 10, 11, 12, 20
    e = rmp.rmpread(spa_of(600))
    assert (e.page_size, e.asid) == (M2, 1)  # the assigned 2M entry is untouched
    assert rmp.rmpread(spa_of(S1 + 5)).gpa == 409 * PAGE_SIZE  # segment 1 allocated by its first write
    # making them shared again: the 4K pages become hypervisor-owned, whatever they were bound to
    status = rmp.rmpupdate_pfns(np.array([20, 1030, 12]), assigned=False)
    assert status.tolist() == [0, 0, 0]
    assert rmp.assigned_in_2m(0) == 3 and rmp.assigned_in_2m(1024) == 0
    assert not rmp.rmpread(spa_of(12)).assigned


@pytest.mark.parametrize("cls", [Rmp, FastRmp])
def test_rmpupdate_pfns_with_bad_arguments_fails_every_page(cls: type[Rmp]) -> None:
    """A shared page cannot have an ASID or be immutable (rmpupdate-input): every step FAIL_INPUT, all counted."""
    rmp = cls(NPAGES)
    assert rmp.rmpupdate_pfns(np.arange(5, 10), assigned=False, asid=1).tolist() == [1] * 5
    assert rmp.rmpupdate_pfns(np.arange(5, 10), assigned=False, immutable=True).tolist() == [1] * 5
    assert rmp.rmpupdate_count == 10
    assert rmp._segs == [None, None]  # nothing was written


@pytest.mark.parametrize("cls", [Rmp, FastRmp])
def test_frames_and_guest_frames_of_different_lengths_are_an_error_before_any_step(cls: type[Rmp]) -> None:
    rmp = cls(NPAGES)
    with pytest.raises(ValueError, match="one length"):
        rmp.rmpupdate_pfns(np.arange(5), np.arange(4), assigned=True, asid=1)
    with pytest.raises(ValueError, match="one length"):
        rmp.pvalidate_pfns(np.arange(5), np.arange(6), asid=1, validate=True)
    assert (rmp.rmpupdate_count, rmp.pvalidate_count, rmp.assigned_count()) == (0, 0, 0)


@pytest.mark.parametrize("cls", [Rmp, FastRmp])
def test_a_segment_is_allocated_only_when_a_page_passes_the_in_use_check(cls: type[Rmp]) -> None:
    """The RMP's segments are allocated on the first write: steps failing FAIL_INPUT or FAIL_INUSE write nothing."""
    rmp = cls(NPAGES)
    for p in (S1 + 1, S1 + 2):
        rmp.mark_in_use(spa_of(p))
    assert rmp.rmpupdate_pfns(np.array([S1 + 1, S1 + 2, NPAGES + 1]), assigned=True, asid=1).tolist() == [3, 3, 1]
    assert rmp._segs[1] is None
    assert rmp.rmpupdate_pfns(np.array([S1 + 2, S1 + 3]), assigned=True, asid=1).tolist() == [3, 0]
    assert rmp._segs[1] is not None and rmp.assigned_count() == 1


@pytest.mark.parametrize("cls", [Rmp, FastRmp])
def test_pvalidate_pfns_takes_each_page_through_the_4k_rules(cls: type[Rmp]) -> None:
    """Per page (§5): input (PFN or GFN < 0: FAIL_INPUT); the RMP checks (#NPF, status -1): assigned, mutable, this
    ASID, bound to this GFN, a 4K entry (a 4K request on a 2M entry: #NPF with SIZEM), covered by the table; then
    CF=1 when Validated already has the requested value, else the bit changes and CF=0."""
    rmp = example_table(cls)
    g = GPA_PAGES
    pfns = np.array([-1, 10, 11, 12, 13, 3, 600, 20, NPAGES, S1 + 7], dtype=np.int64)
    gfns = np.array([g, g + 10, g + 11, g + 13, -1, g + 3, g + 600, g + 20, g, g], dtype=np.int64)
    status, cf = rmp.pvalidate_pfns(pfns, gfns, asid=1, validate=True)
    assert status.tolist() == [1, 0, 0, -1, 1, -1, -1, -1, -1, -1]
    assert cf.tolist() == [False, False, True, False, False, False, False, False, False, False]
    assert [rmp.rmpread(spa_of(p)).validated for p in (10, 11, 12)] == [True, True, False]
    assert rmp.pvalidate_count == 1 + 10
    status, cf = rmp.pvalidate_pfns(np.array([11, 10]), np.array([g + 11, g + 10]), asid=2, validate=False)
    assert status.tolist() == [-1, -1] and not cf.any()  # another guest's pages
    status, cf = rmp.pvalidate_pfns(np.array([11, 12]), np.array([g + 11, g + 12]), asid=1, validate=False)
    assert status.tolist() == [0, 0] and cf.tolist() == [False, True]
    assert [rmp.rmpread(spa_of(p)).validated for p in (10, 11, 12)] == [True, False, False]


@pytest.mark.parametrize("cls", [Rmp, FastRmp])
def test_assigning_pfns_clear_their_rmpopt_regions(cls: type[Rmp]) -> None:
    """rmpopt-clear: each 1 GiB region with a successful assigning step loses its RMPOPT bit on every CPU; a failed
    step or a shared one leaves the bits."""
    rmp = cls(3 * SEGMENT_PAGES)
    rmp.enable_rmpopt(2)
    for region in range(3):
        for cpu in range(2):
            assert rmp.rmpopt(region * SEGMENT_PAGES * PAGE_SIZE, RMPOPT_FUNC_VERIFY_AND_REPORT_STATUS, cpu)
    rmp.mark_in_use(spa_of(2 * SEGMENT_PAGES + 9))
    got = rmp.rmpupdate_pfns(np.array([SEGMENT_PAGES + 5, 2 * SEGMENT_PAGES + 9]), assigned=True, asid=1)
    assert got.tolist() == [0, 3]
    assert rmp.rmpupdate_pfns(np.array([7]), assigned=False).tolist() == [0]
    assert rmp.rmpopt_regions_all_cpus().tolist() == [True, False, True]


def test_the_checked_twin_compares_exceptions_and_state() -> None:
    """CheckedRmp (the stack state machine's RMP) runs every mutating call on a reference twin: a fault must be
    raised by both, and the states compared after it."""
    rmp = CheckedRmp(NPAGES)
    before = CheckedRmp.calls
    rmp.rmpupdate(spa_of(512), assigned=True, page_size=M2, gpa=0, asid=1)
    with pytest.raises(NestedPageFault):
        rmp.pvalidate(spa_of(513), asid=1, gpa=spa_of(1), page_size=K4, validate=True)  # 4K on a 2M entry: SIZEM
    assert rmp.rmpupdate_pfns(np.array([513, 7]), assigned=True, asid=1).tolist() == [RmpStatus.FAIL_OVERLAP, 0]
    assert CheckedRmp.calls == before + 3
    rmp.twin.rmpupdate(spa_of(9), assigned=True, asid=1)  # behind the checker's back
    with pytest.raises(AssertionError, match="segment 0 flags"):
        rmp.rmpupdate(spa_of(8), assigned=False)


def test_a_pickled_fast_rmp_continues_as_the_reference() -> None:
    """The explorer snapshots worlds by pickling: the copy is the same state, and the kernels keep running on it."""
    ref, fast = example_table(Rmp), example_table(FastRmp)
    copy = pickle.loads(pickle.dumps(fast))
    assert type(copy) is FastRmp
    same_rmp(copy, ref)
    pfns = np.arange(8, 40, dtype=np.int64)
    for r in (ref, copy):
        r.rmpupdate_pfns(pfns, pfns + GPA_PAGES, assigned=True, asid=1)
        r.pvalidate_pfns(pfns, pfns + GPA_PAGES, asid=1, validate=True)
    same_rmp(copy, ref)


def test_scattered_calls_on_a_large_table_match_the_reference() -> None:
    """300k shuffled frames over the four segments of a 4 GiB table holding assigned and hypervisor-owned 2M entries,
    immutable, in-use and VMPL-masked pages: assigned, validated, rescinded and made shared as the reference does."""
    n = 4 * SEGMENT_PAGES
    ref, fast = Rmp(n), FastRmp(n)
    rng = np.random.default_rng(17)
    heads_ = rng.choice(n // PAGES_PER_2M, size=40, replace=False) * PAGES_PER_2M
    odd = rng.choice(n, size=60, replace=False)
    for r in (ref, fast):
        for k, h in enumerate(heads_.tolist()):
            r.rmpupdate(spa_of(h), assigned=k % 2 == 0, page_size=M2, gpa=spa_of(h + GPA_PAGES) if k % 2 == 0 else 0,
                        asid=k % 2)  # fmt: skip
        for k, p in enumerate(odd.tolist()):
            if k % 3 == 0:
                r.rmpupdate(spa_of(p), assigned=True, gpa=spa_of(p + GPA_PAGES), asid=1, immutable=True)
            elif k % 3 == 1:
                r.mark_in_use(spa_of(p))
            elif r.rmpupdate(spa_of(p), assigned=True, gpa=spa_of(p + GPA_PAGES), asid=1) == 0:
                r.rmpadjust(
                    spa_of(p), asid=1, gpa=spa_of(p + GPA_PAGES), page_size=K4, vmpl=0, target_vmpl=1, perms=PERM_READ
                )
    same_rmp(fast, ref)
    pfns = rng.choice(n, size=300_000, replace=False)
    gfns = pfns + GPA_PAGES
    same_result(
        "assign",
        fast.rmpupdate_pfns(pfns, gfns, assigned=True, asid=1),
        ref.rmpupdate_pfns(pfns, gfns, assigned=True, asid=1),
    )
    same_rmp(fast, ref)
    for validate in (True, False, True):
        half = pfns[: pfns.size // 2] if validate else pfns[::3]
        got = fast.pvalidate_pfns(half, half + GPA_PAGES, asid=1, validate=validate)
        same_result("pvalidate", got, ref.pvalidate_pfns(half, half + GPA_PAGES, asid=1, validate=validate))
        same_rmp(fast, ref)
    shared = np.sort(pfns[::2])
    same_result("share", fast.rmpupdate_pfns(shared, assigned=False), ref.rmpupdate_pfns(shared, assigned=False))
    same_rmp(fast, ref)

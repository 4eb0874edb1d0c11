"""The fast paths of ``snpsim.hw.rmp`` equal the general rules (issue 7: single-page fast paths, contiguous range
fast paths, GFN-offset storage, memoryviews over the segment arrays).

The other hw tests use a one-segment table of 4 x 2M. Here the table has two segments, the second one partial and
ending inside a 2M range (``NPAGES = 2**18 + 3*512 + 77``), so that ranges cross the segment boundary, reach the
table end and partial 2M ranges, and single-page calls hit an untouched segment, the end of the table and the
pages beyond it. Initial states mix assigned 4K runs, assigned and hypervisor-owned 2M entries, PSMASHed 2M
entries, Validated pages, immutable pages, in-use pages, pages bound to another ASID or GPA, and VMPL masks
(RMPADJUST), each of which must send the affected pages or segment to the general path.

Every property compares two tables built by the same operations: one runs the operation under test, the other
the specification (a loop of the single-page instruction, the scattered-PFN operation that is that loop, or the
general single-page path ``Rmp._rmpupdate`` / ``Rmp._pvalidate``). Compared are the per-step results, the
instruction counters, every raw array of every segment (flags, GFNs, ASIDs, VMPL masks, per-2M assigned counts;
an unallocated segment equals a fresh one) and RMPREAD of the pages around the action; each table must also be
internally consistent (per-2M counts match the flags, the memoryviews alias the arrays, the RMPUPDATE fast path
is off exactly in segments with VMPL masks or in-use pages).
"""

from __future__ import annotations

import contextlib
import copy
import pickle
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from snpsim.fast import FastRmp
from snpsim.hw import HostPageFault, NestedPageFault, PageSize, Rmp, RmpEntry, VmmCommunicationException
from snpsim.hw.rmp import F_ASSIGNED, SEGMENT_PAGES, SEGMENT_SHIFT
from snpsim.hw.types import (
    NPF_ENC,
    NPF_PRESENT,
    NPF_RMP,
    NPF_VMPL,
    NPF_WRITE,
    PAGE_SIZE,
    PAGES_PER_2M,
    PERM_ALL,
    PERM_READ,
    PERM_WRITE,
)

K4, M2, G1 = PageSize.SIZE_4K, PageSize.SIZE_2M, PageSize.SIZE_1G
NPAGES = SEGMENT_PAGES + 3 * PAGES_PER_2M + 77
#: 2M ranges around the segment boundary: 509..511 end segment 0, 512..514 start segment 1, 515 is partial.
FIRST_REGION = SEGMENT_PAGES // PAGES_PER_2M - 3
LAST_REGION = NPAGES // PAGES_PER_2M
WINDOW = list(range(FIRST_REGION, LAST_REGION + 1))
GPA_OFFSET = 0x40_0000_0000
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Op = tuple[Any, ...]


def spa_of(pfn: int) -> int:
    return pfn * PAGE_SIZE


def head(r: int) -> int:
    return r * PAGES_PER_2M


# --------------------------------------------------------------------------------------------- table comparison
def _fresh(npages: int) -> dict[str, np.ndarray]:
    return {
        "flags": np.zeros(npages, np.uint8),
        "gfn": np.zeros(npages, np.int64),
        "asid": np.zeros(npages, np.uint32),
        "perms": np.zeros((npages, 3), np.uint8),
        "region_assigned": np.zeros(-(-npages // PAGES_PER_2M), np.int32),
    }


def raw_state(rmp: Rmp) -> list[dict[str, np.ndarray]]:
    """Every segment's arrays, the GFN decoded from its stored offset; an unallocated segment as a fresh one."""
    out = []
    for s, seg in enumerate(rmp._segs):
        n = min(SEGMENT_PAGES, rmp.npages - (s << SEGMENT_SHIFT))
        if seg is None:
            out.append(_fresh(n))
            continue
        out.append(
            {
                "flags": seg.flags.copy(),
                "gfn": seg.gofs + np.arange(n),
                "asid": seg.asid.copy(),
                "perms": np.zeros((n, 3), np.uint8) if seg.perms is None else seg.perms.copy(),
                "region_assigned": seg.region_assigned.copy(),
            }
        )
    return out


def assert_consistent(rmp: Rmp) -> None:
    """Invariants of the storage the fast paths rely on."""
    for s, seg in enumerate(rmp._segs):
        if seg is None:
            continue
        n = seg.npages
        assigned = np.zeros(len(seg.region_assigned) * PAGES_PER_2M, np.int32)
        assigned[:n] = seg.flags & F_ASSIGNED
        assert np.array_equal(assigned.reshape(-1, PAGES_PER_2M).sum(axis=1), seg.region_assigned), f"segment {s}"
        for view, arr in ((seg.fv, seg.flags), (seg.ov, seg.gofs), (seg.av, seg.asid), (seg.rv, seg.region_assigned)):
            assert view.obj is arr and len(view) == len(arr)
        in_use = any(p >> SEGMENT_SHIFT == s for p in rmp._in_use)
        assert (seg.uv is None) == (seg.perms is not None or in_use), f"segment {s} fast-path switch"


def assert_same_tables(a: Rmp, b: Rmp, pages: range | list[int] = range(0)) -> None:
    assert_consistent(a)
    assert_consistent(b)
    assert (a.rmpupdate_count, a.psmash_count, a.pvalidate_count, a.rmpadjust_count) == (
        b.rmpupdate_count,
        b.psmash_count,
        b.pvalidate_count,
        b.rmpadjust_count,
    )
    for s, (x, y) in enumerate(zip(raw_state(a), raw_state(b), strict=True)):
        for k in x:
            if not np.array_equal(x[k], y[k]):
                bad = np.flatnonzero((x[k] != y[k]).reshape(len(x[k]), -1).any(axis=1))[:5]
                raise AssertionError(f"segment {s} {k} differs at {bad.tolist()}: {x[k][bad]} != {y[k][bad]}")
    for p in pages:
        assert a.rmpread(spa_of(p)) == b.rmpread(spa_of(p)), f"page {p}"
    assert a.assigned_count() == b.assigned_count()


def test_comparison_detects_differences() -> None:
    """The comparison used below fails on a one-field difference and on a broken per-2M count."""
    a, b = Rmp(NPAGES), Rmp(NPAGES)
    for r in (a, b):
        r.rmpupdate(spa_of(SEGMENT_PAGES + 5), assigned=True, gpa=0x1000, asid=1)
    assert_same_tables(a, b, [SEGMENT_PAGES + 5])
    a.rmpupdate(spa_of(SEGMENT_PAGES + 5), assigned=True, gpa=0x2000, asid=1)
    b.rmpupdate_count += 1
    with pytest.raises(AssertionError, match="gfn"):
        assert_same_tables(a, b)
    seg = b._segs[1]
    assert seg is not None
    seg.region_assigned[0] += 1
    with pytest.raises(AssertionError, match="segment 1"):
        assert_consistent(b)


# --------------------------------------------------------------------------------------------- initial states
region_st = st.sampled_from(WINDOW)
off_st = st.one_of(st.sampled_from([0, 1, 2, 255, 510, 511]), st.integers(0, PAGES_PER_2M - 1))

extra_op = st.one_of(
    st.tuples(st.just("a4"), region_st, off_st, st.sampled_from([1, 1, 2]), st.booleans()),
    st.tuples(st.just("a2"), region_st, st.sampled_from([1, 1, 2]), st.booleans()),
    st.tuples(st.just("shared2m"), region_st),
    st.tuples(st.just("psmash"), region_st),
    st.tuples(st.just("imm"), region_st, off_st),
    st.tuples(st.just("inuse"), region_st, off_st),
    st.tuples(st.just("adjust"), region_st, off_st),
    st.tuples(st.just("unbound"), region_st, off_st),
    st.tuples(st.just("shared4k"), region_st, off_st, st.sampled_from([0, 0x1234_5000])),
)


@st.composite
def setups(draw: st.DrawFn) -> list[Op]:
    """Per 2M range of the window a layout, then a few stray operations."""
    ops: list[Op] = []
    for r in WINDOW:
        layout = draw(st.sampled_from(["empty", "2m", "2m", "4k-run", "4k-run", "smashed", "shared2m"]))
        valid = draw(st.booleans())
        if layout in ("2m", "smashed"):
            ops.append(("a2", r, 1, valid))
            if layout == "smashed":
                ops.append(("psmash", r))
        elif layout == "shared2m":
            ops.append(("shared2m", r))
        elif layout == "4k-run":
            lo = draw(st.integers(0, PAGES_PER_2M - 1))
            hi = draw(st.integers(lo, PAGES_PER_2M))
            ops += [("a4", r, k, 1, valid) for k in range(lo, hi)]
    return ops + draw(st.lists(extra_op, max_size=8))


def apply_setup(rmp: Rmp, ops: list[Op]) -> None:
    """Build a state through the single-page instructions (results ignored: some ops legitimately fail)."""
    for op in ops:
        kind, r = op[0], op[1]
        if kind == "a4":
            p = head(r) + op[2]
            rmp.rmpupdate(spa_of(p), assigned=True, gpa=spa_of(p) + GPA_OFFSET, asid=op[3])
            if op[4]:
                with contextlib.suppress(NestedPageFault):
                    rmp.pvalidate(spa_of(p), asid=op[3], gpa=spa_of(p) + GPA_OFFSET, page_size=K4, validate=True)
        elif kind == "a2":
            spa = spa_of(head(r))
            rmp.rmpupdate(spa, assigned=True, page_size=M2, gpa=spa + GPA_OFFSET, asid=op[2])
            if op[3]:
                with contextlib.suppress(NestedPageFault):
                    rmp.pvalidate(spa, asid=op[2], gpa=spa + GPA_OFFSET, page_size=M2, validate=True)
        elif kind == "shared2m":
            rmp.rmpupdate(spa_of(head(r)), assigned=False, page_size=M2)
        elif kind == "psmash":
            rmp.psmash(spa_of(head(r)))
        elif kind == "imm":
            p = head(r) + op[2]
            rmp.rmpupdate(spa_of(p), assigned=True, gpa=spa_of(p) + GPA_OFFSET, asid=1, immutable=True)
        elif kind == "inuse":
            rmp.mark_in_use(spa_of(head(r) + op[2]))
        elif kind == "adjust":  # VMPL masks for the segment: RMPUPDATE's fast path turns off there
            p = head(r) + op[2]
            gpa = spa_of(p) + GPA_OFFSET
            rmp.rmpupdate(spa_of(p), assigned=True, gpa=gpa, asid=1)
            with contextlib.suppress(NestedPageFault):
                rmp.rmpadjust(spa_of(p), asid=1, gpa=gpa, page_size=K4, vmpl=0, target_vmpl=1, perms=PERM_READ)
        elif kind == "unbound":  # assigned to the right ASID but another GPA
            p = head(r) + op[2]
            rmp.rmpupdate(spa_of(p), assigned=True, gpa=spa_of(p) + GPA_OFFSET + PAGE_SIZE, asid=1)
        elif kind == "shared4k":
            rmp.rmpupdate(spa_of(head(r) + op[2]), assigned=False, gpa=op[3])


def twins(ops: list[Op], cls: type[Rmp] = Rmp) -> tuple[Rmp, Rmp]:
    """A table of class ``cls`` and a reference table, both built by ``ops``."""
    a, b = cls(NPAGES), Rmp(NPAGES)
    apply_setup(a, ops)
    apply_setup(b, ops)
    assert_same_tables(a, b)
    return a, b


def sprinkle(data: st.DataObject, tables: tuple[Rmp, Rmp], first: int, npages: int) -> None:
    """0-3 complications inside ``[first, first+npages)``, on both tables: an in-use page, an immutable page, an
    assigned 4K entry alone at a 2M-aligned page (a 2M RMPUPDATE may replace it), an assigned or hypervisor-owned
    2M entry."""
    for kind, k in data.draw(
        st.lists(
            st.tuples(st.sampled_from(["inuse", "imm", "head4k", "a2", "shared2m"]), st.integers(0, npages - 1)),
            max_size=3,
        )
    ):
        p = first + k
        h = p - p % PAGES_PER_2M
        for r in tables:
            if kind == "inuse":
                r.mark_in_use(spa_of(p))
            elif kind == "imm":
                r.rmpupdate(spa_of(p), assigned=True, gpa=spa_of(p) + GPA_OFFSET, asid=1, immutable=True)
            elif kind == "head4k":
                r.rmpupdate_range(spa_of(h), PAGES_PER_2M, assigned=False)
                r.rmpupdate(spa_of(h), assigned=True, gpa=spa_of(h) + GPA_OFFSET, asid=1)
            elif kind == "a2":
                r.rmpupdate(spa_of(h), assigned=True, page_size=M2, gpa=spa_of(h) + GPA_OFFSET, asid=1)
            else:
                r.rmpupdate(spa_of(h), assigned=False, page_size=M2)
        event(f"sprinkled {kind}")
    assert_same_tables(*tables)


def window_pages(first: int, npages: int) -> list[int]:
    """Pages to RMPREAD after an operation on ``[first, first+npages)``: its 2M ranges plus neighbours."""
    lo = max(0, (first // PAGES_PER_2M - 1) * PAGES_PER_2M)
    hi = min(NPAGES + 3, (-(-(first + npages) // PAGES_PER_2M) + 1) * PAGES_PER_2M)
    return list(range(lo, hi))


# --------------------------------------------------------------------------------------------- range operations
@st.composite
def range_start(draw: st.DrawFn, size: PageSize) -> int:
    """A page around the segment boundary or the table end; 2M ranges mostly start 2M-aligned."""
    if size == M2 and draw(st.integers(0, 7)):
        return head(draw(st.sampled_from([*WINDOW, LAST_REGION + 1])))
    return draw(st.integers(head(FIRST_REGION), NPAGES + 8))


@SETTINGS
@given(ops=setups(), data=st.data())
def test_rmpupdate_range_equals_loop(ops: list[Op], data: st.DataObject) -> None:
    """rmpupdate_range == loop of RMPUPDATE (each step at spa + k*step, gpa + k*step) across the segment boundary,
    over in-use, immutable, 2M (assigned: FAIL_OVERLAP; hypervisor-owned: demoted) and partial 2M ranges."""
    size = data.draw(st.sampled_from([K4, K4, K4, M2]))
    first = data.draw(range_start(size))
    step = PAGES_PER_2M if size == M2 else 1
    npages = step * data.draw(st.integers(1, 4)) if size == M2 else data.draw(st.integers(1, 4 * PAGES_PER_2M))
    assigned = data.draw(st.booleans())
    asid = data.draw(st.sampled_from([1, 2])) if assigned else data.draw(st.sampled_from([0] * 9 + [1]))
    immutable = assigned and data.draw(st.sampled_from([False] * 7 + [True]))
    gpa = data.draw(st.sampled_from([spa_of(first) + GPA_OFFSET] * 4 + [spa_of(first), 0]))
    mis = data.draw(st.sampled_from([0] * 15 + [1]))
    a, b = twins(ops)
    sprinkle(data, (a, b), first, npages)
    spa = spa_of(first) + mis
    got = a.rmpupdate_range(spa, npages, assigned=assigned, page_size=size, gpa=gpa, asid=asid, immutable=immutable)
    want = [
        int(
            b.rmpupdate(
                spa + k * step * PAGE_SIZE,
                assigned=assigned,
                page_size=size,
                gpa=gpa + k * step * PAGE_SIZE,
                asid=asid,
                immutable=immutable,
            )
        )
        for k in range(-(-npages // step))
    ]
    assert got.dtype == np.int64
    assert got.tolist() == want
    event(f"rmpupdate_range {size.name} statuses {sorted(set(want))}")
    assert_same_tables(a, b, window_pages(first, npages))


@SETTINGS
@given(ops=setups(), data=st.data())
def test_pvalidate_range_equals_loop(ops: list[Op], data: st.DataObject) -> None:
    """pvalidate_range == loop of PVALIDATE (a step raising #NPF records -1) across the segment boundary, over
    untouched segments, 2M entries (4K: #NPF SIZEM), unbound and immutable pages."""
    size = data.draw(st.sampled_from([K4, K4, M2]))
    step = PAGES_PER_2M if size == M2 else 1
    first = data.draw(range_start(size))
    npages = step * data.draw(st.integers(1, 4)) if size == M2 else data.draw(st.integers(1, 4 * PAGES_PER_2M))
    gpa = spa_of(first) + GPA_OFFSET + data.draw(st.sampled_from([0] * 9 + [PAGE_SIZE]))
    asid = data.draw(st.sampled_from([1, 1, 1, 2]))
    validate = data.draw(st.booleans())
    a, b = twins(ops)
    if data.draw(st.booleans()):  # make most of the range valid entries, so that the common case is reached
        owner = data.draw(st.sampled_from([asid] * 3 + [3 - asid]))  # else the ASID check must fail every step
        bound = gpa + data.draw(st.sampled_from([0] * 3 + [PAGE_SIZE]))  # else the GPA check must fail
        for r in (a, b):
            r.rmpupdate_range(spa_of(first), npages, assigned=True, page_size=size, gpa=bound, asid=owner)
    sprinkle(data, (a, b), first, npages)
    spa = spa_of(first)
    status, cf = a.pvalidate_range(spa, npages, asid=asid, gpa=gpa, page_size=size, validate=validate)
    want_status, want_cf = [], []
    for k in range(-(-npages // step)):
        try:
            s, c = b.pvalidate(
                spa + k * step * PAGE_SIZE,
                asid=asid,
                gpa=gpa + k * step * PAGE_SIZE,
                page_size=size,
                validate=validate,
            )
        except NestedPageFault:
            s, c = -1, False
        want_status.append(int(s))
        want_cf.append(bool(c))
    assert status.tolist() == want_status
    assert cf.dtype == bool and cf.tolist() == want_cf
    event(f"pvalidate_range {size.name} statuses {sorted(set(want_status))}")
    assert_same_tables(a, b, window_pages(first, npages))


@SETTINGS
@given(ops=setups(), data=st.data())
def test_psmash_range_equals_loop(ops: list[Op], data: st.DataObject) -> None:
    """psmash_range == one PSMASH per 2M step, across the boundary, over in-use pages and the table end."""
    first = data.draw(range_start(M2))
    npages = data.draw(st.sampled_from([1, PAGES_PER_2M, 2 * PAGES_PER_2M, 5 * PAGES_PER_2M, 700]))
    mis = data.draw(st.sampled_from([0] * 9 + [PAGE_SIZE]))
    a, b = twins(ops)
    sprinkle(data, (a, b), first, npages)
    spa = spa_of(first) + mis
    got = a.psmash_range(spa, npages)
    want = [int(b.psmash(spa + k * PAGES_PER_2M * PAGE_SIZE)) for k in range(-(-npages // PAGES_PER_2M))]
    assert got.tolist() == want
    event(f"psmash_range statuses {sorted(set(want))}")
    assert_same_tables(a, b, window_pages(first, npages))


# Large ranges: the range operations against the scattered-PFN operations (the loop of the instruction), over a
# whole segment and more with sparse complications.
@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    assigned=st.booleans(),
    specials=st.integers(0, 12),
    validate=st.booleans(),
)
def test_large_ranges_equal_scattered_ops(seed: int, assigned: bool, specials: int, validate: bool) -> None:
    rng = np.random.default_rng(seed)
    a, b = Rmp(NPAGES), Rmp(NPAGES)
    first = int(rng.integers(0, 2000))
    npages = int(rng.integers(SEGMENT_PAGES - 1000, NPAGES + 100 - first))
    gfn0 = int(rng.integers(0, 1 << 30))
    asid = 3 if assigned else 0
    for r in (a, b):  # sparse complications: 2M entries, immutable and in-use pages, unbound pages
        prng = np.random.default_rng(seed + 1)
        for _ in range(specials):
            p = int(prng.integers(0, NPAGES))
            kind = int(prng.integers(0, 5))
            if kind == 0:
                h = p - p % PAGES_PER_2M
                r.rmpupdate(spa_of(h), assigned=True, page_size=M2, gpa=spa_of(gfn0 + h - first), asid=3)
            elif kind == 1:
                r.rmpupdate(spa_of(p), assigned=True, gpa=0, asid=3, immutable=True)
            elif kind == 2:
                r.mark_in_use(spa_of(p))
            elif kind == 3:
                r.rmpupdate(spa_of(p), assigned=True, gpa=spa_of(p), asid=4)
            else:
                h = p - p % PAGES_PER_2M
                r.rmpupdate(spa_of(h), assigned=False, page_size=M2)
    got = a.rmpupdate_range(spa_of(first), npages, assigned=assigned, gpa=spa_of(gfn0), asid=asid)
    perm = rng.permutation(npages)  # shuffled frames, one instruction each
    pfns = np.arange(first, first + npages, dtype=np.int64)[perm]
    want = np.empty(npages, dtype=np.int64)
    want[perm] = b.rmpupdate_pfns(pfns, pfns - first + gfn0, assigned=assigned, asid=asid)
    assert got.tolist() == want.tolist()
    assert_same_tables(a, b)
    st_a, cf_a = a.pvalidate_range(spa_of(first), npages, asid=3, gpa=spa_of(gfn0), page_size=K4, validate=validate)
    st_b, cf_b = np.empty(npages, dtype=np.int64), np.empty(npages, dtype=bool)
    st_b[perm], cf_b[perm] = b.pvalidate_pfns(pfns, pfns - first + gfn0, asid=3, validate=validate)
    assert st_a.tolist() == st_b.tolist()
    assert cf_a.tolist() == cf_b.tolist()
    assert_same_tables(a, b)


def test_rmpupdate_range_2m_example_across_segments() -> None:
    """Six 2M steps from 2M range 510 (segment 0) to 515 (segment 1; 515 is partial): head-only assigned 4K
    (replaced), another page assigned (FAIL_OVERLAP), an assigned 2M entry (replaced), an immutable page
    (FAIL_PERMISSION), an in-use page (FAIL_INUSE), beyond the table end (FAIL_INPUT)."""
    a, b = Rmp(NPAGES), Rmp(NPAGES)
    for r in (a, b):
        r.rmpupdate(spa_of(head(510)), assigned=True, gpa=0, asid=1)
        r.rmpupdate(spa_of(head(511) + 7), assigned=True, gpa=0, asid=1)
        r.rmpupdate(spa_of(head(512)), assigned=True, page_size=M2, gpa=0, asid=1)
        r.rmpupdate(spa_of(head(513) + 100), assigned=True, gpa=0, asid=1, immutable=True)
        r.mark_in_use(spa_of(head(514) + 511))
    args = {"assigned": True, "page_size": M2, "asid": 2}
    got = a.rmpupdate_range(spa_of(head(510)), 6 * PAGES_PER_2M, gpa=GPA_OFFSET, **args)
    assert got.tolist() == [0, 4, 0, 2, 3, 1]
    want = [b.rmpupdate(spa_of(head(510 + k)), gpa=GPA_OFFSET + k * M2.nbytes, **args) for k in range(6)]
    assert got.tolist() == want
    assert_same_tables(a, b, window_pages(head(510), 6 * PAGES_PER_2M))
    assert a.rmpread(spa_of(head(512) + 3)).gpa == GPA_OFFSET + 2 * M2.nbytes + 3 * PAGE_SIZE


def test_rmpupdate_range_4k_in_use_example() -> None:
    """A clean 4K range across the segment boundary with one in-use page: that step fails with FAIL_INUSE and
    leaves its entry alone, every other step succeeds (also the other pages of the in-use page's 2M range)."""
    a, b = Rmp(NPAGES), Rmp(NPAGES)
    first, n, busy = SEGMENT_PAGES - 700, 1400, SEGMENT_PAGES + 300
    for r in (a, b):
        r.rmpupdate(spa_of(busy), assigned=True, gpa=0x1000, asid=7)
        r.mark_in_use(spa_of(busy))
    got = a.rmpupdate_range(spa_of(first), n, assigned=True, gpa=GPA_OFFSET, asid=1)
    assert got.tolist() == [3 if first + k == busy else 0 for k in range(n)]
    want = [b.rmpupdate(spa_of(first + k), assigned=True, gpa=GPA_OFFSET + k * PAGE_SIZE, asid=1) for k in range(n)]
    assert got.tolist() == want
    assert_same_tables(a, b, window_pages(first, n))
    assert a.rmpread(spa_of(busy)).asid == 7 and a.assigned_in_2m(busy) == PAGES_PER_2M


def test_pvalidate_range_4k_examples_across_segments() -> None:
    """A run bound to (ASID 1, consecutive GPAs) across the segment boundary validates in full; the same run
    with the wrong ASID or shifted GPAs #NPFs on every step and changes nothing."""
    first, n = SEGMENT_PAGES - 3000, 4000  # ends 613 pages before the table end
    rmp = Rmp(NPAGES)
    rmp.rmpupdate_range(spa_of(first), n, assigned=True, gpa=GPA_OFFSET, asid=1)
    before = raw_state(rmp)
    for asid, gpa in ((2, GPA_OFFSET), (1, GPA_OFFSET + PAGE_SIZE), (1, GPA_OFFSET - PAGE_SIZE)):
        status, cf = rmp.pvalidate_range(spa_of(first), n, asid=asid, gpa=gpa, page_size=K4, validate=True)
        assert status.tolist() == [-1] * n and not cf.any()
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(before, raw_state(rmp), strict=True) for k in x)
    status, cf = rmp.pvalidate_range(spa_of(first), n, asid=1, gpa=GPA_OFFSET, page_size=K4, validate=True)
    assert status.tolist() == [0] * n and not cf.any()
    status, cf = rmp.pvalidate_range(
        spa_of(first + 10), 5, asid=1, gpa=GPA_OFFSET + 10 * PAGE_SIZE, page_size=K4, validate=True
    )
    assert status.tolist() == [0] * 5 and cf.all()
    assert all(rmp.rmpread(spa_of(first + k)).validated for k in (0, 2999, 3000, n - 1))
    assert not rmp.rmpread(spa_of(first + n)).validated


@pytest.mark.parametrize("cls", [Rmp, FastRmp])
@SETTINGS
@given(ops=setups(), data=st.data())
def test_contiguous_pfn_arrays_equal_shuffled(cls: type[Rmp], ops: list[Op], data: st.DataObject) -> None:
    """rmpupdate_pfns / pvalidate_pfns on one ascending run of frames bound to consecutive GFNs (of the reference,
    or of the fast engine, across the segment boundary) equal the reference's calls on the shuffled arrays: steps on
    distinct pages are independent."""
    first = data.draw(st.integers(head(FIRST_REGION), NPAGES - 1))
    n = data.draw(st.integers(1, min(4 * PAGES_PER_2M, NPAGES + 5 - first)))
    gfn0 = first + GPA_OFFSET // PAGE_SIZE + data.draw(st.sampled_from([0] * 5 + [1]))
    perm = np.random.default_rng(data.draw(st.integers(0, 2**16))).permutation(n)
    pfns = np.arange(first, first + n, dtype=np.int64)
    gfns = pfns - first + gfn0
    a, b = twins(ops, cls)
    sprinkle(data, (a, b), first, min(n, NPAGES - first))
    if data.draw(st.booleans()):
        assigned = data.draw(st.booleans())
        asid = 1 if assigned else 0
        got = a.rmpupdate_pfns(pfns, gfns, assigned=assigned, asid=asid)
        want = np.empty(n, dtype=np.int64)
        want[perm] = b.rmpupdate_pfns(pfns[perm], gfns[perm], assigned=assigned, asid=asid)
        assert got.tolist() == want.tolist()
        event(f"rmpupdate_pfns statuses {sorted(set(want.tolist()))}")
    else:
        for r in (a, b):
            r.rmpupdate_range(spa_of(first), n, assigned=True, gpa=gfn0 * PAGE_SIZE, asid=1)
        validate = data.draw(st.booleans())
        status, cf = a.pvalidate_pfns(pfns, gfns, asid=1, validate=validate)
        want_status, want_cf = np.empty(n, dtype=np.int64), np.empty(n, dtype=bool)
        want_status[perm], want_cf[perm] = b.pvalidate_pfns(pfns[perm], gfns[perm], asid=1, validate=validate)
        assert status.tolist() == want_status.tolist() and cf.tolist() == want_cf.tolist()
        event(f"pvalidate_pfns statuses {sorted(set(want_status.tolist()))}")
    assert_same_tables(a, b, window_pages(first, n))


# --------------------------------------------------------------------------------------------- single-page paths
page_st = st.one_of(
    st.integers(head(FIRST_REGION), NPAGES + 600),  # around the boundary, the table end and beyond
    st.integers(0, 600),
    st.sampled_from([SEGMENT_PAGES - 1, SEGMENT_PAGES, NPAGES - 1, NPAGES, NPAGES + PAGES_PER_2M, 1 << 40]),
)
addr_tweak = st.sampled_from([0] * 12 + [1, 0x800, -PAGE_SIZE])
gpa_st = st.one_of(
    st.sampled_from(["match"] * 6 + ["next", "zero"]),
    st.sampled_from([-PAGE_SIZE, 1 << 63, 1 << 75, GPA_OFFSET + 1]),
)
asid_any = st.sampled_from([1, 1, 1, 2, 0, -1, 1 << 32])
size_any = st.sampled_from([K4, K4, K4, 0, 0, M2, 1, G1, 3])
int_kind = st.sampled_from([int] * 5 + [np.int64])


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return ("ok", fn())
    except NestedPageFault as e:
        return ("#NPF", e.exit_info1, e.gpa)
    except VmmCommunicationException as e:
        return ("#VC", e.error_code, e.gpa)
    except (OverflowError, ValueError, TypeError) as e:
        return ("raise", type(e).__name__)


@st.composite
def single_op(draw: st.DrawFn) -> Op:
    kind = draw(
        st.sampled_from(["rmpupdate"] * 4 + ["pvalidate"] * 3 + ["access"] * 2 + ["inuse", "uninuse", "adjust"])
    )
    p = draw(page_st)
    cast = draw(int_kind)
    spa = spa_of(p) + draw(addr_tweak)
    g = draw(gpa_st)
    gpa = {"match": spa_of(p) + GPA_OFFSET, "next": spa_of(p + 1) + GPA_OFFSET, "zero": 0}.get(g, g)
    if cast is np.int64 and -(1 << 62) < spa < 1 << 62 and -(1 << 62) < gpa < 1 << 62:
        spa, gpa = np.int64(spa), np.int64(gpa)
    return (
        kind,
        spa,
        gpa,
        draw(asid_any),
        draw(size_any),
        draw(st.booleans()),  # assigned / validate
        draw(st.sampled_from([False] * 6 + [True])),  # immutable
        draw(st.sampled_from([0] * 8 + [1])),  # vmpl
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=setups(), prefill=st.booleans(), steps=st.lists(single_op(), min_size=1, max_size=40))
def test_single_page_fast_paths_equal_general_paths(ops: list[Op], prefill: bool, steps: list[Op]) -> None:
    """RMPUPDATE, PVALIDATE and the guest access check through the public methods (fast path when it applies) give
    the same result, raise the same exception (class, error code, GPA) and leave the same table as the general code
    (``_rmpupdate`` / ``_pvalidate`` / :func:`reference_guest_access`), including
    on odd inputs: misaligned, negative or huge addresses, negative or > 32-bit ASIDs, 1G and invalid page sizes,
    numpy integers, untouched segments, the partial last segment and pages beyond the table."""
    a, b = twins(ops)
    if prefill:  # most of the window assigned and bound (spa + GPA_OFFSET, ASID 1), half of it validated
        n = NPAGES - head(FIRST_REGION)
        for r in (a, b):
            r.rmpupdate_range(
                spa_of(head(FIRST_REGION)), n, assigned=True, gpa=spa_of(head(FIRST_REGION)) + GPA_OFFSET, asid=1
            )
            r.pvalidate_range(
                spa_of(head(FIRST_REGION)),
                n // 2,
                asid=1,
                gpa=spa_of(head(FIRST_REGION)) + GPA_OFFSET,
                page_size=K4,
                validate=True,
            )
    for kind, spa, gpa, asid, size, flag, immutable, vmpl in steps:
        if kind == "rmpupdate":
            got = outcome(
                partial(a.rmpupdate, spa, assigned=flag, page_size=size, gpa=gpa, asid=asid, immutable=immutable)
            )
            b.rmpupdate_count += 1
            want = outcome(partial(b._rmpupdate, spa, flag, size, gpa, asid, immutable))
        elif kind == "pvalidate":
            got = outcome(partial(a.pvalidate, spa, asid=asid, gpa=gpa, page_size=size, validate=flag, vmpl=vmpl))
            b.pvalidate_count += 1
            want = outcome(partial(b._pvalidate, spa, asid, gpa, size, flag, vmpl))
        elif kind == "access":  # ``immutable`` picks a private (else shared) access; vmpl 0 or 1
            args = (spa, asid, gpa, size, flag, not immutable, vmpl)
            got = outcome(
                partial(
                    a.check_guest_access,
                    spa,
                    asid=asid,
                    gpa=gpa,
                    npt_size=size,
                    write=flag,
                    encrypted=not immutable,
                    vmpl=vmpl,
                )
            )
            want = outcome(partial(reference_guest_access, b, *args))
        elif kind in ("inuse", "uninuse"):
            for r in (a, b):
                (r.mark_in_use if kind == "inuse" else r.clear_in_use)(int(spa))
            continue
        else:
            for r in (a, b):
                with contextlib.suppress(NestedPageFault):
                    r.rmpadjust(int(spa), asid=1, gpa=int(gpa), page_size=K4, vmpl=0, target_vmpl=2, perms=PERM_ALL)
            continue
        assert got == want, (kind, spa, gpa, asid, size, flag, immutable, vmpl)
        if got[0] == "ok":
            assert type(got[1]) is type(want[1])
        event(f"{kind} {got}")
    pages = sorted({int(s[1]) >> 12 for s in steps if 0 <= int(s[1]) >> 12 < NPAGES + 4})
    assert_same_tables(a, b, pages)


def reference_guest_access(
    rmp: Rmp, spa: int, asid: int, gpa: int, npt: int, write: bool, encrypted: bool, vmpl: int
) -> None:
    """check_guest_access without its fast path: the general checks, in the general code's order."""
    pfn = spa >> 12
    access = NPF_WRITE if write else 0
    if not encrypted:
        if not write or not 0 <= pfn < rmp.npages:
            return
        if rmp._flags(pfn) & 1 if npt == K4 else rmp.assigned_in_2m(pfn):
            raise NestedPageFault(NPF_PRESENT | NPF_RMP | access, gpa)
        return
    f = rmp._flags(pfn)
    if rmp._owner_fault(pfn, f, asid, gpa) or bool(f & 2) != (npt != K4):
        raise NestedPageFault(NPF_PRESENT | NPF_RMP | NPF_ENC | access, gpa)
    if not f & 16:
        raise VmmCommunicationException(gpa=gpa)
    if vmpl and (PERM_WRITE | PERM_READ if write else PERM_READ) & ~rmp.rmpread(spa).vmpl_perms[vmpl]:
        raise NestedPageFault(NPF_PRESENT | NPF_RMP | NPF_ENC | NPF_VMPL | access, gpa)


@SETTINGS
@given(
    ops=setups(),
    accesses=st.lists(
        st.tuples(
            st.integers(head(FIRST_REGION), NPAGES + 3),
            st.sampled_from([1, 1, 1, 2]),  # ASID
            st.sampled_from([0] * 6 + [1, -1]),  # GPA shift in pages
            st.sampled_from([K4, K4, 0, M2, G1]),  # NPT level
            st.booleans(),  # write
            st.sampled_from([True] * 5 + [False]),  # encrypted
            st.sampled_from([0] * 5 + [1]),  # VMPL
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_guest_access_fast_path_equals_checks(ops: list[Op], accesses: list[Op]) -> None:
    """check_guest_access == the checks in order (#NPF, #VC, VMPL) on a table whose window is mostly assigned to
    ASID 1 at spa + GPA_OFFSET and half validated, plus the setup's complications."""
    rmp = Rmp(NPAGES)
    apply_setup(rmp, ops)
    start = spa_of(head(FIRST_REGION))
    n = NPAGES - head(FIRST_REGION)
    rmp.rmpupdate_range(start, n, assigned=True, gpa=start + GPA_OFFSET, asid=1)
    rmp.pvalidate_range(start, n // 2, asid=1, gpa=start + GPA_OFFSET, page_size=K4, validate=True)
    for p, asid, shift, npt, write, encrypted, vmpl in accesses:
        spa, gpa = spa_of(p), spa_of(p + shift) + GPA_OFFSET
        got = outcome(
            partial(
                rmp.check_guest_access,
                spa,
                asid=asid,
                gpa=gpa,
                npt_size=npt,
                write=write,
                encrypted=encrypted,
                vmpl=vmpl,
            )
        )
        assert got == outcome(partial(reference_guest_access, rmp, spa, asid, gpa, npt, write, encrypted, vmpl))
        event(f"check_guest_access {got[0]}")


@SETTINGS
@given(
    ops=setups(),
    asid=st.sampled_from([1, 1, 2]),
    write=st.booleans(),
    encrypted=st.sampled_from([True, True, False]),
    pages=st.lists(
        st.tuples(
            st.integers(head(FIRST_REGION), NPAGES + 3),
            st.sampled_from([0] * 6 + [1, -1]),  # GPA shift in pages
            st.sampled_from([K4, K4, M2, G1]),  # NPT level
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_guest_access_ok_equals_the_single_page_check(
    ops: list[Op], asid: int, write: bool, encrypted: bool, pages: list[Op]
) -> None:
    """Rmp.guest_access_ok (vectorised, VMPL0) is True exactly where check_guest_access passes."""
    rmp = Rmp(NPAGES)
    apply_setup(rmp, ops)
    start = spa_of(head(FIRST_REGION))
    n = NPAGES - head(FIRST_REGION)
    rmp.rmpupdate_range(start, n // 2, assigned=True, gpa=start + GPA_OFFSET, asid=1)
    rmp.pvalidate_range(start, n // 4, asid=1, gpa=start + GPA_OFFSET, page_size=K4, validate=True)
    pfns = np.array([p for p, _, _ in pages], dtype=np.int64)
    gfns = np.array([(spa_of(p + shift) + GPA_OFFSET) >> 12 for p, shift, _ in pages], dtype=np.int64)
    huge = np.array([npt != K4 for _, _, npt in pages])
    got = rmp.guest_access_ok(pfns, gfns, asid=asid, npt_huge=huge, write=write, encrypted=encrypted)
    want = [
        outcome(
            partial(
                rmp.check_guest_access,
                spa_of(p),
                asid=asid,
                gpa=spa_of(p + shift) + GPA_OFFSET,
                npt_size=npt,
                write=write,
                encrypted=encrypted,
            )
        )[0]
        == "ok"
        for p, shift, npt in pages
    ]
    assert got.tolist() == want
    event(f"{sum(want)} of {len(want)} pass")


def reference_rmpread(rmp: Rmp, spa: int) -> RmpEntry:
    """RMPREAD computed from the numpy arrays with the constructor (the pre-issue-7 implementation)."""
    pfn = spa >> 12
    if not 0 <= pfn < rmp.npages or rmp._segs[pfn >> SEGMENT_SHIFT] is None:
        return RmpEntry()
    seg = rmp._segs[pfn >> SEGMENT_SHIFT]
    assert seg is not None
    i = pfn & (SEGMENT_PAGES - 1)
    f = int(seg.flags[i])
    perms = (PERM_ALL if f & 1 else 0, 0, 0, 0)
    if seg.perms is not None:
        perms = (perms[0], *(int(x) for x in seg.perms[i]))
    return RmpEntry(
        assigned=bool(f & 1),
        page_size=M2 if f & 2 else K4,
        immutable=bool(f & 4),
        gpa=(int(seg.gofs[i]) + i) << 12,
        asid=int(seg.asid[i]),
        vmsa=bool(f & 8),
        validated=bool(f & 16),
        vmpl_perms=perms,
    )


@SETTINGS
@given(ops=setups(), pfns=st.lists(page_st, min_size=1, max_size=30), tweak=addr_tweak)
def test_single_page_reads_equal_reference(ops: list[Op], pfns: list[int], tweak: int) -> None:
    """rmpread, _flags, assigned_in_2m, region_status and check_host_write read what the arrays hold."""
    rmp = Rmp(NPAGES)
    apply_setup(rmp, ops)
    for p in pfns:
        spa = spa_of(p) + tweak
        e = rmp.rmpread(spa)
        assert e == reference_rmpread(rmp, spa)
        assert type(e) is RmpEntry and type(e.page_size) is PageSize and type(e.asid) is int
        q = spa >> 12
        inside = 0 <= q < NPAGES and rmp._segs[q >> SEGMENT_SHIFT] is not None
        seg = rmp._segs[q >> SEGMENT_SHIFT] if inside else None
        flags = int(seg.flags[q & (SEGMENT_PAGES - 1)]) if seg is not None else 0
        count = int(seg.region_assigned[(q & (SEGMENT_PAGES - 1)) >> 9]) if seg is not None else 0
        assert rmp._flags(q) == flags
        assert rmp.assigned_in_2m(q) == count
        aligned = spa % (PAGES_PER_2M * PAGE_SIZE) == 0
        assert rmp.region_status(spa) == (aligned and count - (flags & 1) > 0)
        for size, hit in ((K4, flags & 1), (M2, count), (G1, count)):
            try:
                rmp.check_host_write(spa, size)
                faulted = False
            except HostPageFault as exc:
                faulted = True
                assert exc.address == spa and exc.rmp
            assert faulted == bool(hit), (spa, size)


# --------------------------------------------------------------------------------------------- storage
def test_untouched_segments_cost_nothing_and_views_alias_arrays() -> None:
    """A table allocates nothing until written; a write allocates one segment whose memoryviews alias its
    arrays (a write through a view is seen by the vectorised operations and vice versa)."""
    rmp = Rmp(1 << 30)  # 4 TiB
    assert rmp.allocated_bytes == 0
    assert rmp.rmpread(spa_of(5 << 20)) == RmpEntry()
    assert (
        rmp.pvalidate_range(spa_of(5 << 20), 1000, asid=1, gpa=0, page_size=K4, validate=True)[0].tolist()
        == [-1] * 1000
    )
    assert rmp.allocated_bytes == 0
    p = (7 << SEGMENT_SHIFT) + 3
    assert rmp.rmpupdate(spa_of(p), assigned=True, gpa=0x5000, asid=9) == 0
    seg = rmp._segs[7]
    assert seg is not None and sum(s is not None for s in rmp._segs) == 1
    per_page = 1 + 8 + 4  # flags, GFN offset, ASID
    assert rmp.allocated_bytes == SEGMENT_PAGES * per_page + seg.region_assigned.nbytes
    assert int(seg.flags[3]) == F_ASSIGNED and int(seg.asid[3]) == 9 and rmp.rmpread(spa_of(p)).gpa == 0x5000
    assert rmp.assigned_pages(7 << SEGMENT_SHIFT, 10).tolist() == [p]
    rmp.rmpupdate_range(spa_of(p + 1), 2, assigned=True, gpa=0x9000, asid=9)
    assert [rmp.rmpread(spa_of(p + k)).gpa for k in (1, 2)] == [0x9000, 0xA000]
    assert rmp.assigned_in_2m(p) == 3
    status, _ = rmp.pvalidate_range(spa_of(p + 1), 2, asid=9, gpa=0x9000, page_size=K4, validate=True)
    assert status.tolist() == [0, 0] and rmp.rmpread(spa_of(p + 2)).validated
    assert rmp.allocated_bytes == SEGMENT_PAGES * per_page + seg.region_assigned.nbytes


def test_fast_path_switch_follows_vmpl_masks_and_in_use_marks() -> None:
    """RMPUPDATE's fast path is off in a segment with an in-use page or VMPL masks, and the general path then
    does the work (FAIL_INUSE; VMPL masks reset by RMPUPDATE)."""
    rmp = Rmp(NPAGES)
    p = SEGMENT_PAGES + 10
    rmp.mark_in_use(spa_of(p))  # before the segment exists
    assert rmp.rmpupdate(spa_of(p + 1), assigned=True, gpa=spa_of(p + 1), asid=1) == 0
    seg = rmp._segs[1]
    assert seg is not None and seg.uv is None
    assert rmp.rmpupdate(spa_of(p), assigned=True, gpa=spa_of(p), asid=1) == 3  # FAIL_INUSE
    rmp.clear_in_use(spa_of(p))
    assert seg.uv is not None
    assert rmp.rmpupdate(spa_of(p), assigned=True, gpa=spa_of(p), asid=1) == 0
    assert rmp.pvalidate(spa_of(p), asid=1, gpa=spa_of(p), page_size=K4, validate=True) == (0, False)
    assert rmp.rmpadjust(spa_of(p), asid=1, gpa=spa_of(p), page_size=K4, vmpl=0, target_vmpl=1, perms=PERM_READ) == 0
    assert seg.uv is None and rmp.rmpread(spa_of(p)).vmpl_perms == (PERM_ALL, PERM_READ, 0, 0)
    assert rmp.rmpupdate(spa_of(p), assigned=True, gpa=spa_of(p), asid=1) == 0
    assert rmp.rmpread(spa_of(p)).vmpl_perms == (PERM_ALL, 0, 0, 0) and not rmp.rmpread(spa_of(p)).validated
    assert_consistent(rmp)


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda r: pickle.loads(pickle.dumps(r))])
def test_copies_keep_behaviour(clone: Callable[[Rmp], Rmp]) -> None:
    """A copied table has its own arrays and memoryviews and the same fast-path switches."""
    rmp = Rmp(NPAGES)
    rmp.rmpupdate(spa_of(5), assigned=True, gpa=0x7000, asid=2)
    rmp.mark_in_use(spa_of(SEGMENT_PAGES + 1))
    rmp.rmpupdate(spa_of(SEGMENT_PAGES + 2), assigned=True, gpa=0x8000, asid=2)
    twin = clone(rmp)
    assert_same_tables(rmp, twin, [5, SEGMENT_PAGES + 1, SEGMENT_PAGES + 2])
    assert twin.rmpupdate(spa_of(6), assigned=True, gpa=0x9000, asid=2) == 0
    assert rmp.rmpread(spa_of(6)) == RmpEntry()
    assert twin.rmpupdate(spa_of(SEGMENT_PAGES + 1), assigned=True, gpa=0, asid=2) == 3  # still in use
    assert_consistent(twin)

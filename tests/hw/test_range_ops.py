"""Vectorised range operations equal loops of the single-page instructions (DESIGN.md hw layer; test brief API:
``rmpupdate_range`` / ``pvalidate_range`` / ``psmash_range`` are each "equivalent to a loop over the single-page
instruction in ascending address order", step 4K or 2M by page_size).

Each property builds two identical tables through the single-page API (random assigned 4K/2M entries, validated
pages, immutable and in-use pages: amd-snp-arch.md §3-§5), runs the range operation on one and the explicit loop on
the other, and compares the per-step status arrays and then every RMPREAD view of the table.

Modelling of faults in ``pvalidate_range``: a step that would raise NestedPageFault records status -1 and the loop
continues; the reference loop below catches NestedPageFault, records -1 and goes on. The CF of such a step is not
specified, so CF is only compared on steps with status >= 0.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st
from rmp_testlib import GPA_OFFSET, page, region

from snpsim.hw import NestedPageFault, PageSize, Rmp
from snpsim.hw.types import PAGE_SIZE, PAGES_PER_2M

K4, M2 = PageSize.SIZE_4K, PageSize.SIZE_2M
NREGIONS = 3
NPAGES = NREGIONS * PAGES_PER_2M
SETTINGS = settings(max_examples=100, deadline=None)

Op = tuple[Any, ...]

extra_op = st.one_of(
    st.tuples(st.just("a4"), st.integers(0, NPAGES - 1), st.sampled_from([1, 2]), st.booleans()),
    st.tuples(st.just("a2"), st.integers(0, NREGIONS - 1), st.sampled_from([1, 2]), st.booleans()),
    st.tuples(st.just("shared2m"), st.integers(0, NREGIONS - 1)),
    st.tuples(st.just("imm"), st.integers(0, NPAGES - 1)),
    st.tuples(st.just("inuse"), st.integers(0, NPAGES - 1)),
    st.tuples(st.just("psmash"), st.integers(0, NREGIONS - 1)),
)


@st.composite
def setups(draw: st.DrawFn) -> list[Op]:
    """Per 2M region a layout (empty, assigned 2M, a run of assigned 4K pages, a PSMASHed 2M entry; some
    validated), then a few random extra operations (immutable / in-use pages, stray assignments)."""
    ops: list[Op] = []
    for r in range(NREGIONS):
        layout = draw(st.sampled_from(["empty", "2m", "4k-run", "4k-run", "smashed"]))
        valid = draw(st.booleans())
        if layout in ("2m", "smashed"):
            ops.append(("a2", r, 1, valid))
            if layout == "smashed":
                ops.append(("psmash", r))
        elif layout == "4k-run":
            lo = draw(st.integers(0, PAGES_PER_2M - 1))
            hi = draw(st.integers(lo, PAGES_PER_2M))
            ops += [("a4", r * PAGES_PER_2M + k, 1, valid) for k in range(lo, hi)]
    return ops + draw(st.lists(extra_op, max_size=6))


def apply_setup(rmp: Rmp, ops: list[Op]) -> None:
    """Build a state through the single-page instructions (results ignored: some ops legitimately fail)."""
    for op in ops:
        kind = op[0]
        if kind in ("a4", "a2"):
            size = K4 if kind == "a4" else M2
            spa = page(op[1]) if kind == "a4" else region(op[1])
            gpa = spa + GPA_OFFSET
            rmp.rmpupdate(spa, assigned=True, page_size=size, gpa=gpa, asid=op[2])
            if op[3]:
                with contextlib.suppress(NestedPageFault):  # e.g. the 2M RMPUPDATE overlapped
                    rmp.pvalidate(spa, asid=op[2], gpa=gpa, page_size=size, validate=True)
        elif kind == "shared2m":
            rmp.rmpupdate(region(op[1]), assigned=False, page_size=M2)
        elif kind == "imm":
            rmp.rmpupdate(page(op[1]), assigned=True, gpa=page(op[1]) + GPA_OFFSET, asid=1, immutable=True)
        elif kind == "inuse":
            rmp.mark_in_use(page(op[1]))
        else:
            rmp.psmash(region(op[1]))


def twins(ops: list[Op]) -> tuple[Rmp, Rmp]:
    a, b = Rmp(NPAGES), Rmp(NPAGES)
    apply_setup(a, ops)
    apply_setup(b, ops)
    return a, b


def assert_same_tables(a: Rmp, b: Rmp) -> None:
    for p in range(NPAGES + 4):
        assert a.rmpread(page(p)) == b.rmpread(page(p)), f"page {p}"


def as_int_array(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    assert arr.ndim == 1
    assert arr.dtype.kind in "iu", arr.dtype
    return arr


def step_of(size: PageSize) -> tuple[int, int]:
    pages = PAGES_PER_2M if size == M2 else 1
    return pages, pages * PAGE_SIZE


# --------------------------------------------------------------------------- rmpupdate_range


@st.composite
def rmpupdate_range_args(draw: st.DrawFn) -> dict[str, Any]:
    size = draw(st.sampled_from([K4, K4, M2]))
    assigned = draw(st.booleans())
    if size == M2:
        spa = region(draw(st.integers(0, NREGIONS))) + draw(st.sampled_from([0, 0, 0, 0, PAGE_SIZE]))
        npages = PAGES_PER_2M * draw(st.sampled_from([1, 2, 1, 3]))
    else:
        spa = page(draw(st.integers(0, NPAGES + 8))) + draw(st.sampled_from([0] * 10 + [1]))
        npages = draw(st.one_of(st.integers(1, 2 * PAGES_PER_2M), st.integers(1, 8)))
    gpa = (spa - spa % PAGE_SIZE + GPA_OFFSET if assigned else 0) + draw(st.sampled_from([0] * 8 + [PAGE_SIZE]))
    asid = draw(st.sampled_from([1, 2])) if assigned else draw(st.sampled_from([0] * 8 + [1]))
    immutable = draw(st.sampled_from([False] * 8 + [True]))
    return {
        "spa": spa,
        "npages": npages,
        "assigned": assigned,
        "page_size": size,
        "gpa": gpa,
        "asid": asid,
        "immutable": immutable,
    }


@SETTINGS
@given(ops=setups(), args=rmpupdate_range_args())
def test_rmpupdate_range_equals_loop(ops: list[Op], args: dict[str, Any]) -> None:
    """rmpupdate_range == [rmpupdate(spa + i*step, gpa=gpa + i*step) for i in range(npages // step_pages)]
    (rules of amd-snp-arch.md §3 apply per step: a failing step leaves later steps to run)."""
    a, b = twins(ops)
    spa, npages, size, gpa = args["spa"], args["npages"], args["page_size"], args["gpa"]
    got = as_int_array(
        a.rmpupdate_range(
            spa,
            npages,
            assigned=args["assigned"],
            page_size=size,
            gpa=gpa,
            asid=args["asid"],
            immutable=args["immutable"],
        )
    )
    step_pages, step = step_of(size)
    want = [
        int(
            b.rmpupdate(
                spa + i * step,
                assigned=args["assigned"],
                page_size=size,
                gpa=gpa + i * step,
                asid=args["asid"],
                immutable=args["immutable"],
            )
        )
        for i in range(npages // step_pages)
    ]
    assert got.tolist() == want
    event(f"rmpupdate_range statuses {sorted(set(want))}")
    assert_same_tables(a, b)


# --------------------------------------------------------------------------- pvalidate_range


@st.composite
def pvalidate_range_args(draw: st.DrawFn, ops: list[Op]) -> dict[str, Any]:
    """Half of the time the range starts at a page the setup assigned, so that steps reach the Validated logic."""
    size = draw(st.sampled_from([K4, K4, M2]))
    starts = [page(op[1]) for op in ops if op[0] == "a4"] if size == K4 else []
    starts += [region(op[1]) for op in ops if op[0] == "a2"]
    if starts and draw(st.booleans()):
        spa = draw(st.sampled_from(starts))
    elif size == M2:
        spa = region(draw(st.integers(0, NREGIONS))) + draw(st.sampled_from([0, 0, 0, 0, PAGE_SIZE]))
    else:
        spa = page(draw(st.one_of(st.integers(0, NPAGES + 8), st.sampled_from([0, 1, 511, 512, 1000]))))
    if size == M2:
        npages = PAGES_PER_2M * draw(st.sampled_from([1, 2, 1, 3]))
    else:
        npages = draw(st.one_of(st.integers(1, 2 * PAGES_PER_2M), st.integers(1, 8)))
    gpa = spa - spa % PAGE_SIZE + GPA_OFFSET + draw(st.sampled_from([0] * 8 + [PAGE_SIZE]))
    return {
        "spa": spa,
        "npages": npages,
        "asid": draw(st.sampled_from([1, 1, 1, 2])),
        "gpa": gpa,
        "page_size": size,
        "validate": draw(st.sampled_from([True, True, False])),
    }


@SETTINGS
@given(ops=setups(), data=st.data())
def test_pvalidate_range_equals_loop(ops: list[Op], data: st.DataObject) -> None:
    """pvalidate_range == loop of PVALIDATE (§5); a step raising NestedPageFault records status -1 (CF not
    compared there) and the loop continues."""
    args = data.draw(pvalidate_range_args(ops))
    a, b = twins(ops)
    spa, npages, size, gpa = args["spa"], args["npages"], args["page_size"], args["gpa"]
    status, cf = a.pvalidate_range(spa, npages, asid=args["asid"], gpa=gpa, page_size=size, validate=args["validate"])
    status = as_int_array(status)
    cf = np.asarray(cf)
    step_pages, step = step_of(size)
    want_status: list[int] = []
    want_cf: list[bool] = []
    for i in range(npages // step_pages):
        try:
            s, c = b.pvalidate(
                spa + i * step, asid=args["asid"], gpa=gpa + i * step, page_size=size, validate=args["validate"]
            )
        except NestedPageFault:
            s, c = -1, False
        want_status.append(int(s))
        want_cf.append(bool(c))
    assert status.tolist() == want_status
    event(f"pvalidate_range statuses {sorted(set(want_status))}")
    assert cf.shape == status.shape
    ok = status >= 0
    assert [bool(c) for c in cf[ok]] == [c for c, s in zip(want_cf, want_status, strict=True) if s >= 0]
    assert_same_tables(a, b)


# --------------------------------------------------------------------------- psmash_range


@SETTINGS
@given(ops=setups(), r=st.sampled_from([0, 1, 2, NREGIONS]), nregions=st.sampled_from([2, 1, 3]))
def test_psmash_range_equals_loop(ops: list[Op], r: int, nregions: int) -> None:
    """psmash_range(spa, npages) == one PSMASH (§4) per 2M-aligned address in [spa, spa + npages*4K)
    (here spa 2M-aligned and npages a multiple of 512; the last region may lie beyond the table => FAIL_INPUT)."""
    a, b = twins(ops)
    spa, npages = region(r), nregions * PAGES_PER_2M
    got = as_int_array(a.psmash_range(spa, npages))
    want = [int(b.psmash(spa + i * region(1))) for i in range(nregions)]
    assert got.tolist() == want
    event(f"psmash_range statuses {sorted(set(want))}")
    assert_same_tables(a, b)


def test_empty_ranges() -> None:
    """A loop of zero steps does nothing and returns empty per-step arrays."""
    a = Rmp(NPAGES)
    assert as_int_array(a.rmpupdate_range(0, 0, assigned=True, gpa=GPA_OFFSET, asid=1)).size == 0
    assert as_int_array(a.rmpupdate_range(0, 0, assigned=True, page_size=M2, gpa=GPA_OFFSET, asid=1)).size == 0
    status, cf = a.pvalidate_range(0, 0, asid=1, gpa=GPA_OFFSET, page_size=K4, validate=True)
    assert as_int_array(status).size == 0 and np.asarray(cf).size == 0
    assert as_int_array(a.psmash_range(0, 0)).size == 0
    assert a.rmpread(0) == Rmp(NPAGES).rmpread(0)


def test_rmpupdate_range_2m_example() -> None:
    """Hand-computed example (§3 rules per step): 3 x 2M over a table of 3 regions where region 1 holds an
    assigned 4K page at offset 7 => [SUCCESS, FAIL_OVERLAP, SUCCESS]; then one step past the table => FAIL_INPUT."""
    a = Rmp(NPAGES)
    assert a.rmpupdate(region(1) + page(7), assigned=True, gpa=0, asid=1) == 0
    got = as_int_array(a.rmpupdate_range(0, 3 * PAGES_PER_2M, assigned=True, page_size=M2, gpa=GPA_OFFSET, asid=2))
    assert got.tolist() == [0, 4, 0]
    assert a.rmpread(region(2) + page(5)).gpa == GPA_OFFSET + region(2) + page(5)
    got = as_int_array(a.rmpupdate_range(region(2), 2 * PAGES_PER_2M, assigned=False, page_size=M2))
    assert got.tolist() == [0, 1]


def test_pvalidate_range_example() -> None:
    """Hand-computed example (§5): pages 0..3 assigned (gpa = spa + offset), page 2 already validated, page 4
    hypervisor-owned => statuses [0, 0, 0, 0, -1], CF [F, F, T, F, -]."""
    a = Rmp(NPAGES)
    for k in range(4):
        assert a.rmpupdate(page(k), assigned=True, gpa=GPA_OFFSET + page(k), asid=1) == 0
    assert a.pvalidate(page(2), asid=1, gpa=GPA_OFFSET + page(2), page_size=K4, validate=True) == (0, False)
    status, cf = a.pvalidate_range(0, 5, asid=1, gpa=GPA_OFFSET, page_size=K4, validate=True)
    assert as_int_array(status).tolist() == [0, 0, 0, 0, -1]
    assert [bool(c) for c in np.asarray(cf)[:4]] == [False, False, True, False]
    assert all(a.rmpread(page(k)).validated for k in range(4))

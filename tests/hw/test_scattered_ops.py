"""rmpupdate_pfns / pvalidate_pfns (4K instructions on distinct, scattered frames) equal loops of the single-page
instructions written out here, whatever the order of the frames (steps on distinct pages are independent): the
reference (whose methods are that loop) and the fast engine's compiled :class:`snpsim.fast.FastRmp`; results, the
table, the counters."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snpsim.fast import FastRmp
from snpsim.hw import NestedPageFault, PageSize, Rmp, RmpEntry

NPAGES = 3 * 512 + 100
PFNS = st.lists(st.integers(-3, NPAGES + 5), min_size=0, max_size=60, unique=True)


def seeded(ops: list[tuple[int, int]], cls: type[Rmp] = Rmp) -> Rmp:
    """A table with some 4K and 2M assigned entries (asid 1, gpa = spa), some validated."""
    rmp = cls(NPAGES)
    for kind, i in ops:
        if kind == 0:
            rmp.rmpupdate(i * 4096, assigned=True, gpa=i * 4096, asid=1)
        elif kind == 1:
            head = (i % 3) * 512
            rmp.rmpupdate(head * 4096, assigned=True, page_size=PageSize.SIZE_2M, gpa=head * 4096, asid=1)
        elif kind == 2:
            with contextlib.suppress(NestedPageFault):
                rmp.pvalidate(i * 4096, asid=1, gpa=i * 4096, page_size=PageSize.SIZE_4K, validate=True)
        else:
            rmp.rmpupdate(i * 4096, assigned=True, gpa=i * 4096, asid=1, immutable=True)
    return rmp


def table(rmp: Rmp) -> list[RmpEntry]:
    return [rmp.rmpread(p * 4096) for p in range(NPAGES)]


SETUP = st.lists(st.tuples(st.integers(0, 3), st.integers(0, NPAGES - 1)), max_size=25)
CLASSES = pytest.mark.parametrize("cls", [Rmp, FastRmp])


def counters(rmp: Rmp) -> tuple[int, int]:
    return rmp.rmpupdate_count, rmp.pvalidate_count


@CLASSES
@settings(max_examples=80, deadline=None)
@given(setup=SETUP, pfns=PFNS, assigned=st.booleans(), asid=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_rmpupdate_pfns_equals_loop(
    cls: type[Rmp], setup: list[tuple[int, int]], pfns: list[int], assigned: bool, asid: int, seed: int
) -> None:
    asid = asid if assigned else 0
    gfns = np.random.default_rng(seed).integers(-2, 1 << 20, size=len(pfns))  # a GFN < 0: FAIL_INPUT
    a, b = seeded(setup, cls), seeded(setup)
    got = a.rmpupdate_pfns(np.array(pfns, dtype=np.int64), gfns, assigned=assigned, asid=asid)
    want = [
        int(b.rmpupdate(p * 4096, assigned=assigned, gpa=g * 4096, asid=asid))
        for p, g in zip(pfns, gfns.tolist(), strict=True)
    ]
    assert got.tolist() == want
    assert table(a) == table(b)
    assert a.assigned_count() == b.assigned_count()
    assert counters(a) == counters(b)


@CLASSES
@settings(max_examples=80, deadline=None)
@given(setup=SETUP, pfns=PFNS, validate=st.booleans(), shift=st.sampled_from([0, 0, 1, -1 << 30]))
def test_pvalidate_pfns_equals_loop(
    cls: type[Rmp], setup: list[tuple[int, int]], pfns: list[int], validate: bool, shift: int
) -> None:
    gfns = [p + shift for p in pfns]  # shift != 0: reverse-map mismatch for every page, or GFNs < 0
    a, b = seeded(setup, cls), seeded(setup)
    status, cf = a.pvalidate_pfns(
        np.array(pfns, dtype=np.int64), np.array(gfns, dtype=np.int64), asid=1, validate=validate
    )
    for k, (p, g) in enumerate(zip(pfns, gfns, strict=True)):
        try:
            st_, c = b.pvalidate(p * 4096, asid=1, gpa=g * 4096, page_size=PageSize.SIZE_4K, validate=validate)
            assert (int(status[k]), bool(cf[k])) == (int(st_), c)
        except NestedPageFault:
            assert status[k] == -1 and not cf[k]
    assert table(a) == table(b)
    assert counters(a) == counters(b)


def test_rmpread_2mb_region_status() -> None:
    """amd-snp-arch.md §3: RMPREAD's 2MB region status = 1 iff the input is 2M-aligned and any *other* page of
    the 2M region is assigned."""
    rmp = Rmp(NPAGES)
    assert rmp.rmpupdate(0, assigned=True, gpa=0, asid=1) == 0  # the 2M-aligned page itself
    assert not rmp.region_status(0)
    assert rmp.rmpupdate(7 * 4096, assigned=True, gpa=7 * 4096, asid=1) == 0
    assert rmp.region_status(0)
    assert not rmp.region_status(7 * 4096)  # not 2M-aligned
    assert not rmp.region_status(512 * 4096)

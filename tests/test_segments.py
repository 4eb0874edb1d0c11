"""Segment grouping equals the numpy.unique-based grouping it replaces."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from snpsim.segments import by_segment, run_starts, unique_ints


@given(st.lists(st.integers(0, 5000), max_size=200), st.sampled_from(["ascending", "segments ascending", "any"]))
def test_by_segment_groups_like_unique(values: list[int], order: str) -> None:
    if order == "ascending":
        values = sorted(values)
    elif order == "segments ascending":  # shuffled inside each segment
        values = sorted(values, key=lambda v: (v >> 8, -v))
    pfns = np.array(values, dtype=np.int64)
    got = [(s, pfns[sel].tolist()) for s, sel in by_segment(pfns, 8)]
    segs = pfns >> 8
    want = [(int(s), pfns[segs == s].tolist()) for s in np.unique(segs)]
    assert got == want


@given(st.lists(st.integers(-50, 50), max_size=100), st.booleans())
def test_unique_ints(values: list[int], ascending: bool) -> None:
    a = np.array(sorted(values) if ascending else values, dtype=np.int64)
    assert unique_ints(a).tolist() == np.unique(a).tolist()


@given(st.lists(st.integers(0, 5), max_size=50))
def test_run_starts_marks_every_change(values: list[int]) -> None:
    a = np.array(values, dtype=np.int64)
    want = [k for k in range(len(values)) if k == 0 or values[k] != values[k - 1]]
    assert run_starts(a).tolist() == want

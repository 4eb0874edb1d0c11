"""Grouping frame-number arrays by fixed-size segment, for state stored in lazily allocated segments.

The RMP (:mod:`snpsim.hw.rmp`) and the frame table (:mod:`snpsim.host.frames`) keep their per-frame state in
1 GiB segments, like the kernel's segmented RMP (``shared/reference/linux-snp-host.md`` §1); a vectorised
operation on scattered frames runs once per segment. ``numpy.unique`` over the segment numbers sorts millions of
values; the usual inputs are one segment, or ascending frames, which need one pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


def by_segment(pfns: IntArray, shift: int) -> Iterator[tuple[int, slice | IntArray]]:
    """Yield ``(segment, selector)`` for each segment ``pfn >> shift`` present in ``pfns``, in ascending segment
    order; ``pfns[selector]`` are that segment's frames, in their original order."""
    if pfns.size == 0:
        return
    segs = pfns >> shift
    lo, hi = int(segs.min()), int(segs.max())
    if lo == hi:
        yield lo, slice(None)
        return
    if bool((segs[1:] >= segs[:-1]).all()):  # ascending: contiguous runs
        starts = np.flatnonzero(segs[1:] != segs[:-1]) + 1
        edges = [0, *starts.tolist(), int(segs.size)]
        for a, b in itertools.pairwise(edges):
            yield int(segs[a]), slice(a, b)
        return
    order = np.argsort(segs, kind="stable")
    ordered = segs[order]
    starts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    edges = [0, *starts.tolist(), int(order.size)]
    for a, b in itertools.pairwise(edges):
        yield int(ordered[a]), order[a:b]


def unique_ints(values: IntArray) -> IntArray:
    """``numpy.unique`` of an integer array, in one pass when it is already ascending."""
    if values.size < 2:
        return values.copy()
    if bool((values[1:] >= values[:-1]).all()):
        return values[np.concatenate(([True], values[1:] != values[:-1]))]
    return np.unique(values)

"""``sev_gmem_invalidate``: the reference's loop (:func:`snpsim.kvm.sev.gmem_invalidate`, Linux's ``for (pfn =
start; pfn < end;)``) and the fast engine's (:func:`snpsim.fast.kvm.gmem_invalidate`, on arrays) end in the same
state; and the loop's outcome on a hand-made RMP."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.fast.checked import same_directmap

from snpsim.fast import kvm as fast_kvm
from snpsim.host import HostKernel
from snpsim.hw import PageSize
from snpsim.kvm import sev
from snpsim.policy import presets

FRAMES = 4 * 512


def host(name: str, huge: list[int], small: list[int]) -> HostKernel:
    h = HostKernel(FRAMES, presets[name])
    for r in huge:  # 2M private entries
        h.rmp_make_private(r * 512, r * 512 << 12, PageSize.SIZE_2M, 1)
    for p in small:
        if p // 512 not in huge:
            h.rmp_make_private(p, p << 12, PageSize.SIZE_4K, 1)
    return h


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["upstream", "upm", "upm-nosplit"]),
    huge=st.lists(st.integers(0, 3), max_size=2, unique=True),
    small=st.lists(st.integers(0, FRAMES - 1), max_size=30, unique=True),
    freed=st.one_of(
        st.lists(st.integers(0, FRAMES - 1), min_size=1, max_size=40),
        st.builds(
            lambda r, extra: [*range(r * 512, r * 512 + 512), *extra],
            st.integers(0, 3),
            st.lists(st.integers(0, FRAMES - 1), max_size=8),
        ),
    ),
)
def test_the_loop_equals_the_fast_engines_invalidate(
    name: str, huge: list[int], small: list[int], freed: list[int]
) -> None:
    looped, vectorised = host(name, huge, small), host(name, huge, small)
    frames = np.array(freed, dtype=np.int64)
    sev.gmem_invalidate(looped, frames)
    fast_kvm.gmem_invalidate(vectorised, frames)
    everything = np.arange(FRAMES, dtype=np.int64)
    assert np.array_equal(looped.rmp.assigned_mask(everything), vectorised.rmp.assigned_mask(everything))
    assert [looped.rmp.rmpread(p << 12) for p in range(0, FRAMES, 7)] == [
        vectorised.rmp.rmpread(p << 12) for p in range(0, FRAMES, 7)
    ]
    assert looped.metrics() == vectorised.metrics() and looped.busy_ns == vectorised.busy_ns
    same_directmap(looped.directmap, vectorised.directmap)


def test_the_loop_by_hand() -> None:
    """By hand from ``sev_gmem_invalidate``'s loop: 2M entries at 2M ranges 0 and 1, 4K entries at frames 1030 and
    1031 (range 2). Freeing all of range 0 is one 2M RMPUPDATE (``use_2m_update``: aligned, 512 frames, level 2M);
    freeing frames 512-767 of range 1 PSMASHes it once ("if (!use_2m_update && rmp_level > PG_LEVEL_4K)") and makes
    those 256 frames shared at 4K, leaving 768-1023 assigned; frame 1030 is a 4K RMPUPDATE; frames 1500-1509 are
    not assigned and skipped. RMPUPDATEs: 1 + 256 + 1 = 258, PSMASHes: 1."""
    h = host("upstream", [0, 1], [1030, 1031])
    u0, p0 = h.rmp.rmpupdate_count, h.rmp.psmash_count
    freed = [*range(0, 512), *range(512, 768), 1030, *range(1500, 1510)]
    sev.gmem_invalidate(h, np.array(freed[::-1], dtype=np.int64))  # any order
    assert (h.rmp.rmpupdate_count - u0, h.rmp.psmash_count - p0) == (258, 1)
    assigned = np.flatnonzero(h.rmp.assigned_mask(np.arange(FRAMES, dtype=np.int64)))
    assert assigned.tolist() == [*range(768, 1024), 1031]
    assert h.rmp.rmpread(800 << 12).page_size == PageSize.SIZE_4K  # smashed

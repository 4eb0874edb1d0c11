"""``gmem_invalidate``'s page-by-page path (a few frames) ends in the state its vectorised path gives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    freed=st.lists(st.integers(0, FRAMES - 1), min_size=1, max_size=16),
)
def test_small_invalidate_equals_the_vectorised_one(
    name: str, huge: list[int], small: list[int], freed: list[int]
) -> None:
    looped, vectorised = host(name, huge, small), host(name, huge, small)
    frames = np.array(freed, dtype=np.int64)
    sev.gmem_invalidate(looped, frames)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sev, "SCALAR_MAX", 0)
        sev.gmem_invalidate(vectorised, frames)
    everything = np.arange(FRAMES, dtype=np.int64)
    assert np.array_equal(looped.rmp.assigned_mask(everything), vectorised.rmp.assigned_mask(everything))
    assert [looped.rmp.rmpread(p << 12) for p in range(0, FRAMES, 7)] == [
        vectorised.rmp.rmpread(p << 12) for p in range(0, FRAMES, 7)
    ]
    assert looped.metrics() == vectorised.metrics() and looped.busy_ns == vectorised.busy_ns

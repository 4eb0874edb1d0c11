"""Tests of the kernel direct map model (snpsim.host.directmap).

Expected values are worked out by hand from the kernel's rules (shared/reference/linux-snp-host.md §3, §9):
splits go one level at a time, and DirectMap* print direct_pages_count[] in kB: entries at each level, present or
not (arch/x86/mm/pat/set_memory.c: only split_page_count() / update_page_count() change it, so clearing
_PAGE_PRESENT leaves a page counted at its level).
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from snpsim.fast import FastDirectMap
from snpsim.host.directmap import DirectMap
from snpsim.hw.types import PAGE_SIZE, PAGES_PER_1G, PAGES_PER_2M, PageSize

P2M = PAGES_PER_2M
P1G = PAGES_PER_1G
KB_1G = 1024 * 1024
KB_2M = 2048

# 1 GiB + 4 MiB + 12 KiB
HOST_N = P1G + 2 * P2M + 3


def kb(d: DirectMap) -> tuple[int, int, int]:
    m = d.meminfo()
    return m["DirectMap4k"], m["DirectMap2M"], m["DirectMap1G"]


# ---------------------------------------------------------------------------------------------- layout


def test_initial_layout_1g_4m_12k() -> None:
    d = DirectMap(HOST_N)
    assert d.meminfo() == {"DirectMap4k": 12, "DirectMap2M": 4096, "DirectMap1G": 1048576}
    assert d.directmap_1g == 1 << 30
    assert d.directmap_2m == 4 << 20
    assert d.directmap_4k == 12 << 10
    assert d.mapped_bytes == HOST_N * PAGE_SIZE
    assert d.split_count == 0 and d.merge_count == 0
    assert d.level(0) == PageSize.SIZE_1G
    assert d.level(P1G - 1) == PageSize.SIZE_1G
    assert d.level(P1G) == PageSize.SIZE_2M
    assert d.level(P1G + 2 * P2M - 1) == PageSize.SIZE_2M
    assert d.level(P1G + 2 * P2M) == PageSize.SIZE_4K
    assert d.level(HOST_N - 1) == PageSize.SIZE_4K
    assert d.count_levels(0, HOST_N) == (3, 2 * P2M, P1G, 0)
    d.check_invariants()


def test_format_meminfo_matches_proc() -> None:
    d = DirectMap(HOST_N)
    assert d.format_meminfo() == (
        "DirectMap4k:          12 kB\nDirectMap2M:        4096 kB\nDirectMap1G:     1048576 kB\n"
    )


@pytest.mark.parametrize(
    ("nframes", "max_level", "expected_kb"),
    [
        (HOST_N, PageSize.SIZE_2M, (12, KB_1G + 4096, 0)),
        (HOST_N, PageSize.SIZE_4K, (HOST_N * 4, 0, 0)),
        (2 * P1G, PageSize.SIZE_1G, (0, 0, 2 * KB_1G)),
        (3 * P2M, PageSize.SIZE_1G, (0, 3 * KB_2M, 0)),  # less than 1 GiB: no 1G mapping
        (100, PageSize.SIZE_1G, (400, 0, 0)),
        (P1G + P2M - 1, PageSize.SIZE_1G, ((P2M - 1) * 4, 0, KB_1G)),
    ],
)
def test_initial_layout_variants(nframes: int, max_level: PageSize, expected_kb: tuple[int, int, int]) -> None:
    d = DirectMap(nframes, max_level=max_level)
    assert kb(d) == expected_kb
    assert d.mapped_bytes == nframes * PAGE_SIZE
    d.check_invariants()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        DirectMap(0)
    d = DirectMap(HOST_N)
    for call in (
        lambda: d.level(HOST_N),
        lambda: d.set_4k(-1),
        lambda: d.remove_range(HOST_N - 1, 2),
        lambda: d.restore_range(0, -1),
        lambda: d.split_2m(HOST_N // P2M + 1),
        lambda: d.remove_1g(2),
        lambda: d.count_levels(5, HOST_N),
    ):
        with pytest.raises(ValueError):
            call()


# ---------------------------------------------------------------------------------------------- by hand


def test_set_4k_in_1g_remove_restore_merge_roundtrip() -> None:
    d = DirectMap(HOST_N)
    orig = kb(d)
    pfn = 1000  # inside the 1G mapping, 2M range 1
    assert d.set_4k(pfn) == 2  # 1G -> 512x2M, then 2M -> 512x4K
    assert d.split_count == 2
    assert kb(d) == (512 * 4 + 12, (511 + 2) * 2048, 0)
    assert d.level(pfn) == PageSize.SIZE_4K
    assert d.level(P2M) == PageSize.SIZE_4K  # same 2M range
    assert d.level(0) == PageSize.SIZE_2M  # rest of the GiB is left at 2M
    assert d.set_4k(pfn) == 0 and d.set_4k(pfn + 1) == 0

    assert d.remove_4k(pfn) == 0
    # set_direct_map_invalid_noflush() clears _PAGE_PRESENT on the PTE: direct_pages_count[] does not move
    assert kb(d) == (512 * 4 + 12, (511 + 2) * 2048, 0)
    assert d.level(pfn) is None
    assert d.mapped_bytes == HOST_N * PAGE_SIZE
    assert d.present_bytes == (HOST_N - 1) * PAGE_SIZE
    assert d.count_levels(P2M, P2M) == (511, 0, 0, 1)
    assert not d.merge_2m(1)  # one 4K entry missing

    assert d.restore_4k(pfn) == 0
    assert d.level(pfn) == PageSize.SIZE_4K
    assert not d.merge_1g(0)  # 2M range 1 still split
    assert d.merge_2m(1)
    assert kb(d) == (12, (512 + 2) * 2048, 0)
    assert d.merge_1g(0)
    assert kb(d) == orig
    assert d.merge_count == 2 and d.split_count == 2
    assert d.level(pfn) == PageSize.SIZE_1G
    d.check_invariants()


def test_remove_4k_without_set_4k_splits_twice_and_is_idempotent() -> None:
    d = DirectMap(HOST_N)
    assert d.remove_4k(7) == 2
    # split_page_count(PG_LEVEL_1G): 1G -1, 2M +512; split_page_count(PG_LEVEL_2M): 2M -1, 4K +512; the cleared
    # PTE stays counted
    assert kb(d) == (512 * 4 + 12, (511 + 2) * 2048, 0)
    assert (d.level2_splits, d.level3_splits) == (1, 1)
    assert d.remove_4k(7) == 0  # already not present: CPA keeps the mapping, no split
    assert d.restore_4k(8) == 0  # already present
    assert d.split_count == 2
    d.check_invariants()


def test_restore_4k_inside_removed_1g() -> None:
    d = DirectMap(HOST_N)
    assert d.remove_1g(0) == 0
    assert kb(d) == (12, 4096, KB_1G)  # the not-present 1G entry is still a 1G entry
    assert d.present_bytes == d.mapped_bytes - (1 << 30)
    assert d.level(123) is None
    assert d.remove_4k(123) == 0  # not present already: nothing to do
    assert d.remove_2m(0) == 0
    assert d.split_count == 0
    assert d.restore_4k(P2M * 5 + 3) == 2  # not-present 1G -> 512 not-present 2M -> 512 not-present 4K
    assert kb(d) == (512 * 4 + 12, (511 + 2) * 2048, 0)
    assert d.count_levels(0, P1G) == (1, 0, 0, P1G - 1)
    assert d.restore_1g(0) == 0  # GiB is split now: every 2M entry and 4K entry made present
    assert kb(d) == (512 * 4 + 12, (511 + 2) * 2048, 0)
    assert d.present_bytes == d.mapped_bytes
    assert d.try_merge(0, P1G) == 2
    assert kb(d) == (12, 4096, KB_1G)
    d.check_invariants()


def test_restore_2m_inside_removed_1g() -> None:
    d = DirectMap(HOST_N)
    d.remove_1g(0)
    assert d.restore_2m(9) == 1  # not-present 1G -> 512 not-present 2M; one of them made present
    assert kb(d) == (12, 512 * 2048 + 4096, 0)
    assert d.count_levels(0, P1G) == (0, P2M, 0, P1G - P2M)
    assert d.level(9 * P2M) == PageSize.SIZE_2M and d.level(8 * P2M) is None
    assert not d.merge_1g(0)
    assert d.restore_1g(0) == 0
    assert d.merge_1g(0)
    assert kb(d) == (12, 4096, KB_1G)
    assert (d.split_count, d.merge_count) == (1, 1)


def test_remove_restore_2m_without_splitting_to_4k() -> None:
    d = DirectMap(HOST_N)
    assert d.remove_2m(3) == 1  # splits the covering 1G only
    assert d.split_count == 1 and (d.level2_splits, d.level3_splits) == (0, 1)
    assert kb(d) == (12, (512 + 2) * 2048, 0)  # the not-present 2M entry stays in DirectMap2M
    assert d.level(3 * P2M) is None and d.level(4 * P2M) == PageSize.SIZE_2M
    assert d.remove_2m(3) == 0
    assert d.restore_2m(3) == 0
    assert kb(d) == (12, (512 + 2) * 2048, 0)
    assert d.level(3 * P2M + 17) == PageSize.SIZE_2M
    assert d.merge_1g(0)
    assert kb(d) == (12, 4096, KB_1G)


def test_remove_2m_on_split_range_keeps_it_split() -> None:
    d = DirectMap(HOST_N)
    idx = P1G // P2M  # first 2M range after the GiB
    assert d.split_2m(idx)
    assert not d.split_2m(idx)
    assert kb(d) == (512 * 4 + 12, 2048, KB_1G)
    assert d.remove_2m(idx) == 0
    assert kb(d) == (512 * 4 + 12, 2048, KB_1G)
    assert d.level(idx * P2M) is None
    assert not d.merge_2m(idx)
    assert d.restore_2m(idx) == 0
    assert d.level(idx * P2M) == PageSize.SIZE_4K
    assert d.merge_2m(idx)
    assert kb(d) == (12, 4096, KB_1G)
    assert d.split_count == 1 and d.merge_count == 1


def test_split_2m_splits_enclosing_1g() -> None:
    d = DirectMap(HOST_N)
    assert d.split_2m(10)
    assert d.split_count == 2
    assert not d.split_1g(0)
    d2 = DirectMap(HOST_N)
    assert d2.split_1g(0)
    assert not d2.split_1g(0)
    assert not d2.split_1g(1)  # partial GiB is never a 1G mapping
    assert kb(d2) == (12, (512 + 2) * 2048, 0)


def test_merge_refusals() -> None:
    # Partial tail 2M range (12 KiB) and partial GiB never merge.
    d = DirectMap(HOST_N)
    assert not d.merge_2m(HOST_N // P2M)
    assert not d.merge_1g(1)
    # max_level 2M: merge_2m allowed, merge_1g never.
    d2 = DirectMap(2 * P1G, max_level=PageSize.SIZE_2M)
    assert kb(d2) == (0, 2 * KB_1G, 0)
    assert d2.set_4k(5) == 1
    assert d2.try_merge(0, 2 * P1G) == 1
    assert not d2.merge_1g(0)
    assert kb(d2) == (0, 2 * KB_1G, 0)
    # max_level 4K: nothing merges.
    d3 = DirectMap(2 * P2M, max_level=PageSize.SIZE_4K)
    assert not d3.merge_2m(0)
    assert d3.try_merge(0, 2 * P2M) == 0
    # A GiB with one not-present 2M entry does not merge.
    d4 = DirectMap(P1G)
    d4.remove_2m(7)
    assert not d4.merge_1g(0)
    assert d4.try_merge(0, P1G) == 0
    d4.restore_2m(7)
    assert d4.try_merge(0, 1) == 1


def test_remove_range_across_1g_boundary() -> None:
    d = DirectMap(HOST_N)
    start, npages = P1G - 3 * P2M - 10, 3 * P2M + 10 + P2M + 20  # tail of the GiB + 2M range after it
    splits = d.remove_range(start, npages)
    # 1G split (1) + 4 range splits in the GiB + 2 in the next GiB
    assert splits == 1 + 4 + 2
    assert d.count_levels(start, npages) == (0, 0, 0, npages)
    assert d.count_levels(0, HOST_N) == (
        (P2M - 10) + (P2M - 20) + 3,
        (508 + 0) * P2M,
        0,
        npages,
    )
    assert d.restore_range(start, npages) == 0
    assert d.mapped_bytes == HOST_N * PAGE_SIZE
    assert d.try_merge(start, npages) == 6 + 1
    assert kb(d) == (12, 4096, KB_1G)
    d.check_invariants()


def test_levels_array() -> None:
    d = DirectMap(HOST_N)
    d.remove_4k(P1G + 5)
    lv = d.levels(P1G, 2 * P2M + 3)
    assert lv.dtype == np.int8
    assert (lv[:5] == 0).all() and lv[5] == -1 and (lv[6:P2M] == 0).all()
    assert (lv[P2M : 2 * P2M] == 1).all() and (lv[2 * P2M :] == 0).all()
    assert (d.levels(0, 10) == 2).all()


# ---------------------------------------------------------------------------------------------- naive model


HOLE = 0xFF  # Naive.lvl of a frame without a direct-map entry (int8 view: -1, like a not-present page)


class Naive:
    """Per-frame model: entry level (or HOLE) and present bit of every frame, rules spelt out per page.

    The boot layout is init_mem_mapping()'s rule, per frame: a 2M range wholly in ``memory`` is a 2M entry, a
    GiB wholly in ``memory`` a 1G entry, every other frame of ``memory`` or of the ISA range [0, 1 MiB) a 4K
    entry, anything else no entry."""

    def __init__(self, n: int, max_level: PageSize, memory: list[tuple[int, int]] | None = None) -> None:
        self.n = n
        self.max_level = int(max_level)
        mem = np.zeros(n, dtype=bool)
        for lo, hi in memory if memory is not None else [(0, n)]:
            mem[lo:hi] = True
        mapped = mem.copy()
        mapped[: min(256, n)] = True
        lvl = np.where(mapped, 0, HOLE).astype(np.uint8)
        for i in range(n // P2M):
            if max_level >= PageSize.SIZE_2M and mem[i * P2M : (i + 1) * P2M].all():
                lvl[i * P2M : (i + 1) * P2M] = 1
        for g in range(n // P1G):
            if max_level == PageSize.SIZE_1G and mem[g * P1G : (g + 1) * P1G].all():
                lvl[g * P1G : (g + 1) * P1G] = 2
        self.lvl = bytearray(lvl.tobytes())
        self.pres = bytearray(mapped.astype(np.uint8).tobytes())
        self.splits = 0
        self.merges = 0

    def span_2m(self, i: int) -> tuple[int, int]:
        return i * P2M, min((i + 1) * P2M, self.n)

    def span_1g(self, g: int) -> tuple[int, int]:
        return g * P1G, min((g + 1) * P1G, self.n)

    def entries(self, s: int, e: int) -> list[int]:
        return [f for f in range(s, e) if self.lvl[f] != HOLE]

    def level(self, f: int) -> int | None:
        return self.lvl[f] if self.pres[f] else None

    def split_1g(self, g: int) -> bool:
        s, e = self.span_1g(g)
        if self.lvl[s] != 2:
            return False
        self.lvl[s:e] = b"\x01" * (e - s)
        self.splits += 1
        return True

    def split_2m(self, i: int) -> bool:
        s, e = self.span_2m(i)
        levels = {self.lvl[f] for f in self.entries(s, e)}
        if not levels or levels == {0}:
            return False  # no entry at all, or already 4K
        if 2 in levels:
            self.split_1g(s // P1G)
        for f in self.entries(s, e):
            self.lvl[f] = 0
        self.splits += 1
        return True

    def set_4k(self, f: int) -> int:
        if self.lvl[f] == HOLE:
            return 0
        before = self.splits
        self.split_2m(f // P2M)
        return self.splits - before

    def remove_4k(self, f: int) -> int:
        if self.lvl[f] == HOLE or not self.pres[f]:
            return 0
        splits = self.set_4k(f)
        self.pres[f] = 0
        return splits

    def restore_4k(self, f: int) -> int:
        if self.lvl[f] == HOLE or self.pres[f]:
            return 0
        splits = self.set_4k(f)
        self.pres[f] = 1
        return splits

    def remove_range(self, p: int, k: int) -> int:
        return sum(self.remove_4k(f) for f in range(p, p + k))

    def restore_range(self, p: int, k: int) -> int:
        return sum(self.restore_4k(f) for f in range(p, p + k))

    def _set_2m(self, i: int, present: int) -> int:
        s, e = self.span_2m(i)
        splits = 0
        if self.lvl[s] == 2:
            if self.pres[s] == present:
                return 0
            self.split_1g(s // P1G)
            splits = 1
        for f in self.entries(s, e):
            self.pres[f] = present
        return splits

    def remove_2m(self, i: int) -> int:
        return self._set_2m(i, 0)

    def restore_2m(self, i: int) -> int:
        return self._set_2m(i, 1)

    def remove_1g(self, g: int) -> int:
        for f in self.entries(*self.span_1g(g)):
            self.pres[f] = 0
        return 0

    def restore_1g(self, g: int) -> int:
        for f in self.entries(*self.span_1g(g)):
            self.pres[f] = 1
        return 0

    def merge_2m(self, i: int) -> bool:
        s, e = i * P2M, (i + 1) * P2M
        if self.max_level < 1 or e > self.n or self.lvl[s:e].count(0) != P2M or self.pres[s:e].count(1) != P2M:
            return False
        self.lvl[s:e] = b"\x01" * P2M
        self.merges += 1
        return True

    def merge_1g(self, g: int) -> bool:
        s, e = g * P1G, (g + 1) * P1G
        if self.max_level < 2 or e > self.n:
            return False
        if self.lvl[s:e].count(1) != P1G or self.pres[s:e].count(1) != P1G:
            return False
        self.lvl[s:e] = b"\x02" * P1G
        self.merges += 1
        return True

    def try_merge(self, p: int, k: int) -> int:
        if k == 0:
            return 0
        m = sum(self.merge_2m(i) for i in range(p // P2M, (p + k - 1) // P2M + 1))
        return m + sum(self.merge_1g(g) for g in range(p // P1G, (p + k - 1) // P1G + 1))

    def levels(self) -> np.ndarray:
        lv = np.frombuffer(self.lvl, dtype=np.int8).copy()
        lv[np.frombuffer(self.pres, dtype=np.uint8) == 0] = -1
        return lv


# A host with holes: the ISA hole [160, 256), a low range cut by a hole of 10 2M ranges starting mid-2M-range,
# memory ending 7 x 2M before the first GiB, a whole second GiB, and a third GiB of 3 x 2M + 5 frames.
N_HOLES = 2 * P1G + 3 * P2M + 5
MEMORY_HOLES = [(0, 160), (256, 300 * P2M + 256), (310 * P2M, P1G - 7 * P2M), (P1G, N_HOLES)]

LAYOUTS: list[tuple[int, PageSize, list[tuple[int, int]] | None]] = [
    (HOST_N, PageSize.SIZE_1G, None),
    (HOST_N, PageSize.SIZE_1G, None),
    (2 * P1G + P2M, PageSize.SIZE_1G, None),
    (P1G, PageSize.SIZE_2M, None),
    (3 * P2M + 5, PageSize.SIZE_1G, None),
    (P1G + P2M + 1, PageSize.SIZE_4K, None),
    (N_HOLES, PageSize.SIZE_1G, MEMORY_HOLES),
    (N_HOLES, PageSize.SIZE_2M, MEMORY_HOLES),
]


class DirectMapMachine(RuleBasedStateMachine):
    """DirectMap against the naive per-frame model, with structural invariants (of ``directmap_class``: the fast
    engine's tests run this machine on theirs)."""

    directmap_class: type[DirectMap] = DirectMap
    dm: DirectMap
    nv: Naive

    @initialize(layout=st.sampled_from(LAYOUTS))
    def setup(self, layout: tuple[int, PageSize, list[tuple[int, int]] | None]) -> None:
        n, max_level, memory = layout
        self.dm = self.directmap_class(n, max_level=max_level, memory=memory)
        self.nv = Naive(n, max_level, memory)
        n2m = -(-n // P2M)
        # 2M ranges where things happen: the edges of the memory ranges first, then GiB edges, the tail, and a
        # couple inside.
        edges = [e for lo, hi in memory or [] for e in (lo // P2M, (hi - 1) // P2M, hi // P2M)]
        hot = [*edges, 0, 1, 2, 255, 510, 511, 512, 513, 1023, 1024, n2m - 2, n2m - 1]
        self.hot = [i for i in dict.fromkeys(hot) if 0 <= i < n2m]
        self.n1g = -(-n // P1G)

    def pfn(self, k: int, off: int) -> int:
        return min(self.hot[k % len(self.hot)] * P2M + off, self.dm.nframes - 1)

    def idx(self, k: int) -> int:
        return self.hot[k % len(self.hot)]

    def span(self, k: int, off: int, npages: int) -> tuple[int, int]:
        p = self.pfn(k, off)
        return p, min(npages, self.dm.nframes - p)

    # --------------------------------------------------------------------------- rules

    @rule(k=st.integers(0, 23), off=st.integers(0, 511))
    def set_4k(self, k: int, off: int) -> None:
        p = self.pfn(k, off)
        assert self.dm.set_4k(p) == self.nv.set_4k(p)

    @rule(k=st.integers(0, 23))
    def split_2m(self, k: int) -> None:
        assert self.dm.split_2m(self.idx(k)) == self.nv.split_2m(self.idx(k))

    @rule(g=st.integers(0, 3))
    def split_1g(self, g: int) -> None:
        g %= self.n1g
        assert self.dm.split_1g(g) == self.nv.split_1g(g)

    @rule(k=st.integers(0, 23), off=st.integers(0, 511))
    def remove_4k(self, k: int, off: int) -> None:
        p = self.pfn(k, off)
        assert self.dm.remove_4k(p) == self.nv.remove_4k(p)

    @rule(k=st.integers(0, 23), off=st.integers(0, 511))
    def restore_4k(self, k: int, off: int) -> None:
        p = self.pfn(k, off)
        assert self.dm.restore_4k(p) == self.nv.restore_4k(p)

    @rule(k=st.integers(0, 23), off=st.integers(0, 511), npages=st.integers(0, 1600))
    def remove_range(self, k: int, off: int, npages: int) -> None:
        p, m = self.span(k, off, npages)
        assert self.dm.remove_range(p, m) == self.nv.remove_range(p, m)

    @rule(k=st.integers(0, 23), off=st.integers(0, 511), npages=st.integers(0, 1600))
    def restore_range(self, k: int, off: int, npages: int) -> None:
        p, m = self.span(k, off, npages)
        assert self.dm.restore_range(p, m) == self.nv.restore_range(p, m)

    @rule(data=st.data(), remove=st.booleans())
    def remove_or_restore_pages(self, data: st.DataObject, remove: bool) -> None:
        """Scattered frames (runs and singles near the hot 2M ranges): each page as remove_4k/restore_4k would."""
        picks = data.draw(st.lists(st.tuples(st.integers(0, 23), st.integers(0, 511)), max_size=40))
        pfns = np.unique(np.array([self.pfn(k, off) for k, off in picks], dtype=np.int64))
        op = "remove" if remove else "restore"
        expected = sum(getattr(self.nv, f"{op}_4k")(int(p)) for p in pfns.tolist())
        assert getattr(self.dm, f"{op}_pages")(pfns) == expected

    @rule(k=st.integers(0, 23))
    def remove_2m(self, k: int) -> None:
        assert self.dm.remove_2m(self.idx(k)) == self.nv.remove_2m(self.idx(k))

    @rule(k=st.integers(0, 23))
    def restore_2m(self, k: int) -> None:
        assert self.dm.restore_2m(self.idx(k)) == self.nv.restore_2m(self.idx(k))

    @rule(g=st.integers(0, 3))
    def remove_1g(self, g: int) -> None:
        g %= self.n1g
        assert self.dm.remove_1g(g) == self.nv.remove_1g(g)

    @rule(g=st.integers(0, 3))
    def restore_1g(self, g: int) -> None:
        g %= self.n1g
        assert self.dm.restore_1g(g) == self.nv.restore_1g(g)

    @rule(k=st.integers(0, 23))
    def merge_2m(self, k: int) -> None:
        assert self.dm.merge_2m(self.idx(k)) == self.nv.merge_2m(self.idx(k))

    @rule(g=st.integers(0, 3))
    def merge_1g(self, g: int) -> None:
        g %= self.n1g
        assert self.dm.merge_1g(g) == self.nv.merge_1g(g)

    @rule(k=st.integers(0, 23), off=st.integers(0, 511), npages=st.integers(0, 1600))
    def try_merge(self, k: int, off: int, npages: int) -> None:
        p, m = self.span(k, off, npages)
        assert self.dm.try_merge(p, m) == self.nv.try_merge(p, m)

    @rule(k=st.integers(0, 23))
    def restore_and_merge_2m(self, k: int) -> None:
        i = self.idx(k)
        assert self.dm.restore_2m(i) == self.nv.restore_2m(i)
        assert self.dm.merge_2m(i) == self.nv.merge_2m(i)

    @rule(g=st.integers(0, 3))
    def restore_and_merge_1g(self, g: int) -> None:
        g %= self.n1g
        s, e = self.nv.span_1g(g)
        assert self.dm.restore_1g(g) == self.nv.restore_1g(g)
        assert self.dm.try_merge(s, e - s) == self.nv.try_merge(s, e - s)

    @rule(
        g=st.integers(0, 3),
        k=st.integers(0, 511),
        off=st.integers(0, 511),
        npages=st.integers(1, 1600),
        op=st.sampled_from(
            ["remove_4k", "restore_4k", "set_4k", "remove_range", "restore_range", "remove_2m", "restore_2m"]
        ),
        removed=st.booleans(),
        merge_after=st.booleans(),
    )
    def op_in_fresh_1g(self, g: int, k: int, off: int, npages: int, op: str, removed: bool, merge_after: bool) -> None:
        """Re-create a GiB (restore + merge), optionally remove it whole, act on part of it, optionally merge.

        Not-present large entries are the subtle case: splitting one yields not-present children.
        """
        g %= self.n1g
        s, e = self.nv.span_1g(g)
        assert self.dm.restore_1g(g) == self.nv.restore_1g(g)
        assert self.dm.try_merge(s, e - s) == self.nv.try_merge(s, e - s)
        if removed:
            assert self.dm.remove_1g(g) == self.nv.remove_1g(g)
        p = min(s + k * P2M + off, e - 1)
        if op.endswith("_range"):
            m = min(npages, self.dm.nframes - p)
            assert getattr(self.dm, op)(p, m) == getattr(self.nv, op)(p, m)
        elif op.endswith("_2m"):
            assert getattr(self.dm, op)(p // P2M) == getattr(self.nv, op)(p // P2M)
        else:
            assert getattr(self.dm, op)(p) == getattr(self.nv, op)(p)
        if merge_after:
            assert self.dm.try_merge(s, e - s) == self.nv.try_merge(s, e - s)
            assert self.dm.merge_1g(g) == self.nv.merge_1g(g)

    # --------------------------------------------------------------------------- invariants

    @invariant()
    def matches_naive_model(self) -> None:
        dm, nv = self.dm, self.nv
        n = nv.n
        expected = nv.levels()
        lv = dm.levels(0, n)
        assert np.array_equal(lv, expected)
        for p in (self.pfn(k, 0) for k in range(len(self.hot))):
            assert dm.level(p) == nv.level(p)
        # Counters: direct_pages_count[] counts entries, present or not, so they sum to the mapped frames
        # (everything but the holes), and they are the naive model's entry levels; present_bytes is the rest.
        lvl = np.frombuffer(nv.lvl, dtype=np.uint8)
        e4k, e2m, e1g = (int(np.count_nonzero(lvl == v)) for v in (0, 1, 2))
        holes = int(np.count_nonzero(lvl == HOLE))
        assert (dm.directmap_4k, dm.directmap_2m, dm.directmap_1g) == (
            e4k * PAGE_SIZE,
            e2m * PAGE_SIZE,
            e1g * PAGE_SIZE,
        )
        total = dm.directmap_4k + dm.directmap_2m + dm.directmap_1g
        assert total == dm.mapped_bytes == (n - holes) * PAGE_SIZE
        n4k, n2m, n1g = (int(np.count_nonzero(expected == v)) for v in (0, 1, 2))
        notpresent = n - n4k - n2m - n1g
        assert dm.present_bytes == (n - notpresent) * PAGE_SIZE == nv.pres.count(1) * PAGE_SIZE
        assert dm.count_levels(0, n) == (n4k, n2m, n1g, notpresent)
        mi = dm.meminfo()
        assert (mi["DirectMap4k"], mi["DirectMap2M"], mi["DirectMap1G"]) == (e4k * 4, e2m * 4, e1g * 4)
        assert (dm.split_count, dm.merge_count) == (nv.splits, nv.merges)
        assert dm.level2_splits + dm.level3_splits == dm.split_count
        dm.check_invariants()
        # Every present 1G (2M) mapping is aligned and whole: a GiB (2M range) either is entirely mapped at 1G
        # (2M) or has no page mapped at that level, and no large mapping reaches past the end of memory.
        full1g, full2m = n // P1G, n // P2M
        assert not (lv[full1g * P1G :] == 2).any()
        gbs = lv[: full1g * P1G].reshape(full1g, P1G) == 2
        assert (gbs.any(axis=1) == gbs.all(axis=1)).all()
        assert not (lv[full2m * P2M :] == 1).any()
        rows = lv[: full2m * P2M].reshape(full2m, P2M) == 1
        assert (rows.any(axis=1) == rows.all(axis=1)).all()


DirectMapMachine.TestCase.settings = settings(
    max_examples=70,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDirectMapMachine = DirectMapMachine.TestCase


# ------------------------------------------------------------------------ both engines' range ops == page loops

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["remove", "restore", "set_4k", "remove_2m", "restore_2m", "remove_1g", "restore_1g", "merge"]),
        st.integers(0, HOST_N - 1),
        st.integers(0, 6000),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(
    ops=_OPS,
    max_level=st.sampled_from([PageSize.SIZE_1G, PageSize.SIZE_2M]),
    cls=st.sampled_from([DirectMap, FastDirectMap]),
)
def test_range_ops_equal_loops(ops: list[tuple[str, int, int]], max_level: PageSize, cls: type[DirectMap]) -> None:
    hot = [0, P1G - 700, P1G - 1, P1G + 5, HOST_N - 900]
    vec = cls(HOST_N, max_level=max_level)
    loop = DirectMap(HOST_N, max_level=max_level)
    for name, raw, npages in ops:
        pfn = hot[raw % len(hot)] + raw % 997
        pfn = min(pfn, HOST_N - 1)
        npages = min(npages, HOST_N - pfn)
        if name == "remove":
            assert vec.remove_range(pfn, npages) == sum(loop.remove_4k(f) for f in range(pfn, pfn + npages))
        elif name == "restore":
            assert vec.restore_range(pfn, npages) == sum(loop.restore_4k(f) for f in range(pfn, pfn + npages))
        elif name == "set_4k":
            assert vec.set_4k(pfn) == loop.set_4k(pfn)
        elif name == "remove_2m":
            assert vec.remove_2m(pfn // P2M) == loop.remove_2m(pfn // P2M)
        elif name == "restore_2m":
            assert vec.restore_2m(pfn // P2M) == loop.restore_2m(pfn // P2M)
        elif name == "remove_1g":
            assert vec.remove_1g(pfn // P1G) == loop.remove_1g(pfn // P1G)
        elif name == "restore_1g":
            assert vec.restore_1g(pfn // P1G) == loop.restore_1g(pfn // P1G)
        else:
            merged = vec.try_merge(pfn, npages)
            assert merged == loop.try_merge(pfn, npages)
        assert kb(vec) == kb(loop)
        assert (vec.split_count, vec.merge_count) == (loop.split_count, loop.merge_count)
    np.testing.assert_array_equal(vec.levels(0, HOST_N), loop.levels(0, HOST_N))
    vec.check_invariants()
    loop.check_invariants()


EDGE_N = P1G + 16 * P2M + 3


def _prepared(state: str, cls: type[DirectMap]) -> DirectMap:
    d = cls(EDGE_N)
    if state == "removed-1g":
        d.remove_1g(0)
    elif state == "split-1g":
        d.split_1g(0)
        d.remove_2m(P1G // P2M - 2)
    elif state == "split-4k":
        d.remove_range(P1G - 6 * P2M, 8 * P2M)  # 4K-split, not present, across the GiB boundary
    return d


@pytest.mark.parametrize("cls", [DirectMap, FastDirectMap])
@pytest.mark.parametrize("state", ["fresh", "removed-1g", "split-1g", "split-4k"])
def test_range_edges_equal_loops(state: str, cls: type[DirectMap]) -> None:
    """Range ops with ends one page either side of 2M boundaries, against the reference's per-page loops."""
    b = P1G - 4 * P2M
    for d1 in (-1, 0, 1):
        for last in (b + 3 * P2M, b + 9 * P2M):
            for d2 in (-1, 0, 1):
                start, end = b + d1, last + d2
                for first_op in ("remove", "restore"):
                    vec, loop = _prepared(state, cls), _prepared(state, DirectMap)
                    ops = [first_op, "restore" if first_op == "remove" else "remove"]
                    for op in ops:
                        one = loop.remove_4k if op == "remove" else loop.restore_4k
                        splits = sum(one(f) for f in range(start, end))
                        ranged = vec.remove_range if op == "remove" else vec.restore_range
                        assert ranged(start, end - start) == splits, (state, d1, last, d2, ops)
                        assert kb(vec) == kb(loop)
                        assert np.array_equal(
                            vec.levels(b - P2M, EDGE_N - b + P2M), loop.levels(b - P2M, EDGE_N - b + P2M)
                        )
                    assert vec.try_merge(start, end - start) == loop.try_merge(start, end - start)
                    assert kb(vec) == kb(loop)
                    vec.check_invariants()


# ---------------------------------------------------------------------------------------------- scale


def test_2tib_constructs_fast_and_small() -> None:
    n = 1 << 29  # 2 TiB of 4K frames
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        d = DirectMap(n)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 50 * 1024 * 1024
    assert kb(d) == (0, 0, 2 * 1024 * KB_1G)

    t0 = time.perf_counter()
    assert d.set_4k(n - 1) == 2
    # [1G - 10, 5G - 10): GiBs 0..4 are split to 2M (5), then every 2M range the range touches to 4K:
    # 1 in GiB 0, 3 * 512 in GiBs 1..3, 512 in GiB 4.
    assert d.remove_range(P1G - 10, 1 << 20) == 5 + 1 + 3 * 512 + 512
    assert d.count_levels(0, n) == (
        (P2M - 10) + 10 + P2M,  # head of GiB 0's last 2M, tail of GiB 4's last 2M, set_4k's 2M range
        (511 + 511) * P2M,  # rest of GiB 0 and of GiB 2047
        (2048 - 6) * P1G,
        1 << 20,
    )
    d.check_invariants()
    assert d.restore_range(P1G - 10, 1 << 20) == 0
    assert d.try_merge(0, n) == (1 + 3 * 512 + 512 + 1) + 6
    assert kb(d) == (0, 0, 2 * 1024 * KB_1G)
    assert (d.split_count, d.merge_count) == (2 + 2054, 2056)
    assert time.perf_counter() - t0 < 5.0


@settings(max_examples=60, deadline=None)
@given(
    removed=st.lists(st.integers(0, 2 * P1G + 40 * P2M - 1), max_size=6),
    presplit=st.lists(st.integers(0, (2 * P1G + 40 * P2M) // P2M - 1), max_size=6),
    idx=st.lists(st.integers(0, (2 * P1G + 40 * P2M) // P2M - 1), max_size=40),
)
def test_split_2m_many_equals_a_loop_of_split_2m(removed: list[int], presplit: list[int], idx: list[int]) -> None:
    def build() -> DirectMap:
        d = DirectMap(2 * P1G + 40 * P2M)
        d.remove_1g(1)  # a not-present GiB: its children split not present
        for p in removed:
            d.remove_4k(p)
        for i in presplit:
            d.split_2m(i)
        return d

    many, loop = build(), build()
    n = many.split_2m_many(np.array(idx, dtype=np.int64))
    assert n == sum(loop.split_2m(i) for i in idx)
    assert (many.meminfo(), many.split_count) == (loop.meminfo(), loop.split_count)
    size = 2 * P1G + 40 * P2M
    assert np.array_equal(many.levels(0, size), loop.levels(0, size))
    many.check_invariants()

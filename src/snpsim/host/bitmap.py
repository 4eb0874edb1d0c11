"""A set of small integers as a hierarchy of 64-bit words: the model's free lists (one per zone, order, migratetype).

The kernel keeps a doubly linked list of ``struct page`` per ``(zone, order, migratetype)`` (``struct free_area``,
include/linux/mmzone.h) and finds a free block in O(1) at the list head. A Python object per free block would not
scale to a 2 TiB host (2^29 frames, millions of free blocks after ageing), so each free list here is a bitmap over
the block indices of its order, with summary levels above it: bit ``j`` of level ``l + 1`` is set iff word ``j`` of
level ``l`` is non-zero, up to a top level of at most :data:`TOP_WORDS` words, itself summarised by one Python
``int``. Finding the lowest member costs one ``int`` bit trick plus one word read per level (4 levels for the
order-0 list of a 2 TiB zone); insertion and removal touch one word per level only when a word changes between
zero and non-zero. Single words are read and written through ``memoryview``s of the arrays (a third of the cost of
numpy scalar indexing); the batch operations (:meth:`Bitmap.add_many`, :meth:`Bitmap.remove_many`) are
vectorised in numpy.

Level 0 of a big bitmap comes from :func:`snpsim.pfnmap.lazy_zeros`: pages of the bitmap never written cost no
memory (a 2 TiB zone's order-0 bitmap is 64 MiB of address space per migratetype, resident only where free
order-0 blocks ever were).

All bitmaps of one allocator live in one :class:`BitmapStore`: their levels are slices of a single ``uint64``
buffer, their counts and top words entries of two small arrays, so compiled code (:mod:`snpsim.fast`) can work on
every free list of the allocator through five arrays, and a :class:`Bitmap` is a view of one of them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from snpsim.pfnmap import lazy_zeros
from snpsim.segments import run_starts

__all__ = ["MAX_LEVELS", "Bitmap", "BitmapStore"]

IntArray = npt.NDArray[np.int64]
WordArray = npt.NDArray[np.uint64]

#: The top numpy level has at most this many words; the Python ``int`` above it has one bit per word (small ints
#: keep the bit tricks on it cheap).
TOP_WORDS = 64
#: levels of the largest bitmap (2^40 members: 64^6 bits above the top words)
MAX_LEVELS = 7

_ONE = np.uint64(1)
#: the 64 single-bit masks, gathered instead of shifted (a shift by a per-element amount needs a cast first)
_BIT = np.left_shift(_ONE, np.arange(64, dtype=np.uint64))


def _lowbit(x: int) -> int:
    return (x & -x).bit_length() - 1


def _bits_of(words: WordArray, index: IntArray) -> IntArray:
    """Ascending positions ``index[i] * 64 + b`` of the set bits ``b`` of ``words[i]`` (``index`` ascending)."""
    if words.size == 0:
        return np.zeros(0, dtype=np.int64)
    flat = np.flatnonzero(np.unpackbits(np.ascontiguousarray(words).view(np.uint8), bitorder="little"))
    return (index[flat >> 6] << 6) + (flat & 63)


def _masks(idx: IntArray) -> tuple[IntArray, WordArray]:
    """For sorted unique ``idx``: the distinct words they fall in and the OR of their bits per word."""
    words = idx >> 6
    starts = run_starts(words)
    return words[starts], np.bitwise_or.reduceat(_BIT[idx & 63], starts)


class BitmapStore:
    """The words of several bitmaps in one buffer: bitmap ``b`` has ``nlev[b]`` levels, level ``l`` at
    ``words[off[b, l] : off[b, l] + nwords[b, l]]``; ``count[b]`` members and top summary word ``top[b]``."""

    __slots__ = ("count", "n", "nlev", "nwords", "off", "top", "words")

    def __init__(self, sizes: list[int]) -> None:
        nb = len(sizes)
        self.n = np.array([int(x) for x in sizes], dtype=np.int64)
        self.off = np.zeros((nb, MAX_LEVELS), dtype=np.int64)
        self.nwords = np.zeros((nb, MAX_LEVELS), dtype=np.int64)
        self.nlev = np.zeros(nb, dtype=np.int64)
        pos = 0
        for b, n in enumerate(sizes):
            size = max(int(n), 1)
            lev = 0
            while True:
                words = (size + 63) >> 6
                self.off[b, lev], self.nwords[b, lev] = pos, words
                pos += words
                lev += 1
                if words <= TOP_WORDS:
                    break
                size = words
            self.nlev[b] = lev
        self.words = lazy_zeros(pos, np.uint64)
        self.count = np.zeros(nb, dtype=np.int64)
        self.top = np.zeros(nb, dtype=np.uint64)

    def bitmap(self, b: int) -> Bitmap:
        return Bitmap(int(self.n[b]), store=self, index=b)

    def clear(self) -> None:
        self.words[:] = 0
        self.count[:] = 0
        self.top[:] = 0


class Bitmap:
    """A set of integers in ``[0, n)``; ``count`` is its size. A view of bitmap ``index`` of a :class:`BitmapStore`
    (a store of its own by default)."""

    __slots__ = ("_b", "_cv", "_tv", "levels", "n", "store", "views")

    def __init__(self, n: int, *, store: BitmapStore | None = None, index: int = 0) -> None:
        self.n = int(n)
        self.store = BitmapStore([self.n]) if store is None else store
        self._b = int(index)
        self._bind()

    def _bind(self) -> None:
        st, b = self.store, self._b
        self.levels: list[WordArray] = [
            st.words[st.off[b, lev] : st.off[b, lev] + st.nwords[b, lev]] for lev in range(int(st.nlev[b]))
        ]
        #: the same words, for single reads and writes
        self.views = [level.data for level in self.levels]
        self._cv = st.count[b : b + 1].data
        self._tv = st.top[b : b + 1].data

    def __getstate__(self) -> tuple[BitmapStore, int, int]:
        return self.store, self._b, self.n

    def __setstate__(self, state: tuple[BitmapStore, int, int]) -> None:
        self.store, self._b, self.n = state  # the views are bound on first use (__getattr__): a snapshot of an
        # allocator restores a hundred bitmaps, of which a step uses a few

    def __getattr__(self, name: str) -> object:
        """Called only for an unset slot: the views of an unpickled bitmap, bound now."""
        if name not in ("levels", "views", "_cv", "_tv"):
            raise AttributeError(name)
        self._bind()
        return object.__getattribute__(self, name)

    @property
    def count(self) -> int:
        return self._cv[0]  # type: ignore[no-any-return]

    @count.setter
    def count(self, value: int) -> None:
        self._cv[0] = value

    @property
    def top(self) -> int:
        """Bit j set iff ``levels[-1][j]`` is non-zero."""
        return self._tv[0]  # type: ignore[no-any-return]

    @top.setter
    def top(self, value: int) -> None:
        self._tv[0] = value

    def __len__(self) -> int:
        return self.count

    def __contains__(self, i: int) -> bool:
        return bool((self.views[0][i >> 6] >> (i & 63)) & 1)

    # ------------------------------------------------------------------ single members
    def add(self, i: int) -> None:
        """Insert ``i`` (known absent)."""
        self._cv[0] += 1
        for view in self.views:
            w = i >> 6
            old = view[w]
            view[w] = old | (1 << (i & 63))
            if old:
                return
            i = w
        self._tv[0] |= 1 << i

    def remove(self, i: int) -> None:
        """Remove ``i`` (known present)."""
        self._cv[0] -= 1
        for view in self.views:
            w = i >> 6
            new = view[w] & ~(1 << (i & 63))
            view[w] = new
            if new:
                return
            i = w
        self._tv[0] &= ~(1 << i) & 0xFFFFFFFFFFFFFFFF

    def first(self) -> int:
        """The lowest member, or -1 if the set is empty."""
        top = self._tv[0]
        if not top:
            return -1
        pos = (top & -top).bit_length() - 1
        for view in reversed(self.views):
            word = view[pos]
            pos = (pos << 6) + (word & -word).bit_length() - 1
        return pos

    def pop_first(self) -> int:
        """Remove and return the lowest member (the set must not be empty)."""
        i = self.first()
        self.remove(i)
        return i

    # ------------------------------------------------------------------ batches
    def contains_many(self, idx: IntArray) -> npt.NDArray[np.bool_]:
        """Membership of each of ``idx``."""
        if idx.size == 0:
            return np.zeros(0, dtype=bool)
        return self.levels[0][idx >> 6] & _BIT[idx & 63] != 0

    def add_many(self, idx: IntArray) -> None:
        """Insert sorted, unique ``idx``, none present."""
        if idx.size == 0:
            return
        self.count += int(idx.size)
        for level in self.levels:
            words, masks = _masks(idx)
            old = level[words]
            level[words] = old | masks
            idx = words[old == 0]
            if idx.size == 0:
                return
        for j in idx.tolist():
            self.top |= 1 << j

    def remove_many(self, idx: IntArray) -> None:
        """Remove sorted, unique ``idx``, all present."""
        if idx.size == 0:
            return
        self.count -= int(idx.size)
        for level in self.levels:
            words, masks = _masks(idx)
            new = level[words] & ~masks
            level[words] = new
            idx = words[new == 0]
            if idx.size == 0:
                return
        for j in idx.tolist():
            self.top &= ~(1 << j) & 0xFFFFFFFFFFFFFFFF

    def members(self, limit: int | None = None) -> IntArray:
        """The ``limit`` lowest members (all by default), ascending."""
        want = self.count if limit is None else min(limit, self.count)
        if want <= 0:
            return np.zeros(0, dtype=np.int64)
        top = self.top
        index: list[int] = []
        while top and len(index) < want:
            j = _lowbit(top)
            index.append(j)
            top &= top - 1
        pos = np.array(index, dtype=np.int64)
        for level in reversed(self.levels):
            pos = _bits_of(level[pos], pos)[:want]  # each position below holds at least one member
        return pos

    def members_in(self, lo: int, hi: int) -> IntArray:
        """Members in ``[lo, hi)``, ascending (reads the level-0 words of the range)."""
        lo, hi = max(lo, 0), min(hi, self.n)
        if hi <= lo or self.count == 0:
            return np.zeros(0, dtype=np.int64)
        w0, w1 = lo >> 6, (hi + 63) >> 6
        words = self.levels[0][w0:w1]
        nz = np.flatnonzero(words)
        if nz.size == 0:
            return np.zeros(0, dtype=np.int64)
        out = _bits_of(words[nz], nz.astype(np.int64) + w0)
        return out[(out >= lo) & (out < hi)]

    def check(self) -> None:
        """Assert the summary levels and ``count`` agree with level 0 (for tests)."""
        total = int(np.bitwise_count(self.levels[0]).sum())
        assert total == self.count, (total, self.count)
        for below, above in zip(self.levels, self.levels[1:], strict=False):
            nz = np.flatnonzero(below)
            marks = np.zeros(above.size * 64, dtype=bool)
            marks[_bits_of(above[np.flatnonzero(above)], np.flatnonzero(above).astype(np.int64))] = True
            assert np.array_equal(np.flatnonzero(marks), nz)
        top = np.flatnonzero(self.levels[-1])
        assert self.top == sum(1 << int(j) for j in top)

    def clear(self) -> None:
        for level in self.levels:
            level[:] = 0
        self._tv[0] = 0
        self._cv[0] = 0

    def __repr__(self) -> str:
        return f"Bitmap(n={self.n}, count={self.count})"

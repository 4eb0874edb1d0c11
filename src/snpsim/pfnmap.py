"""Sparse index → host-frame maps for per-VM state: what is never touched costs no memory.

KVM's NPT, guest_memfd's folio table and the VMM's RAMBlock (``shared/reference/linux-snp-host.md`` §4-§5,
``guest-workloads.md`` §1) each map guest pages (or folios) to host frames, with "no frame" for most of a lazily
accepting guest's memory (``guest-workloads.md`` row 12: unaccepted memory is accepted on allocation). A dense
``int64`` array filled with -1 costs 8 bytes per guest page up front: 64 VMs of 8–64 GiB are ~1.5 TiB of guest
memory, ~12 GiB of state per such array. A :class:`PfnMap` stores ``pfn + 1`` in a zero-initialised array
instead, so "no frame" is 0, in memory from the kernel's zero pages, backed only once written
(:func:`lazy_zeros`; the same lazily allocated zero-page idea as the segmented RMP and frame table,
:mod:`snpsim.segments`, but at the OS page granularity). The values are ``uint32`` while every frame number fits
(hosts below 16 TiB), else ``int64``.

The map reads and writes like a numpy array of frame numbers with -1 for "none" (``m[lo:hi]``, ``m[idx]``,
``m[i]``, ``m[...] = pfns``); reads return copies, so there are no writable views. It also remembers which
chunks of entries (by default 512: a 2M range of 4K pages) were ever written (:meth:`touched_chunks`), so a
scan of the mapped entries (the ``guest_bytes`` metric) can skip the rest.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Entries per chunk of :meth:`PfnMap.touched_chunks` (a 2M range of 4K pages).
CHUNK_SHIFT = 9

#: Arrays of at least this many bytes come from :func:`lazy_zeros`'s anonymous mapping.
LAZY_MIN_BYTES = 1 << 20


def lazy_zeros(size: int, dtype: Any) -> npt.NDArray[Any]:
    """A zeroed array whose pages take memory only once written: a private anonymous ``mmap`` (Linux), freed when
    the array is. ``numpy.zeros`` gets the same from ``calloc`` only while glibc serves the size with ``mmap``:
    its threshold rises (up to 32 MiB) as big blocks are freed, after which ``calloc`` memsets recycled heap
    memory, all of it resident (a month of VM churn reached 16 GiB that way, and 9.2 GiB again in session 8 with
    guest_memfd's and the RMP segments' arrays still from ``numpy.zeros``)."""
    nbytes = int(size) * np.dtype(dtype).itemsize
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    if nbytes < LAZY_MIN_BYTES or not flags:
        return np.zeros(size, dtype=dtype)
    m = mmap.mmap(-1, nbytes, flags=flags)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # with THP "always", one write would make 2 MiB resident
        m.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(m, dtype=dtype)


class PfnMap:
    """``size`` entries, each a host frame number below ``max_pfn`` or -1 (none); all -1 at first."""

    __slots__ = ("_a", "_touched", "chunk_shift", "size")

    def __init__(self, size: int, max_pfn: int, chunk_shift: int = CHUNK_SHIFT) -> None:
        self.size = int(size)
        self.chunk_shift = int(chunk_shift)
        dtype = np.uint32 if max_pfn < np.iinfo(np.uint32).max else np.int64
        self._a = lazy_zeros(self.size, dtype)  # pfn + 1; 0 = none
        self._touched = np.zeros((self.size >> self.chunk_shift) + 1, dtype=bool)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: Any) -> Any:
        v = self._a[key]
        if isinstance(v, np.ndarray):
            return v.astype(np.int64) - 1
        return int(v) - 1

    def __setitem__(self, key: Any, pfns: Any) -> None:
        self._a[key] = np.asarray(pfns, dtype=np.int64) + 1
        self._touch(key)

    def __array__(self, dtype: Any = None, copy: Any = None) -> IntArray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _touch(self, key: Any) -> None:
        if isinstance(key, slice):
            lo, hi, _ = key.indices(self.size)
            if hi > lo:
                self._touched[lo >> self.chunk_shift : ((hi - 1) >> self.chunk_shift) + 1] = True
        elif isinstance(key, np.ndarray) and key.dtype == np.bool_:
            self._touched[np.flatnonzero(key) >> self.chunk_shift] = True
        else:
            self._touched[np.asarray(key, dtype=np.int64) >> self.chunk_shift] = True

    def present(self, lo: int = 0, hi: int | None = None) -> BoolArray:
        """Whether each entry of ``[lo, hi)`` maps a frame."""
        return self._a[lo:hi] != 0

    def present_at(self, idx: IntArray) -> BoolArray:
        """Whether each entry ``idx`` maps a frame."""
        return self._a[idx] != 0

    def all_present(self, lo: int, hi: int) -> bool:
        return bool(self._a[lo:hi].all())

    def clear(self, lo: int = 0, hi: int | None = None, where: BoolArray | None = None) -> None:
        """Set ``[lo, hi)`` (only where ``where``, if given) to -1."""
        if where is None:
            self._a[lo:hi] = 0
        else:
            self._a[lo:hi][where] = 0

    def touched_chunks(self) -> BoolArray:
        """Per chunk of ``2**chunk_shift`` entries: whether any entry of it was ever set (a superset of the chunks
        that map a frame now)."""
        return self._touched

    @property
    def nbytes(self) -> int:
        return int(self._a.nbytes + self._touched.nbytes)

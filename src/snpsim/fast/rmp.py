"""The fast engine's RMP: :class:`snpsim.hw.rmp.Rmp`'s bulk 4K RMPUPDATE and PVALIDATE compiled with numba, on the
reference's own segment arrays.

RMPUPDATE (AMD APM vol. 2 §15.36.5, ``shared/reference/amd-snp-arch.md`` §3) and PVALIDATE (§15.36.6, §5) of one
4K page are the reference's single-page instructions :meth:`Rmp.rmpupdate` and :meth:`Rmp.pvalidate`, cited and
explained there with the modelling assumptions they take (``rmpupdate-input``, ``check-order``,
``rmpupdate-overlap``, ``rmpupdate-demote``, ``rmpupdate-clears``, ``rmpopt-clear``); the host kernel's
``rmp_make_private``/``rmp_make_shared`` of many frames (guest_memfd preparation and invalidation) and a guest's
run of 4K PVALIDATEs call the bulk forms :meth:`Rmp.rmpupdate_pfns` and :meth:`Rmp.pvalidate_pfns`, defined as the
loop of those instructions over the pages, in order. Here that loop runs compiled, one call per RMP segment (the
1 GiB ``_Segment`` of flag bytes, GFN offsets, ASIDs, per-2M assigned counts and VMPL masks), the pages of a
segment in their given order:

- RMPUPDATE 4K: FAIL_INPUT for a PFN outside the table or a negative GFN (and for the whole call when the
  arguments are bad wherever the page lies: the reference's ``_rmpupdate_args_bad``), then FAIL_INUSE for a page
  VMRUN marked in use, FAIL_PERMISSION for an immutable entry, FAIL_OVERLAP inside an assigned 2M entry; inside an
  unassigned 2M entry the 2M entry is demoted to 4K first; a successful step writes the flags (assigned,
  immutable; Validated and VMSA cleared), the GFN, the ASID, the 2M range's assigned count and the VMPL masks
  (reset), and, when assigning, clears its 1 GiB region's RMPOPT bits (the reference's ``_rmpopt_clear``, once
  for the call: the same final table);
- PVALIDATE 4K at VMPL0: FAIL_INPUT for a negative PFN or GFN; #NPF (status -1) unless the entry is assigned,
  mutable, 4K, of this ASID and bound to this GFN (an untouched segment or a page beyond the table: hypervisor
  owned); else CF = Validated already as requested, and the bit is set or cleared.

A segment is allocated exactly when the reference allocates it (the first step in it that passes the input and
in-use checks). Counters count every step. Calls the kernels do not take (arrays that are not 1-D, unequal
lengths, an ASID outside 32 bits) run the reference loop, with its errors. The host kernel's vectorised reads of
many frames (``assigned_mask``/``assigned_2m_mask``: the flag bytes, ``assigned_in_2m_of``: the per-2M counts;
``snp_lookup_rmpentry`` over a batch for guest_memfd preparation and invalidation, NPT level choices and page
clearing) are one compiled gather when the frames lie in one allocated segment, else the reference's per-segment
gather. :class:`FastRmp` inherits everything else, so both
engines share one state; ``tests/fast/test_fast_rmp.py`` drives a reference and a fast table with the same calls
and compares every array after every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from snpsim.hw.rmp import (
    _2M_MASK,
    _F_OWNER,
    _K4,
    _SEG_MASK,
    _STEP_NPF,
    F_ASSIGNED,
    F_IMMUTABLE,
    F_SIZE2M,
    F_VALIDATED,
    PAGES_PER_2M,
    SEGMENT_SHIFT,
    Rmp,
)
from snpsim.hw.types import RmpStatus
from snpsim.segments import by_segment

__all__ = ["FastRmp"]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_jit = numba.njit(cache=True, nogil=True)
_SUCCESS = int(RmpStatus.SUCCESS)
_FAIL_INPUT = int(RmpStatus.FAIL_INPUT)
_FAIL_PERMISSION = int(RmpStatus.FAIL_PERMISSION)
_FAIL_INUSE = int(RmpStatus.FAIL_INUSE)
_FAIL_OVERLAP = int(RmpStatus.FAIL_OVERLAP)
_CLEAR_SIZE2M = np.uint8(0xFF & ~F_SIZE2M)
_CLEAR_VALIDATED = np.uint8(0xFF & ~F_VALIDATED)
_SET_VALIDATED = np.uint8(F_VALIDATED)
#: a segment without VMPL masks (``_Segment.perms`` None): the kernels' stand-in
_NO_PERMS = np.zeros((0, 3), dtype=np.uint8)
_NO_PFNS = np.zeros(0, dtype=np.int64)
_ASID_LIMIT = 1 << 32  # the entry's ASID field is 32 bits (``_Segment.asid`` uint32)


@_jit
def _one_segment(pfns, gfns, npages):  # type: ignore[no-untyped-def]
    """The segment of every page when all lie in one segment of the table and have a GFN >= 0, else -1."""
    if pfns.size == 0:
        return -1
    s = pfns[0] >> SEGMENT_SHIFT
    for k in range(pfns.size):
        p = pfns[k]
        if p < 0 or p >= npages or gfns[k] < 0 or p >> SEGMENT_SHIFT != s:
            return -1
    return s


@_jit
def _rmpupdate_4k(flags, gofs, asids, region_assigned, perms, pfns, gfns, in_use, status, newf, asid):  # type: ignore[no-untyped-def]
    """The reference's 4K :meth:`Rmp._rmpupdate` on each page ``pfns[k]`` (in this segment, in the table, its GFN
    ``gfns[k]`` >= 0, the arguments valid) in order; ``in_use``: the in-use PFNs, sorted."""
    assigned = newf & F_ASSIGNED
    for k in range(pfns.size):
        pfn = pfns[k]
        if in_use.size:
            j = np.searchsorted(in_use, pfn)
            if j < in_use.size and in_use[j] == pfn:
                status[k] = _FAIL_INUSE
                continue
        i = pfn & _SEG_MASK
        f = flags[i]
        if f & F_IMMUTABLE:
            status[k] = _FAIL_PERMISSION
            continue
        if f & F_SIZE2M:
            if f & F_ASSIGNED:
                status[k] = _FAIL_OVERLAP
                continue
            head = i & ~_2M_MASK
            for j in range(head, min(head + PAGES_PER_2M, flags.size)):  # rmpupdate-demote
                flags[j] &= _CLEAR_SIZE2M
        r = i >> 9
        if f & F_ASSIGNED:
            region_assigned[r] -= 1
        if assigned:
            region_assigned[r] += 1
        flags[i] = newf
        gofs[i] = gfns[k] - i
        asids[i] = asid
        if perms.shape[0]:
            perms[i, :] = 0
        status[k] = _SUCCESS


@_jit
def _pvalidate_4k(flags, gofs, asids, pfns, gfns, asid, validate, status, cf):  # type: ignore[no-untyped-def]
    """The reference's 4K :meth:`Rmp.pvalidate` at VMPL0 on each page ``pfns[k]`` (in this segment, in the table,
    ``gfns[k]`` >= 0) in order: status -1 where it raises #NPF."""
    for k in range(pfns.size):
        i = pfns[k] & _SEG_MASK
        f = flags[i]
        if (f & _F_OWNER) != F_ASSIGNED or asids[i] != asid or gofs[i] + i != gfns[k]:
            status[k] = _STEP_NPF
            cf[k] = False
            continue
        status[k] = _SUCCESS
        if ((f & F_VALIDATED) != 0) == validate:
            cf[k] = True
        else:
            cf[k] = False
            flags[i] = (f | _SET_VALIDATED) if validate else (f & _CLEAR_VALIDATED)


@_jit
def _gather_in(values, pfns, base, npages, shift, out):  # type: ignore[no-untyped-def]
    """``out[k] = values[(pfns[k] - base) >> shift]`` for pages of one segment (``[base, base + npages)``); False,
    with ``out`` incomplete, as soon as a page lies outside it."""
    for k in range(pfns.size):
        i = pfns[k] - base
        if i < 0 or i >= npages:
            return False
        out[k] = values[i >> shift]
    return True


class FastRmp(Rmp):
    """:class:`Rmp` with its bulk 4K RMPUPDATE and PVALIDATE and its vectorised reads compiled; same results and
    state."""

    def _gather_one(self, pfns: IntArray, array: str, shift: int) -> npt.NDArray[Any] | None:
        """The reference's ``_gather`` of ``_Segment.<array>[i >> shift]`` when every page lies in one allocated
        segment, else None."""
        pfns = np.asarray(pfns, dtype=np.int64)
        if pfns.ndim != 1 or not pfns.size or not 0 <= int(pfns[0]) < self.npages:
            return None
        s = int(pfns[0]) >> SEGMENT_SHIFT
        seg = self._segs[s]
        if seg is None:
            return None
        values = getattr(seg, array)
        out = np.empty(pfns.size, dtype=values.dtype)
        return out if _gather_in(values, pfns, s << SEGMENT_SHIFT, seg.npages, shift, out) else None

    def _flags_of(self, pfns: IntArray) -> npt.NDArray[np.uint8]:
        got = self._gather_one(pfns, "flags", 0)
        return super()._flags_of(pfns) if got is None else got

    def assigned_in_2m_of(self, pfns: IntArray) -> npt.NDArray[np.int32]:
        got = self._gather_one(pfns, "region_assigned", 9)
        return super().assigned_in_2m_of(pfns) if got is None else got

    def _in_use_sorted(self) -> IntArray:
        return np.array(sorted(self._in_use), dtype=np.int64) if self._in_use else _NO_PFNS

    def rmpupdate_pfns(
        self,
        pfns: IntArray,
        gfns: IntArray | None = None,
        *,
        assigned: bool,
        asid: int = 0,
        immutable: bool = False,
    ) -> IntArray:
        pfns = np.ascontiguousarray(pfns, dtype=np.int64)
        gfns = np.zeros_like(pfns) if gfns is None else np.ascontiguousarray(gfns, dtype=np.int64)
        if pfns.ndim != 1 or gfns.shape != pfns.shape or not 0 <= asid < _ASID_LIMIT:
            return super().rmpupdate_pfns(pfns, gfns, assigned=assigned, asid=asid, immutable=immutable)
        n = int(pfns.size)
        self.rmpupdate_count += n
        if self._rmpupdate_args_bad(0, _K4, 0, assigned, asid, immutable):  # every step: FAIL_INPUT
            return np.full(n, _FAIL_INPUT, dtype=np.int64)
        newf = (F_ASSIGNED if assigned else 0) | (F_IMMUTABLE if immutable else 0)
        status = np.zeros(n, dtype=np.int64)
        in_use = self._in_use_sorted()
        for s, where in self._segments(pfns, gfns, status, _FAIL_INPUT):
            p, out = pfns[where], status[where]  # views for a slice, copies for an index array
            seg = self._segs[s]
            if seg is None:
                if in_use.size and np.isin(p, in_use).all():  # no step reaches the segment: not allocated
                    status[where] = _FAIL_INUSE
                    continue
                seg = self._seg_w(s << SEGMENT_SHIFT)
            perms = _NO_PERMS if seg.perms is None else seg.perms
            fl, go, asids, ra = seg.flags, seg.gofs, seg.asid, seg.region_assigned
            _rmpupdate_4k(fl, go, asids, ra, perms, p, gfns[where], in_use, out, newf, asid)
            if not isinstance(where, slice):
                status[where] = out
        if assigned and self._rmpopt_live:
            self._rmpopt_clear(pfns[status == _SUCCESS])
        return status

    def pvalidate_pfns(
        self, pfns: IntArray, gfns: IntArray, *, asid: int, validate: bool
    ) -> tuple[IntArray, BoolArray]:
        pfns = np.ascontiguousarray(pfns, dtype=np.int64)
        gfns = np.ascontiguousarray(gfns, dtype=np.int64)
        if pfns.ndim != 1 or gfns.shape != pfns.shape or not 0 <= asid < _ASID_LIMIT:
            return super().pvalidate_pfns(pfns, gfns, asid=asid, validate=validate)
        n = int(pfns.size)
        self.pvalidate_count += n
        status = np.zeros(n, dtype=np.int64)
        cf = np.zeros(n, dtype=bool)
        for s, where in self._segments(pfns, gfns, status, _STEP_NPF):
            seg = self._segs[s]
            if seg is None:
                status[where] = _STEP_NPF  # an untouched segment: every entry hypervisor-owned
                continue
            out, out_cf = status[where], cf[where]
            _pvalidate_4k(seg.flags, seg.gofs, seg.asid, pfns[where], gfns[where], asid, bool(validate), out, out_cf)
            if not isinstance(where, slice):
                status[where], cf[where] = out, out_cf
        return status, cf

    def _segments(
        self, pfns: IntArray, gfns: IntArray, status: IntArray, outside: int
    ) -> Iterator[tuple[int, slice | IntArray]]:
        """``(segment, where)`` for the pages of each segment that lie in the table and have a GFN >= 0:
        ``pfns[where]`` are that segment's, in their order (a slice when they are one run of the input, as for
        one segment's pages in any order or ascending frames). The other pages get status ``outside``, or
        FAIL_INPUT for a negative PFN or GFN (the first check of both instructions)."""
        s = int(_one_segment(pfns, gfns, self.npages))
        if s >= 0:  # the usual call: one check in compiled code
            yield s, slice(None)
            return
        inside = (pfns >= 0) & (pfns < self.npages) & (gfns >= 0)
        if bool(inside.all()):
            yield from by_segment(pfns, SEGMENT_SHIFT)
            return
        status[~inside] = outside
        status[(pfns < 0) | (gfns < 0)] = _FAIL_INPUT
        live = np.flatnonzero(inside)
        for s, sel in by_segment(pfns[live], SEGMENT_SHIFT):
            yield s, live[sel]

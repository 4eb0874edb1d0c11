"""The host's physical memory seen 2 MiB at a time: what each 2M block holds and how the direct map maps it.

The picture the report draws and the data behind it: per moment (:class:`HostMap`), arrays with one entry per 2M
block of host physical memory (``pfn // 512``):

* **state** (:data:`STATES`), from the frame owner tags (:mod:`snpsim.host.frames`, the model's ``struct page``
  flags) and the RMP's Assigned bit (:class:`snpsim.hw.rmp.Rmp`). A frame is free, host kernel (slab, page
  tables, VMSAs, a hibernation image), host page cache / user (movable), hugetlb pool, guest shared (VMM memory or
  a guest_memfd folio whose RMP entry is hypervisor-owned) or guest private (a guest page whose RMP entry is
  assigned). A block whose RAM frames are all free is *free*; any other block takes the category holding most of
  its used frames (ties: the lower code).
* **used** and **assigned**: the block's used RAM frames and its RMP-assigned frames (0..512). A block with
  both assigned and unassigned RAM frames is *mixed* (:func:`mixed`): the hardware faults a host write through a
  2M or 1G mapping of any page of it ("a write through a 2MB/1GB host mapping faults if any 4KB page in the
  covering 2MB range is assigned", APM 15.36.10 Table 15-39, ``shared/reference/amd-snp-arch.md`` §7), which is
  why upstream splits its direct-map entry (``arch/x86/virt/svm/sev.c`` ``adjust_direct_map``,
  ``linux-snp-host.md`` §3).
* **level** (:data:`LEVELS`): the kernel direct-map entry mapping the block (:meth:`DirectMap.levels_2m`): a 1G
  or 2M entry, a PTE table (4K) with every RAM page present, a PTE table with some pages made not present
  (``set_direct_map_invalid_noflush``), or nothing present.

Simplification: a block's category is the majority of its used frames, so a block holding 3 kernel pages and
509 page-cache pages shows as page cache (``used`` and ``assigned`` are exact counts). Frames outside ``ram``
(e820 holes, the RMP table) count neither as free nor used (``ram`` counts the RAM frames of each block); without
``ram`` every frame is RAM.

The picture moves no metric: it only reads the frame table, the RMP and the direct map.

Vectorised per 1 GiB segment of the frame table (the RMP is read per frame only in blocks with an assigned page):
a 4 GiB host takes 15 ms, a 2 TiB host whose every segment is tagged (2^20 blocks) about 5 s on the project
machine; the runner takes three snapshots a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from snpsim.arch import PAGES_PER_2M, PageSize
from snpsim.host.directmap import NOT_PRESENT
from snpsim.host.frames import Owner

if TYPE_CHECKING:
    from snpsim.host.kernel import HostKernel

#: Block states: (code, name) in legend order; the code is the value stored in :attr:`HostMap.state`.
STATES: tuple[str, ...] = (
    "not RAM",
    "free",
    "host kernel",
    "host page cache / user",
    "hugetlb pool",
    "guest shared",
    "guest private",
)
NOT_RAM, FREE, KERNEL, USER, HUGETLB, SHARED, PRIVATE = range(len(STATES))

#: Direct-map levels of a block: the code stored in :attr:`HostMap.level`.
LEVELS: tuple[str, ...] = ("not mapped", "4K", "4K, some pages unmapped", "2M", "1G")
L_NONE, L_4K, L_4K_HOLES, L_2M, L_1G = range(len(LEVELS))

_NCAT = PRIVATE + 1  # frame categories FREE..PRIVATE (index 0 unused)
#: frame category by owner tag, before the RMP is consulted (guest memory counts as shared until assigned)
_TAG_CATEGORY = np.full(256, FREE, dtype=np.uint8)
for _owner, _cat in {
    Owner.FREE: FREE,
    Owner.KERNEL: KERNEL,
    Owner.KERNEL_RECLAIMABLE: KERNEL,
    Owner.RESERVED: KERNEL,
    Owner.IMAGE: KERNEL,
    Owner.USER: USER,
    Owner.HUGETLB_POOL: HUGETLB,
    Owner.VMM_SHARED: SHARED,
    Owner.VMM_PRIVATE: SHARED,
    Owner.GMEM: SHARED,
}.items():
    _TAG_CATEGORY[_owner] = _cat
#: tags whose assigned frames are guest private (an assigned free frame would be a leak: shown private too)
_GUESTLIKE = np.zeros(256, dtype=np.bool_)
_GUESTLIKE[[Owner.FREE, Owner.VMM_SHARED, Owner.VMM_PRIVATE, Owner.GMEM]] = True

U8 = npt.NDArray[np.uint8]


U16 = npt.NDArray[np.uint16]


class HostMap(NamedTuple):
    """One moment of the picture, per 2M block: state, direct-map level, used, assigned and RAM frames."""

    time_ns: int
    state: U8
    level: U8
    used: U16
    assigned: U16
    ram: U16


def ram_frames_per_block(nframes: int, ram: Sequence[tuple[int, int]] | None) -> npt.NDArray[np.int32]:
    """RAM frames in each 2M block of ``[0, nframes)``, RAM being the union of the PFN ranges ``[lo, hi)``
    (None: every frame)."""
    nblocks = -(-nframes // PAGES_PER_2M)
    out = np.zeros(nblocks, dtype=np.int32)
    for lo, hi in ram if ram is not None else [(0, nframes)]:
        hi = min(hi, nframes)
        if hi <= lo:
            continue
        b0, b1 = lo // PAGES_PER_2M, (hi - 1) // PAGES_PER_2M
        out[b0 : b1 + 1] += PAGES_PER_2M
        out[b0] -= lo - b0 * PAGES_PER_2M
        out[b1] -= (b1 + 1) * PAGES_PER_2M - hi
    return out


def category_counts(host: HostKernel) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """(frames of each category per block: shape (blocks, 7), indexed by FREE..PRIVATE; assigned frames per
    block). Frames beyond ``host.nframes`` are not counted."""
    nframes = host.nframes
    nblocks = -(-nframes // PAGES_PER_2M)
    counts = np.zeros((nblocks, _NCAT), dtype=np.int32)
    assigned = host.rmp.assigned_in_2m_of(np.arange(nblocks, dtype=np.int64) * PAGES_PER_2M).astype(np.int32)
    seg_pages = host.frames.segment_pages
    per_seg = seg_pages // PAGES_PER_2M
    row = np.arange(seg_pages, dtype=np.int64) // PAGES_PER_2M * _NCAT
    in_block = np.arange(PAGES_PER_2M, dtype=np.int64)
    for s, tags in enumerate(host.frames.segments()):
        b0 = s * per_seg
        n = min(seg_pages, nframes - s * seg_pages)
        nb = -(-n // PAGES_PER_2M)
        hot = np.flatnonzero(assigned[b0 : b0 + nb])
        if tags is None and not hot.size:  # never tagged, nothing assigned: all free
            counts[b0 : b0 + nb, FREE] = PAGES_PER_2M
            counts[b0 + nb - 1, FREE] -= nb * PAGES_PER_2M - n
            continue
        tags = np.zeros(n, dtype=np.uint8) if tags is None else tags
        cat = _TAG_CATEGORY[tags]
        if hot.size:
            local = (hot[:, None] * PAGES_PER_2M + in_block).ravel()
            local = local[local < n]
            private = host.rmp.assigned_mask(local + s * seg_pages) & _GUESTLIKE[tags[local]]
            cat[local[private]] = PRIVATE
        counts[b0 : b0 + nb] = np.bincount(row[:n] + cat, minlength=nb * _NCAT).reshape(nb, _NCAT)
    return counts, assigned


def block_states(host: HostKernel, ram: Sequence[tuple[int, int]] | None = None) -> tuple[U8, U16, U16]:
    """(state per 2M block (:data:`STATES` codes), used RAM frames, assigned frames); see the module docstring."""
    counts, assigned = category_counts(host)
    ram_n = ram_frames_per_block(host.nframes, ram)
    # frames outside RAM are never allocated: their FREE tags are not free memory
    counts[:, FREE] = np.maximum(counts[:, FREE] - (counts.sum(axis=1) - ram_n), 0)
    used = np.maximum(ram_n - counts[:, FREE], 0)
    dominant = np.argmax(counts[:, KERNEL:], axis=1).astype(np.uint8) + KERNEL
    state = np.where(used > 0, dominant, FREE).astype(np.uint8)
    state[ram_n == 0] = NOT_RAM
    return state, used.astype(np.uint16), assigned.astype(np.uint16)


def mixed(hostmap: HostMap) -> npt.NDArray[np.bool_]:
    """Blocks holding both assigned and unassigned RAM frames."""
    return (hostmap.assigned > 0) & (hostmap.assigned < hostmap.ram)


def block_levels(host: HostKernel, ram: Sequence[tuple[int, int]] | None = None) -> U8:
    """Direct-map level per 2M block (:data:`LEVELS` codes); a PTE table is "4K" when every RAM page of the block
    is present."""
    level, present = host.directmap.levels_2m()
    ram_n = ram_frames_per_block(host.nframes, ram)
    out = np.full(level.size, L_NONE, dtype=np.uint8)
    out[level == PageSize.SIZE_1G] = L_1G
    out[level == PageSize.SIZE_2M] = L_2M
    table = level == PageSize.SIZE_4K
    out[table & (present >= ram_n)] = L_4K
    out[table & (present > 0) & (present < ram_n)] = L_4K_HOLES
    out[(level == NOT_PRESENT) | (table & (present == 0))] = L_NONE
    return out


def snapshot(host: HostKernel, ram: Sequence[tuple[int, int]] | None = None) -> HostMap:
    """The picture of ``host`` now (``host.clock()``)."""
    state, used, assigned = block_states(host, ram)
    ram_n = ram_frames_per_block(host.nframes, ram).astype(np.uint16)
    return HostMap(int(host.clock()), state, block_levels(host, ram), used, assigned, ram_n)

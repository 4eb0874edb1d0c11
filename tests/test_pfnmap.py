"""PfnMap (sparse gfn -> pfn maps) against a dense int64 array, and the VMM's sparse backing scans."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snpsim.guest.events import Access, Conversion
from snpsim.host import HostKernel
from snpsim.kvm.gmem import GuestMemfd
from snpsim.metrics import Counters
from snpsim.pfnmap import CHUNK_SHIFT, PfnMap, lazy_zeros
from snpsim.policy import presets
from snpsim.runner import GuestDriver
from snpsim.vmm import qemu as qemu_mod
from snpsim.vmm.qemu import Qemu

SIZE = 3000  # not a multiple of the 512-entry chunk
MAX_PFN = 1 << 20

index = st.integers(0, SIZE - 1)
pfn = st.integers(-1, MAX_PFN - 1)
op = st.one_of(
    st.tuples(st.just("slice"), index, index, pfn),
    st.tuples(st.just("index"), st.lists(index, min_size=1, max_size=20, unique=True), pfn),
    st.tuples(st.just("scalar"), index, pfn),
    st.tuples(st.just("clear"), index, index),
    st.tuples(st.just("clear_where"), index, index, st.integers(0, 2**31)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(op, max_size=30))
def test_pfnmap_reads_like_a_dense_array_with_minus_one_for_none(ops: list[tuple]) -> None:
    m, ref = PfnMap(SIZE, MAX_PFN), np.full(SIZE, -1, dtype=np.int64)
    written = np.zeros(SIZE, dtype=bool)
    for o in ops:
        if o[0] == "slice":
            lo, hi = sorted(o[1:3])
            vals = np.arange(hi - lo, dtype=np.int64) + o[3] if o[3] >= 0 else np.full(hi - lo, -1)
            vals = np.minimum(vals, MAX_PFN - 1)
            m[lo:hi], ref[lo:hi] = vals, vals
            written[lo:hi] = True
        elif o[0] == "index":
            idx = np.array(o[1], dtype=np.int64)
            m[idx], ref[idx] = o[2], o[2]
            written[idx] = True
        elif o[0] == "scalar":
            m[o[1]], ref[o[1]] = o[2], o[2]
            written[o[1]] = True
        elif o[0] == "clear":
            lo, hi = sorted(o[1:3])
            m.clear(lo, hi)
            ref[lo:hi] = -1
        else:
            lo, hi = sorted(o[1:3])
            where = (np.arange(hi - lo) * 2654435761 + o[3]) % 3 == 0
            m.clear(lo, hi, where)
            ref[lo:hi][where] = -1
    assert np.array_equal(m[:], ref)
    assert np.array_equal(np.asarray(m), ref)
    assert np.array_equal(m.present(), ref >= 0)
    assert np.array_equal(m.present_at(np.arange(0, SIZE, 7)), ref[::7] >= 0)
    assert all(m[i] == ref[i] for i in range(0, SIZE, 97))
    assert np.array_equal(m[10:20], ref[10:20]) and m.all_present(5, 9) == bool((ref[5:9] >= 0).all())
    # every chunk holding an entry ever written is marked; no other chunk is
    chunks = np.zeros(m.touched_chunks().size, dtype=bool)
    chunks[np.flatnonzero(written) >> CHUNK_SHIFT] = True
    assert np.array_equal(m.touched_chunks(), chunks)


def test_pfnmap_value_width_follows_the_host() -> None:
    small, big = PfnMap(4, (1 << 32) - 2), PfnMap(4, 1 << 33)
    small[0], big[0] = (1 << 32) - 3, (1 << 33) - 1  # the largest frame of each host
    assert (small[0], big[0], small[1], big[1]) == ((1 << 32) - 3, (1 << 33) - 1, -1, -1)
    assert small.nbytes < big.nbytes


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_an_unwritten_pfnmap_costs_no_resident_memory() -> None:
    before = _rss_mib()
    m = PfnMap(1 << 28, 1 << 29)  # a 1 TiB guest's gfns: 1 GiB of uint32 if it were written
    m[5:10] = np.arange(5)
    m[(1 << 28) - 3] = 7
    assert _rss_mib() - before < 64
    assert m.present().sum() == 6  # a read pass faults in zero pages only (no copy kept)


def _stack(policy: str) -> tuple[Qemu, GuestDriver]:
    pol = presets[policy]
    host = HostKernel(1 << 18, pol)
    vmm = Qemu(host, pol, np.ones(1 << 14, dtype=bool), asid=1, counters=Counters())
    return vmm, GuestDriver(vmm)


@pytest.mark.parametrize("policy", ["upstream", "hugetlb", "fixup", "upm-nosplit"])
def test_guest_bytes_counts_backed_pages_in_their_state(policy: str) -> None:
    vmm, guest = _stack(policy)
    guest.execute(Conversion(0, 512, True, huge_ok=True))  # 2 MiB private, validated
    guest.execute(Conversion(8192, 16, False))  # 16 pages far away made shared...
    guest.execute(Access(8192, 16, private=False))  # ...and touched: backed by shared pages
    # by hand: 512 private gfns with a private page + 16 shared gfns with a shared page
    assert vmm.guest_bytes() == (512 + 16) * 4096


@pytest.mark.parametrize("policy", ["upstream", "upm", "hugetlb", "fixup", "upm-nosplit"])
def test_sparse_backing_scan_equals_the_full_scan(policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    vmm, guest = _stack(policy)
    rng = np.random.default_rng(3)
    guest.execute(Conversion(0, 1024, True, huge_ok=True))
    for _ in range(60):
        n = int(rng.integers(1, 40))
        g = int(rng.choice([rng.integers(0, 2048), rng.integers(9000, 9200)]))
        to_private = bool(rng.integers(2))
        guest.execute(Conversion(g, n, to_private))
        guest.execute(Access(g, n, private=to_private))
    sparse = (vmm.guest_bytes(), vmm.double_allocated_bytes())
    gm = vmm.kvm.gmem
    if gm is not None and gm.folio_pages > 1 << 14:  # hugetlb: one 1G folio spans the whole 64 MiB guest
        assert vmm._scan_ranges() == [(0, 1 << 14)]
    else:
        assert len(vmm._scan_ranges()) == 2  # the scan skips the untouched middle
    monkeypatch.setattr(qemu_mod, "_MAX_SCAN_RANGES", -1)
    assert vmm._scan_ranges() == [(0, 1 << 14)]
    assert (vmm.guest_bytes(), vmm.double_allocated_bytes()) == sparse
    assert sparse[0] > 0


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_lazy_zeros_costs_what_is_written_and_gives_it_back_when_freed() -> None:
    """After big blocks were freed, glibc serves ``calloc`` below 32 MiB from its heap and memsets it (all
    resident); lazy arrays still cost only the pages written, and give them back when freed."""
    for _ in range(3):  # raise glibc's dynamic mmap threshold, as a run's VM churn does
        np.zeros(24 << 20, dtype=np.uint8).fill(1)
    before = _rss_mib()
    arrays = [lazy_zeros(4 << 20, np.uint32) for _ in range(8)]  # 8 x 16 MiB
    assert not any(a.any() for a in arrays) and all(a.flags.writeable for a in arrays)
    assert _rss_mib() - before < 8
    arrays[0][: 2 << 20] = 7  # 8 MiB written
    assert 6 < _rss_mib() - before < 16
    del arrays
    assert _rss_mib() - before < 4


def _resident_bytes(a: np.ndarray) -> int:
    """Bytes of ``a``'s pages in memory (mincore(2))."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    page = mmap.PAGESIZE
    addr = a.__array_interface__["data"][0]
    lo = addr & ~(page - 1)
    npages = (addr + a.nbytes - lo + page - 1) // page
    vec = (ctypes.c_ubyte * npages)()
    assert libc.mincore(ctypes.c_void_p(lo), ctypes.c_size_t(npages * page), vec) == 0
    return sum(v & 1 for v in vec) * page


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux")
def test_a_guest_memfd_costs_no_resident_memory_until_used_after_vm_churn() -> None:
    """guest_memfd's per-page and per-folio arrays (the folio table, the THP fallback's bits, the split bits, the
    extra references) come from :func:`lazy_zeros`: after VM churn raised glibc's threshold, ``numpy.zeros``
    serves them from recycled heap chunks, every page resident (a month of churn peaked at 9.2 GiB, 3.8 GiB
    with them lazy)."""
    host = HostKernel(1 << 20, presets["upstream"])
    for _ in range(3):  # raise glibc's dynamic mmap threshold, as a run's VM churn does
        np.zeros(24 << 20, dtype=np.uint8).fill(1)
    dirty = np.ones(23 << 20, dtype=np.uint8)  # a destroyed VM's block in the heap, below a live one
    live = np.ones(1 << 16, dtype=np.uint8).tobytes() * 4
    del dirty
    # a 16 GiB guest in 4K folios: 4 Mi entries per array; refs alone are 16 MiB of int32
    gm = GuestMemfd(host, 1 << 22, 1, invalidate=lambda frames: None)
    assert gm.refs.nbytes == 16 << 20
    for a in (gm.refs, gm.small_folio, gm.split_2m):
        assert _resident_bytes(a) == 0  # before any read (mincore counts the zero page a read maps)
        assert not a.any()
    del live

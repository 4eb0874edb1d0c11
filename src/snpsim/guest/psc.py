"""Guest-side Page State Change: how a Linux SNP guest turns one conversion into PSC requests and PVALIDATEs.

Models the Linux guest's ``set_pages_state()`` / ``__set_pages_state()`` / ``early_set_pages_state()`` and
``pvalidate_pages()`` (``arch/x86/coco/sev/core.c``), following ``shared/reference/guest-workloads.md`` §1
("How one guest conversion reaches the host", SNP) and ``shared/reference/amd-snp-arch.md`` §9 (GHCB Page State
Change, GHCB spec 56421):

* **MSR protocol** (``Protocol.MSR``; GHCBInfo 0x014, used before a GHCB exists, e.g. ``early_set_pages_state()``):
  one request per 4K page, one 4K entry each; the guest PVALIDATEs every page at 4K.
* **GHCB protocol** (``Protocol.GHCB``; NAE event ``SVM_VMGEXIT_PSC`` 0x8000_0010): the range is walked in
  ascending GFN order; an entry is 2M iff the address is a direct-map address (``Conversion.huge_ok``; vmalloc
  addresses are always 4K), 2M-aligned and at least 2M remain, else 4K. Entries are packed into descriptors of at
  most ``max_entries`` entries: Linux uses ``VMGEXIT_PSC_MAX_ENTRY = 64`` (stack-limited); the GHCB shared
  buffer holds at most ``VMGEXIT_PSC_MAX_COUNT = 253``. One VMGEXIT per descriptor (the host may process only part
  of it and the guest re-issues the rest; that retry is the kvm layer's business).
* **PVALIDATE order**: to-shared conversions rescind validation *before* the VMGEXIT, to-private conversions
  validate *after* it (per descriptor), at the size of the PSC entry: 2M where the entry was 2M, else 4K. If a 2M
  PVALIDATE fails with FAIL_SIZEMISMATCH Linux retries the 2M range as 512 4K PVALIDATEs; that fallback is left
  to the caller, which sees the RMP.

Everything is computed from run-length structure (at most three runs per conversion: a 4K head up to the first
2M boundary, the 2M middle, a 4K tail), so a 2M-aligned 4 GiB conversion costs 2048 entries, not 1M objects;
:func:`iter_request_runs` and :func:`pvalidate_plan` never build per-page objects at all.
"""

from __future__ import annotations

from collections.abc import Iterator

from snpsim.arch import PscEntry, PscRequest
from snpsim.guest.events import Conversion, Protocol

__all__ = [
    "PAGES_PER_2M",
    "SIZE_2M",
    "SIZE_4K",
    "VMGEXIT_PSC_MAX_COUNT",
    "VMGEXIT_PSC_MAX_ENTRY",
    "PscEntry",
    "PscRequest",
    "Run",
    "build_requests",
    "count_requests",
    "entry_count",
    "entry_runs",
    "iter_request_runs",
    "pvalidate_before_psc",
    "pvalidate_plan",
    "request_runs",
]

#: 4K pages in a 2M page (PTRS_PER_PMD).
PAGES_PER_2M = 512
#: PSC entry page size (``pagesize`` bit 56 of a PSC entry; RMP_PG_SIZE_4K / RMP_PG_SIZE_2M).
SIZE_4K = 0
SIZE_2M = 1
#: Linux guest descriptor size (``VMGEXIT_PSC_MAX_ENTRY``; ``struct snp_psc_desc`` lives on the stack).
VMGEXIT_PSC_MAX_ENTRY = 64
#: Entries that fit in the GHCB shared buffer: (2032 - 8) / 8 (``VMGEXIT_PSC_MAX_COUNT``; amd-snp-arch.md §9).
VMGEXIT_PSC_MAX_COUNT = 253

#: A run of same-size, GFN-contiguous items: ``(gfn, count, size)``. For entry runs ``count`` counts PSC entries
#: (each 512 pages if ``size == SIZE_2M``); for PVALIDATE plans and :func:`request_runs` it counts 4K pages.
Run = tuple[int, int, int]


def _check(conv: Conversion) -> None:
    if conv.gfn < 0 or conv.npages < 0:
        raise ValueError(f"bad conversion range gfn={conv.gfn} npages={conv.npages}")


def _check_max_entries(max_entries: int) -> None:
    if not 1 <= max_entries <= VMGEXIT_PSC_MAX_COUNT:
        raise ValueError(f"max_entries must be in [1, {VMGEXIT_PSC_MAX_COUNT}] (GHCB limit), got {max_entries}")


def entry_runs(conv: Conversion) -> list[Run]:
    """The PSC entries of ``conv`` as at most three runs ``(gfn, n_entries, size)``, ascending.

    MSR protocol or ``huge_ok=False``: one 4K run. Otherwise ``__set_pages_state()``'s rule: 4K entries up to the
    first 2M-aligned GFN, 2M entries while a whole 2M remains, 4K entries for the tail; if no whole aligned 2M fits,
    every entry is 4K.
    """
    _check(conv)
    g, n = conv.gfn, conv.npages
    if n == 0:
        return []
    if conv.protocol is Protocol.MSR or not conv.huge_ok:
        return [(g, n, SIZE_4K)]
    end = g + n
    first_2m = -(-g // PAGES_PER_2M) * PAGES_PER_2M
    if first_2m + PAGES_PER_2M > end:
        return [(g, n, SIZE_4K)]
    n_2m = (end - first_2m) // PAGES_PER_2M
    tail = first_2m + n_2m * PAGES_PER_2M
    runs: list[Run] = []
    if first_2m > g:
        runs.append((g, first_2m - g, SIZE_4K))
    runs.append((first_2m, n_2m, SIZE_2M))
    if end > tail:
        runs.append((tail, end - tail, SIZE_4K))
    return runs


def entry_count(conv: Conversion) -> int:
    """Number of PSC entries (MSR protocol: one per page)."""
    return sum(count for _, count, _ in entry_runs(conv))


def count_requests(conv: Conversion, max_entries: int = VMGEXIT_PSC_MAX_ENTRY) -> int:
    """``len(build_requests(conv, max_entries))`` computed arithmetically (no entries are built)."""
    _check_max_entries(max_entries)
    n = entry_count(conv)
    if conv.protocol is Protocol.MSR:
        return n
    return -(-n // max_entries)


def iter_request_runs(conv: Conversion, max_entries: int = VMGEXIT_PSC_MAX_ENTRY) -> Iterator[tuple[Run, ...]]:
    """For each request of ``conv`` in order, its entries as runs ``(gfn, n_entries, size)`` (at most three).

    The cheap form of :func:`build_requests` for the kvm layer: a 4K-only 1M-page conversion yields 16,384 small
    tuples instead of 1M :class:`PscEntry` objects.
    """
    _check_max_entries(max_entries)
    if conv.protocol is Protocol.MSR:
        _check(conv)
        for gfn in range(conv.gfn, conv.gfn + conv.npages):
            yield ((gfn, 1, SIZE_4K),)
        return
    cur: list[Run] = []
    room = max_entries
    for gfn, count, size in entry_runs(conv):
        step = PAGES_PER_2M if size == SIZE_2M else 1
        while count:
            take = min(count, room)
            cur.append((gfn, take, size))
            gfn += take * step
            count -= take
            room -= take
            if room == 0:
                yield tuple(cur)
                cur = []
                room = max_entries
    if cur:
        yield tuple(cur)


def build_requests(conv: Conversion, max_entries: int = VMGEXIT_PSC_MAX_ENTRY) -> list[PscRequest]:
    """The PSC requests the guest sends for ``conv``, in order (see the module docstring for the rules).

    ``max_entries`` applies to the GHCB protocol only (Linux: 64; GHCB maximum: 253); the MSR protocol always
    sends one 4K entry per request.
    """
    proto, to_private = conv.protocol, conv.to_private
    requests: list[PscRequest] = []
    for runs in iter_request_runs(conv, max_entries):
        entries: list[PscEntry] = []
        for gfn, count, size in runs:
            step = PAGES_PER_2M if size == SIZE_2M else 1
            entries.extend(_entry(g, size, to_private) for g in range(gfn, gfn + count * step, step))
        requests.append(PscRequest(proto, tuple(entries)))
    return requests


# Fast construction of many frozen entries: set the slots directly (the frozen dataclass __init__ goes through
# object.__setattr__ three times; this is ~2x faster for the 1M-entry conversions of a 4 GiB 4K-only range).
_new = object.__new__
_set_gfn = PscEntry.__dict__["gfn"].__set__
_set_size = PscEntry.__dict__["size"].__set__
_set_to_private = PscEntry.__dict__["to_private"].__set__


def _entry(gfn: int, size: int, to_private: bool) -> PscEntry:
    e = _new(PscEntry)
    _set_gfn(e, gfn)
    _set_size(e, size)
    _set_to_private(e, to_private)
    return e


def request_runs(req: PscRequest) -> list[Run]:
    """The entries of one request coalesced into runs ``(gfn, npages, size)`` with ``npages`` in 4K pages.

    What KVM's ``snp_begin_psc()`` does before exiting to userspace: adjacent entries with the same operation, the
    same page size and contiguous GFNs become one ``KVM_HC_MAP_GPA_RANGE`` exit (guest-workloads.md §1).
    """
    runs: list[Run] = []
    for e in req.entries:
        n = e.npages
        if runs:
            g, cnt, size = runs[-1]
            if size == e.size and g + cnt == e.gfn:
                runs[-1] = (g, cnt + n, size)
                continue
        runs.append((e.gfn, n, e.size))
    return runs


def pvalidate_before_psc(conv: Conversion) -> bool:
    """True when the guest PVALIDATEs (rescinds) before the PSC: to-shared. To-private validates after."""
    return not conv.to_private


def pvalidate_plan(conv: Conversion) -> list[Run]:
    """The guest's PVALIDATEs for ``conv`` as contiguous runs ``(gfn, npages, size)``, ``npages`` in 4K pages.

    ``size`` is 1 (2M PVALIDATE, one per 512 pages) where the PSC entry was 2M, else 0 (one 4K PVALIDATE per page):
    ``pvalidate_pages()`` uses each entry's page size. MSR protocol: 4K only. A to-private conversion with
    ``validate=False`` is not validated by the guest (empty plan); a to-shared conversion always rescinds.
    Order relative to the PSC: :func:`pvalidate_before_psc`.
    """
    if conv.to_private and not conv.validate:
        _check(conv)
        return []
    return [(g, count * PAGES_PER_2M if size == SIZE_2M else count, size) for g, count, size in entry_runs(conv)]

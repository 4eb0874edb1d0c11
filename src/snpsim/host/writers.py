"""Kernel paths that touch memory through the direct map, as host threads a scenario can enable.

Each writer stands for a real kernel path and names it in the crash records (``Crash.path``):

- :func:`page_zeroing`: ``mm/page_alloc.c`` ``kernel_init_pages()`` / ``clear_highpage()``: host allocations
  (page cache, anonymous memory) are zeroed through the direct map when handed out, then freed later.
- :func:`compaction`: ``mm/compaction.c`` ``isolate_migratepages()`` + ``mm/migrate.c`` ``folio_mc_copy()``: the
  migration scanner walks memory from low PFNs, and each movable page found is copied to a newly allocated page
  (a read of the source, a write of the destination) and freed.
- :func:`ksm`: ``mm/ksm.c`` ``ksm_do_scan()`` → ``calc_checksum()`` / ``memcmp_pages()``: reads the VMM's
  ``MADV_MERGEABLE`` guest memory through the direct map (reads are not RMP-checked, but an unmapped page oopses:
  "things like KSM might still try to access private pages", Roth 2022, linux-snp-host.md §6).
- :func:`hibernation`: ``kernel/power/snapshot.c`` ``copy_data_page()`` (snapshot: every in-use page is read
  (``safe_copy_page`` maps a not-present page temporarily, so reads never fault) and written to an image page) and
  the resume copy ``swsusp_arch_resume`` writing every saved page back to its frame.

Each writer is a kernel thread (or the tasks it stands for): a generator that yields how long it sleeps, in ns; the
engine runs it on its own CPU account, so the work it does (page clearing, copies, faults) takes simulated time
too. Every writer is deterministic given the scenario seed (its RNG stream, keyed by its name, is passed in).
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np

from snpsim.host.frames import Owner
from snpsim.host.kernel import PATH_ZERO as PATH_ZERO  # the allocator's zeroing path, named here with the others
from snpsim.host.kernel import HostKernel

#: A host thread: yields the ns it sleeps.
Thread = Generator[int, None, None]

PATH_MIGRATE = "mm/migrate.c:folio_mc_copy"
PATH_KSM = "mm/ksm.c:calc_checksum"
PATH_HIBERNATE_SNAPSHOT = "kernel/power/snapshot.c:copy_data_page"
PATH_HIBERNATE_RESTORE = "arch/x86/power/hibernate_asm_64.S:swsusp_arch_resume"


def page_zeroing(
    host: HostKernel,
    rng: np.random.Generator,
    *,
    interval_ns: int = 1_000_000,
    batch: int = 64,
    resident_pages: int = 4096,
) -> Thread:
    """Allocate ``batch`` order-0 pages every ``interval_ns`` (± 50 %, seeded), zeroing each; keep at most
    ``resident_pages`` and free the oldest beyond that (page-cache churn)."""
    lru = host.lru
    while True:
        yield int(interval_ns * rng.uniform(0.5, 1.5))
        # ``batch`` alloc(0) calls (as many as memory allows), done in bulk: same frames, each zeroed
        n = min(batch, host.buddy.free_frames)
        if n:
            got = host.alloc_bulk(0, n, Owner.USER)
            assert got is not None
            lru.update(dict.fromkeys(got.tolist()))
        excess = len(lru) - resident_pages
        if excess > 0:
            host.free_bulk(np.array([lru.popitem(last=False)[0] for _ in range(excess)], dtype=np.int64), 0)


def compaction(
    host: HostKernel,
    rng: np.random.Generator,
    *,
    interval_ns: int = 10_000_000,
    batch: int = 32,
    max_scan: int = 1 << 16,
) -> Thread:
    """Every ``interval_ns``, migrate up to ``batch`` movable pages found by a linear migration scanner."""
    cursor = 0
    while True:
        yield int(interval_ns * rng.uniform(0.5, 1.5))
        found = host.frames.find((Owner.USER,), cursor, batch, max_scan)
        cursor = int(found[-1]) + 1 if found.size == batch else cursor + max_scan
        cursor %= host.nframes
        for src in found:
            dst = host.alloc(0, Owner.USER, zero=False)
            if dst is None:
                break
            host.kernel_read(int(src), PATH_MIGRATE)
            host.kernel_write(dst, PATH_MIGRATE)
            host.charge("page_copy", host.costs.page_clear_ns)
            host.lru.pop(int(src), None)
            host.lru[dst] = None
            host.free(int(src), 0)


def ksm(
    host: HostKernel,
    rng: np.random.Generator,
    *,
    interval_ns: int = 20_000_000,
    pages_to_scan: int = 100,
    max_scan: int = 1 << 18,
) -> Thread:
    """ksmd: every ``interval_ns`` (sleep_millisecs) read ``pages_to_scan`` pages of mergeable VMM memory."""
    cursor = 0
    while True:
        yield int(interval_ns * rng.uniform(0.9, 1.1))
        found = host.frames.find((Owner.VMM_SHARED, Owner.VMM_PRIVATE), cursor, pages_to_scan, max_scan)
        cursor = int(found[-1]) + 1 if found.size == pages_to_scan else cursor + max_scan
        cursor %= host.nframes
        for pfn in found:
            host.kernel_read(int(pfn), PATH_KSM)


def hibernation(
    host: HostKernel,
    rng: np.random.Generator,
    *,
    at_ns: int,
    restore: bool = True,
    max_pages: int | None = None,
) -> Thread:
    """Hibernate once at ``at_ns``: snapshot every in-use page into image pages, then (``restore``) write the
    saved pages back. ``max_pages`` bounds the snapshot (a sample of in-use pages drawn with the seeded RNG)."""
    yield at_ns
    in_use = host.frames.find(
        tuple(o for o in Owner if o not in (Owner.FREE, Owner.IMAGE, Owner.RESERVED)), 0, host.nframes, host.nframes
    )
    if max_pages is not None and in_use.size > max_pages:
        in_use = np.sort(rng.choice(in_use, size=max_pages, replace=False))
    image = host.alloc_bulk(0, int(in_use.size), Owner.IMAGE, zero=False)
    if image is None:
        return  # not enough free memory for the image: hibernation aborts (-ENOMEM), nothing written
    host.kernel_write_range(image, PATH_HIBERNATE_SNAPSHOT)
    if restore:
        host.kernel_write_range(in_use, PATH_HIBERNATE_RESTORE)
    host.free_bulk(image, 0)


#: Each writer is called as ``writer(host, rng, **params)`` with its own keyword-only parameters.
WRITERS: dict[str, Callable[..., Thread]] = {
    "page_zeroing": page_zeroing,
    "compaction": compaction,
    "ksm": ksm,
    "hibernation": hibernation,
}

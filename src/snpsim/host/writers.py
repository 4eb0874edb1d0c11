"""Kernel paths that touch memory through the direct map, as host threads a scenario can enable.

Each writer stands for a real kernel path and names it in the crash records (``Crash.path``):

- :func:`page_zeroing`: ``mm/page_alloc.c`` ``kernel_init_pages()`` / ``clear_highpage()``: host allocations
  (page cache, anonymous memory) are zeroed through the direct map when handed out, then freed later.
- :func:`compaction`: kcompactd's proactive compaction (``mm/compaction.c`` ``proactive_compact_node`` →
  ``compact_zone``, :class:`snpsim.host.compaction.Compactor`): when the node's fragmentation score is above its
  high mark, the migration scanner walks each zone from low PFNs and each movable page found is copied
  (``folio_mc_copy``: a read of the source, a write of the destination) to a free page the free scanner isolated
  from the top of the zone, and freed.
- :func:`ksm`: ``mm/ksm.c`` ``ksm_do_scan()`` → ``calc_checksum()`` / ``memcmp_pages()``: reads the VMM's
  ``MADV_MERGEABLE`` guest memory through the direct map (reads are not RMP-checked, but an unmapped page oopses:
  "things like KSM might still try to access private pages", Roth 2022, linux-snp-host.md §6).
- :func:`hibernation`: ``kernel/power/snapshot.c`` ``copy_data_page()`` (snapshot: every in-use page is read
  (``safe_copy_page`` maps a not-present page temporarily, so reads never fault) and written to an image page) and
  the resume copy ``swsusp_arch_resume`` writing every saved page back to its frame.

Host accessors of guest memory (:mod:`snpsim.host.uaccess`): each writes pages of every live VM that host code
really writes (:attr:`snpsim.host.uaccess.GuestRam.targets`), through the path, context and address kind of
:data:`snpsim.host.uaccess.ACCESSORS`:

- :func:`vhost`: vhost-net workers copying received packets into the guest's virtqueue buffers and bounce slots
  (``drivers/vhost/net.c`` ``handle_rx``, ``copy_to_user`` on the VMM's mapping), ``batch`` copies per wake-up;
  with ``zcopytx`` (the module parameter ``experimental_zcopytx``, 0 by default since "vhost_net: disable
  zerocopy by default", 2019) also zero-copy transmits that hold a reference on ``batch`` virtqueue pages while
  the NIC sends them (:func:`snpsim.host.uaccess.guest_pin`): an in-place guest_memfd conversion of such a page
  is refused with ``-EAGAIN`` until the transmit completes;
- :func:`qemu_device`: QEMU's device emulation writing the used ring from user mode (``virtqueue_push``);
- :func:`kvm_pv`: KVM's own writes: steal time, PV EOI, kvmclock through the gfn-to-pfn cache, the GHCB.

[I-model] "In step with the guest's I/O" is a rate: ``interval_ns`` between wake-ups (± 50 %, seeded), each
writing ``batch`` pages drawn from the targets; a guest that takes a target page private (``hostile-convert``)
meets the next write to it.

Each writer is a kernel thread (or the tasks it stands for): a generator that yields how long it sleeps, in ns; the
engine runs it on its own CPU account, so the work it does (page clearing, copies, faults) takes simulated time
too. Every writer is deterministic given the scenario seed (its RNG stream, keyed by its name, is passed in).
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import numpy as np

from snpsim.host.compaction import COMPACTION_PROACTIVENESS, PATH_COMPACT
from snpsim.host.frames import Owner
from snpsim.host.kernel import PATH_ZERO as PATH_ZERO  # the allocator's zeroing path, named here with the others
from snpsim.host.kernel import HostKernel
from snpsim.host.uaccess import ACCESSORS, GuestRam, guest_pin, guest_write

#: A host thread: yields the ns it sleeps.
Thread = Generator[int, None, None]

PATH_MIGRATE = PATH_COMPACT  # the copy of migrate_pages (folio_mc_copy) called from compact_zone
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
        n = min(batch, host.buddy.obtainable(0))
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
    interval_ns: int = 500_000_000,
    batch: int = 1 << 14,
    proactiveness: int = COMPACTION_PROACTIVENESS,
) -> Thread:
    """kcompactd: every ``interval_ns`` (``HPAGE_FRAG_CHECK_INTERVAL_MSEC`` = 500 ms) run proactive compaction if the
    node's fragmentation score is above ``100 - proactiveness + 10`` (``vm.compaction_proactiveness``, default 20),
    migrating at most ``batch`` pages per wake-up."""
    while True:
        yield int(interval_ns * rng.uniform(0.5, 1.5))
        host.compactor.proactive(proactiveness, budget=batch)


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


def _guest_writer(
    host: HostKernel, rng: np.random.Generator, accessors: tuple[str, ...], interval_ns: int, batch: int
) -> Thread:
    """Every ``interval_ns`` (± 50 %): for each live VM and each accessor, ``batch`` writes to its target pages."""
    accs = [ACCESSORS[a] for a in accessors]
    while True:
        yield int(interval_ns * rng.uniform(0.5, 1.5))
        for ram in list(host.guest_rams):
            if not ram.ready():
                continue
            for acc in accs:
                pool = [ram.targets[k] for k in acc.targets if k in ram.targets and ram.targets[k].size]
                if not pool:
                    continue
                pages = np.concatenate(pool)
                for g in rng.choice(pages, size=batch).tolist():
                    if ram not in host.guest_rams:
                        break  # the VM died (SIGBUS) during this batch
                    guest_write(host, ram, int(g), acc)


def vhost(
    host: HostKernel,
    rng: np.random.Generator,
    *,
    interval_ns: int = 100_000,
    batch: int = 4,
    zcopytx: bool = False,
    tx_completes_after: int = 2,
) -> Thread:
    """vhost-net workers: ``batch`` rx ``copy_to_user`` into virtqueue buffers / bounce slots per wake-up (task
    context, user address, exception-table fixup); with ``zcopytx``, ``batch`` zero-copy transmits too, each
    holding its page until the NIC completes it: [I] within ``tx_completes_after`` back-off intervals of a
    conversion retry that waits on it, and at the latest by the worker's next wake-up."""
    rx = _guest_writer(host, rng, ("vhost_net_rx",), interval_ns, batch)
    if not zcopytx:
        return rx
    return _zerocopy_tx(host, rng, rx, batch, tx_completes_after)


def _zerocopy_tx(host: HostKernel, rng: np.random.Generator, rx: Thread, batch: int, completes_after: int) -> Thread:
    """``handle_tx_zerocopy`` after each rx wake-up: the previous transmits complete (``vhost_zerocopy_complete``),
    then ``batch`` new ones pin virtqueue pages of each live VM."""
    held: list[tuple[GuestRam, object]] = []
    for sleep in rx:
        yield sleep
        for ram, pin in held:
            ram.unpin(pin)
        held.clear()
        for ram in list(host.guest_rams):
            pages = ram.targets.get("virtqueue")
            if not ram.ready() or pages is None or not pages.size:
                continue
            for g in rng.choice(pages, size=batch).tolist():
                _, pin = guest_pin(host, ram, int(g), completes_after)
                if pin is not None:
                    held.append((ram, pin))


def qemu_device(host: HostKernel, rng: np.random.Generator, *, interval_ns: int = 1_000_000, batch: int = 1) -> Thread:
    """QEMU device emulation: user-mode writes of the used ring (``virtqueue_push``)."""
    return _guest_writer(host, rng, ("qemu_virtio",), interval_ns, batch)


def kvm_pv(host: HostKernel, rng: np.random.Generator, *, interval_ns: int = 1_000_000, batch: int = 1) -> Thread:
    """KVM's paravirt writes: steal time (``record_steal_time``, and ``kvm_steal_time_set_preempted`` from the
    preempt notifier), PV EOI, kvmclock (gfn-to-pfn cache, atomic, kernel address) and the GHCB (``kvm_vcpu_map``)."""
    return _guest_writer(
        host, rng, ("steal_time", "steal_time_preempted", "pv_eoi", "kvmclock", "ghcb"), interval_ns, batch
    )


#: The writers that write guest memory (the engine gives them each live VM's RAM)
GUEST_WRITERS = ("vhost", "qemu_device", "kvm_pv")

#: Each writer is called as ``writer(host, rng, **params)`` with its own keyword-only parameters.
WRITERS: dict[str, Callable[..., Thread]] = {
    "page_zeroing": page_zeroing,
    "compaction": compaction,
    "ksm": ksm,
    "hibernation": hibernation,
    "vhost": vhost,
    "qemu_device": qemu_device,
    "kvm_pv": kvm_pv,
}

"""What a guest asks of the host: conversions of guest-physical ranges and accesses to its private memory.

The guest layer (:mod:`snpsim.guest.linux`) turns Linux guest behaviour (``shared/reference/guest-workloads.md``
§1-§2) into these events; :mod:`snpsim.guest.psc` turns a conversion into the Page State Change requests the
guest kernel really sends (``set_pages_state()`` in ``arch/x86/coco/sev/core.c``); the kvm layer executes them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from snpsim.arch import Protocol

__all__ = ["Access", "Booted", "Conversion", "Protocol", "Rebooting", "Timed", "by_vcpu"]


@dataclass(frozen=True, slots=True)
class Conversion:
    """The guest converts ``npages`` 4K pages from ``gfn`` to private (``to_private``) or to shared.

    ``huge_ok``: the range is addressed through the guest's direct map, so ``set_pages_state()`` may use 2M
    PSC entries (and 2M PVALIDATE) where the GFN is 2M-aligned with at least 2M left; vmalloc'ed ranges are 4K.
    ``validate``: for a to-private conversion, the guest PVALIDATEs the pages afterwards (always true for Linux;
    false only for conversions the guest does not use, kept for traces). ``what`` names the guest object
    (``"ghcb"``, ``"swiotlb"`` ...), for reports.
    """

    gfn: int
    npages: int
    to_private: bool
    protocol: Protocol = Protocol.GHCB
    huge_ok: bool = False
    what: str = ""
    vcpu: int = 0
    validate: bool = True


@dataclass(frozen=True, slots=True)
class Access:
    """The guest touches ``npages`` pages from ``gfn`` as private (C=1) or shared (C=0) memory."""

    gfn: int
    npages: int
    private: bool
    write: bool = True
    what: str = ""
    vcpu: int = 0


@dataclass(frozen=True, slots=True)
class Booted:
    """The guest kernel has finished booting (it starts init): a milestone the boot CPU logs with its clock."""

    what: str = "booted"
    vcpu: int = 0


@dataclass(frozen=True, slots=True)
class Rebooting:
    """The guest starts booting again (kexec): its events run on the boot CPU until the next :class:`Booted`."""

    what: str = "rebooting"
    vcpu: int = 0


@dataclass(frozen=True, slots=True)
class Timed:
    """An event at time ``time_ns`` of the workload's schedule (relative to the VM's start; the host's costs
    delay each vCPU's events, which keep their spacing)."""

    time_ns: int
    event: Conversion | Access | Booted | Rebooting


def by_vcpu(events: Iterable[Timed], vcpus: int) -> list[Iterator[Timed]]:
    """Split one VM's event stream (ascending times) into the streams of its vCPUs, lazily: each pulls from the
    shared source and buffers what belongs to the others.

    A boot runs on the boot CPU: every event from the start (or a :class:`Rebooting`) until :class:`Booted` goes to
    vCPU 0, the application processors' few boot events (touching their GHCB and per-CPU pages) included. Linux
    brings the APs up from the BSP (``smp_init``) after the early set-up that converts those pages, so running
    them in the BSP's sequence keeps that order whatever the host's costs; boot time is the BSP's. Afterwards each
    event runs on its own vCPU."""
    source = iter(events)
    queues: list[deque[Timed]] = [deque() for _ in range(vcpus)]
    booting = [True]

    def stream(v: int) -> Iterator[Timed]:
        mine = queues[v]
        while True:
            while not mine:
                timed = next(source, None)
                if timed is None:
                    return
                ev = timed.event
                if isinstance(ev, Rebooting):
                    booting[0] = True
                queues[0 if booting[0] else ev.vcpu % vcpus].append(timed)
                if isinstance(ev, Booted):
                    booting[0] = False
            yield mine.popleft()

    return [stream(v) for v in range(vcpus)]

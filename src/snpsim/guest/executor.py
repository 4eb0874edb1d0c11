"""The SNP guest kernel's side of memory state: the instructions its vCPUs execute for each guest event.

Models Linux ``arch/x86/coco/sev/core.c`` ``snp_set_memory_shared()`` / ``snp_set_memory_private()`` /
``snp_accept_memory()`` → ``set_pages_state()`` and ``pvalidate_pages()`` (``shared/reference/amd-snp-arch.md``
§8, ``guest-workloads.md`` §1): to make memory shared the guest first rescinds validation (PVALIDATE validate=0)
and then sends the Page State Change; to make it private it sends the PSC and then validates. A 2M PVALIDATE that
fails with FAIL_SIZEMISMATCH is retried as 512 4K PVALIDATEs (``pvalidate_pages``). Rescinding before sharing
means the host never gets a page the guest still treats as valid; validating after the host assigned the page
means any later remapping by the host clears Validated and the guest sees #VC (the integrity argument, §8).

A guest program (:meth:`SnpGuest.program`) is a generator of :mod:`snpsim.arch` instructions for one vCPU: it
computes for the time between consecutive events (their spacing in the workload's schedule), then executes the
event; KVM runs it (:mod:`snpsim.kvm.vcpu`) and sends back each instruction's result. The time the host takes
therefore delays the guest: each vCPU's events keep their spacing after the previous one completes. The guest
reads its own clock (kvmclock; the engine passes it in) to log its boot time and each conversion's latency
(:class:`GuestLog`), as ``dmesg`` timestamps would.

On #VC 0x404 (an access to a page the host remapped or took back) a real Linux guest terminates
(``on_vc_404 = "terminate"``: ``vc_handle_exitcode()`` returns ``ES_UNSUPPORTED`` for it, and
``exc_vmm_communication()`` calls ``sev_es_terminate()``, arch/x86/coco/sev/core.c): the program logs the time
(``GuestLog.terminated_ns``), calls ``GuestLog.on_terminate`` and every vCPU's program ends. With
``on_vc_404 = "continue"`` (the default of a bare :class:`SnpGuest`, as test drivers use it) the model counts the
#VC (in KVM's run loop) and the guest re-validates the page at 4K and goes on (a 4K PVALIDATE on a 2M RMP entry
takes an RMP #NPF that KVM resolves with PSMASH). PVALIDATE failures other than the 2M size mismatch (which a
correct host never causes) skip the failing page or block, as the model has no panic.

The guest remembers which of its pages it validated (``validated``) so it rescinds only those, as Linux only
converts memory it owns in a known state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from snpsim.arch import (
    PAGES_PER_2M,
    Compute,
    PageSize,
    Pvalidate,
    PvalidateResult,
    RmpStatus,
    Touch,
    VcRaised,
    Vmgexit,
)
from snpsim.guest.events import Access, Booted, Conversion, Rebooting, Timed
from snpsim.guest.psc import build_requests, pvalidate_plan
from snpsim.pfnmap import lazy_zeros

#: A guest program: the instructions of one vCPU, each answered with its result.
Program = Any  # Generator[Instruction, Any, None]; kept loose for the delegation below


@dataclass
class GuestLog:
    """What the guest logs with its own clock: when it finished booting, how long each conversion took, and
    (``requests`` not None) each conversion it asked for: (time_ns, gfn, npages, to_private). ``on_boot`` is
    called at the instant the boot is logged (the engine notes what the boot cost the host up to then)."""

    booted_ns: int | None = None
    conversion_ns: list[int] = field(default_factory=list)
    requests: list[tuple[int, int, int, bool]] | None = None
    on_boot: Callable[[], None] | None = None
    #: when the guest terminated at a #VC 0x404 (None: it did not), and who is told at that instant
    terminated_ns: int | None = None
    on_terminate: Callable[[], None] | None = None


class SnpGuest:
    """The memory-state logic of one Linux SNP guest over gfns ``[0, npages)``."""

    def __init__(self, npages: int, max_psc_entries: int = 64, on_vc_404: str = "continue") -> None:
        self.max_psc_entries = max_psc_entries
        self.on_vc_404 = on_vc_404
        self.terminated = False
        self.validated = lazy_zeros(npages, bool)
        self.log = GuestLog()
        self._clock: Callable[[], int] = lambda: 0

    def program(
        self, events: Iterable[Timed], clock: Callable[[], int] = lambda: 0, *, absolute: bool = False
    ) -> Program:
        """One vCPU's program over its events (ascending times relative to the VM's start).

        By default the events keep their spacing: each starts that long after the previous one completed (a
        workload is a program). ``absolute``: each starts at its time, or as soon as the vCPU is free (a replayed
        trace says when things happened)."""
        last = 0
        self._clock = clock
        for timed in events:
            if self.terminated:
                return
            if absolute:
                gap = timed.time_ns - clock()
            else:
                gap = timed.time_ns - last
                last = max(last, timed.time_ns)
            if gap > 0:
                yield Compute(gap)
            event = timed.event
            if isinstance(event, Access):
                yield from self._touch(event.gfn, event.npages, event.private, event.write)
                if self.terminated:
                    return
            elif isinstance(event, Booted):
                if self.log.booted_ns is None:
                    self.log.booted_ns = clock()
                    if self.log.on_boot is not None:
                        self.log.on_boot()
            elif isinstance(event, Rebooting):
                pass
            else:
                t0 = clock()
                if self.log.requests is not None:
                    self.log.requests.append((t0, event.gfn, event.npages, event.to_private))
                if event.to_private:
                    yield from self._to_private(event)
                else:
                    yield from self._to_shared(event)
                self.log.conversion_ns.append(clock() - t0)

    # ------------------------------------------------------------------ accesses and #VC
    def _touch(self, gfn: int, npages: int, private: bool, write: bool) -> Program:
        end = gfn + npages
        while gfn < end:
            result = yield Touch(gfn, end - gfn, private, write)
            if not isinstance(result, VcRaised):
                return
            if self.on_vc_404 == "terminate":
                self.terminate()
                return
            yield from self._validate(result.gfn, 1, PageSize.SIZE_4K)  # the #VC handler; then retry the access
            gfn = result.gfn

    def terminate(self) -> None:
        """``sev_es_terminate()``: the guest asks the hypervisor to end it (the VMM stops the VM)."""
        if self.terminated:
            return
        self.terminated = True
        self.log.terminated_ns = self._clock()
        if self.log.on_terminate is not None:
            self.log.on_terminate()

    # ------------------------------------------------------------------ conversions
    def _to_shared(self, conv: Conversion) -> Program:
        for gfn, npages, size in pvalidate_plan(conv):
            seg = self.validated[gfn : gfn + npages]
            if not seg.any():
                continue
            if seg.all():
                yield from self._pvalidate(gfn, npages, PageSize(size), False)
            else:  # rescind only what this guest validated, page by page
                for k in seg.nonzero()[0].tolist():
                    yield from self._pvalidate(gfn + k, 1, PageSize.SIZE_4K, False)
            seg[:] = False
        for request in build_requests(conv, self.max_psc_entries):
            yield Vmgexit(request)

    def _to_private(self, conv: Conversion) -> Program:
        for request in build_requests(conv, self.max_psc_entries):
            yield Vmgexit(request)
        if not conv.validate:
            return
        for gfn, npages, size in pvalidate_plan(conv):
            yield from self._validate(gfn, npages, PageSize(size))

    def _validate(self, gfn: int, npages: int, size: PageSize) -> Program:
        yield from self._pvalidate(gfn, npages, size, True)
        self.validated[gfn : gfn + npages] = True

    def _pvalidate(self, gfn: int, npages: int, size: PageSize, validate: bool) -> Program:
        """``pvalidate_pages``: the loop, with the 4K retry of a 2M step that hits 4K RMP entries."""
        step = size.npages
        end = gfn + npages
        while gfn < end:
            result: PvalidateResult = yield Pvalidate(gfn, end - gfn, size, validate, size == PageSize.SIZE_2M)
            if result.status == RmpStatus.SUCCESS:
                return
            at = gfn + result.done
            if result.status == RmpStatus.FAIL_SIZEMISMATCH and size == PageSize.SIZE_2M:
                yield from self._pvalidate(at, PAGES_PER_2M, PageSize.SIZE_4K, validate)
            gfn = at + step

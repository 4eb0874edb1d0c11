"""A vCPU of an SNP VM and ``KVM_RUN``: the guest's instructions run until KVM needs the VMM.

Models the vCPU side of KVM (``shared/reference/linux-snp-host.md`` §4; ``arch/x86/kvm/x86.c``
``kvm_arch_vcpu_ioctl_run`` → ``vcpu_run``; ``arch/x86/kvm/svm/svm.c`` ``svm_vcpu_run``, ``npf_interception``;
``arch/x86/kvm/svm/sev.c`` ``sev_handle_vmgexit``, ``snp_begin_psc``, ``snp_complete_psc``,
``sev_handle_vmgexit_msr_protocol``). The guest is a program (a generator of :mod:`snpsim.arch` instructions); each
``KVM_RUN`` (:meth:`KvmVcpu.run`) executes it on the host CPU:

- ``Compute``: the guest runs its own code; simulated time passes (``run`` yields the ns to the engine);
- ``Touch`` and ``Pvalidate``: the CPU checks each access in guest mode (:mod:`snpsim.host.svm`); #NPFs are
  handled by KVM's MMU (:class:`snpsim.kvm.vm.KvmVm`) and the instruction re-executed; an access against the page's
  attribute ends ``KVM_RUN`` with ``KVM_EXIT_MEMORY_FAULT`` (the instruction is re-executed, from the faulting page,
  once the VMM has converted it); #VC and PVALIDATE failures are the guest's to handle;
- ``Vmgexit`` with a Page State Change: a VMGEXIT round trip; KVM merges adjacent entries and returns one
  ``KVM_EXIT_HYPERCALL`` (``KVM_HC_MAP_GPA_RANGE``) per merged range, continuing with the next on the following
  ``KVM_RUN`` (``snp_complete_psc``), and answers the guest when all are done. Pre-UPM KVM (SNP v5) converts in
  the kernel instead, without exits.

Every exit to the VMM is counted (``vmm_exit_count``) and costs ``userspace_exit_ns``; the work of each step charges
the running thread (the vCPU thread, :mod:`snpsim.host.cpu`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from typing import Any

from snpsim.arch import (
    Compute,
    Instruction,
    PscResult,
    Pvalidate,
    PvalidateResult,
    Touch,
    VcRaised,
    Vmgexit,
)
from snpsim.kvm.sev import MapGpaRange, coalesce_psc
from snpsim.kvm.uapi import HypercallExit, KvmExit, MemoryFaultExit, ShutdownExit
from snpsim.kvm.vm import KvmVm, MemoryFault

#: A guest program: yields instructions, receives each one's result.
GuestProgram = Generator[Instruction, Any, None]


class KvmVcpu:
    """vCPU ``index`` of ``vm``, running the guest program ``program``."""

    def __init__(self, vm: KvmVm, index: int, program: GuestProgram) -> None:
        self.vm = vm
        self.index = index
        self.program = program
        self._started = False
        #: the result of the guest's last instruction, sent to it on the next step
        self._result: Any = None
        #: the instruction being executed (again after an exit), and the progress made on it
        self._instr: Instruction | None = None
        self._done = 0
        self._changed = 0
        #: the merged ranges of the PSC request in progress that the VMM has yet to convert
        self._psc: deque[MapGpaRange] = deque()
        self.shutdown = False

    def run(self) -> Generator[int, None, KvmExit]:
        """``KVM_RUN``: execute the guest until an exit for the VMM; yields the ns the guest computes meanwhile."""
        vm = self.vm
        while True:
            if self._psc:  # snp_complete_psc: the VMM converted the previous range; forward the next one
                return self._exit(self._next_psc_exit())
            instr = self._instr
            if instr is None:
                instr = self._fetch()
                if instr is None:
                    self.shutdown = True
                    return ShutdownExit()
                self._instr, self._done, self._changed = instr, 0, 0
            if isinstance(instr, Compute):
                self._complete(None)
                if instr.ns > 0:
                    yield instr.ns
            elif isinstance(instr, Touch):
                try:
                    vc = vm.guest_access(instr.gfn + self._done, instr.npages - self._done, instr.private, instr.write)
                except MemoryFault as fault:
                    self._done += fault.done
                    return self._exit(MemoryFaultExit(fault.gfn, 1, fault.private))
                self._complete(None if vc is None else VcRaised(vc))
            elif isinstance(instr, Pvalidate):
                try:
                    done, status, changed = vm.pvalidate(
                        instr.gfn + self._done, instr.npages - self._done, instr.size, instr.validate, instr.retry_4k
                    )
                except MemoryFault as fault:
                    self._done += fault.done
                    self._changed += fault.changed
                    return self._exit(MemoryFaultExit(fault.gfn, 1, True))
                self._complete(PvalidateResult(self._done + done, status, self._changed + changed))
            elif isinstance(instr, Vmgexit):
                exits = self._vmgexit_psc(instr)
                if exits:
                    self._psc.extend(exits)
                    self._complete(PscResult(0))  # answered once the VMM has done every range
                    return self._exit(self._next_psc_exit())
                self._complete(PscResult(0))
            else:  # pragma: no cover - a guest program bug
                raise TypeError(f"not a guest instruction: {instr!r}")

    def _fetch(self) -> Instruction | None:
        """The guest's next instruction, given the result of its last one."""
        try:
            if not self._started:
                self._started = True
                return next(self.program)
            return self.program.send(self._result)
        except StopIteration:
            return None

    def _complete(self, result: Any) -> None:
        self._result = result
        self._instr = None

    def _exit(self, exit_: KvmExit) -> KvmExit:
        """Return to the VMM: one userspace exit and its round trip."""
        self.vm.counters.vmm_exit_count += 1
        self.vm.host.charge("userspace_exit", self.vm.host.costs.userspace_exit_ns)
        return exit_

    def _next_psc_exit(self) -> HypercallExit:
        r = self._psc.popleft()
        return HypercallExit(r.gfn, r.npages, r.to_private, r.huge)

    def _vmgexit_psc(self, instr: Vmgexit) -> list[MapGpaRange]:
        """``sev_handle_vmgexit`` for a PSC (NAE event or MSR protocol): the ranges to forward to the VMM, or none
        when pre-UPM KVM converts them itself (``snp_handle_page_state_change``)."""
        vm = self.vm
        vm.counters.psc_request_count += 1
        vm.host.charge("vmexit", vm.host.costs.vmexit_ns)
        ranges = coalesce_psc(instr.request)
        for r in ranges:
            if r.to_private:
                vm.counters.to_private_count += r.npages
            else:
                vm.counters.to_shared_count += r.npages
        if not vm.in_kernel_psc:
            return ranges
        for r in ranges:
            vm.snp_page_state_change(r.gfn, r.npages, r.to_private)
        return []

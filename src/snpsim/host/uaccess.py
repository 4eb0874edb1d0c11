"""Host accesses to guest memory and the #PF outcome of each in its context: the hazard of the seed thread.

"If the host is writing to a page that it thinks is supposed to be shared, and the guest switches it to private,
we get an RMP fault" (M. Roth, SEED). Host code touches guest memory on three kinds of path, each a
:class:`Accessor` here (``shared/reference/linux-snp-host.md`` §2, §4):

- vhost workers (``drivers/vhost/net.c`` ``handle_rx`` → ``copy_to_iter``/``copy_from_iter`` on the VMM's
  address space, ``kthread_use_mm``): kernel mode, a *user* address, an exception-table fixup
  (``copy_to_user`` returns the bytes not copied and vhost fails the request: ``vq_err``);
- QEMU device emulation (``hw/virtio/virtio.c`` ``virtqueue_push`` / ``address_space_write`` on the RAM block):
  user mode;
- KVM's own accesses: ``kvm_write_guest`` / ``kvm_write_guest_cached`` (``__copy_to_user`` on the memslot's
  hva: steal time ``record_steal_time``, PV EOI ``pv_eoi_put_user``) and the pfn mappings, which touch the frame
  through a *kernel* address: the gfn-to-pfn cache of kvmclock (``kvm_setup_guest_pvclock`` writes
  ``gpc->khva`` under ``read_lock_irqsave(&gpc->lock)``: atomic) and the GHCB (``kvm_vcpu_map`` → ``kmap``, the
  direct map on x86-64, accessed from the VMGEXIT handler in task context).

Where an access lands (:func:`guest_write`): the frame the VMM's mapping holds for the gfn (``hva_to_pfn``; a
discarded page is faulted in again, as ``handle_mm_fault`` / ``hva_to_pfn`` would). Pre-UPM
(``private_backing = vmm``) that is the frame the guest converted in place, so a write after the guest made it
private takes an RMP #PF; with guest_memfd it is the shared backing, a different frame from the private one, so
the write succeeds and the guest never sees it (``host_lost_write_count``).

What the #PF handler does with the fault (:func:`fault_outcome`, the context table, each row from the code):

- user address, user mode (QEMU): SNP v5 "x86/fault: Add support to handle the RMP fault for user address"
  (20210820155918.7518-9-brijesh.singh@amd.com): ``do_user_addr_fault`` → ``handle_user_rmp_page_fault`` finds
  the 4K RMP entry assigned → ``RMP_FAULT_KILL`` → ``do_sigbus``: **SIGBUS** to QEMU ("If userspace accesses
  guest private memory, it gets SIGBUS", B. Singh 2021-11-22). Only pre-UPM presets can get here: upstream never
  maps private memory into userspace and has no X86_PF_RMP branch for user faults (linux-snp-host.md §2).
- user address, kernel mode, task context (``copy_to_user``): the same ``do_sigbus``, but ``!user_mode(regs)`` →
  ``kernelmode_fixup_or_oops`` → ``fixup_exception`` finds the uaccess's exception-table entry: **-EFAULT** to the
  I/O path (a failed virtio request).
- user address in an atomic context (softirq, hardirq, NMI, a spinlock held, ``pagefault_disable``:
  ``copy_to_user_nofault``): ``do_user_addr_fault`` stops at ``if (unlikely(faulthandler_disabled() || !mm))``
  → ``bad_area_nosemaphore`` → ``kernelmode_fixup_or_oops`` → the exception table: **-EFAULT**. The handler
  never looks at the RMP there, so no fixup either.
- kernel address (direct map, ``kmap``, ``gpc->khva``), any context: ``do_kern_addr_fault`` →
  ``spurious_kernel_fault`` (not: the error code has X86_PF_RMP) → ``bad_area_nosemaphore`` →
  ``kernelmode_fixup_or_oops``: no exception-table entry for a plain kernel store → ``show_fault_oops`` ("RMP
  violation", commit e8bbd303d7de) → **oops** (a host crash); a not-present direct-map entry (``directmap =
  unmap``) oopses the same way.
- ``rmp_fault = fixup`` (P. Gonda's proposal, Nov 2021; rejected: "attempting to fix up RMP violations in the host
  #PF handler is not a viable approach", S. Christopherson, YyGLXXkFCmxBfu5U@google.com): the handler makes the
  page shared and retries, so the write lands and the guest takes #VC 0x404 on its next private access. Making a
  page shared means RMPUPDATE plus telling KVM (its PSC path takes ``kvm->slots_lock``-style sleeping locks and
  may split the direct map, which allocates), so it is possible only in a context that may sleep: user mode and
  task context (kernel or user address). In softirq, hardirq, NMI or with a spinlock held it is impossible: a
  kernel-address fault there oopses as upstream, a user-address one still gets -EFAULT (above) [I: the proposal
  had no code for these contexts; this is what its constraint leaves].

Crash records (:class:`snpsim.host.kernel.Crash`) carry the context of the access.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from snpsim.hw.types import PAGE_SHIFT, HostPageFault, PageSize

if TYPE_CHECKING:
    from snpsim.host.kernel import HostKernel
    from snpsim.host.mm import UserMemory


class Context(StrEnum):
    """The context an access runs in (what the #PF handler may do about a fault there)."""

    USER = "user"  #: user mode (QEMU)
    TASK = "task"  #: kernel mode in a task that may sleep (a kthread, an ioctl)
    SOFTIRQ = "softirq"
    HARDIRQ = "hardirq"
    NMI = "nmi"
    ATOMIC = "atomic"  #: task context with a spinlock held / preemption or page faults disabled

    @property
    def may_sleep(self) -> bool:
        return self in (Context.USER, Context.TASK)


class Address(StrEnum):
    """How the access addresses the frame: the VMM's user mapping (``hva``) or a kernel mapping of the pfn."""

    USER = "user"
    KERNEL = "kernel"


class Outcome(StrEnum):
    """What the access came to."""

    OK = "ok"  #: the write landed (on a frame the guest uses as it expects)
    LOST = "lost-write"  #: the write landed on a frame the guest never reads (guest_memfd: the stale shared copy)
    EFAULT = "efault"  #: the uaccess's exception-table fixup: -EFAULT to the caller
    SIGBUS = "sigbus"  #: SIGBUS to the user process (QEMU dies, and its VM)
    FIXUP = "fixup"  #: the #PF handler made the page shared and retried (the guest will see #VC)
    OOPS = "oops"  #: kernel oops: a host crash


def fault_outcome(rmp_fault: str, context: Context, address: Address, kind: str) -> Outcome:
    """The #PF handler's outcome for a fault of ``kind`` (``"rmp"`` or ``"not-present"``) on an access of this
    context and address kind, under the ``rmp_fault`` knob (see the module docstring for each row's code)."""
    if address == Address.USER:
        if not context.may_sleep:
            return Outcome.EFAULT  # faulthandler_disabled() -> bad_area_nosemaphore -> exception table
        if kind == "rmp" and rmp_fault == "fixup":
            return Outcome.FIXUP
        if context == Context.USER:
            return Outcome.SIGBUS  # handle_user_rmp_page_fault -> RMP_FAULT_KILL -> do_sigbus
        return Outcome.EFAULT  # do_sigbus, !user_mode -> kernelmode_fixup_or_oops -> fixup_exception
    if context == Context.USER:
        raise ValueError("user mode cannot address the kernel's mappings")
    if kind == "rmp" and rmp_fault == "fixup" and context.may_sleep:
        return Outcome.FIXUP
    return Outcome.OOPS  # do_kern_addr_fault -> bad_area_nosemaphore -> no fixup -> show_fault_oops


class VmFaultSigbus(Exception):
    """The VMM's mapping cannot give the page: its fault handler returned ``VM_FAULT_SIGBUS`` (an in-place
    guest_memfd ``mmap`` touched at a private page, ``kvm_gmem_fault_user_mapping``)."""


class GuestRam(Protocol):
    """What a host accessor sees of one VM: the VMM's mapping of its RAM, and (observers, not host state) whether
    a gfn is private now and which frame the guest reads it from. The engine provides it for each live VM."""

    name: str
    memory: UserMemory
    #: gfns each kind of host access uses (``"virtqueue"``, ``"bounce"``, ``"steal_time"``, ``"kvmclock"``, ...)
    targets: dict[str, npt.NDArray[np.int64]]

    def ready(self) -> bool:
        """The guest's devices are up (its boot finished): host I/O to the targets has begun."""
        ...

    def user_page(self, gfn: int) -> tuple[int, PageSize]:
        """``hva_to_pfn`` / ``handle_mm_fault`` on the VMM's mapping of ``gfn``: the frame (faulted in if it was
        discarded; -1 when that allocation fails) and the mapping's size. Raises :class:`VmFaultSigbus` when the
        mapping refuses the page."""
        ...

    def is_private(self, gfn: int) -> bool: ...

    def private_frame(self, gfn: int) -> int | None: ...

    def kill(self, signal: str) -> None: ...

    def pin(self, gfn: int, completes_after: int) -> object | None:
        """``get_user_pages`` on the VMM's mapping of ``gfn``: an extra reference held until :meth:`unpin` or until
        ``completes_after`` back-offs of the VMM's conversion retry loop (the I/O completes). Returns the pin, or
        None when the reference blocks nothing the model tracks (the VMM's own RAM block). Raises
        :class:`VmFaultSigbus` when the mapping refuses the page."""
        ...

    def unpin(self, pin: object) -> None: ...


@dataclass(frozen=True, slots=True)
class Accessor:
    """One host path that writes guest memory: its name (crash records' ``path``), context and address kind, and
    the guest pages it writes (keys of :attr:`GuestRam.targets`)."""

    path: str
    context: Context
    address: Address
    targets: tuple[str, ...]


#: The host accessors by name (scenario ``host.writers.<writer>.accessors`` picks among them).
ACCESSORS: dict[str, Accessor] = {
    "vhost_net_rx": Accessor("drivers/vhost/net.c:handle_rx", Context.TASK, Address.USER, ("virtqueue", "bounce")),
    "qemu_virtio": Accessor("qemu:hw/virtio/virtio.c:virtqueue_push", Context.USER, Address.USER, ("virtqueue",)),
    "steal_time": Accessor(
        "arch/x86/kvm/x86.c:record_steal_time", Context.TASK, Address.USER, ("steal_time",)
    ),  # unsafe_put_user on the gfn_to_hva_cache
    "steal_time_preempted": Accessor(
        "arch/x86/kvm/x86.c:kvm_steal_time_set_preempted", Context.ATOMIC, Address.USER, ("steal_time",)
    ),  # copy_to_user_nofault from the preempt notifier (kvm_arch_vcpu_put)
    "pv_eoi": Accessor("arch/x86/kvm/lapic.c:pv_eoi_put_user", Context.TASK, Address.USER, ("steal_time",)),
    "kvmclock": Accessor(
        "arch/x86/kvm/x86.c:kvm_setup_guest_pvclock", Context.ATOMIC, Address.KERNEL, ("kvmclock",)
    ),  # gfn_to_pfn_cache: gpc->khva under read_lock_irqsave(&gpc->lock)
    "ghcb": Accessor(
        "arch/x86/kvm/svm/sev.c:sev_es_sync_to_ghcb", Context.TASK, Address.KERNEL, ("ghcb",)
    ),  # kvm_vcpu_map(ghcb_gpa) -> kmap
}


def guest_write(host: HostKernel, ram: GuestRam, gfn: int, acc: Accessor) -> Outcome:
    """One host write of ``acc`` to guest page ``gfn`` of ``ram``; counts and records what happened."""
    try:
        pfn, user_level = ram.user_page(gfn)  # hva_to_pfn / handle_mm_fault: a discarded page is faulted in again
    except VmFaultSigbus:
        # in-place guest_memfd, private page: QEMU itself gets SIGBUS; a kernel uaccess takes the exception-table
        # fixup (-EFAULT), and get_user_pages for a kernel mapping (gfn-to-pfn cache, kvm_vcpu_map) fails with
        # -EFAULT, so KVM writes nothing
        if acc.context == Context.USER:
            host.host_sigbus_count += 1
            ram.kill("SIGBUS")
            return Outcome.SIGBUS
        host.host_efault_count += 1
        return Outcome.EFAULT
    if pfn < 0:
        host.host_efault_count += 1  # -ENOMEM from the fault: the copy fails as with -EFAULT
        return Outcome.EFAULT
    host.charge("page_copy", host.costs.page_clear_ns)  # the copy of (up to) a page
    if acc.address == Address.USER:
        level = user_level
    else:
        dm = host.directmap.level(pfn)
        if dm is None:
            return _fault(host, ram, pfn, acc, "not-present", 0x2, PageSize.SIZE_4K)
        level = dm
    try:
        host.rmp.check_host_write(pfn << PAGE_SHIFT, level)
    except HostPageFault as fault:
        if acc.address == Address.USER and not host.rmp.rmpread(pfn << PAGE_SHIFT).assigned:
            # handle_user_rmp_page_fault: the 4K entry is not assigned, only a neighbour in the huge mapping:
            # split the user mapping (FAULT_FLAG_PAGE_SPLIT) and retry at 4K, which succeeds
            host.host_rmp_fault_count += 1
        else:
            outcome = _fault(host, ram, pfn, acc, "rmp", fault.error_code, level)
            if outcome != Outcome.FIXUP:
                return outcome
            landed = _landed(host, ram, gfn, pfn)
            return Outcome.FIXUP if landed == Outcome.OK else landed
    return _landed(host, ram, gfn, pfn)


def guest_pin(host: HostKernel, ram: GuestRam, gfn: int, completes_after: int) -> tuple[Outcome, object | None]:
    """A host path takes a reference on guest page ``gfn`` for I/O in flight (vhost-net zero-copy TX:
    ``handle_tx_zerocopy`` → ``sendmsg`` with a ``ubuf_info`` → ``zerocopy_sg_from_iter`` →
    ``iov_iter_get_pages2`` (``get_user_pages_fast``), released by ``vhost_zerocopy_complete`` when the NIC has sent
    the skb). A private page of an in-place guest_memfd cannot be faulted (``VM_FAULT_SIGBUS``): the pin fails
    with -EFAULT (``get_user_pages`` of a kernel path, counted as :func:`guest_write` counts its -EFAULTs) and the
    packet is dropped. Returns the outcome and the pin."""
    try:
        return Outcome.OK, ram.pin(gfn, completes_after)
    except VmFaultSigbus:
        host.host_efault_count += 1
        return Outcome.EFAULT, None


def _landed(host: HostKernel, ram: GuestRam, gfn: int, pfn: int) -> Outcome:
    """The write landed on ``pfn``: lost if the guest has the gfn private on another frame."""
    if ram.is_private(gfn) and ram.private_frame(gfn) != pfn:
        host.host_lost_write_count += 1
        return Outcome.LOST
    entry = host.rmp.rmpread(pfn << PAGE_SHIFT)
    if entry.assigned and entry.validated:  # the hardware check forbids it: the guest-integrity oracle
        host.integrity_violations.append(pfn)
    return Outcome.OK


def _fault(
    host: HostKernel, ram: GuestRam, pfn: int, acc: Accessor, kind: str, error_code: int, level: PageSize
) -> Outcome:
    if kind == "rmp":
        host.host_rmp_fault_count += 1
        host.charge("host_fault", host.costs.host_fault_ns)
    outcome = fault_outcome(host.policy.rmp_fault, acc.context, acc.address, kind)
    if outcome == Outcome.OOPS:
        host.oops(pfn, acc.path, kind, error_code, context=acc.context)
    elif outcome == Outcome.EFAULT:
        host.host_efault_count += 1
    elif outcome == Outcome.SIGBUS:
        host.host_sigbus_count += 1
        ram.kill("SIGBUS")
    elif not host.fixup_rmp_fault(pfn, level):  # guest memory is never a host SNP page: defensive
        host.oops(pfn, acc.path, kind, error_code, context=acc.context)
        return Outcome.OOPS
    return outcome

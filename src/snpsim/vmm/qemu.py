"""A QEMU-like VMM for one SNP VM: its RAM block, its guest_memfd, the vCPU exit loop and ``kvm_convert_memory``.

Models QEMU ``accel/kvm/kvm-all.c`` and ``target/i386/kvm/kvm.c`` (``shared/reference/guest-workloads.md`` §1,
``linux-snp-host.md`` §5). The VMM drives KVM only through its ioctls and the guest_memfd file:

- at creation: the RAM block (host memory mapped by the VMM, :class:`snpsim.host.mm.UserMemory`, of the policy's
  ``shared_backing``: memory-backend-memfd, memory-backend-ram with THP, or memory-backend-file on hugetlbfs,
  whose ``mmap`` reserves the whole block's huge pages; when they cannot be had QEMU exits, :class:`QemuExit`),
  ``KVM_CREATE_GUEST_MEMFD`` with UPM, the memslot (``KVM_SET_USER_MEMORY_REGION2``), and all
  RAM set private (QEMU patch 20240320083945.991426-16, "QPRIV");
- one thread per vCPU running :meth:`Qemu.kvm_cpu_exec`, QEMU's loop: ``KVM_RUN``, then dispatch the exit
  (``kvm_arch_handle_exit``): ``KVM_EXIT_HYPERCALL`` with ``KVM_HC_MAP_GPA_RANGE`` is
  ``kvm_handle_hc_map_gpa_range`` → ``kvm_convert_memory`` (then ``KVM_PRE_FAULT_MEMORY`` of the range with
  ``prefault_on_convert``: QEMU commit 4cdc489eb9c2); ``KVM_EXIT_MEMORY_FAULT`` is ``kvm_convert_memory`` of the
  faulting page; ``KVM_EXIT_SHUTDOWN`` ends the thread;
- ``kvm_convert_memory()``: ``KVM_SET_MEMORY_ATTRIBUTES``, then to-private discards the shared copy
  (``ram_block_discard_range``; skipped when the RAM block's page size is not the host's, i.e. hugetlb: "shared
  memory is backed by hugetlb, which is supposed to be pre-allocated and doesn't need to be discarded") and
  to-shared punches the guest_memfd (``ram_block_discard_guest_memfd_range`` = ``fallocate(PUNCH_HOLE)``); with
  ``discard_on_convert = false`` neither is done and both copies stay allocated.

In-place conversion (``gmem_conversion = in-place``, INPLACE v8, A. Tng, 2026,
20260618-gmem-inplace-conversion-v8-0-9d2959357853@google.com): QEMU maps the guest_memfd itself for the shared
pages (the RAM block is never faulted), converts through the guest_memfd ioctl and discards nothing; an ``-EAGAIN``
(the host holds references to a page) is retried up to ``gmem_convert_retries`` times, each after a back-off
during which the holders' I/O may complete (:meth:`GuestMemfd.backoff`).

Pre-UPM SNP (``private_backing = vmm``): no guest_memfd; KVM converts the VMM's pages in place and never exits to
the VMM for a conversion; the RAM block is registered (``MEM_ENCRYPT_REG_REGION``) as it is faulted in.

Each ioctl and syscall costs ``ioctl_ns`` plus its work, charged to the calling thread.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import numpy as np
import numpy.typing as npt

from snpsim.arch import PAGE_SHIFT, PAGE_SIZE
from snpsim.host import HostKernel, Owner
from snpsim.host.mm import MmapError, UserMemory
from snpsim.kvm.gmem import GmemReserveError, GuestMemfd
from snpsim.kvm.uapi import HypercallExit, KvmExit, MemoryFaultExit, SnpLaunchUpdate, SnpPageType
from snpsim.kvm.vcpu import GuestProgram, KvmVcpu
from snpsim.kvm.vm import KvmVm
from snpsim.metrics import Counters
from snpsim.pfnmap import CHUNK_SHIFT
from snpsim.policy import Policy
from snpsim.segments import bool_runs

#: The ``-object`` QEMU creates for each ``shared_backing`` (the guest RAM's backend; hugetlbfs mounted at
#: /dev/hugepages, and /dev/hugepages1G for 1 GiB pages, as distributions mount them).
BACKEND_OBJECT = {
    "4k": "memory-backend-memfd,id=ram1,share=true,prealloc=false",
    "thp": "memory-backend-ram,id=ram1",
    "hugetlb-2m": "memory-backend-file,id=ram1,mem-path=/dev/hugepages,share=true",
    "hugetlb-1g": "memory-backend-file,id=ram1,mem-path=/dev/hugepages1G,share=true",
}


class QemuExit(RuntimeError):
    """QEMU failed to create the VM and exited (the message QEMU prints)."""


class Qemu:
    """The VMM process of one VM: ``ram`` marks the gfns that are RAM."""

    def __init__(
        self,
        host: HostKernel,
        policy: Policy,
        ram: npt.NDArray[np.bool_],
        *,
        asid: int,
        counters: Counters,
        launch: Sequence[SnpLaunchUpdate] | None = None,
        kvm_vm: type[KvmVm] = KvmVm,
    ) -> None:
        """``kvm_vm``: the class of KVM's VM state (the engine's: :mod:`snpsim.engine`)."""
        self.host = host
        #: the ``KVM_SEV_SNP_LAUNCH_UPDATE``s of this VM's launch (``sev_snp_launch_finish()``), e.g. a replayed
        #: trace's; None: the guest image's default launch
        self.launch: list[SnpLaunchUpdate] | None = None if launch is None else list(launch)
        self.policy = policy
        self.ram = ram
        self.counters = counters
        self.gmem_backed = policy.private_backing == "gmem"
        owner = Owner.VMM_SHARED if self.gmem_backed else Owner.VMM_PRIVATE
        #: the guest RAM block: host memory mapped by this process
        try:
            self.memory = UserMemory(host, ram, policy.shared_backing, owner, register=not self.gmem_backed)
        except MmapError as e:  # file_ram_alloc(): qemu_ram_mmap() failed
            obj = BACKEND_OBJECT[policy.shared_backing]
            raise QemuExit(
                f"qemu-system-x86_64: -object {obj},size={int(ram.sum()) << PAGE_SHIFT}: unable to map backing store "
                f"for guest RAM: {e.strerror} ({e.why})"
            ) from None
        #: QEMU discards shared memory only when its RAM block has the host's page size (not hugetlb)
        self.discard_shared = self.memory.page_size == PAGE_SIZE
        self.kvm = kvm_vm(host, policy, int(ram.size), asid=asid, counters=counters)
        self.gmem: GuestMemfd | None = None
        self.in_place = self.kvm.in_place
        #: in-place conversions QEMU gave up on after its retries
        self.convert_failures = 0
        if self.gmem_backed:
            try:
                self.gmem = self.kvm.create_guest_memfd(policy.private_page_bytes >> PAGE_SHIFT)
            except GmemReserveError as e:
                self.memory.release_all()
                raise QemuExit(f"qemu-system-x86_64: kvm_create_guest_memfd: Cannot allocate memory ({e})") from None
        self.kvm.set_user_memory_region(ram, self.memory)
        self.peak_private_bytes = 0
        self.peak_shared_bytes = 0
        self.peak_total_bytes = 0
        self._account()  # what the RAM block holds from its creation (a hugetlbfs reservation)
        if self.gmem_backed:
            for lo, n, is_ram in bool_runs(ram):
                if is_ram:
                    self.kvm.set_memory_attributes(lo, n, True)
        if self.launch is not None:
            self.kvm.snp_launch_start()  # sev_snp_launch_start(): KVM_SEV_SNP_LAUNCH_START

    def sev_snp_launch_finish(self) -> None:
        """QEMU's ``sev_snp_launch_finish()`` (target/i386/sev.c, at machine-done, after the vCPUs exist): one
        ``KVM_SEV_SNP_LAUNCH_UPDATE`` per queued update (the flash, OVMF's metadata sections), then
        ``KVM_SEV_SNP_LAUNCH_FINISH`` (KVM makes the VMSAs). A VMM without a launch (``launch=None``: unit tests
        driving KVM directly) does nothing."""
        if self.launch is None:
            return
        for u in self.launch:
            self.kvm.snp_launch_update(u.gfn, u.npages, int(u.type), copy=u.type != SnpPageType.ZERO)
        self.kvm.snp_launch_finish()
        self._account()

    # ------------------------------------------------------------------ the vCPU threads
    def create_vcpu(self, index: int, program: GuestProgram) -> KvmVcpu:
        """``KVM_CREATE_VCPU``; the guest will run ``program`` on it. With a launch, KVM allocates its VMSA
        (``sev_vcpu_create``)."""
        if self.launch is not None:
            self.kvm.sev_es_vcpu_create(index)
        return KvmVcpu(self.kvm, index, program)

    def kvm_cpu_exec(self, cpu: KvmVcpu) -> Generator[int, None, None]:
        """QEMU's vCPU thread loop: ``KVM_RUN``, dispatch the exit, run again, until the vCPU shuts down.

        A generator of the ns the guest computes meanwhile (the engine turns them, and the CPU time every step
        charged, into simulated time)."""
        while True:
            exit_ = yield from cpu.run()
            if not self.kvm_arch_handle_exit(exit_):
                return

    def kvm_arch_handle_exit(self, exit_: KvmExit) -> bool:
        """Dispatch one exit; False when the vCPU has stopped."""
        if isinstance(exit_, HypercallExit):
            self.kvm_handle_hc_map_gpa_range(exit_)
        elif isinstance(exit_, MemoryFaultExit):
            self.counters.npf_count += 1
            self.kvm_convert_memory(exit_.gfn, exit_.npages, exit_.private)
        else:
            return False
        self._account()
        return True

    def kvm_handle_hc_map_gpa_range(self, exit_: HypercallExit) -> None:
        """``kvm_handle_hc_map_gpa_range``: convert, then (``prefault_on_convert``) pre-fault the range."""
        self.kvm_convert_memory(exit_.gfn, exit_.npages, exit_.to_private)
        if self.policy.prefault_on_convert:
            self.kvm.pre_fault_memory(exit_.gfn, exit_.npages)

    # ------------------------------------------------------------------ kvm_convert_memory
    def kvm_convert_memory(self, gfn: int, npages: int, to_private: bool) -> None:
        """``kvm_convert_memory(start, size, to_private)``."""
        if self.in_place:
            self._convert_in_place(gfn, npages, to_private)
            return
        self.kvm.set_memory_attributes(gfn, npages, to_private)
        if not self.policy.discard_on_convert:
            return
        if to_private:
            if self.discard_shared:
                self.host.charge("ioctl", self.host.costs.ioctl_ns)  # madvise(MADV_DONTNEED)
                self.memory.discard(gfn, npages)
        elif self.gmem is not None:
            self.host.charge("ioctl", self.host.costs.ioctl_ns)  # fallocate(PUNCH_HOLE | KEEP_SIZE)
            self.gmem.punch_hole(gfn, npages)

    def _convert_in_place(self, gfn: int, npages: int, to_private: bool) -> bool:
        """The guest_memfd conversion ioctl with QEMU's retry loop; False if it gave up (the range keeps its old
        attribute; the guest's next access to it exits again)."""
        gm = self.gmem
        assert gm is not None
        for attempt in range(self.policy.gmem_convert_retries + 1):
            if self.kvm.gmem_set_memory_attributes(gfn, npages, to_private) is None:
                return True
            self.counters.gmem_eagain_count += 1
            if attempt < self.policy.gmem_convert_retries:
                gm.backoff()
        self.convert_failures += 1
        self.counters.gmem_convert_failure_count += 1
        return False

    # ------------------------------------------------------------------ accounting (observed, not a QEMU path)
    def private_bytes(self) -> int:
        """Memory allocated for private pages: guest_memfd folios, or (pre-UPM) VMM pages KVM made private."""
        if self.gmem is not None:
            if self.in_place:
                return self.gmem.private_bytes - self._gmem_shared_bytes()
            return self.gmem.private_bytes
        return self._private_vmm_pages() << PAGE_SHIFT

    def _gmem_shared_bytes(self) -> int:
        """In place: guest_memfd pages allocated at shared indexes."""
        assert self.gmem is not None
        total = 0
        for lo, hi in self._scan_ranges():
            total += int(np.count_nonzero(self.gmem.present(lo, hi) & ~self.kvm.attrs.private[lo:hi]))
        return total << PAGE_SHIFT

    def shared_bytes(self) -> int:
        if self.gmem is not None:
            if self.in_place:
                return self.memory.bytes + self._gmem_shared_bytes()
            return self.memory.bytes
        return (self.memory.total_pages - self._private_vmm_pages()) << PAGE_SHIFT

    def _private_vmm_pages(self) -> int:
        total = 0
        for lo, hi in self._scan_ranges():
            total += int(np.count_nonzero(self.memory.pfn.present(lo, hi) & self.kvm.attrs.private[lo:hi]))
        return total

    def guest_bytes(self) -> int:
        """Guest memory that is backed in its current state (private gfns with a private page, shared gfns with
        a shared page): what the guest can use without a fault allocating memory."""
        total = 0
        for lo, hi in self._scan_ranges():
            shared_ok = self.gmem.present(lo, hi) if self.in_place and self.gmem else self.memory.pfn.present(lo, hi)
            if self.gmem is None:
                total += int(np.count_nonzero(shared_ok))
                continue
            priv = self.kvm.attrs.private[lo:hi]
            total += int(np.count_nonzero(np.where(priv, self._private_ok(lo, hi), shared_ok) & self.ram[lo:hi]))
        return total << PAGE_SHIFT

    def double_allocated_bytes(self) -> int:
        """Gfns that have both a private page and a shared page allocated."""
        if self.gmem is None:
            return 0
        total = 0
        for lo, hi in self._scan_ranges():
            total += int(np.count_nonzero(self._private_ok(lo, hi) & self.memory.pfn.present(lo, hi)))
        return total << PAGE_SHIFT

    def _scan_ranges(self) -> list[tuple[int, int]]:
        """The gfn ranges a scan of the backing maps must look at: the runs of 2M chunks that either map ever
        wrote (a lazily accepting guest's few), or all gfns when they are scattered."""
        touched = self.memory.pfn.touched_chunks()
        gm = self.gmem
        if gm is not None:
            # a guest_memfd chunk spans 2M of gfns, or one folio if larger
            per = max(1, gm.folio_pages >> CHUNK_SHIFT)
            touched = touched | np.repeat(gm.folio_pfn.touched_chunks(), per)[: touched.size]
            if gm.allocated_small_pages:
                touched = touched | gm.small.touched_chunks()[: touched.size]
        runs = [(lo, k) for lo, k, hit in bool_runs(touched) if hit]
        n = self.kvm.npages
        if len(runs) > _MAX_SCAN_RANGES:
            return [(0, n)]
        return [(lo << CHUNK_SHIFT, min((lo + k) << CHUNK_SHIFT, n)) for lo, k in runs if lo << CHUNK_SHIFT < n]

    def _private_ok(self, lo: int, hi: int) -> npt.NDArray[np.bool_]:
        """Whether each gfn of ``[lo, hi)`` has its guest_memfd page allocated."""
        gm = self.gmem
        assert gm is not None
        return gm.present(lo, hi)

    def _account(self) -> None:
        p, s = self.private_bytes(), self.shared_bytes()
        self.peak_private_bytes = max(self.peak_private_bytes, p)
        self.peak_shared_bytes = max(self.peak_shared_bytes, s)
        self.peak_total_bytes = max(self.peak_total_bytes, p + s)

    # ------------------------------------------------------------------ teardown
    def destroy(self) -> None:
        """VM shutdown: KVM is torn down (guest_memfd released, pre-UPM pages reclaimed), QEMU unmaps its RAM, and
        ``MEM_ENCRYPT_UNREG_REGION`` is the restore point for ``bulk``."""
        self.kvm.destroy()
        frames = self.memory.release_all()
        self.host.unregister_frames(np.sort(frames))


#: Above this many runs of touched chunks, :meth:`Qemu.guest_bytes` scans every gfn at once.
_MAX_SCAN_RANGES = 64

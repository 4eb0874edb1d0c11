"""A QEMU-like VMM for one SNP VM: RAM backing, the vCPU run loop's exit handling, conversions, accounting.

Models QEMU ``accel/kvm/kvm-all.c`` (``shared/reference/guest-workloads.md`` §1, ``linux-snp-host.md`` §5):

- guest_memfd RAM is set private when the memslot is created (QEMU patch 20240320083945.991426-16, "QPRIV");
- ``kvm_handle_hc_map_gpa_range()`` and ``KVM_EXIT_MEMORY_FAULT`` both call ``kvm_convert_memory()``:
  ``KVM_SET_MEMORY_ATTRIBUTES``, then to-private discards the shared copy (``ram_block_discard_range``, never for
  hugetlb) and to-shared punches the guest_memfd (``ram_block_discard_guest_memfd_range``); with
  ``discard_on_convert = false`` neither is done and both copies stay allocated;
- pre-UPM SNP (``private_backing = vmm``): one copy per gfn, converted in place: the PSC handler RMPUPDATEs the
  VMM's page (SNP v5 ``snp_handle_page_state_change``);
- per-VM accounting: private, shared and double-allocated bytes and their peaks, the memory a cgroup must allow.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from snpsim.guest.psc import PscRequest
from snpsim.host import HostKernel, Owner
from snpsim.hw.types import PAGE_SHIFT, PageSize
from snpsim.kvm.sev import MapGpaRange, gmem_invalidate, gmem_prepare
from snpsim.kvm.vm import KvmVm, MemoryFaultExit
from snpsim.metrics import Counters
from snpsim.pfnmap import CHUNK_SHIFT
from snpsim.policy import Policy
from snpsim.vmm.backing import VmmMemory


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
        trace: Callable[[int, int, int, bool], None] | None = None,
    ) -> None:
        self.host = host
        #: called as QEMU's ``kvm_convert_memory`` trace event fires: (time_ns, gfn, npages, to_private)
        self.trace = trace
        self.policy = policy
        self.ram = ram
        self.counters = counters
        self.gmem_backed = policy.private_backing == "gmem"
        owner = Owner.VMM_SHARED if self.gmem_backed else Owner.VMM_PRIVATE
        self.memory = VmmMemory(host, ram, policy.shared_backing, owner, register=not self.gmem_backed)
        self.kvm = KvmVm(host, policy, ram, self.memory, asid=asid, counters=counters)
        self.memory.attr_private = self.kvm.attrs.private
        self.peak_private_bytes = 0
        self.peak_shared_bytes = 0
        self.peak_total_bytes = 0
        if self.gmem_backed:
            for lo, n in _true_runs(ram):
                self.kvm.set_memory_attributes(lo, n, True)

    # ------------------------------------------------------------------ the vCPU run loop (KVM_RUN exits)
    def psc(self, request: PscRequest) -> None:
        """The guest's PSC VMGEXIT: KVM returns KVM_HC_MAP_GPA_RANGE exits, each handled here."""
        for exit_ in self.kvm.handle_psc(request):
            self.map_gpa_range(exit_)
        self._account()

    def map_gpa_range(self, exit_: MapGpaRange) -> None:
        """``kvm_handle_hc_map_gpa_range``: one userspace exit, one ``kvm_convert_memory``."""
        self.counters.vmm_exit_count += 1
        self.host.busy_ns += self.host.costs.userspace_exit_ns
        if exit_.to_private:
            self.counters.to_private_count += exit_.npages
        else:
            self.counters.to_shared_count += exit_.npages
        self.convert(exit_.gfn, exit_.npages, exit_.to_private)

    def access(self, gfn: int, npages: int, private: bool, write: bool = True) -> int:
        """The guest touches memory; a ``KVM_EXIT_MEMORY_FAULT`` is an implicit conversion. Returns #VCs."""
        return self._run_vcpu(lambda: self.kvm.guest_access(gfn, npages, private, write), npages)

    def pvalidate(self, gfn: int, npages: int, size: PageSize, validate: bool) -> int:
        """The guest's PVALIDATE; one on a shared gfn is a private access, an implicit conversion first."""
        return self._run_vcpu(lambda: self.kvm.pvalidate(gfn, npages, size, validate), npages)

    def _run_vcpu(self, instruction: Callable[[], int], npages: int) -> int:
        """``KVM_RUN`` until the guest's instruction completes: each memory fault exit is handled, then re-entry."""
        for _ in range(npages + 2):
            try:
                result = instruction()
                self._account()
                return result
            except MemoryFaultExit as fault:
                self._memory_fault(fault)
        raise RuntimeError("memory fault loop")  # pragma: no cover - model bug

    def _memory_fault(self, fault: MemoryFaultExit) -> None:
        """``KVM_EXIT_MEMORY_FAULT``: QEMU converts the range to what the guest accessed it as."""
        self.counters.vmm_exit_count += 1
        self.counters.npf_count += 1
        self.host.busy_ns += self.host.costs.userspace_exit_ns
        self.convert(fault.gfn, fault.npages, fault.private)

    # ------------------------------------------------------------------ kvm_convert_memory
    def convert(self, gfn: int, npages: int, to_private: bool) -> None:
        """``kvm_convert_memory(start, size, to_private)``."""
        if self.trace is not None:
            self.trace(int(self.host.clock()), gfn, npages, to_private)
        before = self.kvm.attrs.private[gfn : gfn + npages].copy()
        self.kvm.set_memory_attributes(gfn, npages, to_private)
        self.memory.attributes_changed(gfn, npages, before)
        if self.gmem_backed:
            if self.policy.discard_on_convert:
                if to_private:
                    self.memory.discard(gfn, npages)
                elif self.kvm.gmem is not None:
                    self.kvm.gmem.punch_hole(gfn, npages)
        else:
            self._convert_in_place(gfn, npages, to_private)

    def _convert_in_place(self, gfn: int, npages: int, to_private: bool) -> None:
        pfns = self.memory.pfns(gfn, npages)
        have = pfns >= 0
        if to_private:
            gfns = np.arange(gfn, gfn + npages, dtype=np.int64)
            gmem_prepare(self.host, gfns[have], pfns[have], 1, self.kvm.asid)
        else:
            gmem_invalidate(self.host, pfns[have])

    # ------------------------------------------------------------------ accounting
    def private_bytes(self) -> int:
        if self.kvm.gmem is not None:
            return self.kvm.gmem.private_bytes
        return self.memory.private_pages << PAGE_SHIFT

    def shared_bytes(self) -> int:
        if self.kvm.gmem is not None:
            return self.memory.bytes
        return (self.memory.allocated_pages - self.memory.private_pages) << PAGE_SHIFT

    def guest_bytes(self) -> int:
        """Guest memory that is backed in its current state (private gfns with a private page, shared gfns with
        a shared page): what the guest can use without a fault allocating memory."""
        total = 0
        for lo, hi in self._scan_ranges():
            shared_ok = self.memory.pfn.present(lo, hi)
            if self.kvm.gmem is None:
                total += int(np.count_nonzero(shared_ok))
                continue
            priv = self.kvm.attrs.private[lo:hi]
            total += int(np.count_nonzero(np.where(priv, self._private_ok(lo, hi), shared_ok) & self.ram[lo:hi]))
        return total << PAGE_SHIFT

    def double_allocated_bytes(self) -> int:
        """Gfns that have both a private page and a shared page allocated."""
        if self.kvm.gmem is None:
            return 0
        total = 0
        for lo, hi in self._scan_ranges():
            total += int(np.count_nonzero(self._private_ok(lo, hi) & self.memory.pfn.present(lo, hi)))
        return total << PAGE_SHIFT

    def _scan_ranges(self) -> list[tuple[int, int]]:
        """The gfn ranges a scan of the backing maps must look at: the runs of 2M chunks that either map ever
        wrote (a lazily accepting guest's few), or all gfns when they are scattered."""
        touched = self.memory.pfn.touched_chunks()
        gm = self.kvm.gmem
        if gm is not None:
            # a guest_memfd chunk spans 2M of gfns, or one folio if larger
            per = max(1, gm.folio_pages >> CHUNK_SHIFT)
            touched = touched | np.repeat(gm.folio_pfn.touched_chunks(), per)[: touched.size]
        runs = _true_runs(touched)
        if len(runs) > _MAX_SCAN_RANGES:
            return [(0, self.kvm.npages)]
        n = self.kvm.npages
        return [(lo << CHUNK_SHIFT, min((lo + k) << CHUNK_SHIFT, n)) for lo, k in runs if lo << CHUNK_SHIFT < n]

    def _private_ok(self, lo: int, hi: int) -> npt.NDArray[np.bool_]:
        """Whether each gfn of ``[lo, hi)`` has its guest_memfd page allocated."""
        gm = self.kvm.gmem
        assert gm is not None
        fp = gm.folio_pages
        if fp == 1:
            return gm.folio_pfn.present(lo, hi)
        f0 = lo // fp
        return np.repeat(gm.folio_pfn.present(f0, (hi - 1) // fp + 1), fp)[lo - f0 * fp : hi - f0 * fp]

    def _account(self) -> None:
        p, s = self.private_bytes(), self.shared_bytes()
        self.peak_private_bytes = max(self.peak_private_bytes, p)
        self.peak_shared_bytes = max(self.peak_shared_bytes, s)
        self.peak_total_bytes = max(self.peak_total_bytes, p + s)

    # ------------------------------------------------------------------ teardown
    def destroy(self) -> None:
        """VM shutdown: KVM releases guest_memfd; QEMU unmaps its RAM (pre-UPM: pages are made shared first,
        ``sev_free_vm``/``snp_reclaim``), and ``MEM_ENCRYPT_UNREG_REGION`` is the restore point for ``bulk``."""
        self.kvm.destroy()
        if not self.gmem_backed:
            assigned = self.memory.pfn[np.flatnonzero(self.memory.pfn.present() & self.kvm.attrs.private)]
            gmem_invalidate(self.host, assigned)
        frames = self.memory.release_all()
        self.host.unregister_frames(np.sort(frames))


#: Above this many runs of touched chunks, :meth:`Qemu.guest_bytes` scans every gfn at once.
_MAX_SCAN_RANGES = 64


def _true_runs(ram: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """``(start, length)`` of every run of True."""
    edges = [0, *(np.flatnonzero(ram[1:] != ram[:-1]) + 1).tolist(), int(ram.size)]
    return [(a, b - a) for a, b in itertools.pairwise(edges) if ram[a]]

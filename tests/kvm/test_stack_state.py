"""State machine over the whole stack (guest -> vmm -> kvm -> host -> hw) under every preset and a few custom policies.

Rules: guest conversions (MSR protocol for single pages, GHCB with huge_ok true/false), guest accesses (private or
shared, read or write; a kind that disagrees with the attribute is an implicit conversion), host kernel writes and
reads at frames near the guest's, host allocations and frees interleaving host and guest frames, and VM
destroy + recreate.

Invariants, checked after every step (sources: amd-snp-arch.md §7-§8, linux-snp-host.md §3-§5, DESIGN.md):

1. no host write lands on a private page: every ``kernel_write`` (the test's and the kernel's own, e.g. page
   zeroing) is wrapped; when it returns True the frame (for a 2M/1G direct-map mapping: its whole 2M range) holds
   no assigned RMP entry. A crash (False) is allowed only when the policy can crash there: under any ``directmap``
   other than ``keep`` a write to a hypervisor-owned frame never faults, under ``fixup`` only a not-present
   mapping or a write to a host SNP page itself (which the handler cannot make shared) can crash. 1b (state
   form): no hypervisor-owned frame is missing from the direct map; ``split``/``bulk``/``unmap`` never leave a
   2M/1G mapping over a 2M range that is only partly assigned; ``unmap``/``unmap-nosplit`` never map an
   assigned frame (``unmap-nosplit`` maps host SNP pages, invariant 9).
2. guest integrity: for each gfn the guest validated (and did not convert since) the frame it validated on is
   tracked; a private access to it either finds the same frame still assigned to the VM's ASID, validated, with
   gpa == gfn << 12, or the access raises #VC (``guest_vc_count`` grows by at least the number of such pages).
3. accounting: private/shared/guest bytes equal a recount from the arrays (shared bytes include the pages partly
   unmapped THPs hold on the deferred split queue and the hugetlb pages reserved at mmap); waste >= 0;
   guest_bytes <= RAM; 4K/4K with discard: waste == 0; frame owner tags agree with the backing arrays (held THP
   pages included, hugetlb pool pages tagged as the pool); every assigned RMP entry belongs to the live VM's
   private backing (no private frame leaks to the host).
3b. THP deferred split (mm/huge_memory.c): a PTE-mapped THP on the queue has at least one page still mapped at its
   gfn and at least one unmapped (a folio with none mapped is freed at once), is not PMD-mapped, is queued on the
   host, and the host's held count is the mapping's; reclaim (``drop_caches``) frees exactly the held pages and
   empties the queue. hugetlb: the host's reserved pages are the mapping's unfaulted reservation, and the pool's
   free pages cover them.
4. NPT: a mapped gfn's attribute equals the mapping's private flag and the mapped frame is the gfn's current
   backing frame; a 2M mapping is one aligned, contiguous, attribute-uniform block; a private 2M mapping points
   at an assigned 2M RMP entry; with ``rmp_fault = oops`` every private mapping's frame is assigned; the NPT byte
   counters equal a recount.
5. host: ``DirectMap.check_invariants()``; DirectMap4k+2M+1G == the bytes present; buddy used frames == frames
   tagged non-FREE. After VM destroy: nothing assigned, nothing leaked, everything present in the direct map, and
   with a ``directmap_restore`` point the direct map is merged back to 1G.
6. guest_bytes is conserved by a conversion of a fully backed range plus touching it (4K/4K policies).
8. host accessors of guest memory (snpsim.host.uaccess, issue 14): a write through any accessor's context and
   address kind never lands on an assigned frame (after a fixup the frame is shared); with guest_memfd it never
   faults on the RMP and is lost exactly when the gfn is private; pre-UPM it is never lost; the integrity oracle
   stays empty. Invariant 2 then holds the guest to a #VC for every page a fixup took.
9. host SNP pages (issue 12; arch/x86/kvm/svm/sev.c, drivers/crypto/ccp/sev-dev.c): each VM is launched
   (``snp_launch_start``: the context and response pages "snp_alloc_firmware_page", the request page an ordinary
   ``alloc_page``; ``sev_vcpu_create``: a VMSA per vCPU from ``snp_safe_alloc_page``; ``snp_launch_finish``:
   "rmp_make_private(pfn, INITIAL_VMSA_GPA, PG_LEVEL_4K, sev->asid, true)"), and the host may have run SNP init
   (the 2 MiB TMR, order 9, as firmware pages). At every step the assigned RMP entries are exactly the VM's
   private backing plus these pages; ``snp_host_bytes`` is their bytes; each is a 4K entry, firmware pages ASID 0
   and immutable, VMSAs the VM's ASID with the VMSA bit and never 2M-aligned (the erratum ``snp_safe_alloc_page``
   avoids); its direct-map consequence per policy: ``split``/``bulk`` map it at 4K, ``unmap`` removes it,
   ``unmap-nosplit`` maps it at 4K (a 2M block of kernel objects can be neither removed whole nor left at 2M);
   frames tagged KERNEL are exactly these pages and the request page. After destroy only the TMR stays assigned,
   and a restore point merges back every 2M range without a host SNP page.
7. host CPU time (what ``snpsim calibrate`` relies on): every operation a thread was charged is declared by a cost
   (``snpsim.hw.costs.OPS``) and cost exactly count x that cost; the counts agree with what happened: one
   ``rmpupdate`` / ``psmash`` charge per RMP entry the hardware updated / smashed, one ``vmexit`` per PSC request,
   one ``userspace_exit`` per exit to the VMM.

Model bugs found by this machine (regression tests at the end): (A) a #VC on a page under a 2M RMP entry escaped
as ``NestedPageFault``; (B) PVALIDATE on a gfn whose attribute is shared mapped guest_memfd into the NPT against the
attribute, leaving a private NPT mapping of a frame freed by the punch hole; (C) a multi-page private access whose
first page's RMP #NPF is fixed by PSMASH + zapping the 2M range found the next page of the same access unmapped
(``ValueError: -1 is not a valid PageSize``). All three are fixed. (D) was a bug of this machine, not the model:
under ``directmap = keep`` with ``fixup``, a private access across a shared gfn validates the pages before it, then
the implicit conversion allocates and clears a guest_memfd page through the 1G direct map, and the fixup handler
takes back the neighbours the guest has just read; invariant 2 now expects #VC for them at the next access.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from tests.fast.checked import CheckedAllocator, CheckedDirectMap, CheckedRmp

from snpsim.fast import FastCompactor, FastHostKernel, FastKvmVm
from snpsim.guest.events import Access, Conversion, Protocol
from snpsim.host import HostKernel, Owner
from snpsim.host.buddy import BuddyAllocator
from snpsim.host.compaction import Compactor
from snpsim.host.directmap import DirectMap
from snpsim.host.uaccess import ACCESSORS, Address, Context, Outcome, guest_write
from snpsim.hw import PageSize, Rmp
from snpsim.hw.costs import OPS
from snpsim.kvm.gmem import GuestMemfd
from snpsim.kvm.npt import UNMAPPED
from snpsim.kvm.vm import INITIAL_VMSA_GPA, KvmVm
from snpsim.metrics import Counters
from snpsim.policy import Policy, presets
from snpsim.runner import GuestDriver, GuestRamView
from snpsim.vmm.qemu import Qemu

HOST_FRAMES = 262144  # 1 GiB: one 1G direct-map mapping at boot
GUEST_PAGES = 8192  # 32 MiB of RAM, 16 2M ranges
HOT_PAGES = 2048  # most ranges start in the first 8 MiB, so rules interact
VCPUS = 2  # VMSAs per VM (invariant 9)
K4 = 4096
P2M = 512

POLICIES: dict[str, Policy] = {
    **presets,
    # RMPOPT on upstream (docs/rmpopt.md): invariant 8, a set RMPOPT bit never covers an assigned RMP entry
    "upstream-rmpopt": Policy(rmpopt=True),
    # (1G folios would need a 1 GiB hugetlb reservation, this whole 1 GiB host: tests/kvm/test_gmem_designs.py)
    "gmem-inplace-2m-first": replace(presets["gmem-hugetlb"], private_granularity="2m", gmem_folio_split="2m-first"),
    "gmem-4k-thp-split": Policy(
        private_backing="gmem",
        private_granularity="4k",
        shared_backing="thp",
        discard_on_convert=True,
        directmap="split",
        directmap_restore="never",
        rmp_fault="oops",
    ),
    "gmem-4k-nodiscard-unmap": Policy(
        private_backing="gmem",
        private_granularity="4k",
        shared_backing="4k",
        discard_on_convert=False,
        directmap="unmap",
        directmap_restore="on-release",
        rmp_fault="oops",
    ),
    "gmem-2m-hugetlb-nodiscard": Policy(
        private_backing="gmem",
        private_granularity="2m",
        shared_backing="hugetlb-2m",
        discard_on_convert=False,
        directmap="unmap-nosplit",
        directmap_restore="on-release",
        rmp_fault="oops",
    ),
    "vmm-keep-oops": Policy(
        private_backing="vmm",
        private_granularity="4k",
        shared_backing="4k",
        discard_on_convert=True,
        directmap="keep",
        directmap_restore="never",
        rmp_fault="oops",
    ),
    "gmem-keep-fixup": Policy(
        private_backing="gmem",
        private_granularity="4k",
        shared_backing="4k",
        discard_on_convert=True,
        directmap="keep",
        directmap_restore="never",
        rmp_fault="fixup",
    ),
}


@st.composite
def gfn_ranges(draw: st.DrawFn) -> tuple[int, int]:
    """A guest range ``(gfn, npages)``: single pages, small runs, whole 2M blocks, or large unaligned runs."""
    kind = draw(st.sampled_from(("page", "small", "2m", "big")))
    start = st.one_of(st.integers(0, HOT_PAGES - 1), st.integers(0, GUEST_PAGES - 1))
    if kind == "2m":
        gfn = draw(st.integers(0, GUEST_PAGES // P2M - 1)) * P2M
        npages = P2M * draw(st.integers(1, 2))
    else:
        gfn = draw(start)
        npages = 1 if kind == "page" else draw(st.integers(1, 32) if kind == "small" else st.integers(33, 1500))
    return gfn, max(1, min(npages, GUEST_PAGES - gfn))


class StackMachine(RuleBasedStateMachine):
    #: policies the ``@initialize`` rule chooses from (subclasses narrow it to one)
    policy_names: tuple[str, ...] = tuple(POLICIES)

    # ------------------------------------------------------------------ set-up
    @initialize(data=st.data())
    def setup(self, data: st.DataObject) -> None:
        self.name = data.draw(st.sampled_from(self.policy_names), label="policy")
        self.policy = POLICIES[self.name]
        # the reference engine, or the fast one: its host kernel, compaction and KVM classes, and its allocator,
        # direct map and RMP checked against a reference twin at every call
        fast = data.draw(st.booleans(), label="fast engine (checked)")
        self.fast = fast
        self.host = (FastHostKernel if fast else HostKernel)(
            HOST_FRAMES,
            self.policy,
            allocator=CheckedAllocator if fast else BuddyAllocator,
            directmap=CheckedDirectMap if fast else DirectMap,
            rmp=CheckedRmp if fast else Rmp,
            compactor=FastCompactor if fast else Compactor,
        )
        self._orig_write = self.host.kernel_write
        self.host.kernel_write = self._checked_kernel_write  # every kernel write, incl. page zeroing
        #: frames the ``fixup`` #PF handler made shared since the last guest access began
        self.fixed_up: set[int] = set()
        self.host.fixup_listeners.append(lambda pfns: self.fixed_up.update(int(p) for p in pfns))
        self.snp_2m: set[int] = set()
        if data.draw(st.booleans(), label="snp_init"):
            self.host.snp_init()  # the SEV-ES TMR: 2 MiB of firmware pages for the host's lifetime
        self.counters = Counters()
        self.ram = np.ones(GUEST_PAGES, dtype=bool)
        self.asid = 0
        self.user: dict[int, int] = {}  # host USER allocations: pfn -> order
        self._new_vm()

    def _new_vm(self) -> None:
        self.asid += 1
        kvm_vm = FastKvmVm if self.fast else KvmVm
        self.vmm = Qemu(self.host, self.policy, self.ram, asid=self.asid, counters=self.counters, kvm_vm=kvm_vm)
        self.guest = GuestDriver(self.vmm)
        kvm = self.vmm.kvm  # the launch's host SNP pages (invariant 9)
        kvm.snp_launch_start()
        for index in range(VCPUS):
            kvm.sev_es_vcpu_create(index)
        kvm.snp_launch_finish()
        self.snp_2m.update(p // P2M for p in self.host.snp_pages)  # 2M ranges that ever held a host SNP page
        self.tracked = np.zeros(GUEST_PAGES, dtype=bool)  # validated by the guest, not converted since
        self.val_pfn = np.full(GUEST_PAGES, -1, dtype=np.int64)  # frame each tracked gfn was validated on

    @property
    def gm(self) -> GuestMemfd | None:
        return self.vmm.kvm.gmem

    @property
    def four_k(self) -> bool:
        return self.policy.private_granularity == "4k" and self.policy.shared_backing == "4k"

    @property
    def in_place(self) -> bool:
        return self.policy.gmem_conversion == "in-place"

    # ------------------------------------------------------------------ helpers: backing frames
    def _private_frames(self) -> np.ndarray:
        """Per gfn, the frame of its private backing (-1 if none)."""
        if self.gm is not None:
            return self.gm.pfns(0, GUEST_PAGES)
        return self.vmm.memory.pfn[:]

    def _gmem_frames(self) -> np.ndarray:
        gm = self.gm
        if gm is None:
            return np.zeros(0, dtype=np.int64)
        return gm.frames()

    def _kernel_frames(self) -> np.ndarray:
        """Frames of host-kernel SNP memory: the host SNP pages and the VM's guest-request page."""
        frames = list(self.host.snp_pages)
        if self.vmm.kvm.guest_req_buf is not None:
            frames.append(self.vmm.kvm.guest_req_buf)
        return np.sort(np.array(frames, dtype=np.int64))

    def _user_frames(self) -> np.ndarray:
        frames = [np.arange(p, p + (1 << o), dtype=np.int64) for p, o in self.user.items()]
        return np.sort(np.concatenate(frames)) if frames else np.zeros(0, dtype=np.int64)

    def _assigned(self) -> np.ndarray:
        """Per host frame: is its RMP entry assigned."""
        mask = np.zeros(HOST_FRAMES, dtype=bool)
        mask[self.host.rmp.assigned_pages(0, HOST_FRAMES)] = True
        return mask

    def _rmp_ok(self, gfn: int, pfn: int) -> bool:
        """The frame is assigned to this VM at this gfn and validated."""
        if pfn < 0:
            return False
        e = self.host.rmp.rmpread(pfn * K4)
        return e.assigned and e.asid == self.asid and e.gpa == gfn * K4 and e.validated

    # ------------------------------------------------------------------ invariant 1: every host write
    def _checked_kernel_write(self, pfn: int, path: str) -> bool:
        host = self.host
        level = host.directmap.level(pfn)
        own_assigned = host.rmp.assigned_in_2m(pfn) > 0 and host.rmp.rmpread(pfn * K4).assigned
        ok = self._orig_write(pfn, path)
        if ok:
            assert level is not None, f"write to frame {pfn:#x} succeeded through a not-present mapping"
            # the mapping the (retried) write went through: a fixup around a host SNP page splits it to 4K
            level = host.directmap.level(pfn)
            assert level is not None
            if level == PageSize.SIZE_4K:
                assert not host.rmp.rmpread(pfn * K4).assigned, f"host write landed on private frame {pfn:#x}"
            else:
                n = host.rmp.assigned_in_2m(pfn)
                assert n == 0, f"host write through a {level.name} mapping at {pfn:#x}: {n} assigned in its 2M"
        else:
            if self.policy.directmap != "keep":
                assert own_assigned, (
                    f"{self.name}: write to hypervisor-owned frame {pfn:#x} crashed (directmap level {level})"
                )
            if self.policy.rmp_fault == "fixup":  # or a write to a host SNP page itself (invariant 9)
                assert level is None or pfn in host.snp_pages, f"{self.name}: fixup crashed on an RMP fault at {pfn:#x}"
        return ok

    # ------------------------------------------------------------------ guest actions with tracking
    def _convert(self, gfn: int, npages: int, to_private: bool, protocol: Protocol, huge_ok: bool) -> None:
        self.guest.execute(Conversion(gfn, npages, to_private, protocol, huge_ok=huge_ok))
        sl = slice(gfn, gfn + npages)
        kvm = self.vmm.kvm
        if to_private:
            assert kvm.attrs.private[sl].all() and self.guest.validated[sl].all()
            assert (kvm.npt.level[sl] != UNMAPPED).all() and kvm.npt.private[sl].all()
            self.tracked[sl] = True
            self.val_pfn[sl] = kvm.npt.pfn[sl]
            if self.policy.discard_on_convert and self.policy.shared_backing == "4k":
                assert (self.vmm.memory.pfn[sl] < 0).all() or self.gm is None, "shared copy not discarded"
        else:
            assert not kvm.attrs.private[sl].any() and not self.guest.validated[sl].any()
            self.tracked[sl] = False
            if self.gm is not None and self.policy.discard_on_convert and self.gm.folio_pages == 1:
                assert (self.gm.pfns(gfn, npages) < 0).all(), "guest_memfd not punched on to-shared"

    def _access(self, gfn: int, npages: int, private: bool, write: bool) -> None:
        sl = slice(gfn, gfn + npages)
        if not private:
            self.guest.execute(Access(gfn, npages, private=False, write=write))
            assert not self.vmm.kvm.attrs.private[sl].any()
            self.tracked[sl] = False  # implicitly converted to shared
            return
        gfns = np.flatnonzero(self.tracked[sl]) + gfn
        backing = self._private_frames()
        # pages the host took back or remapped since the guest validated them: each must raise #VC
        compromised = {
            g for g in gfns.tolist() if backing[g] != self.val_pfn[g] or not self._rmp_ok(g, int(self.val_pfn[g]))
        }
        vc0 = self.counters.guest_vc_count
        self.fixed_up.clear()
        self.guest.execute(Access(gfn, npages, private=True, write=write))
        dvc = self.counters.guest_vc_count - vc0
        assert self.vmm.kvm.attrs.private[sl].all()
        backing = self._private_frames()
        npt = self.vmm.kvm.npt
        for g in gfns.tolist():
            now = int(npt.pfn[g]) if npt.level[g] != UNMAPPED else int(backing[g])
            if now in self.fixed_up and not self._rmp_ok(g, now):
                # bug D (regression test below): a host write later in this same access (clearing the page
                # allocated for an implicit conversion) took the frame back after the guest read it; the
                # guest's next private access must raise #VC (``compromised`` above, next time)
                continue
            assert self._rmp_ok(g, now), f"{self.name}: gfn {g:#x} accessed private but frame {now:#x} not valid"
            if now != self.val_pfn[g]:
                compromised.add(g)
        assert dvc >= len(compromised), (
            f"{self.name}: guest read {len(compromised)} page(s) changed by the host "
            f"({sorted(compromised)[:8]}) with only {dvc} #VC"
        )
        self.val_pfn[gfns] = np.where(npt.level[gfns] != UNMAPPED, npt.pfn[gfns], backing[gfns])

    # ------------------------------------------------------------------ rules: guest
    @rule(rng=gfn_ranges(), to_private=st.booleans(), huge_ok=st.booleans())
    def ghcb_conversion(self, rng: tuple[int, int], to_private: bool, huge_ok: bool) -> None:
        self._convert(*rng, to_private, Protocol.GHCB, huge_ok)

    @rule(gfn=st.one_of(st.integers(0, HOT_PAGES - 1), st.integers(0, GUEST_PAGES - 1)), to_private=st.booleans())
    def msr_conversion(self, gfn: int, to_private: bool) -> None:
        self._convert(gfn, 1, to_private, Protocol.MSR, False)

    @rule(rng=gfn_ranges(), private=st.booleans(), write=st.booleans())
    def guest_access(self, rng: tuple[int, int], private: bool, write: bool) -> None:
        gfn, npages = rng
        self._access(gfn, npages, private, write)

    @rule(rng=gfn_ranges(), to_private=st.booleans(), huge_ok=st.booleans())
    def conversion_conserves_guest_bytes(self, rng: tuple[int, int], to_private: bool, huge_ok: bool) -> None:
        """Invariant 6: back the range in its current state, convert it, touch it: guest_bytes is unchanged."""
        if not self.four_k:
            return
        gfn, npages = rng
        attrs = self.vmm.kvm.attrs.private
        idx = np.flatnonzero(np.diff(attrs[gfn : gfn + npages].astype(np.int8))) + 1
        for lo, hi in zip(np.r_[0, idx], np.r_[idx, npages], strict=True):
            self._access(gfn + int(lo), int(hi - lo), bool(attrs[gfn + lo]), True)
        before = self.vmm.guest_bytes()
        self._convert(gfn, npages, to_private, Protocol.GHCB, huge_ok)
        self._access(gfn, npages, to_private, False)
        assert self.vmm.guest_bytes() == before, f"{self.name}: guest_bytes {before} -> {self.vmm.guest_bytes()}"

    # ------------------------------------------------------------------ rules: host
    def _near_guest(self, data: st.DataObject) -> int:
        frames = np.concatenate(
            [
                self.vmm.memory.pfn[:][self.vmm.memory.pfn[:] >= 0],
                self._gmem_frames(),
                self._user_frames(),
                self._kernel_frames(),
            ]
        )
        if frames.size == 0 or data.draw(st.integers(0, 4), label="far") == 0:
            return data.draw(st.integers(0, HOST_FRAMES - 1), label="pfn")
        base = int(frames[data.draw(st.integers(0, frames.size - 1), label="frame")])
        if data.draw(st.booleans(), label="same2m"):
            return base // P2M * P2M + data.draw(st.integers(0, P2M - 1), label="off2m")
        return min(max(base + data.draw(st.integers(-2, 2), label="delta"), 0), HOST_FRAMES - 1)

    @rule(data=st.data())
    def host_write(self, data: st.DataObject) -> None:
        self.host.kernel_write(self._near_guest(data), "test:kernel_write")

    @rule(gfn=st.integers(0, GUEST_PAGES - 1), name=st.sampled_from(sorted(ACCESSORS)))
    def host_accessor_write(self, gfn: int, name: str) -> None:
        acc = ACCESSORS[name]
        killed: list[str] = []
        ram = GuestRamView("vm", self.vmm, self.guest.guest.log, {}, killed.append)
        private = bool(self.vmm.kvm.attrs.private[gfn])
        faults = self.host.host_rmp_fault_count
        out = guest_write(self.host, ram, gfn, acc)
        if self.in_place:
            # INPLACE v8: QEMU maps the guest_memfd, which refuses private pages (kvm_gmem_fault_user_mapping:
            # VM_FAULT_SIGBUS): QEMU dies of SIGBUS, a kernel access gets -EFAULT; a shared page is the one the
            # guest reads, so nothing is ever lost
            if private:
                assert out == (Outcome.SIGBUS if acc.context == Context.USER else Outcome.EFAULT), (name, out)
            else:
                assert out == Outcome.OK, (name, out)
                assert self.gm is not None
                pfn = int(self.gm.pfns(gfn, 1)[0])
                assert not self.host.rmp.rmpread(pfn * K4).assigned, f"{name} landed on assigned frame {pfn:#x}"
            assert (out == Outcome.SIGBUS) == bool(killed)
            assert not self.host.integrity_violations
            return
        if out in (Outcome.OK, Outcome.LOST, Outcome.FIXUP):
            pfn = int(self.vmm.memory.pfn[gfn])
            assert not self.host.rmp.rmpread(pfn * K4).assigned, f"{name} landed on assigned frame {pfn:#x}"
        if self.gm is not None and acc.address == Address.USER:
            assert self.host.host_rmp_fault_count == faults, f"{self.name}: {name} RMP-faulted on the shared backing"
            assert (out == Outcome.LOST) == private
        if self.gm is None:
            assert out != Outcome.LOST
        assert (out == Outcome.SIGBUS) == bool(killed)
        assert not self.host.integrity_violations

    @rule(data=st.data())
    def host_read(self, data: st.DataObject) -> None:
        pfn = self._near_guest(data)
        present = self.host.directmap.level(pfn) is not None
        assert self.host.kernel_read(pfn, "test:kernel_read") is present  # reads are never RMP-checked

    @rule(order=st.sampled_from((0, 0, 0, 1, 3)))
    def host_alloc(self, order: int) -> None:
        pfn = self.host.alloc(order, Owner.USER, path="test:alloc")
        assert pfn is not None
        self.user[pfn] = order

    @precondition(lambda self: bool(self.user))
    @rule(data=st.data())
    def host_free(self, data: st.DataObject) -> None:
        pfn = data.draw(st.sampled_from(sorted(self.user)), label="user pfn")
        self.host.free(pfn, self.user.pop(pfn))

    @rule()
    def reclaim(self) -> None:
        """Memory pressure: the deferred split shrinker runs (``echo 2 > /proc/sys/vm/drop_caches``)."""
        mem, host = self.vmm.memory, self.host
        held, free0 = mem.held_pages, host.buddy.free_frames
        assert host.drop_caches() == held
        assert host.buddy.free_frames == free0 + held
        assert mem.held_pages == host.thp_held_pages == 0 and not mem.partial and len(host.deferred_split) == 0

    @rule()
    def destroy_and_recreate(self) -> None:
        host = self.host
        self.vmm.destroy()
        assert host.thp_held_pages == 0 and len(host.deferred_split) == 0
        assert host.hugetlb_reserved(9) == host.hugetlb_reserved(18) == 0
        tmr = np.sort(np.array(list(host.snp_pages), dtype=np.int64))  # only the TMR outlives a VM
        assert set(host.snp_pages.values()) <= {"sev-es-tmr"} and not host.snp_leaked
        assert tmr.size == (512 if host.snp_tmr is not None else 0)
        assert host.rmp.assigned_count() == tmr.size, "assigned RMP entries survive VM destroy"
        assert host.metrics()["snp_host_bytes"] == tmr.size * K4
        user_frames = sum(1 << o for o in self.user.values())
        assert host.buddy.used_frames == user_frames + tmr.size, "guest frames leaked by VM destroy"
        assert host.frames.count(Owner.USER) == user_frames
        levels = host.directmap.levels(0, HOST_FRAMES)
        absent = np.flatnonzero(levels < 0)
        absent = absent[~np.isin(absent, tmr)]
        assert absent.size == 0, f"{absent.size} frames missing from the direct map after destroy"
        if self.policy.directmap_restore != "never":
            # the restore point (guest_memfd release, unregister) merges guest memory back; a 2M range that ever
            # held a host SNP page keeps the 4K split its 4K RMPUPDATE made (as upstream's never-merge), so its
            # 1G stays split too
            clean = np.ones(HOST_FRAMES // P2M, dtype=bool)
            clean[sorted(self.snp_2m)] = False
            small = levels.reshape(-1, P2M)[clean] < int(PageSize.SIZE_2M)
            assert not small.any(), f"{self.name}: 2M ranges that never held a host SNP page not restored"
            if not self.snp_2m:
                assert host.directmap.directmap_1g == HOST_FRAMES * K4, f"{self.name}: direct map not restored"
        if host.rmpopt is not None:  # the rescan the teardown queued (run now): the GiB is HV-owned again unless
            assert host.rmpopt.deadline_ns is not None  # it holds the TMR's firmware pages
            assert host.rmpopt.scan() == (0 if tmr.size else 1)
        self._new_vm()

    # ------------------------------------------------------------------ invariants
    @invariant()
    def stack_invariants(self) -> None:
        """All invariants; the RMP's assigned mask is computed once per step and shared."""
        assigned = self._assigned()
        self._check_accounting()
        self._check_frames(assigned)
        self._check_npt(assigned)
        self._check_direct_map(assigned)
        self._check_costs()
        self._check_rmpopt()
        self._check_snp_host_pages(assigned)

    def _check_snp_host_pages(self, assigned: np.ndarray) -> None:
        """Invariant 9."""
        host, kvm = self.host, self.vmm.kvm
        pages = host.snp_pages
        assert host.metrics()["snp_host_bytes"] == len(pages) * K4
        assert not host.snp_leaked
        want = {kvm.snp_context: "snp-context", kvm.guest_resp_buf: "guest-resp"}
        want.update({pfn: "vmsa" for pfn in kvm.vmsas.values()})
        if host.snp_tmr is not None:
            assert host.snp_tmr % P2M == 0  # SNP_TMR_SIZE, 2M-aligned
            want.update({p: "sev-es-tmr" for p in range(host.snp_tmr, host.snp_tmr + P2M)})
        assert pages == want, f"{self.name}: host SNP pages {pages} != {want}"
        levels = host.directmap.levels_of(np.array(sorted(pages), dtype=np.int64))
        dmode = self.policy.directmap
        for (pfn, what), level in zip(sorted(pages.items()), levels.tolist(), strict=True):
            assert assigned[pfn]
            e = host.rmp.rmpread(pfn * K4)
            assert e.page_size == PageSize.SIZE_4K, f"{what} at {pfn:#x} under a {e.page_size.name} entry"
            if what == "vmsa":
                assert (e.asid, e.vmsa, e.gpa) == (self.asid, True, INITIAL_VMSA_GPA), (what, e)
                assert pfn % P2M != 0, f"VMSA at 2M-aligned frame {pfn:#x}"
            else:
                assert (e.asid, e.immutable) == (0, True), (what, e)
            if dmode in ("split", "bulk", "unmap-nosplit"):
                assert level == int(PageSize.SIZE_4K), f"{self.name}: {what} at {pfn:#x} mapped at level {level}"
            elif dmode == "unmap":
                assert level < 0, f"{self.name}: {what} at {pfn:#x} still in the direct map"
        kframes = host.frames.find((Owner.KERNEL,), 0, HOST_FRAMES, HOST_FRAMES)
        assert np.array_equal(kframes, self._kernel_frames()), f"{self.name}: KERNEL frames != host SNP pages"

    def _check_rmpopt(self) -> None:
        """Invariant 8: a 1 GiB region whose RMPOPT bit is set on any CPU holds no assigned RMP entry (the bit
        means "entirely hypervisor-owned"; every assigning RMPUPDATE clears it)."""
        rmp = self.host.rmp
        if rmp.rmpopt_table is None:
            return
        for region in np.flatnonzero(rmp.rmpopt_table.any(axis=0)).tolist():
            assert rmp.assigned_pages(region << 18, 1 << 18).size == 0, f"{self.name}: RMPOPT bit over guest memory"

    def _check_costs(self) -> None:
        """Invariant 7."""
        costs = self.host.costs.as_dict()
        counts: dict[str, int] = {}
        for account in self.host.accounts.values():
            for op, n in account.count_by_op.items():
                assert op in OPS, f"{account.name} charged {op!r}, which no cost declares"
                assert account.by_op[op] == n * costs[OPS[op]], (account.name, op, n, account.by_op[op])
                counts[op] = counts.get(op, 0) + n
        rmp, c = self.host.rmp, self.counters
        assert counts.get("rmpupdate", 0) == rmp.rmpupdate_count
        assert counts.get("psmash", 0) == rmp.psmash_count
        assert counts.get("vmexit", 0) == c.psc_request_count
        assert counts.get("userspace_exit", 0) == c.vmm_exit_count

    def _check_accounting(self) -> None:
        """Invariant 3 (bytes)."""
        vmm, kvm, mem, gm = self.vmm, self.vmm.kvm, self.vmm.memory, self.gm
        priv = kvm.attrs.private
        shared_ok = mem.pfn[:] >= 0
        assert mem.allocated_pages == int(np.count_nonzero(shared_ok))
        self._check_deferred_split()
        extra = mem.held_pages + mem.reserved_units * mem.unit  # held by queued THPs, reserved hugetlb pages
        if gm is not None:
            nfolios = int(np.count_nonzero(gm.folio_pfn[:] >= 0))
            assert gm.allocated_folios == nfolios
            assert gm.allocated_small_pages == int(np.count_nonzero(gm.small[:] >= 0))
            private_ok = self._private_frames() >= 0
            assert gm.private_bytes == (nfolios * gm.folio_pages + gm.allocated_small_pages) * K4
            if self.in_place:
                # INPLACE: one page per gfn, in guest_memfd; the RAM block is never faulted (no double allocation)
                assert mem.allocated_pages == 0 and vmm.double_allocated_bytes() == 0
                assert vmm.private_bytes() == int(np.count_nonzero(private_ok & priv)) * K4
                assert vmm.shared_bytes() == (int(np.count_nonzero(private_ok & ~priv)) + extra) * K4
                shared_ok = private_ok
            else:
                assert vmm.private_bytes() == nfolios * gm.folio_pages * K4 + gm.allocated_small_pages * K4
                assert vmm.shared_bytes() == (int(np.count_nonzero(shared_ok)) + extra) * K4
            guest = int(np.count_nonzero(np.where(priv, private_ok, shared_ok) & self.ram)) * K4
        else:
            assert vmm.private_bytes() == int(np.count_nonzero(shared_ok & priv)) * K4
            assert vmm.shared_bytes() == (int(np.count_nonzero(shared_ok & ~priv)) + extra) * K4
            guest = int(np.count_nonzero(shared_ok & self.ram)) * K4
        assert vmm.guest_bytes() == guest
        waste = vmm.private_bytes() + vmm.shared_bytes() - vmm.guest_bytes()
        assert waste >= 0
        assert vmm.guest_bytes() <= int(np.count_nonzero(self.ram)) * K4
        if self.four_k and (self.policy.discard_on_convert or self.in_place):
            # a host accessor's write to a private gfn faults its discarded shared page in again (hva_to_pfn /
            # handle_mm_fault): the only waste 4K/4K discard can have (shared pages at private gfns)
            stale = 0
            if self.gm is not None:
                shared_at_private = vmm.memory.pfn.present(0, GUEST_PAGES) & vmm.kvm.attrs.private[:GUEST_PAGES]
                stale = int(np.count_nonzero(shared_at_private)) * K4
            assert waste == stale, f"{self.name}: {waste} bytes of waste with 4K/4K discard ({stale} stale shared)"

    def _check_deferred_split(self) -> None:
        """Invariant 3b."""
        mem, host = self.vmm.memory, self.host
        held = 0
        for u, head in mem.partial.items():
            lo = u * mem.unit
            mapped = mem.pfn[lo : lo + mem.unit] == head + np.arange(mem.unit)
            assert mapped.any() and not mapped.all(), f"{self.name}: THP at unit {u} queued with {mapped.sum()} mapped"
            assert not mem.huge[u] and host.deferred_split.queued(mem, u)
            held += int(np.count_nonzero(~mapped))
        assert mem.held_pages == held == host.thp_held_pages == mem.held_frames().size
        assert len(host.deferred_split) == len(mem.partial)
        if mem.hugetlb:
            assert host.hugetlb_reserved(mem.order) == mem.reserved_units <= host.hugetlb_pool_free(mem.order)

    def _check_frames(self, assigned: np.ndarray) -> None:
        """Invariants 3 (owner tags, no leaked private frame) and 5 (buddy == tags)."""
        host, mem = self.host, self.vmm.memory
        gframes = np.sort(self._gmem_frames())
        vframes = np.sort(np.concatenate([mem.pfn[:][mem.pfn[:] >= 0], mem.held_frames()]))
        uframes = self._user_frames()
        pool = host.frames.find((Owner.HUGETLB_POOL,), 0, HOST_FRAMES, HOST_FRAMES)  # free pool pages
        assert pool.size == sum(host.hugetlb_pool_free(o) << o for o in (9, 18))
        every = np.concatenate([gframes, vframes, uframes, pool, self._kernel_frames()])
        assert np.unique(every).size == every.size, "a frame has two owners"
        find = host.frames.find
        tagged = find(tuple(o for o in Owner if o != Owner.FREE), 0, HOST_FRAMES, HOST_FRAMES)
        assert host.buddy.used_frames == tagged.size == every.size, "buddy, frame tags and backing disagree"
        assert np.array_equal(tagged, np.sort(every)), "frames tagged in use are not the backing frames"
        assert np.array_equal(find((Owner.GMEM,), 0, HOST_FRAMES, HOST_FRAMES), gframes)
        assert np.array_equal(find((mem.owner,), 0, HOST_FRAMES, HOST_FRAMES), vframes)
        # every assigned RMP entry is private backing of the live VM
        owned = gframes if self.gm is not None else mem.pfn[:][(mem.pfn[:] >= 0) & self.vmm.kvm.attrs.private]
        if self.gm is not None and self.in_place:  # shared pages of the file are hypervisor-owned
            pf = self._private_frames()
            owned = pf[(pf >= 0) & self.vmm.kvm.attrs.private]
        stray = np.flatnonzero(assigned)
        stray = stray[~np.isin(stray, owned) & ~np.isin(stray, list(host.snp_pages))]
        assert stray.size == 0, f"{self.name}: assigned frames outside the VM's private backing: {stray[:8]}"

    def _check_npt(self, assigned: np.ndarray) -> None:
        """Invariant 4."""
        kvm = self.vmm.kvm
        npt, attrs = kvm.npt, kvm.attrs.private
        lv = npt.level
        mapped = lv != UNMAPPED
        bad = np.flatnonzero(mapped & (npt.private != attrs))
        assert bad.size == 0, f"{self.name}: NPT private flag != attribute at gfns {bad[:8]}"
        want = np.where(npt.private | self.in_place, self._private_frames(), self.vmm.memory.pfn[:])
        bad = np.flatnonzero(mapped & (npt.pfn[:] != want))
        assert bad.size == 0, f"{self.name}: NPT maps gfns {bad[:8]} to frames {npt.pfn[bad[:8]]}, not their backing"
        assert (npt.pfn[~mapped] == -1).all()
        assert (npt.pfn[mapped] >= 0).all()
        assert not (lv == int(PageSize.SIZE_1G)).any()  # 32 MiB guest: no 1G range
        blocks = lv.reshape(-1, P2M)
        huge_any = (blocks == int(PageSize.SIZE_2M)).any(axis=1)
        for b in np.flatnonzero(huge_any).tolist():
            lo = b * P2M
            sl = slice(lo, lo + P2M)
            assert (lv[sl] == int(PageSize.SIZE_2M)).all(), f"2M NPT mapping at {lo:#x} not whole"
            pfns = npt.pfn[sl]
            assert pfns[0] % P2M == 0 and (np.diff(pfns) == 1).all(), f"2M NPT mapping at {lo:#x} not contiguous"
            p = bool(npt.private[lo])
            assert (npt.private[sl] == p).all() and (attrs[sl] == p).all(), f"2M NPT over mixed attrs at {lo:#x}"
            if p:
                e = self.host.rmp.rmpread(int(pfns[0]) * K4)
                assert e.assigned and e.page_size == PageSize.SIZE_2M, f"private 2M NPT at {lo:#x} on a 4K RMP"
                assert e.asid == self.asid and e.gpa == lo * K4
        if self.policy.rmp_fault == "oops":
            priv = mapped & npt.private
            ok = assigned[npt.pfn[priv]]
            assert ok.all(), f"private NPT mappings of unassigned frames at gfns {np.flatnonzero(priv)[~ok][:8]}"
        counts = [int(np.count_nonzero(lv == k)) * K4 for k in range(3)]
        assert kvm.npt_bytes() == tuple(counts)

    def _check_direct_map(self, assigned: np.ndarray) -> None:
        """Invariants 5 (direct map) and 1b (what the direct map may show, per policy)."""
        host = self.host
        dm = host.directmap
        dm.check_invariants()
        c4k, c2m, c1g, absent = dm.count_levels(0, HOST_FRAMES)
        # direct_pages_count[]: entries at each level, present or not, summing to the mapped memory
        assert dm.directmap_4k + dm.directmap_2m + dm.directmap_1g == dm.mapped_bytes == HOST_FRAMES * K4
        assert dm.present_bytes == (HOST_FRAMES - absent) * K4
        assert c4k * K4 <= dm.directmap_4k and c2m * K4 <= dm.directmap_2m and c1g * K4 <= dm.directmap_1g
        m = host.metrics()
        assert (m["directmap_4k"], m["directmap_2m"], m["directmap_1g"]) == (
            dm.directmap_4k,
            dm.directmap_2m,
            dm.directmap_1g,
        )
        assert m["directmap_split_count"] == m["direct_map_level2_splits"] + m["direct_map_level3_splits"]
        # 1b: which frames the direct map may show, per policy
        levels = dm.levels(0, HOST_FRAMES)
        missing = np.flatnonzero((levels < 0) & ~assigned)
        assert missing.size == 0, f"{self.name}: hypervisor-owned frames not in the direct map: {missing[:8]}"
        dmode = self.policy.directmap
        if dmode in ("unmap", "unmap-nosplit"):
            guest = assigned.copy()
            if dmode == "unmap-nosplit":  # host SNP pages stay mapped at 4K (invariant 9)
                guest[list(host.snp_pages)] = False
            shown = np.flatnonzero(guest & (levels >= 0))
            assert shown.size == 0, f"{self.name}: assigned frames still in the direct map: {shown[:8]}"
        if dmode != "keep":
            per2m = assigned.reshape(-1, P2M).sum(axis=1)
            partial = np.repeat((per2m > 0) & (per2m < P2M), P2M)
            large = np.flatnonzero(partial & (levels > int(PageSize.SIZE_4K)))
            assert large.size == 0, f"{self.name}: 2M/1G direct map over partly private 2M range at {large[:4]}"


def _machine(names: tuple[str, ...]) -> type[StackMachine]:
    label = "_".join(n.replace("-", "_") for n in names)
    return type(f"StackMachine_{label}", (StackMachine,), {"policy_names": names})


SETTINGS = settings(
    max_examples=14,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("name", list(POLICIES))
def test_stack_state_machine(name: str) -> None:
    run_state_machine_as_test(_machine((name,)), settings=SETTINGS)


# ---------------------------------------------------------------------- regressions of the bugs found
def _stack(name: str) -> tuple[HostKernel, Qemu, GuestDriver, Counters]:
    pol = POLICIES[name]
    host = HostKernel(HOST_FRAMES, pol)
    counters = Counters()
    vmm = Qemu(host, pol, np.ones(GUEST_PAGES, dtype=bool), asid=1, counters=counters)
    return host, vmm, GuestDriver(vmm), counters


def test_bug_a_vc_on_2m_rmp_entry_is_a_vc() -> None:
    # A private access to an unvalidated page under a 2M RMP entry: KVM maps it 2M and the guest gets #VC 0x404.
    # The model's re-validation used a 4K PVALIDATE, which on a 2M entry is an RMP #NPF (SIZEM) nobody handled.
    host, vmm, guest, c = _stack("upm-nosplit")
    guest.execute(Access(0, 1, private=True))  # gmem RAM is private at memslot creation, not yet validated
    assert c.guest_vc_count == 1
    entry = host.rmp.rmpread(int(vmm.kvm.npt.pfn[0]) * K4)
    assert entry.assigned and entry.validated and entry.gpa == 0


def test_bug_b_pvalidate_on_shared_gfn_leaves_no_private_npt_mapping() -> None:
    host, vmm, guest, _ = _stack("upstream")
    guest.execute(Conversion(0, 1, True, Protocol.MSR))  # private + validated
    guest.execute(Access(0, 1, private=False))  # implicit to-shared (KVM_EXIT_MEMORY_FAULT)
    guest.execute(Conversion(0, 1, False, Protocol.MSR))  # guest rescinds (PVALIDATE 0), then PSC to shared
    npt = vmm.kvm.npt
    assert not vmm.kvm.attrs.private[0]
    # KVM must not map guest_memfd at a shared gfn (the frame was freed by the punch hole)
    assert npt.level[0] == UNMAPPED or not npt.private[0], (
        f"gfn 0 (shared) mapped private to frame {npt.pfn[0]}, free={host.buddy.is_free(int(npt.pfn[0]))}"
    )
    assert vmm.private_bytes() == 0


def test_bug_c_multi_page_access_survives_psmash_zap() -> None:
    # gfn 0 shared makes the 2M range mixed: the first private touch prepares the 2M folio as one 2M RMP entry but
    # maps gfns 1-2 at 4K; gfn 1's RMP #NPF (NPT 4K vs RMP 2M) is fixed by PSMASH + zapping all 512 gfns, and
    # _checked_access(2) then reads npt.level[2] == -1.
    _, _, guest, c = _stack("upm-nosplit")
    guest.execute(Conversion(0, 1, False, Protocol.MSR))
    guest.execute(Access(1, 2, private=True))
    assert c.guest_vc_count == 2


def test_bug_d_fixup_after_the_access_is_a_vc_at_the_next() -> None:
    # gmem + keep + fixup: gfn 0 private and validated, gfn 1 shared. A private access to gfns 0-1 reads gfn 0,
    # then exits for gfn 1 (KVM_EXIT_MEMORY_FAULT); kvm_convert_memory makes it private and guest_memfd allocates
    # and clears (kernel_init_pages) a frame next to gfn 0's through the 1G direct map: an RMP #PF, which the
    # fixup handler resolves by making the assigned pages of that 2M range shared - gfn 0's frame among them.
    host, _, guest, c = _stack("gmem-keep-fixup")
    guest.execute(Conversion(0, 2, True, Protocol.MSR))
    guest.execute(Conversion(1, 1, False, Protocol.MSR))  # gfn 1's frame is freed by the punch hole
    seen: list[int] = []
    host.fixup_listeners.append(lambda pfns: seen.extend(int(p) for p in pfns))
    vc0 = c.guest_vc_count
    guest.execute(Access(0, 2, private=True))
    assert seen, "clearing gfn 1's new frame must fault on its private 2M neighbour"
    vc1 = c.guest_vc_count
    assert vc1 - vc0 == 1  # gfn 1: a fresh private page, not yet validated
    guest.execute(Access(0, 1, private=True))
    assert c.guest_vc_count == vc1 + 1  # gfn 0: taken back by the fixup after the guest read it

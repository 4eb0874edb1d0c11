"""The fast engine: compiled (numba) versions of the reference model's hot paths, on the reference's own state.

``engine = "fast"`` (a scenario field, not a policy knob) builds the host with these classes; ``"reference"`` with
the layers' own. Both give identical results (tests/fast/ compares them state by state); the reference layers never
import this package. Today: the page allocator (:mod:`snpsim.fast.buddy`), the direct map's 4K removal and
restoration and its bulk splits (:mod:`snpsim.fast.directmap`), the RMP's bulk 4K RMPUPDATE and PVALIDATE
(:mod:`snpsim.fast.rmp`), compaction's page migration a batch of pages per call (:mod:`snpsim.fast.compaction`),
the host kernel's page-clearing writes (:mod:`snpsim.fast.kernel`) and KVM's ``sev_gmem_invalidate``, huge-folio
faults and range access checks (:mod:`snpsim.fast.kvm`); the last three with numpy, the others compiled.
"""

from __future__ import annotations

from snpsim.fast.buddy import FastBuddyAllocator
from snpsim.fast.compaction import FastCompactor
from snpsim.fast.directmap import FastDirectMap
from snpsim.fast.kernel import FastHostKernel
from snpsim.fast.kvm import FastKvmVm
from snpsim.fast.rmp import FastRmp

__all__ = ["FastBuddyAllocator", "FastCompactor", "FastDirectMap", "FastHostKernel", "FastKvmVm", "FastRmp"]

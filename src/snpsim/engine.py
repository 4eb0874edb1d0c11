"""The engine a scenario runs on: the scenario field ``engine`` (``"fast"`` by default, or ``"reference"``).

Not a policy knob: an engine never changes a result (``../shared/DESIGN.md``; tests/fast/ compares the two state
by state, and a results folder's identity leaves it out). ``reference`` builds every layer from its own modules,
the readable per-page model that is the specification; ``fast`` swaps in the classes of :mod:`snpsim.fast`,
which implement the same operations on the same state, compiled or vectorised (today: the host's page allocator, the
direct map's 4K removal and restoration and its bulk splits, the RMP's bulk 4K RMPUPDATE and PVALIDATE, the host
kernel's page-clearing writes, compaction's page migration a batch of pages at a time, and KVM's
``sev_gmem_invalidate``, private faults on huge folios and the hardware check of a guest access over a range). The
reference layers never import the fast engine; this module, called by whoever builds a host and its VMs, chooses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from snpsim.errors import ConfigError
from snpsim.host.buddy import BuddyAllocator
from snpsim.host.compaction import Compactor
from snpsim.host.directmap import DirectMap
from snpsim.host.kernel import HostKernel
from snpsim.hw.rmp import Rmp
from snpsim.kvm.vm import KvmVm

__all__ = ["DEFAULT_ENGINE", "ENGINES", "Engine", "engine"]

ENGINES = ("fast", "reference")
DEFAULT_ENGINE = "fast"


@dataclass(frozen=True)
class Engine:
    """The classes a host is built from."""

    name: str
    #: the host's page allocator (``HostKernel(allocator=...)``)
    allocator: type[BuddyAllocator]
    #: the host kernel's direct map (``HostKernel(directmap=...)``)
    directmap: type[DirectMap]
    #: the RMP and the SNP instructions (``HostKernel(rmp=...)``)
    rmp: type[Rmp]
    #: compaction and alloc_contig_range's page migration (``HostKernel(compactor=...)``)
    compactor: type[Compactor]
    #: the host kernel itself (its page-clearing writes)
    kernel: type[HostKernel]
    #: KVM's state of one VM (``Qemu(kvm_vm=...)``)
    kvm_vm: type[KvmVm]

    def host(self, *args: Any, **kwargs: Any) -> HostKernel:
        """A :class:`HostKernel` (its arguments) built from this engine's classes."""
        return self.kernel(
            *args, allocator=self.allocator, directmap=self.directmap, rmp=self.rmp, compactor=self.compactor, **kwargs
        )


def engine(name: str, field: str = "engine") -> Engine:
    """The engine called ``name`` (ConfigError naming ``field`` for an unknown one); the fast engine's compiled
    code is imported, and compiled or loaded from numba's cache, only when it is chosen."""
    if name == "reference":
        return Engine(name, BuddyAllocator, DirectMap, Rmp, Compactor, HostKernel, KvmVm)
    if name == "fast":
        from snpsim.fast import (
            FastBuddyAllocator,
            FastCompactor,
            FastDirectMap,
            FastHostKernel,
            FastKvmVm,
            FastRmp,
        )

        return Engine(name, FastBuddyAllocator, FastDirectMap, FastRmp, FastCompactor, FastHostKernel, FastKvmVm)
    raise ConfigError(field, f"expected one of {', '.join(ENGINES)}, got {name!r}")

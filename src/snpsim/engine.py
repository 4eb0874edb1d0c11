"""The engine a scenario runs on: the scenario field ``engine`` (``"fast"`` by default, or ``"reference"``).

Not a policy knob: an engine never changes a result (``../shared/DESIGN.md``; tests/fast/ compares the two state
by state, and a results folder's identity leaves it out). ``reference`` builds every layer from its own modules,
the readable per-page model that is the specification; ``fast`` swaps in the compiled classes of
:mod:`snpsim.fast`, which implement the same operations on the same state (today: the host's page allocator, the
direct map's 4K removal and restoration, the RMP's bulk 4K RMPUPDATE and PVALIDATE, and compaction's page
migration, a batch of pages at a time). The reference layers never import the fast engine; this module, called by
whoever builds a host, chooses.
"""

from __future__ import annotations

from dataclasses import dataclass

from snpsim.errors import ConfigError
from snpsim.host.buddy import BuddyAllocator
from snpsim.host.compaction import Compactor
from snpsim.host.directmap import DirectMap
from snpsim.hw.rmp import Rmp

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


def engine(name: str, field: str = "engine") -> Engine:
    """The engine called ``name`` (ConfigError naming ``field`` for an unknown one); the fast engine's compiled
    code is imported, and compiled or loaded from numba's cache, only when it is chosen."""
    if name == "reference":
        return Engine(name, BuddyAllocator, DirectMap, Rmp, Compactor)
    if name == "fast":
        from snpsim.fast import FastBuddyAllocator, FastCompactor, FastDirectMap, FastRmp

        return Engine(name, FastBuddyAllocator, FastDirectMap, FastRmp, FastCompactor)
    raise ConfigError(field, f"expected one of {', '.join(ENGINES)}, got {name!r}")

"""Memory limits: how much memory a VMM's cgroup must allow for one SNP guest under each policy.

The question Roth raised in the seed thread ("worst case would be 2MB per shared page in the guest ... could be
another pain point regarding calculating appropriate memory limits for userspace", linux-snp-host.md §6) and the
operators' reports of double allocation (guest-workloads.md §6). Two answers per policy:

- the *analytic worst case* from the knobs alone, for any guest behaviour:
  private and shared copies are complementary (total = guest RAM) only when every conversion frees the copy it
  leaves behind: pre-UPM single-copy memory, or guest_memfd with 4K folios, ``discard_on_convert`` and a shared
  backing of 4K pages (memory-backend-memfd; not hugetlb, not THP). Otherwise a page can hold both copies:
  without discard everything can be doubled (2 x RAM); with 2M/1G folios one private 4K page pins its whole folio
  while the other pages are shared (RAM + RAM x (n-1)/n for folios of n pages: "each shared 4K page can pin a
  2 MiB private folio"); with hugetlb shared memory, the hugetlbfs ``mmap`` reserves the whole RAM block at VM
  creation (``hugetlb_reserve_pages``) and the private copies come on top (RAM + RAM); with THP shared memory
  (memory-backend-ram), one shared 4K page faults in a whole 2 MiB THP that maps the other 511 pages too, while
  they stay private (RAM x (n-1)/n + RAM: the deferred split shrinker frees only unmapped pages);
- the *observed* peak of private + shared backing in a simulation of the workload.

Both come with the breakdown and the host overhead a cgroup does not see but the host pays: the RMP's 16 bytes
per 4K page (linux-snp-host.md §1: "RMP = 1/256 of RAM") and 8-byte NPT leaf entries per 4K mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import snpsim
from snpsim.arch import PAGE_SIZE
from snpsim.policy import GRANULE_BYTES, Policy

RMP_ENTRY_BYTES = 16
NPT_PTE_BYTES = 8


@dataclass(frozen=True)
class Limit:
    preset: str
    worst_case_bytes: int
    worst_private_bytes: int
    worst_shared_bytes: int
    observed_peak_bytes: int
    observed_private_bytes: int
    observed_shared_bytes: int
    rmp_overhead_bytes: int
    npt_overhead_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def worst_case(policy: Policy, memory: int) -> tuple[int, int]:
    """(private, shared) backing the worst guest behaviour can make the VMM hold at once."""
    if policy.private_backing == "vmm":
        return memory, 0  # one copy per page, converted in place
    shared_page = GRANULE_BYTES[policy.shared_backing]
    folio = GRANULE_BYTES[policy.private_granularity]
    hugetlb = policy.shared_backing.startswith("hugetlb")
    if not policy.discard_on_convert:
        return memory, memory
    if hugetlb:
        # the whole RAM block is reserved at mmap, whatever the guest shares; every page can be private too
        return memory, memory
    if policy.shared_backing == "thp":
        # one shared page per 2M faults in a THP mapping all 512 pages; the other 511 stay private
        return memory - memory // shared_page * PAGE_SIZE, memory
    if folio > PAGE_SIZE:
        # one private page per folio keeps the folio; the rest of it is shared
        return memory, memory - memory // folio * PAGE_SIZE
    return memory, 0  # complementary: the total never exceeds the guest's RAM


def scenario(
    memory: int,
    vcpus: int,
    preset: str,
    *,
    workload: str = "random-conversion",
    duration: str = "3s",
    seed: int = 1,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The scenario simulated for the observed figure: the guest alone on a host of 4 x its RAM (at least 1G)."""
    return {
        "seed": seed,
        "policy": preset,
        "duration": duration,
        "samples": 20,
        "host": {"memory": max(4 * memory, 1 << 30)},
        "vms": [{"memory": memory, "vcpus": vcpus, "workload": workload, "params": params or {}}],
    }


def limits(
    memory: int,
    vcpus: int,
    presets: list[str],
    *,
    workload: str = "random-conversion",
    duration: str = "3s",
    seed: int = 1,
    params: dict[str, Any] | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> list[Limit]:
    """The analytic worst case and the simulated peak for each preset; ``progress(preset, fraction)`` follows
    each simulation. Every preset's scenario is validated before the first simulation."""
    from snpsim.scenario import load

    loaded = {
        name: load(scenario(memory, vcpus, name, workload=workload, duration=duration, seed=seed, params=params))
        for name in presets
    }
    out = []
    for name, sc in loaded.items():
        wp, ws = worst_case(sc.policy, memory)
        result = snpsim.run(
            sc,
            progress=None if progress is None else lambda f, name=name: progress(name, f),  # type: ignore[misc]
        )
        if progress is not None:
            progress(name, 1.0)
        vm = result.vms[0]
        out.append(
            Limit(
                preset=name,
                worst_case_bytes=wp + ws,
                worst_private_bytes=wp,
                worst_shared_bytes=ws,
                observed_peak_bytes=vm.peak_total_bytes,
                observed_private_bytes=vm.peak_private_bytes,
                observed_shared_bytes=vm.peak_shared_bytes,
                rmp_overhead_bytes=memory // PAGE_SIZE * RMP_ENTRY_BYTES,
                npt_overhead_bytes=memory // PAGE_SIZE * NPT_PTE_BYTES,
            )
        )
    return out

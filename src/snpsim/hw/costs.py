"""Cost model: simulated nanoseconds charged for each hardware and kernel operation.

No published latency exists for RMPUPDATE, PSMASH or RMPREAD (``shared/reference/linux-snp-host.md`` §7:
"no published number found"), so every default below is a labelled *assumption* of an order of magnitude, and
each can be overridden from a scenario (``costs = {...}``). The labels say what each default rests on; change a
value and the simulated ``sim_time_ns`` changes, the counted events do not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from snpsim.errors import ConfigError


@dataclass(frozen=True, slots=True)
class CostModel:
    """Nanoseconds per operation."""

    rmpupdate_ns: int = 1_000
    psmash_ns: int = 1_000
    pvalidate_4k_ns: int = 300
    pvalidate_2m_ns: int = 30_000
    rmpadjust_ns: int = 300
    tlb_flush_ns: int = 5_000
    directmap_split_ns: int = 10_000
    directmap_merge_ns: int = 20_000
    page_clear_ns: int = 250
    vmexit_ns: int = 1_500
    userspace_exit_ns: int = 8_000
    host_fault_ns: int = 2_000

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, *, field: str = "costs") -> CostModel:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(field, "expected a table of <operation>_ns = <integer> values")
        known = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"{field}.{key}", f"unknown cost (costs: {', '.join(sorted(known))})")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{field}.{key}", f"expected a non-negative integer of ns, got {value!r}")
        return cls(**dict(data))


#: Where each default comes from. "assumption" = order of magnitude chosen by us, not measured.
SOURCES: dict[str, str] = {
    "rmpupdate_ns": "assumption: microcoded instruction writing one 16-byte RMP entry plus a 2M-range lock "
    "(linux-snp-host.md §1 notes firmware locks 2M ranges); no published latency (§7)",
    "psmash_ns": "assumption: same order as RMPUPDATE (writes 512 entries in one instruction); no published number",
    "pvalidate_4k_ns": "assumption: guest instruction touching one RMP entry, cheaper than RMPUPDATE",
    "pvalidate_2m_ns": "assumption: 2M PVALIDATE = 100x a 4K one; TDX acceptance of 90 GiB taking ~1 min on one vCPU "
    "(guest-workloads.md §3, KIR25) gives ~170 us per 2M including zeroing, so this is a lower bound",
    "rmpadjust_ns": "assumption: as PVALIDATE 4K",
    "tlb_flush_ns": "assumption: a global TLB shootdown IPI on a multi-core host is a few microseconds",
    "directmap_split_ns": "assumption: split_large_page allocates a page-table page, fills 512 PTEs, flushes the TLB",
    "directmap_merge_ns": "assumption: scan 512 entries, free a page-table page, flush the TLB",
    "page_clear_ns": "assumption: clear_page of 4 KiB at ~16 GB/s memory bandwidth",
    "vmexit_ns": "assumption: SEV-SNP VMGEXIT round trip (world switch with VMSA save/restore) ~1.5 us",
    "userspace_exit_ns": "assumption: KVM exit to the VMM (KVM_EXIT_HYPERCALL / MEMORY_FAULT) and back, ~8 us",
    "host_fault_ns": "assumption: a kernel #PF entry, handling and return, ~2 us",
}

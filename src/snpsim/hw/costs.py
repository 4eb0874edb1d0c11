"""Cost model: simulated nanoseconds charged for each hardware, kernel and VMM operation.

Every operation the model performs charges its cost to the host thread running it (:mod:`snpsim.host.cpu`), and
the engine makes that time pass: costs move ``sim_time_ns``, ``boot_time_ns`` and every latency, while the
counted events do not change with them (except where time decides what happens, e.g. how many events fit in a
scenario's duration).

No published latency exists for RMPUPDATE, PSMASH, PVALIDATE or RMPREAD (``shared/reference/linux-snp-host.md``
§7: "no published number found"; ``measurements.md``: "none is a per-instruction latency"), so most defaults are
labelled *assumptions*: an order of magnitude with its reasoning, and a plausible range that bounds
``snpsim calibrate`` (:mod:`snpsim.calibrate`) when a user fits the model to boot times measured on real SNP
hardware. The one default derived from a measurement is ``page_clear_ns`` (``measurements.md``: QEMU's
single-threaded first-touch preallocation of 2M pages, 256 GB in 2 min 11 s, about 2 GB/s per thread).

Each cost is declared once, as a field of :class:`CostModel` with its default, range, source and the operations
charged at it (the ``op`` names of ``HostKernel.charge``: ``rmpupdate_ns`` is charged as ``rmpupdate``,
``page_clear_ns`` as ``page_clear`` and ``page_copy``); :data:`COSTS` and :data:`OPS` are read from those fields by
the docs and the calibration. Every charge of ``count`` operations costs ``count`` times its cost, so the time a
thread is charged is linear in the costs: :func:`counts_by_cost` turns a thread's operation counts into the
number of times each cost was paid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from snpsim.errors import ConfigError


@dataclass(frozen=True, slots=True)
class CostSpec:
    """One cost: ``default`` ns per operation, the plausible range ``[lo, hi]`` ns, and where it comes from."""

    default: int
    lo: int
    hi: int
    source: str
    #: the operations charged at this cost (``HostKernel.charge(op, ...)``); default: the name without ``_ns``
    ops: tuple[str, ...] = ()


def cost(default: int, lo: int, hi: int, source: str, ops: tuple[str, ...] = ()) -> Any:
    """A :class:`CostModel` field: its default, plausible range, source and (if not its name without ``_ns``)
    the operations charged at it."""
    return field(default=default, metadata={"spec": CostSpec(default, lo, hi, source, ops)})


@dataclass(frozen=True, slots=True)
class CostModel:
    """Nanoseconds per operation; every field declares its default, plausible range and source (:func:`cost`).
    "assumption" = an order of magnitude chosen by us, not measured."""

    rmpupdate_ns: int = cost(
        1_000,
        100,
        10_000,
        "assumption: microcoded instruction writing one 16-byte RMP entry plus a 2M-range lock (linux-snp-host.md "
        "§1: firmware locks 2M ranges); no published latency (§7)",
    )
    psmash_ns: int = cost(
        1_000,
        100,
        20_000,
        "assumption: same order as RMPUPDATE (writes 512 entries in one instruction); no published number",
    )
    pvalidate_4k_ns: int = cost(
        300, 50, 5_000, "assumption: a guest instruction touching one RMP entry, cheaper than RMPUPDATE"
    )
    pvalidate_2m_ns: int = cost(
        30_000,
        1_000,
        500_000,
        "assumption: 100x a 4K PVALIDATE; TDX acceptance of 90 GiB taking ~1 min on one vCPU (guest-workloads.md "
        "§3, KIR25) gives ~1.3 ms per 2M including zeroing, an upper bound for the range",
    )
    rmpadjust_ns: int = cost(300, 50, 5_000, "assumption: as a 4K PVALIDATE")
    tlb_flush_ns: int = cost(
        5_000,
        500,
        50_000,
        "assumption: the global TLB shootdown (IPIs to every CPU) after a direct-map change (cpa_flush)",
        ops=("tlb_flush", "thp_split"),  # a THP split by the shrinker unmaps and remaps its folio: one flush
    )
    directmap_split_ns: int = cost(
        10_000,
        1_000,
        100_000,
        "assumption: __split_large_page allocates a page-table page and fills 512 entries (its TLB flush is "
        "tlb_flush_ns)",
    )
    directmap_merge_ns: int = cost(
        20_000, 1_000, 200_000, "assumption: scan 512 entries and free a page-table page (plus tlb_flush_ns)"
    )
    page_clear_ns: int = cost(
        2_000,
        250,
        4_000,
        "measured [D]: QEMU -mem-prealloc of 2M hugepages, 256 GB in 2m11s on one thread (measurements.md) = "
        "~2 GB/s of first-touch clearing per thread = ~2 us per 4 KiB; clear_page at full memory bandwidth "
        "(~16 GB/s) bounds it below",
        ops=("page_clear", "page_copy"),  # clearing a page, and copying one when compaction migrates it
    )
    vmexit_ns: int = cost(
        1_500,
        500,
        10_000,
        "assumption: an SEV-SNP VMGEXIT round trip (world switch with VMSA save/restore and the handler entry)",
    )
    npf_ns: int = cost(
        2_000,
        500,
        20_000,
        "assumption: a #NPF VMEXIT plus kvm_mmu_page_fault installing one SPTE (gfn-to-pfn lookup included)",
    )
    userspace_exit_ns: int = cost(
        8_000,
        2_000,
        50_000,
        "assumption: KVM_RUN returning to the VMM (KVM_EXIT_HYPERCALL / KVM_EXIT_MEMORY_FAULT) and re-entering",
    )
    ioctl_ns: int = cost(
        1_000,
        200,
        10_000,
        "assumption: entry and exit of one ioctl or syscall the VMM makes (KVM_SET_MEMORY_ATTRIBUTES, "
        "fallocate, madvise, KVM_PRE_FAULT_MEMORY), without its per-page work",
    )
    set_attributes_page_ns: int = cost(
        100,
        20,
        2_000,
        "assumption: one xarray store per 4K page in kvm_vm_set_mem_attributes (AMDSEV issue 225: setting a large "
        "guest private 'will take a long time'; measurements.md, no number)",
        ops=("set_attributes",),
    )
    host_fault_ns: int = cost(2_000, 500, 20_000, "assumption: a kernel #PF entry, handling and return")
    snp_launch_update_ns: int = cost(
        20_000,
        2_000,
        200_000,
        "assumption: one SNP_LAUNCH_UPDATE page in the AMD-SP (sev_issue_cmd mailbox round trip plus the firmware "
        "measuring the 4K page into the launch digest, SNP ABI 56860 §8.17); no published latency. Charged per page "
        "for kvm_gmem_populate's launch ranges and each vCPU's VMSA (snp_launch_update_vmsa)",
    )
    snp_page_reclaim_ns: int = cost(
        5_000,
        500,
        100_000,
        "assumption: one SNP_PAGE_RECLAIM firmware command (snp_reclaim_pages, drivers/crypto/ccp/sev-dev.c), a "
        "mailbox round trip without measurement",
    )
    rmpopt_1g_ns: int = cost(
        154_785,
        154_785,
        223_584,
        "measured [D]: the RMPOPT series (A. Kalra, 'Add RMPOPT support', LKML 2026; measurements.md) scans 2 TB on "
        "all CPUs (one RMPOPT per CPU per 1 GiB region, on_each_cpu_mask and wait) in 391.6 ms and 457.9 ms, and in "
        "317.0 ms and 369.7 ms with the series' optimisation (2 SNP VMs of 100 GB, one terminating): per 1 GiB "
        "region 317.0 ms / 2048 = 154,785 ns (default: the optimised scan's best), up to 457.9 ms / 2048 = "
        "223,584 ns; the other two give 180,518 ns and 191,211 ns. Wall time of the scanning thread per region",
        ops=("rmpopt",),
    )

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, *, field: str = "costs") -> CostModel:
        """A cost model from ``{name: ns}`` overrides; unknown names and bad values raise ConfigError."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(field, "expected a table of <operation>_ns = <integer> values")
        for key, value in data.items():
            if key not in COSTS:
                raise ConfigError(f"{field}.{key}", f"unknown cost (costs: {', '.join(sorted(COSTS))})")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{field}.{key}", f"expected a non-negative integer of ns, got {value!r}")
        return cls(**dict(data))


def _spec(f: Any) -> CostSpec:
    spec: CostSpec = f.metadata["spec"]
    return spec if spec.ops else replace(spec, ops=(f.name.removesuffix("_ns"),))


#: Every cost, declared once (as the fields of :class:`CostModel`): name -> default, range, source, operations.
COSTS: dict[str, CostSpec] = {f.name: _spec(f) for f in fields(CostModel)}
#: Where each default comes from.
SOURCES: dict[str, str] = {name: spec.source for name, spec in COSTS.items()}
#: The cost each charged operation pays: ``{"rmpupdate": "rmpupdate_ns", "page_copy": "page_clear_ns", ...}``.
OPS: dict[str, str] = {op: name for name, spec in COSTS.items() for op in spec.ops}


def counts_by_cost(op_counts: Mapping[str, int]) -> dict[str, int]:
    """How many times each cost was paid, from operation counts (``CpuAccount.count_by_op``); an operation no
    cost declares raises KeyError (every ``charge`` must name one of :data:`OPS`)."""
    out = dict.fromkeys(COSTS, 0)
    for op, n in op_counts.items():
        out[OPS[op]] += n
    return out

"""The metric names of ``shared/DESIGN.md`` and the event counters the layers above the host increment.

Bytes unless named ``_count`` (or, for the two ``/proc/vmstat`` events ``direct_map_level2_splits`` /
``direct_map_level3_splits``, named as vmstat names them: counts). ``directmap_4k`` / ``_2m`` / ``_1g`` are
``/proc/meminfo``'s ``DirectMap*`` (entries at each level, present or not: they always sum to the direct-mapped
memory) and ``directmap_split_count`` is the sum of the two vmstat split events. ``thp_deferred_split_bytes`` is
the memory partly unmapped THPs hold on the deferred split queue (allocated, mapped by nobody), and
``thp_split_page_count`` vmstat's ``thp_split_page``: THPs the deferred split shrinker split
(:mod:`snpsim.host.vmscan`). ``snp_host_bytes`` is the host-kernel memory assigned in the RMP (VMSAs, SNP contexts,
guest-request response pages, the SNP init TMR: ``HostKernel.snp_pages``, docs/launch.md).
``rmpopt_bytes`` is the memory in 1 GiB regions whose RMPOPT bit is set on every CPU
(host writes there skip the RMP check; :mod:`snpsim.host.rmpopt`). ``gmem_eagain_count`` counts the in-place
guest_memfd conversion ioctls refused with ``-EAGAIN`` (the host held extra references to a page of the range), and
``gmem_convert_failure_count`` the conversions QEMU gave up on after ``gmem_convert_retries`` retries.
Host-level values come from :meth:`snpsim.host.HostKernel.metrics`; VM-level values are summed over the VMs alive
at the time of the sample (counters over all VMs ever run).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

METRICS: tuple[str, ...] = (
    "directmap_4k",
    "directmap_2m",
    "directmap_1g",
    "directmap_split_count",
    "direct_map_level2_splits",
    "direct_map_level3_splits",
    "directmap_merge_count",
    "rmpupdate_count",
    "psmash_count",
    "host_rmp_fault_count",
    "host_notpresent_fault_count",
    "host_crash_count",
    "snp_host_bytes",
    "host_lost_write_count",
    "host_efault_count",
    "host_sigbus_count",
    "guest_terminated_count",
    "thp_deferred_split_bytes",
    "thp_split_page_count",
    "guest_vc_count",
    "npf_count",
    "npt_4k",
    "npt_2m",
    "npt_1g",
    "private_bytes",
    "shared_bytes",
    "guest_bytes",
    "waste_bytes",
    "to_private_count",
    "to_shared_count",
    "psc_request_count",
    "vmm_exit_count",
    "gmem_eagain_count",
    "gmem_convert_failure_count",
    "rmpopt_bytes",
    "boot_time_ns",
    "sim_time_ns",
)


@dataclass
class Counters:
    """Event counters of the guest, kvm and vmm layers (all VMs of a run)."""

    guest_vc_count: int = 0
    npf_count: int = 0
    to_private_count: int = 0
    to_shared_count: int = 0
    psc_request_count: int = 0
    vmm_exit_count: int = 0
    #: guests that terminated at a #VC 0x404 (``on_vc_404 = "terminate"``)
    guest_terminated_count: int = 0
    #: in-place conversion ioctls refused with -EAGAIN, and conversions given up after every retry
    gmem_eagain_count: int = 0
    gmem_convert_failure_count: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

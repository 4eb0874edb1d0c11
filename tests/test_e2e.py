"""End to end through ``snpsim.run``: figures of a Linux boot derived by hand, and every preset x workload.

The boot of a 1 GiB, 4-vCPU guest (guest-workloads.md §2, guest/linux.py; QEMU q35: all RAM below 4 GiB, no
ZONE_NORMAL, so nothing to accept):

| event (row)                       | pages            | direction | protocol, entries               | requests |
|-----------------------------------|------------------|-----------|---------------------------------|----------|
| OVMF pre-validation of low RAM    | 262144           | private   | GHCB, 512 2M entries, 253/exit  | 3        |
| OVMF GHCB pages                   | 4 x 1            | shared    | GHCB, 1 4K entry                | 4        |
| OVMF IoMmu pool (4x1, 8x8, 2x32,  | 1412             | shared    | GHCB, 4K entries, 253/exit:     | 22       |
|   1x256, 2x512 pages)             |                  |           | 4 + 8 + 2 + 2 + 2 x 3           |          |
| ... re-encrypted at ExitBootSvcs  | 1412             | private   | the same                        | 22       |
| .bss..decrypted (#2)              | 512              | shared    | MSR                             | 512      |
| per-CPU decrypted page (#3)       | 4 x (1, 1, 1)    | S, P, S   | MSR (early_set_memory_decrypted)| 12       |
| GHCB per vCPU (#1)                | 4 x (1, 1, 1)    | S, P, S   | MSR (early_set_memory_decrypted)| 12       |
| SWIOTLB (#5) 64 MiB, 2M-aligned   | 16384            | shared    | GHCB, 32 2M entries             | 1        |
| atomic pools DMA, DMA32 (#7)      | 2 x 32           | shared    | GHCB, 4K entries                | 2        |
| vrings: net 3 + blk 4 (#8a)       | 7 x 2            | shared    | GHCB                            | 7        |
| attestation (#10)                 | 2 x 1            | shared    | GHCB                            | 2        |
| .bss..decrypted tail (#2)         | 512 - 3 = 509    | private   | GHCB, 4K entries: 64 x 7 + 61   | 8        |

SWIOTLB = clamp(6 % of 1 GiB, 64 MiB, 1 GiB) = 64 MiB; atomic pool = max(128 KiB, 1 GiB / 8192) = 128 KiB.
Before boot, the launch (runner.default_launch, guest/linux.py OVMF_SEV_METADATA): the 4 MiB OVMF flash (1024 pages,
outside RAM) and OVMF's SEV metadata in low RAM (0x9000 + 0x1000 + 0x1000 + 0x1000 + 0x12000 = 30 pages) are
populated with 4K RMP entries, so OVMF pre-validates 262144 - 30 pages in three pieces: [0, 0x800) (4 2M entries, 1
request), the SEC GHCB [0x809, 0x80B) (2 4K entries, 1 request), [0x820, 0x40000) (480 4K + 507 2M = 987 entries,
4 requests): 6 requests instead of 3. Host SNP pages: the 2 MiB TMR at SNP init (512 4K firmware entries), the SNP
context and guest-request response page (2), 4 VMSAs: LAUNCH_RMP = 512 + 2 + 4 + 1024 + 30 = 1572 RMPUPDATEs.
Totals: 610 PSC requests, each one KVM_HC_MAP_GPA_RANGE exit (entries of a request are contiguous);
to_shared = 4 + 1412 + 512 + 8 + 8 + 16384 + 64 + 14 + 2 = 18408;
to_private = 262144 - 30 + 1412 + 4 + 4 + 509 = 264043.
Shared at the end of boot: 4 + 4 + 3 + 4 + 16384 + 64 + 14 + 2 = 16479 pages.

The host is the default server e820 layout (snpsim.host.e820). A 4 GiB host: low RAM to the PCI hole at 2 GiB,
2 GiB above 4 GiB, so max_pfn = 6 GiB / 4 KiB = 0x180000; the RMP table is (0x180000 x 16 B + 16 KiB) rounded up
to 1 MiB = 25 MiB at 277 MiB, [277M, 302M). init_mem_mapping() maps [0, 1M) (ISA) and [1M, 2M) at 4K (the 2M
range [0, 2M) is not all RAM: the ISA hole), [276M, 277M) at 4K (the 2M range [276M, 278M) holds the RMP's
start), 137 + 361 2M ranges of [2M, 276M) and [302M, 1G), and GiBs 1, 4, 5 at 1G:
DirectMap4k = 3 MiB, DirectMap2M = 996 MiB, DirectMap1G = 3 GiB, summing to 4096 - 25 = 4071 MiB. A 1 GiB host
(all below the hole): a 5 MiB RMP ((262144 x 16 B + 16 KiB) rounded up) at [277M, 282M), the same 3 MiB at 4K.
"""

from __future__ import annotations

from typing import Any

import pytest

import snpsim
from snpsim.guest.workloads import WORKLOADS
from snpsim.metrics import METRICS

MIB = 1 << 20
K4 = 4096
BOOT_4K = 3 * MIB  # DirectMap4k of a 4 GiB or 1 GiB server host at boot (module docstring)
LAUNCH_RMP = 512 + 2 + 4 + 1024 + 30  # host SNP pages and launch pages (module docstring)


def boot(policy: str, **extra: Any) -> dict[str, int | float]:
    scenario = {
        "seed": 1,
        "policy": policy,
        "host": {"memory": "4G"},
        "vms": [{"memory": "1G", "vcpus": 4, "workload": "linux-boot"}],
        "duration": "2s",
        **extra,
    }
    return snpsim.run(scenario).summary


@pytest.mark.parametrize("policy", sorted(snpsim.presets))
def test_boot_conversions_are_policy_independent(policy: str) -> None:
    s = boot(policy)
    granularity = snpsim.presets[policy].private_granularity
    # 4K private pages (guest_memfd 4K folios or pre-UPM VMM pages): one 4K RMPUPDATE per page made private
    # (264043) and per page given back (18408), plus the launch's; 2M folios: see test_boot_upm_nosplit_rmp_and_memory
    pol = snpsim.presets[policy]
    expected = 264043 + 18408 + LAUNCH_RMP if granularity == "4k" else 512 + 32 - 1 + 482 + LAUNCH_RMP
    if pol.gmem_folio_split != "never":
        # in place with splitting (gmem-hugetlb): every to-shared page is made shared in its RMP entry (PSMASH, then
        # 4K RMPUPDATEs) and its folio's private pages get 4K entries: more than the 2M folios' count
        assert s["rmpupdate_count"] > expected
    elif pol.rmp_fault == "fixup":
        # with the direct map kept at 2M, zeroing a neighbour of a 4K launch page (the flash's VMM pages) faults
        # and the handler makes it shared: more RMPUPDATEs, no crash
        assert s["rmpupdate_count"] >= expected and s["host_rmp_fault_count"] > 0
    else:
        assert s["rmpupdate_count"] == expected
    assert s["snp_host_bytes"] == (512 + 2 + 4) * K4
    assert s["psc_request_count"] == 610
    # UPM: every PSC request is one KVM_HC_MAP_GPA_RANGE exit; pre-UPM (SNP v5) KVM converts in the kernel
    # (snp_handle_page_state_change) and never exits to the VMM
    # plus one: the second request of [0x820, 0x40000) holds 227 4K entries then 26 2M entries, and snp_begin_psc
    # merges only entries of the same page size: two exits for it
    gmem_exits = 611
    assert s["vmm_exit_count"] == (gmem_exits if snpsim.presets[policy].private_backing == "gmem" else 0)
    assert s["to_shared_count"] == 18408
    assert s["to_private_count"] == 264043
    assert s["guest_vc_count"] == 0
    assert s["host_crash_count"] == 0
    assert s["sim_time_ns"] == 2_000_000_000
    dm = snpsim.presets[policy].directmap
    if dm == "keep":
        # only the fixup handler splits (around a host SNP page it cannot make shared)
        assert s["directmap_4k"] == BOOT_4K + s["direct_map_level2_splits"] * 2 * MIB
    elif dm == "unmap-nosplit" or (dm == "split" and granularity != "4k" and pol.gmem_folio_split == "never"):
        # the host-kernel 4K pages are split as upstream does: the TMR's and the VMSAs' 2M ranges, and the
        # flash's (its 4K guest_memfd pages are whole folios: removed, not split); "a 2M RMPUPDATE splits
        # nothing" (policy.py), and whole 2M folios are only ever updated at 2M here
        assert s["directmap_4k"] == BOOT_4K + s["direct_map_level2_splits"] * 2 * MIB
    else:
        assert s["directmap_4k"] > BOOT_4K
    assert s["directmap_4k"] + s["directmap_2m"] + s["directmap_1g"] == 4071 * MIB
    assert s["directmap_split_count"] == s["direct_map_level2_splits"] + s["direct_map_level3_splits"]


def test_boot_upstream_rmp_and_memory() -> None:
    s = boot("upstream")
    assert s["psmash_count"] == 0
    # pages shared at the end of boot (16479, module docstring); their folios were punched
    assert s["private_bytes"] == (262144 - 16479) * K4
    assert s["npt_2m"] == 0 and s["npt_1g"] == 0
    assert s["waste_bytes"] == 0
    # every 2M range holding a guest page was split to 4K; the counters still sum to the direct-mapped 4071 MiB
    assert s["directmap_4k"] + s["directmap_2m"] + s["directmap_1g"] == 4071 * MIB
    # each 2M split adds 512 PTEs to DirectMap4k, each 1G split 512 2M entries (split_page_count())
    assert s["directmap_4k"] == BOOT_4K + s["direct_map_level2_splits"] * 2 * MIB


def test_boot_upm_nosplit_rmp_and_memory() -> None:
    s = boot("upm-nosplit")
    # 2M folios: 512 2M RMPUPDATEs to private; the 64 MiB SWIOTLB covers 32 whole folios, freed with one 2M
    # RMPUPDATE each; no other hole covers a whole folio
    # + the launch: the 2M folio of gfns [0x800, 0xA00) holds the 30 4K launch entries, so it is prepared at 4K
    # (482 4K entries instead of one 2M entry)
    assert s["rmpupdate_count"] == 512 + 32 - 1 + 482 + LAUNCH_RMP
    # 4K rescinds on 2M entries PSMASH once per 2M range. Top of RAM (guest/linux.py): OVMF's GHCB area and IoMmu
    # pool [260707, 262144) cover 2M ranges 509-511; the GHCB data, DMA32 pool and most vrings are in 509; the
    # per-CPU chunk (decrypted pages, the rest of the vrings, an attestation page) is range 500; .bss..decrypted
    # is range 23, the DMA pool [4064, 4096) range 7: six ranges
    assert s["psmash_count"] == 6
    assert s["private_bytes"] == 1024 * MIB - 32 * 2 * MIB
    assert s["directmap_4k"] == BOOT_4K + s["direct_map_level2_splits"] * 2 * MIB
    assert s["waste_bytes"] > 0


def test_same_seed_same_result_and_timeline() -> None:
    scenario = {
        "seed": 7,
        "policy": "upm",
        "host": {"memory": "1G", "page_cache": 0.3, "writers": {"page_zeroing": {"interval": "1ms"}}},
        "vms": [{"memory": "128M", "vcpus": 2, "workload": "random-conversion"}],
        "duration": "1500ms",
        "samples": 10,
    }
    a, b = snpsim.run(scenario), snpsim.run(scenario)
    assert a.summary == b.summary
    assert a.timeline.equals(b.timeline)
    assert list(a.timeline.columns) == ["time_ns", *METRICS]
    assert a.timeline["time_ns"].iloc[0] == 0
    assert a.timeline["time_ns"].iloc[-1] == 1_500_000_000
    assert a.timeline.iloc[-1]["waste_bytes"] == a.summary["waste_bytes"]


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("policy", sorted(snpsim.presets))
def test_every_preset_runs_every_workload(policy: str, workload: str) -> None:
    r = snpsim.run(
        {
            "seed": 2,
            "policy": policy,
            "host": {"memory": "1G", "page_cache": 0.25, "writers": {"page_zeroing": {"interval": "5ms"}}},
            "vms": [{"memory": "128M", "vcpus": 2, "workload": workload}],
            "duration": "1200ms",
            "samples": 4,
        }
    )
    s = r.summary
    assert set(s) == set(METRICS)
    assert s["waste_bytes"] == s["private_bytes"] + s["shared_bytes"] - s["guest_bytes"]
    assert s["waste_bytes"] >= 0
    assert s["guest_bytes"] <= 128 * MIB
    assert s["directmap_4k"] + s["directmap_2m"] + s["directmap_1g"] <= 1 << 30
    assert not any(v.oom for v in r.vms)
    if snpsim.presets[policy].directmap in ("unmap-nosplit", "keep"):
        # only the 2M ranges of host-kernel SNP pages (or the fixup handler's splits around them) are at 4K
        assert s["directmap_4k"] == BOOT_4K + s["direct_map_level2_splits"] * 2 * MIB


@pytest.mark.parametrize(("policy", "merges"), [("upm", True), ("bulk", True), ("upstream", False), ("unmap", False)])
def test_churn_creates_and_destroys_vms(policy: str, merges: bool) -> None:
    r = snpsim.run(
        {
            "seed": 3,
            "policy": policy,
            "host": {"memory": "2G"},
            "vms": [],
            "churn": {
                "interval": "250ms",
                "lifetime": "400ms",
                "memory": ["64M", "128M"],
                "vcpus": [1, 2],
                "workload": "linux-boot",
            },
            "duration": "2s",
            "samples": 8,
        }
    )
    assert len(r.vms) >= 3
    assert any(v.end_ns is not None for v in r.vms)
    ended = [v for v in r.vms if v.end_ns is not None]
    assert all(v.end_ns >= v.start_ns for v in ended)
    # upm re-merges at guest_memfd's release point, bulk at unregister; upstream and unmap never merge
    assert (r.summary["directmap_merge_count"] > 0) == merges
    assert r.summary["directmap_split_count"] > 0


@pytest.mark.parametrize(
    ("scenario", "field"),
    [
        ({"vms": [{"memory": "1G"}], "host": {"memory": "12Q"}}, "host.memory"),
        ({"vms": [{"memory": "3M"}]}, "vms[0].memory"),
        ({"vms": [{"memory": "1G", "workload": "nope"}]}, "vms[0].workload"),
        ({"vms": [{"memory": "1G", "vcpus": 0}]}, "vms[0].vcpus"),
        ({"vms": [{"memory": "1G"}], "policy": "nope"}, "policy"),
        ({"vms": [{"memory": "1G"}], "colour": 1}, "colour"),
        ({"vms": []}, "vms"),
        ({"vms": [{"memory": "8G"}], "host": {"memory": "4G"}}, "vms"),
        ({"vms": [{"memory": "1G", "guest": {"lazy_accept": "maybe"}}]}, "vms[0].guest.lazy_accept"),
        ({"vms": [{"memory": "1G"}], "host": {"writers": {"ksm": {"speed": 3}}}}, "host.writers.ksm.speed"),
        ({"vms": [{"memory": "1G"}], "duration": "soon"}, "duration"),
    ],
)
def test_bad_scenarios_name_the_field(scenario: dict[str, Any], field: str) -> None:
    with pytest.raises(snpsim.ConfigError) as exc:
        snpsim.run(scenario)
    assert exc.value.field == field, str(exc.value)


def test_vms_of_one_layout_share_one_read_only_ram_mask() -> None:
    """The RAM mask (1 byte per gfn) is per guest layout, not per VM: two 128M VMs share it, a 64M VM has its own,
    and nothing can write to it."""
    from snpsim.runner import Simulation
    from snpsim.scenario import load

    sim = Simulation(
        load({"vms": [{"memory": "128M", "count": 2}, {"memory": "64M"}], "duration": "1ms", "samples": 1})
    )
    sim.run()
    a, b, c = (sim.live[asid].qemu.ram for asid in sorted(sim.live))
    assert a is b and a is not c
    assert (a.size, c.size) == (128 << 8, 64 << 8)  # gfns: 4K pages of RAM below the PCI hole
    with pytest.raises(ValueError, match="read-only"):
        a[0] = False

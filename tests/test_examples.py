"""Every example scenario in examples/ runs, and shows what its comment says it shows."""

from __future__ import annotations

from pathlib import Path

import pytest

import snpsim
import snpsim.scenario
from snpsim.metrics import METRICS
from snpsim.runner import Result

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MIB = 1 << 20
# DirectMap4k at boot of a server-layout host of whole GiBs (tests/test_e2e.py's docstring derives it for 4 GiB):
# [0, 2M) (ISA range + first MiB) and [276M, 277M) (the RAM below the RMP table at 277M in its 2M range); the RMP
# is RAM/256 + 16 KiB rounded up to 1 MiB, an odd number of MiB, so its end at 277M + size is 2M aligned.
BOOT_4K = 3 * MIB


def run(name: str) -> Result:
    return snpsim.run(EXAMPLES / name)


def test_every_example_is_covered() -> None:
    names = {p.name for p in EXAMPLES.glob("*.toml")}
    assert names == set(CHECKS)
    policies = {snpsim.scenario.load(EXAMPLES / n).policy for n in names}
    assert policies == set(snpsim.presets.values())  # every preset has an example


def check_boot(r: Result) -> None:
    s = r.summary
    assert s["directmap_4k"] > 0 and s["host_crash_count"] == 0 and s["waste_bytes"] == 0


def check_fragmented(r: Result) -> None:
    s = r.summary
    # Every 2M range holding a private page is split (4K RMP entries, upstream), so at least the private bytes are
    # mapped at 4K. Not all of the host: guest_memfd's unmovable requests claim pageblocks ("free_pages +
    # alike_pages >= 1 << (pageblock_order-1)"), about half of the scattered host's, and stay inside them.
    assert s["private_bytes"] <= s["directmap_4k"] < 4 << 30


def check_churn(r: Result) -> None:
    s = r.summary
    assert len(r.vms) >= 4 and any(v.end_ns for v in r.vms)
    assert s["directmap_merge_count"] > 0


def check_fixup(r: Result) -> None:
    s = r.summary
    assert s["host_rmp_fault_count"] > 0 and s["host_crash_count"] == 0 and s["guest_vc_count"] > 0
    # the direct map is kept; only the #PF handler splits, around a host SNP page it cannot make shared
    assert s["directmap_4k"] == BOOT_4K + s["direct_map_level2_splits"] * 2 * MIB


def check_unmap(r: Result) -> None:
    s = r.summary
    assert s["host_crash_count"] == s["host_notpresent_fault_count"] > 0
    assert {c["path"] for c in r.crashes} == {"mm/ksm.c:calc_checksum"}


def check_hugetlb(r: Result) -> None:
    s = r.summary
    # no guest page split to 4K: only the 2M ranges of the host's own SNP pages (TMR, VMSAs; docs/launch.md)
    assert s["waste_bytes"] > 0 and s["directmap_4k"] == BOOT_4K + s["direct_map_level2_splits"] * 2 * MIB
    assert s["direct_map_level2_splits"] >= 2


def check_workloads(r: Result) -> None:
    s = r.summary
    assert {v.workload for v in r.vms} == {"lazy-accept", "swiotlb-dynamic", "dma-churn", "kexec", "idle"}
    assert not any(v.oom for v in r.vms)
    assert s["directmap_4k"] == BOOT_4K + s["direct_map_level2_splits"] * 2 * MIB  # host SNP pages only
    assert s["direct_map_level2_splits"] >= 2


def check_bulk(r: Result) -> None:
    s = r.summary
    assert any(v.end_ns for v in r.vms)
    assert s["directmap_split_count"] > 0 and s["directmap_merge_count"] > 0


def check_gmem_inplace(r: Result) -> None:
    s = r.summary
    # INPLACE v8: "no discard, no second allocation": every backed gfn has exactly one page, in the one file
    assert s["waste_bytes"] == 0 and s["private_bytes"] + s["shared_bytes"] == s["guest_bytes"]
    assert s["npt_2m"] == 0 and s["host_crash_count"] == 0  # 4K folios


def check_gmem_hugetlb(r: Result) -> None:
    s = r.summary
    # in place (one page per gfn) on 2M hugetlb folios: only folios holding a shared page are split, the others
    # map at 2M
    assert s["waste_bytes"] == 0 and s["npt_2m"] > 0 and s["host_crash_count"] == 0


def check_gmem_thp(r: Result) -> None:
    s = r.summary
    # 2M folios and "disallow hole-punching at sub-2MB granularity": a shared 4K page keeps its private folio
    assert s["waste_bytes"] > 0 and s["npt_2m"] > 0 and s["host_crash_count"] == 0


CHECKS = {
    "gmem-inplace.toml": check_gmem_inplace,
    "gmem-hugetlb.toml": check_gmem_hugetlb,
    "gmem-thp.toml": check_gmem_thp,
    "bulk-churn.toml": check_bulk,
    "boot-4g.toml": check_boot,
    "fragmented-host.toml": check_fragmented,
    "vm-churn.toml": check_churn,
    "fixup-integrity.toml": check_fixup,
    "unmap-ksm.toml": check_unmap,
    "hugetlb-waste.toml": check_hugetlb,
    "workloads.toml": check_workloads,
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example(name: str) -> None:
    r = run(name)
    assert set(r.summary) == set(METRICS)
    s = r.summary
    assert s["waste_bytes"] == s["private_bytes"] + s["shared_bytes"] - s["guest_bytes"] >= 0
    CHECKS[name](r)

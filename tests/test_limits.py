"""Memory limits: the analytic worst case per knob combination (hand-derived) and the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from snpsim.cli import app
from snpsim.limits import limits, worst_case
from snpsim.policy import Policy, presets

G = 1 << 30
K4 = 4096


@pytest.mark.parametrize(
    ("policy", "private", "shared"),
    [
        (presets["upstream"], G, 0),  # 4K folios, discard: complementary copies
        (presets["upm"], G, 0),
        (presets["fixup"], G, 0),  # pre-UPM: one copy, converted in place
        # 2M folios: one private page per folio pins 2 MiB while 511 of its 512 pages are shared
        (presets["upm-nosplit"], G, G - (G // (2 << 20)) * K4),
        # hugetlb-2m shared: the hugetlbfs mmap reserves the whole RAM block (hugetlb_reserve_pages), G; every
        # page can also be private, G
        (presets["hugetlb"], G, G),
        (
            Policy(
                private_backing="gmem",
                private_granularity="4k",
                shared_backing="4k",
                discard_on_convert=False,
                directmap="split",
                directmap_restore="never",
                rmp_fault="oops",
            ),
            G,
            G,
        ),  # no discard: everything doubled
        (
            Policy(
                private_backing="gmem",
                private_granularity="1g",
                shared_backing="4k",
                discard_on_convert=True,
                directmap="keep",
                directmap_restore="never",
                rmp_fault="oops",
            ),
            G,
            G - K4,
        ),  # one 1G folio
        (
            Policy(
                private_backing="gmem",
                private_granularity="4k",
                shared_backing="thp",
                discard_on_convert=True,
                directmap="split",
                directmap_restore="never",
                rmp_fault="oops",
            ),
            G - (G // (2 << 20)) * K4,
            G,
        ),  # THP: one shared page per 2M faults in a THP mapping all 512 (do_huge_pmd_anonymous_page); 511 private
    ],
)
def test_worst_case(policy: Policy, private: int, shared: int) -> None:
    assert worst_case(policy, G) == (private, shared)


def test_observed_peak_never_exceeds_the_worst_case() -> None:
    """Per preset and per cgroup: the worst case bounds what a run reaches (the kernel's share counts the host SNP
    pages' and the firmware block's splits too: a run's splits include theirs)."""
    for row in limits(256 << 20, 2, sorted(presets), duration="1500ms"):
        assert 0 < row.observed_peak_bytes <= row.worst_case_bytes, row
        assert row.memcg_peak_bytes <= row.memcg_worst_bytes, row
        assert row.hugetlb_peak_bytes <= row.hugetlb_worst_bytes, row
        assert row.kernel_peak_bytes <= row.kernel_worst_bytes, row
        assert row.rmp_overhead_bytes == (256 << 20) // 256  # 16 bytes per 4K page = RAM / 256


def test_limits_cli() -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["limits", "--memory", "128M", "--vcpus", "2", "-p", "upm-nosplit", "--json", "--duration", "1200ms"]
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["preset"] == "upm-nosplit"
    assert row["worst_case_bytes"] == (128 << 20) * 2 - 64 * K4
    bad = runner.invoke(app, ["limits", "--memory", "3M"])
    assert bad.exit_code == 2 and "--memory" in bad.output


def test_charges_per_cgroup_by_hand() -> None:
    from snpsim.limits import charges, npt_table_bytes

    g = 1 << 30
    # NPT of 1 GiB at 4K: 512 PTE pages + 1 PMD + 1 PDPT + the root (KVM MMU caches: GFP_KERNEL_ACCOUNT -> memcg)
    assert npt_table_bytes(g, 0, 0) == 515 * 4096
    up = charges(presets["upstream"], g, 4, peak_private=g, peak_shared=0, peak_total=g, npt_peak=0, directmap_tables=0)
    # memcg: guest_memfd folios (filemap_add_folio -> mem_cgroup_charge) + NPT + 4 VMSAs + context + 2 guest-req
    assert up.memcg_worst_bytes == g + 515 * 4096 + 7 * 4096
    assert up.hugetlb_worst_bytes == 0
    # kernel: the RMP's 16 B per 4K (4 MiB) + one page-table page per 2M and per 1G split (upstream splits to 4K):
    # the guest's 512 2M ranges and its GiB, and a 2M and a 1G split for each host SNP page (4 VMSAs, context,
    # response page, the TMR: 7) and each 2M range the 4 MiB OVMF block can touch (2 + 1 unaligned: 3)
    assert up.kernel_worst_bytes == (g // 4096) * 16 + (512 + 1 + 2 * (7 + 3)) * 4096
    ht = charges(
        presets["hugetlb"], g, 4, peak_private=g, peak_shared=g, peak_total=2 * g, npt_peak=0, directmap_tables=0
    )
    # hugetlbfs RAM block to the hugetlb controller (whole block reserved at mmap), private folios to memcg
    assert (ht.memcg_worst_bytes, ht.hugetlb_worst_bytes) == (g + 522 * 4096, g)
    assert (ht.memcg_peak_bytes, ht.hugetlb_peak_bytes) == (g + 7 * 4096, g)
    # unmap-nosplit removes whole 2M entries: only the 1G mappings split, one page per GiB of the two copies and per
    # 2M folio of the OVMF block (3); host-kernel pages split as upstream's (2 x 7)
    assert ht.kernel_worst_bytes == (g // 4096) * 16 + (2 + 3 + 2 * 7) * 4096


def test_in_place_designs_never_hold_two_copies() -> None:
    # INPLACE v8: "no discard, no second allocation": one guest_memfd page per gfn, whatever the guest converts
    g = 4 << 30
    assert worst_case(presets["gmem-inplace"], g) == (g, 0)
    assert worst_case(presets["gmem-hugetlb"], g) == (g, 0)
    # gmem-thp: 2M folios, no sub-2M hole punch: one private 4K page per folio keeps it, the rest shared
    assert worst_case(presets["gmem-thp"], g) == (g, g - g // (2 << 20) * 4096)

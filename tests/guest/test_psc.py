"""Tests for snpsim.guest.psc: PSC descriptors as Linux ``set_pages_state()`` builds them.

Expected values are worked out by hand from guest-workloads.md §1 / amd-snp-arch.md §9: 64 entries per
descriptor, 2M entries only for direct-map (huge_ok), 2M-aligned GFNs with >= 512 pages left, MSR = 1 page each.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snpsim.guest.events import Conversion, Protocol
from snpsim.guest.psc import (
    SNP_PAGE_STATE_MAX_ENTRY,
    PscEntry,
    build_requests,
    count_requests,
    entry_count,
    entry_runs,
    iter_request_runs,
    pvalidate_before_psc,
    pvalidate_plan,
    request_runs,
)

GHCB, MSR = Protocol.GHCB, Protocol.MSR


def sizes(reqs):
    return [len(r.entries) for r in reqs]


# --------------------------------------------------------------------------------------------- hand examples


def test_4k_only_130_pages_is_three_requests() -> None:
    conv = Conversion(1000, 130, False, GHCB, huge_ok=False)
    reqs = build_requests(conv)
    assert sizes(reqs) == [64, 64, 2]
    assert count_requests(conv) == 3
    entries = [e for r in reqs for e in r.entries]
    assert [e.gfn for e in entries] == list(range(1000, 1130))
    assert all(e.size == 0 and not e.to_private for e in entries)
    assert all(r.protocol is GHCB for r in reqs)


def test_aligned_1g_huge_conversion_is_512_2m_entries_in_8_requests() -> None:
    conv = Conversion(0x40000, 262144, True, GHCB, huge_ok=True)
    reqs = build_requests(conv)
    assert sizes(reqs) == [64] * 8
    entries = [e for r in reqs for e in r.entries]
    assert len(entries) == 512
    assert all(e.size == 1 and e.to_private for e in entries)
    assert [e.gfn for e in entries] == [0x40000 + 512 * i for i in range(512)]
    assert count_requests(conv) == 8
    assert entry_count(conv) == 512


def test_same_range_without_huge_ok_is_4k_only() -> None:
    conv = Conversion(0x40000, 262144, True, GHCB, huge_ok=False)
    assert entry_count(conv) == 262144
    assert count_requests(conv) == 4096  # 262144 / 64


def test_unaligned_huge_conversion_starts_with_4k_entries() -> None:
    # 3 pages before a 2M boundary (3584 = 7 * 512), then two whole 2M pages, then a 5-page tail.
    conv = Conversion(3581, 3 + 1024 + 5, False, GHCB, huge_ok=True)
    (req,) = build_requests(conv)
    assert [(e.gfn, e.size) for e in req.entries] == [
        (3581, 0),
        (3582, 0),
        (3583, 0),
        (3584, 1),
        (4096, 1),
        (4608, 0),
        (4609, 0),
        (4610, 0),
        (4611, 0),
        (4612, 0),
    ]
    assert entry_runs(conv) == [(3581, 3, 0), (3584, 2, 1), (4608, 5, 0)]
    assert pvalidate_plan(conv) == [(3581, 3, 0), (3584, 1024, 1), (4608, 5, 0)]
    assert request_runs(req) == [(3581, 3, 0), (3584, 1024, 1), (4608, 5, 0)]


def test_huge_ok_without_a_whole_aligned_2m_is_all_4k() -> None:
    # [1537, 2137): the first 2M boundary is 2048, and 2048 + 512 > 2137.
    conv = Conversion(1537, 600, True, GHCB, huge_ok=True)
    assert entry_runs(conv) == [(1537, 600, 0)]
    assert sizes(build_requests(conv)) == [64] * 9 + [24]


def test_msr_protocol_is_one_4k_page_per_request_even_if_huge_ok() -> None:
    conv = Conversion(512, 5, False, MSR, huge_ok=True)
    reqs = build_requests(conv)
    assert [(r.protocol, [(e.gfn, e.size) for e in r.entries]) for r in reqs] == [
        (MSR, [(g, 0)]) for g in range(512, 517)
    ]
    assert count_requests(conv) == 5
    assert pvalidate_plan(conv) == [(512, 5, 0)]
    # 512 pages of .bss..decrypted with the MSR protocol: 512 requests (guest-workloads.md row #2)
    assert count_requests(Conversion(4096, 512, False, MSR)) == 512


def test_ghcb_maximum_of_253_entries() -> None:
    conv = Conversion(0, 262144, True, GHCB, huge_ok=True)
    assert sizes(build_requests(conv, max_entries=253)) == [253, 253, 6]
    assert count_requests(conv, 253) == 3


def test_a_conversion_carries_its_senders_descriptor_size() -> None:
    # edk2 SnpPageStateChangeInternal.c: "i < SNP_PAGE_STATE_MAX_ENTRY" entries per VMGEXIT, whatever the caller
    # (the executor) passes as the guest kernel's default of 64.
    ovmf = Conversion(0, 600, False, GHCB, huge_ok=False, max_entries=SNP_PAGE_STATE_MAX_ENTRY)
    assert sizes(build_requests(ovmf, 64)) == [253, 253, 94]
    assert count_requests(ovmf, 64) == 3
    assert [sum(r[1] for r in runs) for runs in iter_request_runs(ovmf, 64)] == [253, 253, 94]
    # OVMF pre-validating 2 GiB from GPA 0 with UseLargeEntry: 1024 2M entries -> ceil(1024 / 253) = 5 VMGEXITs
    # (253 * 4 = 1012, then 12); Linux would send 1024 / 64 = 16
    prevalidate = Conversion(0, 524288, True, GHCB, huge_ok=True, max_entries=253)
    assert count_requests(prevalidate) == 5 and sizes(build_requests(prevalidate)) == [253] * 4 + [12]
    assert count_requests(Conversion(0, 524288, True, GHCB, huge_ok=True)) == 16
    # accept-all of 14 GiB above 4 GiB: 7168 2M entries -> ceil(7168 / 253) = 29 (253 * 28 = 7084, then 84)
    assert count_requests(Conversion(0x100000, 14 * 262144, True, GHCB, True, max_entries=253)) == 29
    with pytest.raises(ValueError):
        count_requests(Conversion(0, 1, True, max_entries=254))


@pytest.mark.parametrize("bad", [0, 254, -1])
def test_max_entries_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError):
        build_requests(Conversion(0, 1, True), max_entries=bad)
    with pytest.raises(ValueError):
        count_requests(Conversion(0, 1, True), bad)


def test_empty_and_bad_conversions() -> None:
    assert build_requests(Conversion(10, 0, True)) == []
    assert count_requests(Conversion(10, 0, True)) == 0
    with pytest.raises(ValueError):
        build_requests(Conversion(10, -1, True))
    with pytest.raises(ValueError):
        entry_runs(Conversion(-1, 1, True))


def test_pvalidate_order_and_validate_flag() -> None:
    to_shared = Conversion(0, 1024, False, GHCB, huge_ok=True)
    to_private = Conversion(0, 1024, True, GHCB, huge_ok=True)
    assert pvalidate_before_psc(to_shared) and not pvalidate_before_psc(to_private)
    assert pvalidate_plan(to_shared) == [(0, 1024, 1)]
    assert pvalidate_plan(to_private) == [(0, 1024, 1)]
    unvalidated = Conversion(0, 1024, True, GHCB, huge_ok=True, validate=False)
    assert pvalidate_plan(unvalidated) == []


def test_entry_npages_and_request_properties() -> None:
    assert PscEntry(0, 1, True).npages == 512 and PscEntry(1, 0, True).npages == 1
    (req,) = build_requests(Conversion(3581, 1032, False, GHCB, huge_ok=True))
    assert req.gfn == 3581 and req.npages == 1032


def test_large_huge_conversion_is_cheap() -> None:
    # 4 GiB 2M-aligned: 2048 entries, never 1M objects.
    conv = Conversion(0x100000, 1 << 20, True, GHCB, huge_ok=True)
    reqs = build_requests(conv)
    assert len(reqs) == 32 and count_requests(conv) == 32


# ------------------------------------------------------------------------------------------------ properties

conversions = st.builds(
    Conversion,
    gfn=st.one_of(st.integers(0, 1 << 22), st.integers(0, 64).map(lambda k: k * 512 + 512 * 1000)),
    npages=st.integers(0, 3000),
    to_private=st.booleans(),
    protocol=st.sampled_from([GHCB, MSR]),
    huge_ok=st.booleans(),
    validate=st.booleans(),
)


@given(conv=conversions, max_entries=st.integers(1, 253))
@settings(max_examples=120, deadline=None)
def test_requests_tile_the_range(conv: Conversion, max_entries: int) -> None:
    reqs = build_requests(conv, max_entries)
    assert count_requests(conv, max_entries) == len(reqs)
    entries = [e for r in reqs for e in r.entries]
    assert entry_count(conv) == len(entries)
    # tiles [gfn, gfn + npages) exactly, ascending
    g = conv.gfn
    for e in entries:
        assert e.gfn == g and e.to_private == conv.to_private
        g += e.npages
    assert g == conv.gfn + conv.npages
    end = conv.gfn + conv.npages
    for r in reqs:
        assert r.protocol is conv.protocol
        assert 1 <= len(r.entries) <= (1 if conv.protocol is MSR else max_entries)
    if conv.protocol is GHCB:
        assert all(len(r.entries) == max_entries for r in reqs[:-1])
    for e in entries:
        eligible = conv.protocol is GHCB and conv.huge_ok and e.gfn % 512 == 0 and end - e.gfn >= 512
        assert (e.size == 1) == eligible
    # the cheap forms agree with the objects
    assert [list(runs) for runs in iter_request_runs(conv, max_entries)] == [
        [(x[0], x[1] // 512 if x[2] else x[1], x[2]) for x in request_runs(r)] for r in reqs
    ]


@given(conv=conversions)
@settings(max_examples=80, deadline=None)
def test_pvalidate_plan_matches_entries(conv: Conversion) -> None:
    plan = pvalidate_plan(conv)
    if conv.to_private and not conv.validate:
        assert plan == []
        return
    g = conv.gfn
    expanded = []
    for gfn, npages, size in plan:
        assert gfn == g and npages > 0
        if size == 1:
            assert gfn % 512 == 0 and npages % 512 == 0
        expanded += [(x, size) for x in range(gfn, gfn + npages, 512 if size else 1)]
        g += npages
    assert g == conv.gfn + conv.npages
    entries = [(e.gfn, e.size) for r in build_requests(conv) for e in r.entries]
    assert expanded == entries


@given(
    gfn=st.integers(0, 1 << 30),
    npages=st.integers(0, 1 << 24),
    huge=st.booleans(),
    max_entries=st.integers(1, 253),
)
@settings(max_examples=200, deadline=None)
def test_count_requests_arithmetic_for_big_huge_ranges(gfn: int, npages: int, huge: bool, max_entries: int) -> None:
    conv = Conversion(gfn, npages, True, GHCB, huge_ok=huge)
    n = entry_count(conv)
    assert count_requests(conv, max_entries) == -(-n // max_entries)
    if huge:
        assert count_requests(conv, max_entries) == sum(1 for _ in iter_request_runs(conv, max_entries))

"""The interleaving explorer (snpsim.explorer): shortest counterexamples derived by hand, determinism, replay."""

from __future__ import annotations

from pathlib import Path

import pytest

import snpsim
from snpsim.explorer import GUEST_PAGES, explore_all, outcome_of, schedule_scenario, to_toml

VHOST_KVM = {"host": {"writers": {"vhost": {}, "kvm_pv": {}}}, "vms": [{"vcpus": 1}]}
VHOST = {"host": {"writers": {"vhost": {}}}, "vms": [{"vcpus": 1}]}


def _by(cxs: list[snpsim.explorer.Counterexample]) -> dict[tuple[str, str], list[str]]:  # type: ignore[name-defined]
    return {(c.preset, c.outcome): c.steps for c in cxs}


def test_pre_upm_shortest_counterexamples() -> None:
    found = _by(snpsim.explore(VHOST_KVM, presets=["unmap", "bulk", "fixup"], max_depth=3))
    # unmap / bulk: the guest takes the kvmclock page private (1), KVM's gfn-to-pfn cache writes it through the
    # kernel mapping (2): not present (unmap) or RMP-assigned (bulk's 4K direct map) -> do_kern_addr_fault -> oops
    for preset in ("unmap", "bulk"):
        assert found[(preset, "host-crash")] == [
            "vcpu0: convert gfn 19 to private",
            "kvm_pv: kvmclock writes gfn 19 (arch/x86/kvm/x86.c:kvm_setup_guest_pvclock)",
        ]
        # vhost's copy_to_user has an exception-table entry: -EFAULT, never a crash, never a lost write
        assert (preset, "host-data-loss") not in found
    # fixup keeps the direct map at 1G/2M: the write to the shared kvmclock page goes through a 2M mapping whose
    # range holds the guest's private pages, so the RMP check fails (amd-snp-arch.md §7) with no conversion at all;
    # the gfn-to-pfn cache writes under read_lock_irqsave: atomic, the fixup cannot run -> oops in one step
    assert found[("fixup", "host-crash")] == [
        "kvm_pv: kvmclock writes gfn 19 (arch/x86/kvm/x86.c:kvm_setup_guest_pvclock)"
    ]


def test_fixup_vhost_terminates_the_guest_in_three_steps() -> None:
    # the guest takes a virtqueue page private (1); vhost's copy_to_user faults (4K user mapping, the page is
    # assigned) in task context: the fixup makes it shared (2); the guest reads its page: #VC 0x404, terminate (3)
    found = _by(snpsim.explore(VHOST, presets=["fixup"], max_depth=3))
    assert found == {
        ("fixup", "guest-terminated"): [
            "vcpu0: convert gfn 16 to private",
            "vhost: vhost_net_rx writes gfn 16 (drivers/vhost/net.c:handle_rx)",
            "vcpu0: read gfn 16",
        ]
    }


@pytest.mark.parametrize("preset", ["upm", "upstream", "upm-nosplit", "hugetlb"])
def test_guest_memfd_presets_crash_nothing(preset: str) -> None:
    found = _by(snpsim.explore(VHOST_KVM, presets=[preset], max_depth=3))
    # the write lands on the shared backing, a different frame: lost in two steps, and nothing crashes
    assert found == {
        (preset, "host-data-loss"): [
            "vcpu0: convert gfn 16 to private",
            "vhost: vhost_net_rx writes gfn 16 (drivers/vhost/net.c:handle_rx)",
        ]
    }


def test_deterministic_and_counted() -> None:
    a = explore_all(VHOST_KVM, ["bulk"], 3)
    b = explore_all(VHOST_KVM, ["bulk"], 3)
    assert a.counterexamples == b.counterexamples
    assert [s.states for s in a.stats] == [s.states for s in b.stats] and a.stats[0].states > 1


def test_schedule_replays_to_the_same_outcome(tmp_path: Path) -> None:
    [cx] = [c for c in snpsim.explore(VHOST_KVM, presets=["unmap"], max_depth=2) if c.outcome == "host-crash"]
    data = schedule_scenario(VHOST_KVM, cx)
    path = tmp_path / "cx.toml"
    path.write_text(to_toml(data))
    from snpsim.scenario import read_toml

    assert outcome_of(read_toml(path)) == "host-crash"
    assert GUEST_PAGES == 512


def test_bad_input_names_the_field() -> None:
    with pytest.raises(snpsim.ConfigError, match=r"host\.writers\.bogus"):
        snpsim.explore({"host": {"writers": {"bogus": {}}}}, presets=["upm"], max_depth=1)
    with pytest.raises(snpsim.ConfigError, match="max_depth"):
        snpsim.explore(VHOST, presets=["upm"], max_depth=0)

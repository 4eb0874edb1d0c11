"""The hostile-convert workload against the host accessors, on every preset (issue 14)."""

from __future__ import annotations

import pytest

import snpsim
from snpsim.guest.linux import LinuxGuestConfig
from snpsim.guest.workloads import host_used_pages, hostile_convert


def _scenario(preset: str) -> dict[str, object]:
    return {
        "seed": 3,
        "policy": preset,
        "host": {"memory": "1G", "writers": {"vhost": {}, "kvm_pv": {"interval": "200us"}}},
        "vms": [{"memory": "64M", "vcpus": 1, "workload": "hostile-convert", "params": {"rate": 5000}}],
        "duration": "1500ms",
    }


@pytest.mark.parametrize("preset", sorted(snpsim.presets))
def test_hostile_convert_on_every_preset(preset: str) -> None:
    r = snpsim.run(_scenario(preset))
    s = r.summary
    pol = snpsim.presets[preset]
    if pol.gmem_conversion == "in-place":
        # INPLACE v8: QEMU maps the guest_memfd, which refuses private pages (VM_FAULT_SIGBUS): no stale copy to
        # lose a write to; QEMU's own virtio emulation dies of SIGBUS, the kernel's copies get -EFAULT
        assert s["host_lost_write_count"] == 0 and s["host_crash_count"] == 0
        assert s["host_sigbus_count"] + s["host_efault_count"] > 0
    elif pol.private_backing == "gmem":
        # the host writes the shared backing, a different frame from the private one: lost, never a fault
        assert s["host_lost_write_count"] > 0
        assert s["host_crash_count"] == 0 and s["host_sigbus_count"] == 0
    else:
        # pre-UPM: the same frame the guest converted: RMP #PF (or not-present), never a lost write
        assert s["host_lost_write_count"] == 0
        assert s["host_rmp_fault_count"] + s["host_notpresent_fault_count"] > 0
    assert all("context" in c for c in r.crashes)


def test_targets_are_shared_after_boot_and_stream_is_deterministic() -> None:
    import numpy as np

    cfg = LinuxGuestConfig(memory_bytes=64 << 20, vcpus=2)
    used = host_used_pages(cfg)
    assert used["bounce"].size == 16 and used["ghcb"].size == 2 and used["steal_time"].size == 2
    a = list(hostile_convert(cfg, np.random.default_rng(1), until_ns=2_000_000_000))
    b = list(hostile_convert(cfg, np.random.default_rng(1), until_ns=2_000_000_000))
    assert a == b and a
    with pytest.raises(ValueError, match="target"):
        list(hostile_convert(cfg, np.random.default_rng(1), target="bogus"))


def test_on_vc_404_is_checked() -> None:
    with pytest.raises(snpsim.ConfigError, match="on_vc_404"):
        LinuxGuestConfig.from_dict({"memory": "64M", "vcpus": 1, "on_vc_404": "panic"})


def test_hostile_convert_is_deterministic_and_on_vc_404_continue_keeps_running() -> None:
    sc = _scenario("fixup")
    a, b = snpsim.run(sc), snpsim.run(sc)
    assert a.summary == b.summary and a.crashes == b.crashes
    # terminate (default): the guest ends at its first #VC 0x404, and the VM's end time is recorded
    rec = a.vms[0]
    assert a.summary["guest_terminated_count"] == 1
    assert rec.terminated_ns is not None and rec.end_ns is not None and rec.terminated_ns <= rec.end_ns  # + teardown
    vms = [{**sc["vms"][0], "guest": {"on_vc_404": "continue"}}]  # type: ignore[index]
    c = snpsim.run({**sc, "vms": vms})
    assert c.summary["guest_terminated_count"] == 0 and c.vms[0].terminated_ns is None
    assert c.summary["guest_vc_count"] > a.summary["guest_vc_count"] >= 1

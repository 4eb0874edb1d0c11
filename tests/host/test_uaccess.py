"""The context table of host accesses to guest memory (snpsim.host.uaccess), each row from the code it cites."""

from __future__ import annotations

import numpy as np
import pytest

from snpsim.guest.events import Access, Conversion
from snpsim.host import HostKernel
from snpsim.host.uaccess import ACCESSORS, Accessor, Address, Context, Outcome, fault_outcome, guest_write
from snpsim.metrics import Counters
from snpsim.policy import presets
from snpsim.runner import GuestDriver, GuestRamView
from snpsim.vmm.qemu import Qemu

ATOMIC = (Context.SOFTIRQ, Context.HARDIRQ, Context.NMI, Context.ATOMIC)


@pytest.mark.parametrize("rmp_fault", ["oops", "fixup"])
def test_user_address_in_atomic_context_is_efault(rmp_fault: str) -> None:
    # do_user_addr_fault: "if (unlikely(faulthandler_disabled() || !mm)) { bad_area_nosemaphore(...)" ->
    # kernelmode_fixup_or_oops -> fixup_exception: -EFAULT, and the RMP is never looked at (no fixup)
    for ctx in ATOMIC:
        assert fault_outcome(rmp_fault, ctx, Address.USER, "rmp") == Outcome.EFAULT


def test_user_address_task_and_user_mode() -> None:
    # SNP v5 08/45: handle_user_rmp_page_fault -> RMP_FAULT_KILL -> do_sigbus: SIGBUS in user mode; in kernel
    # mode do_sigbus -> "if (!user_mode(regs)) kernelmode_fixup_or_oops(...)" -> the uaccess fixup: -EFAULT
    assert fault_outcome("oops", Context.USER, Address.USER, "rmp") == Outcome.SIGBUS
    assert fault_outcome("oops", Context.TASK, Address.USER, "rmp") == Outcome.EFAULT
    # Gonda's fixup makes the page shared in a context that may sleep
    assert fault_outcome("fixup", Context.USER, Address.USER, "rmp") == Outcome.FIXUP
    assert fault_outcome("fixup", Context.TASK, Address.USER, "rmp") == Outcome.FIXUP


def test_kernel_address() -> None:
    # do_kern_addr_fault -> bad_area_nosemaphore -> no exception-table entry -> show_fault_oops: an oops, for an
    # RMP violation ("RMP violation") and a not-present direct-map entry alike
    for ctx in (Context.TASK, *ATOMIC):
        assert fault_outcome("oops", ctx, Address.KERNEL, "rmp") == Outcome.OOPS
        assert fault_outcome("oops", ctx, Address.KERNEL, "not-present") == Outcome.OOPS
        assert fault_outcome("fixup", ctx, Address.KERNEL, "not-present") == Outcome.OOPS
    # the fixup cannot sleep in atomic contexts: oops there, fixup in task context
    assert fault_outcome("fixup", Context.TASK, Address.KERNEL, "rmp") == Outcome.FIXUP
    for ctx in ATOMIC:
        assert fault_outcome("fixup", ctx, Address.KERNEL, "rmp") == Outcome.OOPS
    with pytest.raises(ValueError):
        fault_outcome("oops", Context.USER, Address.KERNEL, "rmp")


def _vm(preset: str) -> tuple[HostKernel, Qemu, GuestDriver, GuestRamView, list[str]]:
    host = HostKernel(4096, presets[preset])
    qemu = Qemu(host, presets[preset], np.ones(512, dtype=bool), asid=1, counters=Counters())
    drv = GuestDriver(qemu)
    drv.execute(Conversion(0, 512, True))
    drv.execute(Conversion(16, 1, False), Access(16, 1, False))
    killed: list[str] = []
    ram = GuestRamView("vm0", qemu, drv.guest.log, {"virtqueue": np.array([16])}, killed.append)
    return host, qemu, drv, ram, killed


@pytest.mark.parametrize("preset", ["fixup", "unmap", "bulk", "upm", "upstream", "hugetlb"])
def test_write_to_a_shared_page_lands(preset: str) -> None:
    host, _, _, ram, _ = _vm(preset)
    assert guest_write(host, ram, 16, ACCESSORS["vhost_net_rx"]) == Outcome.OK
    assert host.host_lost_write_count == 0 and not host.crashes


@pytest.mark.parametrize(
    ("preset", "accessor", "expected"),
    [
        # pre-UPM: the frame the guest converted in place (4K user mapping, RMP check fails)
        ("unmap", "vhost_net_rx", Outcome.EFAULT),
        ("unmap", "qemu_virtio", Outcome.SIGBUS),
        ("unmap", "steal_time_preempted", Outcome.EFAULT),
        ("unmap", "kvmclock", Outcome.OOPS),  # direct map entry removed: not-present oops
        ("bulk", "kvmclock", Outcome.OOPS),  # 4K direct map: RMP oops
        ("bulk", "ghcb", Outcome.OOPS),
        ("fixup", "vhost_net_rx", Outcome.FIXUP),
        ("fixup", "ghcb", Outcome.FIXUP),
        ("fixup", "kvmclock", Outcome.OOPS),  # atomic: cannot fix up
        # guest_memfd: the shared backing, a different frame: the write is lost, nothing faults
        ("upm", "vhost_net_rx", Outcome.LOST),
        ("upm", "kvmclock", Outcome.LOST),
        ("upstream", "qemu_virtio", Outcome.LOST),
        ("hugetlb", "ghcb", Outcome.LOST),
    ],
)
def test_write_after_the_guest_took_the_page(preset: str, accessor: str, expected: Outcome) -> None:
    host, _qemu, drv, ram, killed = _vm(preset)
    drv.execute(Conversion(16, 1, True), Access(16, 1, True))
    acc = ACCESSORS[accessor]
    acc = Accessor(acc.path, acc.context, acc.address, ("virtqueue",))
    assert guest_write(host, ram, 16, acc) == expected
    assert (host.host_crash_count == 1) == (expected == Outcome.OOPS)
    assert host.host_lost_write_count == int(expected == Outcome.LOST)
    assert killed == (["SIGBUS"] if expected == Outcome.SIGBUS else [])
    if expected == Outcome.OOPS:
        assert host.crashes[0].context == acc.context
    if expected == Outcome.FIXUP:  # the page is shared now: the guest's next private read takes #VC 0x404
        drv.guest.on_vc_404 = "terminate"
        drv.execute(Access(16, 1, True, False))
        assert drv.guest.terminated
    assert not host.integrity_violations

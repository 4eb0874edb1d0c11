"""QEMU's guest RAM backends through the whole stack (guest -> vmm -> kvm -> host), figures by hand.

memory-backend-ram (``shared_backing = "thp"``): ``ram_block_add`` applies ``qemu_madvise(new_block->host,
new_block->max_length, QEMU_MADV_HUGEPAGE)`` to every RAM block with a host mapping (qemu/qemu system/physmem.c);
memory-backend-memfd (``"4k"``, AMDSEV launch-qemu.sh: ``-object memory-backend-memfd,id=ram1,size=${MEM}M,
share=true,prealloc=false``): shmem, ``shmem_enabled`` never by default; memory-backend-file on hugetlbfs
(``"hugetlb-2m"``): ``file_ram_alloc`` maps the file, and hugetlbfs ``mmap`` reserves its pages
(``hugetlb_reserve_pages``) or fails ("unable to map backing store for guest RAM").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import snpsim
from snpsim.cli import app
from snpsim.guest.events import Access, Conversion, Protocol
from snpsim.host import HostKernel
from snpsim.limits import limits
from snpsim.metrics import Counters
from snpsim.policy import Policy, presets
from snpsim.runner import GuestDriver
from snpsim.vmm.qemu import Qemu, QemuExit

HOST_FRAMES = 262144  # 1 GiB
GUEST_PAGES = 16384  # 64 MiB
K4 = 4096
M2 = 2 << 20
GHCB = 1000  # a GHCB page's gfn, in the 2M range [512, 1024)

THP = Policy(**{**presets["upstream"].as_dict(), "shared_backing": "thp"})


def stack(policy: Policy, **host_kw: object) -> tuple[HostKernel, Qemu, GuestDriver]:
    host = HostKernel(HOST_FRAMES, policy, **host_kw)  # type: ignore[arg-type]
    vmm = Qemu(host, policy, np.ones(GUEST_PAGES, dtype=bool), asid=1, counters=Counters())
    return host, vmm, GuestDriver(vmm)


def share_ghcb(guest: GuestDriver) -> None:
    """The guest's early_set_memory_decrypted of its GHCB: one page to shared (MSR protocol), then written."""
    guest.execute(Conversion(GHCB, 1, False, Protocol.MSR, what="ghcb"), Access(GHCB, 1, private=False))


def test_ghcb_on_memory_backend_ram_faults_a_2m_thp_and_its_discard_waits_for_the_shrinker() -> None:
    host, vmm, guest = stack(THP)
    share_ghcb(guest)
    # KVM's shared fault (hva_to_pfn -> do_huge_pmd_anonymous_page) maps the whole aligned 2M range [512, 1024)
    assert vmm.shared_bytes() == M2 and vmm.memory.allocated_pages == 512
    # the 511 other gfns are private: their shared copies are waste (private_bytes 0: nothing private touched yet)
    assert vmm.private_bytes() == 0 and vmm.guest_bytes() == K4
    assert vmm.private_bytes() + vmm.shared_bytes() - vmm.guest_bytes() == M2 - K4
    # back to private: kvm_convert_memory discards the page (MADV_DONTNEED): only the PMD is split
    guest.execute(Conversion(GHCB, 1, True, Protocol.MSR, what="ghcb"))
    assert vmm.shared_bytes() == M2 and vmm.memory.held_pages == 1
    assert host.metrics()["thp_deferred_split_bytes"] == K4
    # reclaim splits it: the one unmapped page comes back; 511 stay mapped as 4K pages (shared copies of private
    # gfns nobody discards)
    assert host.drop_caches() == 1
    assert vmm.shared_bytes() == 511 * K4 and host.metrics()["thp_split_page_count"] == 1


def test_ghcb_on_memory_backend_memfd_takes_one_4k_page() -> None:
    host, vmm, guest = stack(presets["upstream"])  # shared_backing "4k": memory-backend-memfd, shmem 4K pages
    share_ghcb(guest)
    assert vmm.shared_bytes() == K4 and vmm.guest_bytes() == K4
    guest.execute(Conversion(GHCB, 1, True, Protocol.MSR, what="ghcb"))
    assert vmm.shared_bytes() == 0 and host.metrics()["thp_deferred_split_bytes"] == 0


def test_memory_backend_ram_on_a_host_without_thp_takes_one_4k_page() -> None:
    _, vmm, guest = stack(THP, transparent_hugepage="never")
    share_ghcb(guest)
    assert vmm.shared_bytes() == K4


def test_hugetlb_ram_block_reserves_all_its_huge_pages_at_creation() -> None:
    host, vmm, guest = stack(presets["hugetlb"])
    # 64 MiB RAM block / 2 MiB = 32 huge pages reserved by the mmap, no pool: 32 surplus pages gathered now
    assert host.hugetlb_reserved(9) == 32 and host.hugetlb_surplus(9) == 32
    assert vmm.shared_bytes() == GUEST_PAGES * K4
    share_ghcb(guest)
    assert host.hugetlb_reserved(9) == 31 and vmm.shared_bytes() == GUEST_PAGES * K4
    vmm.destroy()  # the faulted page goes back (surplus), the 31 unused reservations are returned
    assert host.hugetlb_reserved(9) == 0 and host.hugetlb_surplus(9) == 0 and host.hugetlb_pool_free(9) == 0
    assert host.buddy.free_frames == host.buddy.managed_frames


def test_a_hugetlb_reservation_that_cannot_be_had_makes_qemu_exit() -> None:
    # a pool of 31 pages (hugepages=31, no overcommit) for a RAM block of 32: mmap fails with ENOMEM
    with pytest.raises(QemuExit, match="unable to map backing store for guest RAM: Cannot allocate memory"):
        stack(presets["hugetlb"], hugepages={9: 31})


def test_the_engine_records_a_vm_qemu_could_not_create() -> None:
    doc = {
        "seed": 1,
        "duration": "10ms",
        "policy": "hugetlb",
        "host": {"memory": "1G", "hugepages": {"2m": 100}},  # 200 MiB of pool for a 256 MiB guest
        "vms": [{"memory": "256M", "workload": "idle"}],
    }
    r = snpsim.run(doc)
    (vm,) = r.vms
    assert vm.exit_error is not None and "unable to map backing store" in vm.exit_error
    assert vm.end_ns == 0 and vm.boot_ns is None and r.summary["shared_bytes"] == 0
    doc["host"] = {"memory": "1G", "hugepages": {"2m": 128}}  # 128 x 2 MiB = 256 MiB: enough
    assert snpsim.run(doc).vms[0].exit_error is None


def test_limits_show_the_hugetlb_reservation() -> None:
    # the observed shared peak is the whole RAM block from creation on: 128 MiB / 2 MiB = 64 reserved pages
    (row,) = limits(128 << 20, 1, ["hugetlb"], workload="idle", duration="50ms")
    assert row.observed_shared_bytes == 128 << 20
    assert row.worst_shared_bytes == 128 << 20 and row.worst_case_bytes == 2 * (128 << 20)


def test_the_cli_warns_of_a_vm_that_never_started(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        'seed = 1\nduration = "10ms"\npolicy = "hugetlb"\n[host]\nmemory = "1G"\n[host.hugepages]\n"2m" = 100\n'
        '[[vms]]\nmemory = "256M"\nworkload = "idle"\n'
    )
    result = CliRunner().invoke(app, ["run", str(cfg), "--no-save", "-q"])
    assert result.exit_code == 1, result.output  # a warning a script must not miss
    said = "hugetlb: vm0 (256 MiB at 0ns) never started: qemu-system-x86_64: -object memory-backend-file"
    assert said in result.output

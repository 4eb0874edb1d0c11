"""A replay's progress callback: monotone, within [0, 1], and moving while the guest works through the trace."""

from __future__ import annotations

from pathlib import Path

import snpsim
from snpsim.traces import write_qemu

GUEST_PAGES = 1 << 18  # 1 GiB


def test_replay_progress_is_monotone_bounded_and_moves_through_the_events(tmp_path: Path) -> None:
    """2,000 conversions 1 us apart: a replay's duration is the trace's span (2 ms), which the VM's launch alone
    passes, so simulated time over the duration says nothing. The replay reports the share of the trace's
    conversions handed to the guest, every 1 % of them (every 20 conversions): 100 distinct fractions, 0.01 to 1,
    never decreasing."""
    conversions = [(10**18 + 1000 * k, 4096 + 16 * (k % 1000), 4, k % 2 == 0) for k in range(2000)]
    path = tmp_path / "qemu.log"
    write_qemu(conversions, path)
    seen: list[float] = []
    snpsim.replay(path, "upstream", vm_memory="1G", host_memory="4G", samples=10, progress=seen.append)
    assert seen == [k / 100 for k in range(1, 101)]

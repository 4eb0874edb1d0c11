"""Writers that emit conversions as real QEMU and ftrace trace text (the formats :mod:`snpsim.traces` reads).

``write_qemu`` produces QEMU ``log`` trace backend lines with the tracetool timestamp prefix
``"%d@%zu.%06zu:"`` and the format strings of ``kvm_hc_map_gpa_range`` / ``kvm_convert_memory`` (QEMU
``target/i386/kvm/trace-events``, ``accel/kvm/trace-events``); ``write_ftrace`` produces
``/sys/kernel/tracing/trace`` text (the ``nop`` tracer header, ``TASK-PID [CPU] FLAGS TIMESTAMP: EVENT: FIELDS``
lines with ``"%5lu.%06lu"`` timestamps) of ``kvm_vm_set_mem_attributes`` and the KVM events around it
(``shared/reference/guest-workloads.md`` §1, §4; amd-snp-arch.md §9 for the MSR PSC encoding).

Input: an iterable of ``(time_ns, gfn, npages, to_private)`` in non-decreasing time order. ``mode`` chooses which
events describe each conversion:

* ``"full"`` (default): what a real host logs. QEMU: ``kvm_hc_map_gpa_range`` then ``kvm_convert_memory``.
  ftrace: for one page the MSR protocol (``kvm_vmgexit_msr_protocol_enter``, ``..._exit``), else a GHCB PSC
  (``kvm_vmgexit_enter`` with exit_reason 80000010); then ``kvm_userspace_exit`` (KVM_EXIT_HYPERCALL),
  ``kvm_vm_set_mem_attributes`` and, for the GHCB PSC, ``kvm_vmgexit_exit``;
* ``"authoritative"``: only the authoritative event (``kvm_convert_memory`` / ``kvm_vm_set_mem_attributes``);
* ``"secondary"``: only the secondary events the parsers fall back to (QEMU ``kvm_hc_map_gpa_range``; ftrace
  ``kvm_vmgexit_msr_protocol_enter`` for one page, ``kvm_hypercall`` nr 0xc otherwise).

Parsing the output gives the input back (times truncated to the format's resolution: 1 us, or 1 ns for
``write_ftrace(..., ns=True)`` as ``trace-cmd report -t`` prints).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import IO, Literal

from snpsim.traces.model import MAX_GPA, PAGE_SHIFT

__all__ = ["ExportEvent", "write_ftrace", "write_qemu"]

#: ``(time_ns, gfn, npages, to_private)``
ExportEvent = tuple[int, int, int, bool]
Mode = Literal["full", "authoritative", "secondary"]
_MODES = ("full", "authoritative", "secondary")

_FTRACE_HEADER = """\
# tracer: nop
#
# entries-in-buffer/entries-written: {n}/{n}   #P:{cpus}
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
"""


def _checked(events: Iterable[ExportEvent]) -> Iterator[ExportEvent]:
    last = -1
    for i, ev in enumerate(events):
        t, gfn, npages, to_private = ev
        for name, v in (("time_ns", t), ("gfn", gfn), ("npages", npages)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"event {i}: {name} must be an int, got {v!r}")
        if t < 0 or t < last:
            raise ValueError(f"event {i}: time_ns {t} is negative or before the previous event ({last})")
        if gfn < 0 or npages <= 0 or (gfn + npages) << PAGE_SHIFT > MAX_GPA:
            raise ValueError(f"event {i}: bad range gfn {gfn:#x} npages {npages} (need npages > 0, end <= 2^52)")
        last = t
        yield t, gfn, npages, bool(to_private)


@contextlib.contextmanager
def _output(file: str | os.PathLike[str] | IO[str]) -> Iterator[IO[str]]:
    if isinstance(file, (str, os.PathLike)):
        with open(file, "w", encoding="utf-8") as f:
            yield f
    else:
        yield file


def _mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")


def write_qemu(
    events: Iterable[ExportEvent],
    file: str | os.PathLike[str] | IO[str],
    *,
    mode: Mode = "full",
    pid: int = 4321,
    timestamps: bool = True,
) -> int:
    """Write ``events`` as a QEMU log-backend trace; returns the number of lines written.

    ``pid``: the thread id in the ``PID@SEC.USEC:`` prefix; ``timestamps=False`` omits the prefix (as QEMU
    without ``-msg timestamp=on`` on older versions; times are then lost). Times are truncated to microseconds.
    """
    _mode(mode)
    n = 0
    with _output(file) as f:
        for t, gfn, npages, to_private in _checked(events):
            prefix = f"{pid}@{t // 1_000_000_000}.{t // 1000 % 1_000_000:06d}:" if timestamps else ""
            gpa, size = gfn << PAGE_SHIFT, npages << PAGE_SHIFT
            if mode != "authoritative":
                attrs = 0x10 if to_private else 0
                hc = f"gpa 0x{gpa:x} size 0x{size:x} attributes 0x{attrs:x} flags 0x1"
                f.write(f"{prefix}kvm_hc_map_gpa_range {hc}\n")
                n += 1
            if mode != "secondary":
                msg = "shared_to_private" if to_private else "private_to_shared"
                f.write(f"{prefix}kvm_convert_memory start 0x{gpa:x} size 0x{size:x} {msg}\n")
                n += 1
    return n


def _c_alt_hex016(v: int) -> str:
    """C's ``%#016llx``: ``0x`` + zero padding to 16 characters, but a zero prints as sixteen ``0``."""
    return f"{v:#016x}" if v else "0" * 16


def write_ftrace(
    events: Iterable[ExportEvent],
    file: str | os.PathLike[str] | IO[str],
    *,
    mode: Mode = "full",
    comm: str = "CPU 0/KVM",
    pid: int = 4330,
    cpu: int = 0,
    vcpu: int = 0,
    header: bool = True,
    ns: bool = False,
) -> int:
    """Write ``events`` as ``/sys/kernel/tracing/trace`` text; returns the number of event lines written.

    ``comm``/``pid``/``cpu``: the task and host CPU columns (QEMU's vCPU thread); ``vcpu``: the guest vCPU in the
    event fields. ``header``: the ``nop`` tracer header (the entry count in it is left as 0 when ``events`` is not
    a sized collection). ``ns``: 9 fraction digits instead of 6 (times are otherwise truncated to microseconds).
    """
    _mode(mode)
    n = 0
    with _output(file) as f:
        if header:
            total = len(events) if hasattr(events, "__len__") else 0  # type: ignore[arg-type]
            f.write(_FTRACE_HEADER.format(n=total, cpus=max(cpu + 1, 1)))
        task = f"{comm:>16}-{pid:<7} [{cpu:03d}] ....."
        for t, gfn, npages, to_private in _checked(events):
            sec = t // 1_000_000_000
            frac = f"{t % 1_000_000_000:09d}" if ns else f"{t // 1000 % 1_000_000:06d}"
            pre = f"{task} {sec:5d}.{frac}: "
            lines: list[str] = []
            if npages == 1 and mode != "authoritative":
                op = 1 if to_private else 2
                msr = (op << 52) | (gfn << PAGE_SHIFT) | 0x014
                lines.append(f"kvm_vmgexit_msr_protocol_enter: vcpu {vcpu}, ghcb_gpa {msr:016x}")
                if mode == "full":
                    # sev_handle_vmgexit_msr_protocol() traces its exit (ret 0: exit to userspace) before KVM_RUN
                    # returns; the VMGEXIT event's exit is traced when the GHCB is unmapped at the next entry.
                    lines.append(f"kvm_vmgexit_msr_protocol_exit: vcpu {vcpu}, ghcb_gpa {msr:016x}, result 0")
                exit_line = ""
            elif mode == "full":
                lines.append(f"kvm_vmgexit_enter: vcpu {vcpu}, exit_reason 80000010, exit_info1 0, exit_info2 0")
                exit_line = f"kvm_vmgexit_exit: vcpu {vcpu}, exit_reason 80000010, exit_info1 0, exit_info2 0"
            else:
                exit_line = ""
            if mode == "secondary" and npages > 1:
                a2 = 0x10 if to_private else 0
                lines.append(f"kvm_hypercall: nr 0xc a0 0x{gfn << PAGE_SHIFT:x} a1 0x{npages:x} a2 0x{a2:x} a3 0x0")
            if mode != "secondary":
                if mode == "full":
                    lines.append("kvm_userspace_exit: reason KVM_EXIT_HYPERCALL (3)")
                attrs = 0x8 if to_private else 0
                lines.append(
                    f"kvm_vm_set_mem_attributes: {_c_alt_hex016(gfn)} -- {_c_alt_hex016(gfn + npages)} [0x{attrs:x}]"
                )
                if exit_line:
                    lines.append(exit_line)
            for line in lines:
                f.write(pre + line + "\n")
            n += len(lines)
    return n

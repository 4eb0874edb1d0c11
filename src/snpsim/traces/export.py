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

``launch``: the VM's ``SnpLaunchUpdate`` list (e.g. ``Result.launch``), written before the first conversion, at its
time, as QEMU's ``sev_snp_launch_finish()`` traces it (:mod:`snpsim.traces.launch`): ``kvm_sev_snp_launch_start``,
one ``kvm_sev_snp_launch_update`` per update, ``kvm_sev_snp_launch_finish``; in ftrace text as
``tracing_mark_write:`` lines of QEMU's ``ftrace`` trace backend (KVM has no launch tracepoint), in ``"full"`` mode
each preceded by the ``kvm_vm_set_mem_attributes`` of QEMU's ``kvm_set_memory_attributes_private()``. Values QEMU
would print that the model does not have are made up: ``policy 0x30000`` (QEMU's ``DEFAULT_SEV_SNP_POLICY``),
``gosvw`` / ``id_block`` / ... ``(null)`` (unset options), ``src`` = ``0x7f0000000000 + gpa`` (the RAM block's host
address is not modelled). ``memory_bytes`` (QEMU only): the guest RAM, written as the guest_memfd warning
``kvm_create_gmemfd: created memfd: ...`` so that a replay reads the guest size back. Parsing gives the launch back
(``ParseStats.launch``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import IO, Literal

from snpsim.kvm.uapi import SnpLaunchUpdate, SnpPageType
from snpsim.traces.launch import GMEMFD, LAUNCH_FINISH, LAUNCH_START, LAUNCH_UPDATE, PAGE_TYPES
from snpsim.traces.model import MAX_GPA, PAGE_SHIFT

__all__ = ["ExportEvent", "write_ftrace", "write_qemu"]

#: ``snp_page_type_to_str()``: the name QEMU prints for each page type.
_TYPE_NAMES = {t: name for name, t in PAGE_TYPES.items()}
#: ``DEFAULT_SEV_SNP_POLICY`` (QEMU target/i386/sev.c): SMT allowed, reserved bit 17 set.
_SNP_POLICY = 0x30000
#: A made-up host address of the guest RAM block (``src`` of the launch updates).
_SRC_BASE = 0x7F00_0000_0000
#: QEMU's main thread (it issues the launch ioctls).
_QEMU_COMM = "qemu-system-x86"

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


def _checked_launch(launch: Iterable[SnpLaunchUpdate]) -> list[SnpLaunchUpdate]:
    out = list(launch)
    for i, u in enumerate(out):
        if not isinstance(u, SnpLaunchUpdate) or not isinstance(u.type, SnpPageType):
            raise ValueError(f"launch update {i}: expected an SnpLaunchUpdate with an SnpPageType, got {u!r}")
        if u.gfn < 0 or u.npages <= 0 or (u.gfn + u.npages) << PAGE_SHIFT > MAX_GPA:
            raise ValueError(f"launch update {i}: bad range gfn {u.gfn:#x} npages {u.npages}")
    return out


def _launch_lines(launch: list[SnpLaunchUpdate]) -> Iterator[tuple[str, int, int]]:
    """``(QEMU event text, gpa, size)`` of the launch: start (size 0), one line per update, finish (size 0)."""
    yield f"{LAUNCH_START} policy 0x{_SNP_POLICY:x} gosvw (null)", 0, 0
    for u in launch:
        gpa, size = u.gfn << PAGE_SHIFT, u.npages << PAGE_SHIFT
        name = _TYPE_NAMES[u.type]
        yield f"{LAUNCH_UPDATE} src 0x{_SRC_BASE + gpa:x} gpa 0x{gpa:x} len 0x{size:x} ({name} page)", gpa, size
    yield f"{LAUNCH_FINISH} id_block (null) id_auth (null) host_data (null)", 0, 0


def _with_launch(events: Iterable[ExportEvent], launch: list[SnpLaunchUpdate]) -> Iterator[ExportEvent | int]:
    """The checked events, preceded (when there is a launch) by the time the launch is written at: the first
    event's time, or 0 without events."""
    it = _checked(events)
    first = next(it, None)
    if launch:
        yield first[0] if first is not None else 0
    if first is not None:
        yield first
        yield from it


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
    launch: Iterable[SnpLaunchUpdate] = (),
    memory_bytes: int | None = None,
) -> int:
    """Write ``events`` as a QEMU log-backend trace; returns the number of lines written.

    ``pid``: the thread id in the ``PID@SEC.USEC:`` prefix; ``timestamps=False`` omits the prefix (as QEMU
    without ``-msg timestamp=on`` on older versions; times are then lost). Times are truncated to microseconds.
    ``launch`` / ``memory_bytes``: the VM's launch and guest RAM (module docstring).
    """
    _mode(mode)
    updates = _checked_launch(launch)
    if memory_bytes is not None and (isinstance(memory_bytes, bool) or not isinstance(memory_bytes, int)):
        raise ValueError(f"memory_bytes must be an int, got {memory_bytes!r}")
    if memory_bytes is not None and (memory_bytes <= 0 or memory_bytes % (1 << PAGE_SHIFT)):
        raise ValueError(f"memory_bytes must be a multiple of 4K > 0, got {memory_bytes}")
    n = 0

    def stamp(t: int) -> str:
        return f"{pid}@{t // 1_000_000_000}.{t // 1000 % 1_000_000:06d}:" if timestamps else ""

    with _output(file) as f:
        if memory_bytes is not None and not updates:
            f.write(f"qemu-system-x86_64: warning: {GMEMFD}: created memfd: 10, size: 0x{memory_bytes:x}, flags: 0x0\n")
            n += 1
        for ev in _with_launch(events, updates):
            if isinstance(ev, int):  # the launch, at this time
                for i, (text, _gpa, _size) in enumerate(_launch_lines(updates)):
                    if i == 1 and memory_bytes is not None:  # QEMU creates the RAM blocks after the launch start
                        f.write(
                            f"qemu-system-x86_64: warning: {GMEMFD}: created memfd: 10, size: 0x{memory_bytes:x}, "
                            "flags: 0x0\n"
                        )
                        n += 1
                    f.write(f"{stamp(ev)}{text}\n")
                    n += 1
                continue
            t, gfn, npages, to_private = ev
            prefix = stamp(t)
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
    launch: Iterable[SnpLaunchUpdate] = (),
    qemu_pid: int = 4321,
) -> int:
    """Write ``events`` as ``/sys/kernel/tracing/trace`` text; returns the number of event lines written.

    ``comm``/``pid``/``cpu``: the task and host CPU columns (QEMU's vCPU thread); ``vcpu``: the guest vCPU in the
    event fields. ``header``: the ``nop`` tracer header (the entry count in it is left as 0 when ``events`` is not
    a sized collection). ``ns``: 9 fraction digits instead of 6 (times are otherwise truncated to microseconds).
    ``launch``: the VM's launch (module docstring), written by QEMU's main thread (``qemu-system-x86``, ``qemu_pid``).
    """
    _mode(mode)
    updates = _checked_launch(launch)
    n = 0

    def stamp(t: int) -> str:
        sec = t // 1_000_000_000
        frac = f"{t % 1_000_000_000:09d}" if ns else f"{t // 1000 % 1_000_000:06d}"
        return f"{sec:5d}.{frac}: "

    with _output(file) as f:
        if header:
            total = len(events) if hasattr(events, "__len__") else 0  # type: ignore[arg-type]
            f.write(_FTRACE_HEADER.format(n=total, cpus=max(cpu + 1, 1)))
        task = f"{comm:>16}-{pid:<7} [{cpu:03d}] ....."
        main = f"{_QEMU_COMM:>16}-{qemu_pid:<7} [{cpu:03d}] ....."
        for ev in _with_launch(events, updates):
            if isinstance(ev, int):  # the launch, at this time: QEMU's trace_marker writes and KVM's attributes
                for text, gpa, size in _launch_lines(updates):
                    if size and mode == "full":  # kvm_set_memory_attributes_private() before each update
                        start, end = _c_alt_hex016(gpa >> PAGE_SHIFT), _c_alt_hex016((gpa + size) >> PAGE_SHIFT)
                        f.write(f"{main} {stamp(ev)}kvm_vm_set_mem_attributes: {start} -- {end} [0x8]\n")
                        n += 1
                    f.write(f"{main} {stamp(ev)}tracing_mark_write: {text}\n")
                    n += 1
                continue
            t, gfn, npages, to_private = ev
            pre = f"{task} {stamp(t)}"
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

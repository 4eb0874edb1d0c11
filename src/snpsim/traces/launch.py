"""The launch of an SEV-SNP guest as QEMU reports it: the ``kvm_sev_snp_launch_*`` trace events and the guest_memfds.

Before the guest runs, QEMU (``target/i386/sev.c``) starts the launch, loads the launch image into private
guest_memfd memory and finishes it; its trace events (``target/i386/trace-events``, QEMU 9.1+, the SNP series merged
from Message-ID 20240530111643.1091816-17-pankaj.gupta@amd.com)::

    kvm_sev_snp_launch_start(uint64_t policy, char *gosvw)        "policy 0x%" PRIx64 " gosvw %s"
    kvm_sev_snp_launch_update(uint64_t src, uint64_t gpa, uint64_t len, const char *type)
                                    "src 0x%" PRIx64 " gpa 0x%" PRIx64 " len 0x%" PRIx64 " (%s page)"
    kvm_sev_snp_launch_finish(char *id_block, char *id_auth, char *host_data)
                                    "id_block %s id_auth %s host_data %s"

The SNP series before the merge (2023-24, e.g. Message-ID 20240320083945.991426-*-michael.roth@amd.com) printed
``"addr %p gpa 0x%x len 0x%" PRIx64 " (%s page)"``, ``"policy 0x%" PRIx64`` and an empty launch finish; both are
accepted. ``type`` is ``snp_page_type_to_str()``: ``Normal``, ``Zero``, ``Unmeasured``, ``Secrets``, ``Cpuid``
(:class:`snpsim.kvm.uapi.SnpPageType`); anything else (``unknown``, the pre-merge ``Vmsa``: KVM makes the VMSAs
itself at launch finish, ``snp_launch_update_vmsa()``) is a bad line.

**Order and meaning.** ``sev_snp_launch_start()`` runs at KVM init, before the RAM blocks exist; the firmware
(``x86_firmware_configure()`` -> ``sev_encrypt_flash(gpa, ...)``, the BIOS mapped at ``4 GiB - size``) and OVMF's SEV
metadata ranges (``snp_populate_metadata_pages()``) are queued and issued at machine-done by
``sev_snp_launch_finish()``, one ``KVM_SEV_SNP_LAUNCH_UPDATE`` each, then the finish is traced. So everything
between start and finish is the VMM's set-up: KVM's ``kvm_vm_set_mem_attributes`` tracepoints there (QEMU's
``kvm_set_memory_attributes_private()`` for each memslot and before each update) are not guest conversions, and the
ftrace parser does not replay them once the trace shows the launch.

**Partial updates.** KVM may populate only part of a range: ``snp_launch_update()`` advances ``params.gfn_start`` and
``params.len`` by the pages done and returns 0, and QEMU's ``while (update.len || ret == -EAGAIN)`` loop traces the
remaining range again. A line whose range is the tail of the previous update's range (same type, same end) is such a
continuation: it is counted in ``ParseStats.informational`` as :data:`CONTINUED`, not recorded twice.

**guest_memfd sizes.** QEMU creates one guest_memfd per RAM block that needs private memory (``pc.ram`` = the guest
RAM; the firmware ``pc.bios``; ``kvm_create_guest_memfd()`` in ``accel/kvm/kvm-all.c``). Upstream QEMU prints
nothing there; development trees report it with a warning, parsed in the form
``kvm_create_gmemfd: created memfd: N, size: S, flags: F`` (``S``, ``F`` in hex with ``0x`` or decimal; the exact
printf format is not known [I]), with or without the ``qemu-system-x86_64: warning: `` prefix.

**Where they appear.** In QEMU's own output (the ``log`` trace backend, :mod:`snpsim.traces.qemu`), and in ftrace
text when QEMU is built with the ``ftrace`` trace backend: ``scripts/tracetool/backend/ftrace.py`` writes
``"%(name)s " fmt "\\n"`` to ``trace_marker``, which the kernel shows as a ``tracing_mark_write:`` event
(:mod:`snpsim.traces.ftrace`). KVM itself has no tracepoint for the SNP launch commands (``kvm_gmem_populate()`` /
``sev_gmem_post_populate()`` trace nothing; ``arch/x86/kvm/trace.h`` has none). The warnings go to stderr only.
"""

from __future__ import annotations

import re

from snpsim.kvm.uapi import SnpPageType
from snpsim.traces._common import BadLine, Clock, Template, check_range, quote
from snpsim.traces.model import PAGE_SIZE, ParseStats, TraceGuestMemfd, TraceLaunchUpdate

__all__ = [
    "CONTINUED",
    "GMEMFD",
    "LAUNCH_EVENTS",
    "LAUNCH_FINISH",
    "LAUNCH_START",
    "LAUNCH_UPDATE",
    "PAGE_TYPES",
    "LaunchState",
    "match_gmemfd",
]

LAUNCH_START = "kvm_sev_snp_launch_start"
LAUNCH_UPDATE = "kvm_sev_snp_launch_update"
LAUNCH_FINISH = "kvm_sev_snp_launch_finish"
LAUNCH_EVENTS = frozenset({LAUNCH_START, LAUNCH_UPDATE, LAUNCH_FINISH})
#: Informational counter name of a partly processed update's continuation line.
CONTINUED = "<launch update continued>"
#: The function name the guest_memfd warning starts with.
GMEMFD = "kvm_create_gmemfd"
#: ``snp_page_type_to_str()`` (QEMU target/i386/sev.c) -> ``KVM_SEV_SNP_PAGE_TYPE_*``.
PAGE_TYPES: dict[str, SnpPageType] = {
    "Normal": SnpPageType.NORMAL,
    "Zero": SnpPageType.ZERO,
    "Unmeasured": SnpPageType.UNMEASURED,
    "Secrets": SnpPageType.SECRETS,
    "Cpuid": SnpPageType.CPUID,
}
#: Records kept per pass (a real launch has tens of updates and a few guest_memfds): beyond, a line is bad, so that
#: garbage input cannot grow memory without bound.
MAX_LAUNCH_UPDATES = 1 << 16
MAX_GUEST_MEMFDS = 1 << 10

_T_START = Template(LAUNCH_START, "policy {policy:0xh} gosvw {gosvw:w}")
_T_START_OLD = Template(LAUNCH_START, "policy {policy:0xh}")
_T_UPDATE = Template(LAUNCH_UPDATE, "src {src:0xh} gpa {gpa:0xh} len {len:0xh} ({type:w} page)")
_T_UPDATE_OLD = Template(LAUNCH_UPDATE, "addr {addr:p} gpa {gpa:0xh} len {len:0xh} ({type:w} page)")
_T_FINISH = Template(LAUNCH_FINISH, "id_block {id_block:w} id_auth {id_auth:w} host_data {host_data:w}")
_T_GMEMFD = Template(GMEMFD, "created memfd: {fd:d}, size: {size:n}, flags: {flags:n}")
_GMEMFD_TEXT = re.compile(rf"(?:{GMEMFD}:[ \t]+)?(created memfd:.*)", re.ASCII | re.DOTALL)
_WORD = re.compile(r"[ \t]*(\w+)", re.ASCII)


def match_gmemfd(text: str) -> str | None:
    """The ``created memfd: ...`` part of a guest_memfd warning text, or None if ``text`` is not one."""
    m = _GMEMFD_TEXT.fullmatch(text)
    return m.group(1) if m is not None else None


class LaunchState:
    """The launch records of one parsing pass: the updates and guest_memfds (kept in ``stats``), the update a
    continuation line would continue, and whether the trace is inside the launch (``in_launch``: between a launch
    start or update and the launch finish)."""

    __slots__ = ("clock", "in_launch", "last", "source", "stats")

    def __init__(self, source: str, stats: ParseStats, clock: Clock) -> None:
        self.source = source
        self.stats = stats
        self.clock = clock
        self.in_launch = False
        self.last: TraceLaunchUpdate | None = None

    def event(self, name: str, fields: str, ts: int | None, lineno: int) -> None:
        """One ``kvm_sev_snp_launch_*`` event with its fields text; raises BadLine if the fields are invalid."""
        if name == LAUNCH_UPDATE:
            first = _WORD.match(fields)
            template = _T_UPDATE_OLD if first is not None and first.group(1) == "addr" else _T_UPDATE
            gpa, size, type_name = template.parse(fields)[1:]
            page_type = PAGE_TYPES.get(type_name)
            if page_type is None:
                raise BadLine(
                    f"bad page type {quote(type_name)} in {name} (expected {', '.join(PAGE_TYPES)}: "
                    "KVM_SEV_SNP_PAGE_TYPE_*)"
                )
            check_range(name, gpa, size)
            t = self.clock.time(ts, lineno)
            self.in_launch = True
            last = self.last
            if (
                last is not None
                and last.page_type == page_type
                and last.gpa < gpa
                and gpa + size == last.gpa + last.size
            ):
                self.stats.informational[CONTINUED] += 1
                return
            if len(self.stats.launch) >= MAX_LAUNCH_UPDATES:
                raise BadLine(f"more than {MAX_LAUNCH_UPDATES} launch updates in one trace")
            self.last = TraceLaunchUpdate(t, gpa, size, page_type, self.source, lineno)
            self.stats.launch.append(self.last)
            return
        if name == LAUNCH_START:
            (_T_START if " gosvw" in fields else _T_START_OLD).parse(fields)
            self.in_launch = True
        elif fields.strip():
            _T_FINISH.parse(fields)
        self.clock.time(ts, lineno)
        if name == LAUNCH_FINISH:
            self.in_launch = False
            self.last = None
        self.stats.informational[name] += 1

    def gmemfd(self, text: str, ts: int | None, lineno: int) -> None:
        """A guest_memfd warning's ``created memfd: N, size: S, flags: F`` text."""
        fd, size, flags = _T_GMEMFD.parse(text)
        if size <= 0 or size % PAGE_SIZE:
            # kvm_gmem_create(): "if (size <= 0 || !PAGE_ALIGNED(size)) return -EINVAL"
            raise BadLine(f"bad size {size:#x} in {GMEMFD} (a guest_memfd's size is a multiple of 4K, > 0)")
        if len(self.stats.guest_memfds) >= MAX_GUEST_MEMFDS:
            raise BadLine(f"more than {MAX_GUEST_MEMFDS} guest_memfds in one trace")
        if ts is not None:
            self.clock.time(ts, lineno)
        self.stats.guest_memfds.append(TraceGuestMemfd(fd, size, flags, self.source, lineno))

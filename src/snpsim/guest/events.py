"""What a guest asks of the host: conversions of guest-physical ranges and accesses to its private memory.

The guest layer (:mod:`snpsim.guest.linux`) turns Linux guest behaviour (``shared/reference/guest-workloads.md``
§1-§2) into these events; :mod:`snpsim.guest.psc` turns a conversion into the Page State Change requests the
guest kernel really sends (``set_pages_state()`` in ``arch/x86/coco/sev/core.c``); the kvm layer executes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Protocol(StrEnum):
    """How the guest sends a Page State Change (GHCB spec 56421 §4.1.6; amd-snp-arch.md §9)."""

    #: GHCB MSR protocol (GHCBInfo 0x014): one 4K page per request; used before a GHCB exists.
    MSR = "msr"
    #: GHCB NAE event SVM_VMGEXIT_PSC (0x80000010): a descriptor of up to 64 entries (Linux guests) or 253 (OVMF).
    GHCB = "ghcb"


@dataclass(frozen=True, slots=True)
class Conversion:
    """The guest converts ``npages`` 4K pages from ``gfn`` to private (``to_private``) or to shared.

    ``huge_ok``: the range is addressed through the guest's direct map, so ``set_pages_state()`` may use 2M
    PSC entries (and 2M PVALIDATE) where the GFN is 2M-aligned with at least 2M left; vmalloc'ed ranges are 4K.
    ``validate``: for a to-private conversion, the guest PVALIDATEs the pages afterwards (always true for Linux;
    false only for conversions the guest does not use, kept for traces). ``what`` names the guest object
    (``"ghcb"``, ``"swiotlb"`` ...), for reports. ``max_entries``: PSC entries per GHCB descriptor of the code that
    sends it - ``None`` for the guest kernel's own (Linux ``VMGEXIT_PSC_MAX_ENTRY`` = 64, the executor's default),
    253 for OVMF (edk2 ``SNP_PAGE_STATE_MAX_ENTRY``); see :mod:`snpsim.guest.psc`.
    """

    gfn: int
    npages: int
    to_private: bool
    protocol: Protocol = Protocol.GHCB
    huge_ok: bool = False
    what: str = ""
    vcpu: int = 0
    validate: bool = True
    max_entries: int | None = None


@dataclass(frozen=True, slots=True)
class Access:
    """The guest touches ``npages`` pages from ``gfn`` as private (C=1) or shared (C=0) memory."""

    gfn: int
    npages: int
    private: bool
    write: bool = True
    what: str = ""
    vcpu: int = 0


@dataclass(frozen=True, slots=True)
class Timed:
    """An event at simulated time ``time_ns`` (relative to the VM's start)."""

    time_ns: int
    event: Conversion | Access

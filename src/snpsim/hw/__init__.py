"""hw: the AMD SEV-SNP Reverse Map Table, the SNP instructions and the hardware RMP checks.

Models AMD APM vol. 2 §15.36 and vol. 3 (RMPUPDATE, PSMASH, PVALIDATE, RMPADJUST, RMPREAD); facts and their
sources are in ``shared/reference/amd-snp-arch.md``.
"""

from snpsim.hw.rmp import Rmp
from snpsim.hw.types import (
    HostPageFault,
    NestedPageFault,
    PageSize,
    RmpEntry,
    RmpStatus,
    VmmCommunicationException,
)

__all__ = [
    "HostPageFault",
    "NestedPageFault",
    "PageSize",
    "Rmp",
    "RmpEntry",
    "RmpStatus",
    "VmmCommunicationException",
]

"""Constants and helpers shared by the hw conformance tests (spec: DESIGN.md public API, amd-snp-arch.md)."""

from __future__ import annotations

from snpsim.hw.types import PAGE_SIZE, PAGES_PER_2M, SIZE_2M_BYTES

#: 4 x 2M regions = 8 MiB covered by the small test table.
NPAGES = 4 * PAGES_PER_2M
#: First SPA not covered by the test table.
TABLE_END = NPAGES * PAGE_SIZE
#: GPA = SPA + GPA_OFFSET is the "correct" binding used throughout (2M aligned, so 2M entries line up).
GPA_OFFSET = 0x1_0000_0000


def page(n: int) -> int:
    """SPA (or byte offset) of 4K page ``n``."""
    return n * PAGE_SIZE


def region(n: int) -> int:
    """SPA of 2M region ``n``."""
    return n * SIZE_2M_BYTES
